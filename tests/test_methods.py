"""Each method learns on scikit-learn's digits well above chance (10%) within seconds.

Budgets are per method (these are learning checks, not comparisons): FF needs many small steps.
Figures seen on the 2-core CPU are in each case's comment.
"""
from __future__ import annotations

import pytest

from benchmark import runner

CASES = {
    # name: (overrides, minimum test accuracy)
    "bp": (["arch=mlp", "train.epochs=20"], 0.90),  # ~0.93
    "ff": (["arch=mlp", "train.epochs=20", "train.batch_size=16", "method.hp.threshold_per_unit=0.5"], 0.70),  # ~0.89
    "ff_linear": (["method=ff", "arch=mlp", "train.epochs=15", "method.hp.predict=linear"], 0.60),  # ~0.82
    "mf": (["arch=mlp", "train.epochs=15"], 0.85),  # ~0.91
    "mf_greedy": (["method=mf", "arch=mlp", "train.epochs=16", "method.hp.schedule=greedy"], 0.80),
    "cafo_rand": (["arch=cnn", "train.epochs=15"], 0.85),  # ~0.93
    "cafo_rand_mse": (["method=cafo_rand", "arch=cnn", "method.hp.loss=mse", "method.hp.ridge=10.0"], 0.80),
    "cafo_rand_sparsemax": (["method=cafo_rand", "arch=cnn", "train.epochs=15", "method.hp.loss=sparsemax"], 0.80),
    "cafo_dfa": (["arch=cnn", "train.epochs=15"], 0.85),  # ~0.93
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_learns_digits(case, job_factory):
    overrides, minimum = CASES[case]
    method = [f"method={case}"] if not any(o.startswith("method=") for o in overrides) else []
    job = job_factory(*method, "dataset=digits", "train.patience=0", *overrides)
    record = runner.execute(job)
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["test_accuracy"] >= minimum, record["metrics"]["test_accuracy"]


def test_every_registered_method_has_a_learning_test():
    import methods

    assert set(methods.names()) <= set(CASES)
