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
    "fa": (["arch=mlp", "train.epochs=20"], 0.75),  # ~0.88
    "fa_cnn": (["method=fa", "arch=cnn", "train.epochs=10"], 0.75),  # ~0.89
    "dfa": (["arch=mlp", "train.epochs=20"], 0.75),  # ~0.88
    "dfa_cnn": (["method=dfa", "arch=cnn", "train.epochs=10"], 0.75),  # ~0.88
    "pepita": (["arch=mlp_1x1024", "train.epochs=20"], 0.75),  # ~0.91
    # Forward gradient needs many small steps: ~0.49 here, far below BP, but 5x chance.
    "fg": (["arch=mlp_1x1024", "train.epochs=20", "train.batch_size=16", "method.hp.lr=5e-4", "method.hp.tangents=4"], 0.30),
    "local": (["arch=cnn", "train.epochs=10"], 0.85),  # ~0.96
    "local_mlp_two_modules": (["method=local", "arch=mlp_3x1000", "method.hp.modules=2", "train.epochs=10"], 0.80),
    "sff": (["arch=resnet18_w8", "train.epochs=10"], 0.65),  # ~0.85
    "ccl": (["arch=mlp", "train.epochs=20"], 0.70),  # ~0.87
    "ccl_cnn": (["method=ccl", "arch=cnn", "train.epochs=10"], 0.75),  # ~0.91
    "noprop_dt": (["arch=mlp_1x1024", "train.epochs=10"], 0.75),  # ~0.92
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_learns_digits(case, job_factory):
    overrides, minimum = CASES[case]
    method = [f"method={case}"] if not any(o.startswith("method=") for o in overrides) else []
    job = job_factory(*method, "dataset=digits", "train.patience=0", *overrides)
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


def test_every_registered_method_has_a_learning_test():
    import methods

    assert set(methods.names()) <= set(CASES)
