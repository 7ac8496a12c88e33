"""Training methods, one module each, registered with `benchmark.spec.register`.

The contract every method implements (the base class `Method`, `Phase`, `Locality`) lives in
`benchmark/spec.py`; this package only holds the methods. Adding a method is one module here with
one `@register` decorator, plus one YAML in configs/method/ (its hyperparameters, search space,
native architecture, batch size and the learning floor the tests hold it to). The registry imports
every module of this package on first use, so nothing else needs editing.
"""
