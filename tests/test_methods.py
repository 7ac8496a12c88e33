"""Each method learns on scikit-learn's digits well above chance (10%) within seconds.

Every registered method is run at its YAML defaults (a new method is covered by adding it); the
variants check options and archs other than the defaults. These are learning checks, not
comparisons.
"""
from __future__ import annotations

import pytest

from benchmark import runner

from benchmark import spec as methods


@pytest.mark.parametrize("name", methods.names())
def test_method_learns_digits_out_of_the_box(name, job_factory):
    """What a new user gets: `python -m benchmark method=<m> dataset=digits`, the YAML defaults, the
    native arch, the root budget (20 epochs, patience 5), the method's own batch size. Each reaches
    its YAML's `digits_floor` (0.80 unless the method's docstring says why not)."""
    job = job_factory(f"method={name}", "dataset=digits")
    floor = job.cfg.method.get("digits_floor", 0.80)
    record = runner.execute(job)
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["test_accuracy"] >= floor, (name, record["metrics"]["test_accuracy"])


VARIANTS = {
    # options and other archs than the defaults: (overrides, minimum test accuracy), seen in comments
    "ff_linear": (["method=ff", "arch=mlp", "train.epochs=15", "method.hp.predict=linear"], 0.60),  # ~0.82
    "mf_greedy": (["method=mf", "arch=mlp", "train.epochs=16", "method.hp.schedule=greedy"], 0.80),
    "cafo_rand_mse": (["method=cafo_rand", "arch=cnn", "method.hp.loss=mse", "method.hp.ridge=10.0"], 0.80),
    "cafo_rand_sparsemax": (["method=cafo_rand", "arch=cnn", "train.epochs=15", "method.hp.loss=sparsemax"], 0.80),
    "fa_cnn": (["method=fa", "arch=cnn", "train.epochs=10"], 0.75),  # ~0.89
    "dfa_cnn": (["method=dfa", "arch=cnn", "train.epochs=10"], 0.75),  # ~0.88
    "local_mlp_two_modules": (["method=local", "arch=mlp_3x1000", "method.hp.modules=2", "train.epochs=10"], 0.80),
    "ccl_cnn": (["method=ccl", "arch=cnn", "train.epochs=10"], 0.75),  # ~0.91
}


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_method_variant_learns_digits(case, job_factory):
    overrides, minimum = VARIANTS[case]
    job = job_factory("dataset=digits", "train.patience=0", *overrides)
    record = runner.execute(job)
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["test_accuracy"] >= minimum, record["metrics"]["test_accuracy"]


def test_feedback_alignment_with_b_equal_to_w_is_backprop(job_factory):
    """FA's hand-passed error equals BP's gradient when its feedback matrices are the forward
    weights: checks the signal path (FA's B replaces W^T and nothing else)."""
    import torch
    import torch.nn.functional as F

    from benchmark import loop

    job = job_factory("method=fa", "arch=cnn", "dataset=digits", "method.hp.optimizer=sgd",
                      "method.hp.lr=0.1", "method.hp.momentum=0")
    data = runner.load_data(job)
    loop.seed_everything(0)
    fa = job.method_cls(dict(job.cfg.arch), data.input_shape, data.num_classes, job.hp, job.device)
    layers = [fa_layer for fa_layer in fa.modules.modules() if isinstance(fa_layer, (torch.nn.Linear, torch.nn.Conv2d))]
    fa.feedback = [layer.weight.detach().clone() for layer in layers[1:]]
    before = {n: p.detach().clone() for n, p in fa.modules.named_parameters()}
    x, y = data.train_x[:32], data.train_y[:32]
    # BP's update on the same network: plain autograd through everything.
    h = x
    for block in fa.modules["blocks"]:
        h = block(h)
    loss = F.cross_entropy(fa.modules["head"](h.flatten(1)), y)
    grads = torch.autograd.grad(loss, list(fa.modules.parameters()))
    expected = {n: before[n] - 0.1 * g for (n, _), g in zip(fa.modules.named_parameters(), grads)}
    fa.train_step(x, y, torch.arange(32))
    for n, p in fa.modules.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-5), n
