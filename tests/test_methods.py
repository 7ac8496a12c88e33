"""Each method learns on scikit-learn's digits well above chance (10%) within seconds.

Every registered method is run at its YAML defaults, and every variant its YAML lists under
`test.variants` (options and archs besides the defaults): a new method is covered by its module
and its YAML alone. These are learning checks, not comparisons.
"""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from benchmark import config, runner
from benchmark import spec as methods
from benchmark.settings import LearningCheck
from tests.conftest import graph_root


def learning_check(name: str) -> LearningCheck:
    """The `test:` block of the method's own YAML file (not inherited through its defaults)."""
    raw = OmegaConf.load(config.CONFIG_DIR / "method" / f"{name}.yaml")
    return LearningCheck(**OmegaConf.to_container(raw.get("test") or OmegaConf.create({}), resolve=True))


def on_dataset(name: str) -> list[str]:
    """The overrides that run on `name`: digits ships with scikit-learn; a graph needs a data root."""
    if name == "digits":
        return ["dataset=digits"]
    return [f"dataset={name}", f"data.root={graph_root()}"]


def variants() -> list[tuple[str, dict]]:
    return [(name, v) for name in methods.names() for v in (learning_check(name).variants or [])]


@pytest.mark.parametrize("name", methods.names())
def test_method_learns_digits_out_of_the_box(name, job_factory):
    """What a new user gets: `python -m benchmark method=<m> dataset=digits`, the YAML defaults, the
    native arch, the root budget (20 epochs, patience 5, unless its YAML's test.epochs says), the
    method's own batch size. Each reaches its YAML's `test.floor` (0.80 unless the method's
    docstring says why not)."""
    budget = learning_check(name)
    epochs = [f"train.epochs={budget.epochs}"] if budget.epochs else []
    job = job_factory(f"method={name}", *on_dataset(budget.dataset), *epochs, *(budget.overrides or []))
    record = runner.execute(job)
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["test_accuracy"] >= budget.floor, (name, record["metrics"]["test_accuracy"])


@pytest.mark.parametrize("name, variant", variants(), ids=lambda v: v["name"] if isinstance(v, dict) else v)
def test_method_variant_learns_digits(name, variant, job_factory):
    dataset = learning_check(name).dataset
    job = job_factory(f"method={name}", *on_dataset(dataset), "train.patience=0", *variant["overrides"])
    record = runner.execute(job)
    assert record["status"] == "completed", record["error"]
    assert record["metrics"]["test_accuracy"] >= variant["floor"], record["metrics"]["test_accuracy"]


@pytest.mark.parametrize("arch", [["arch=cnn"], ["arch=lenet", "dataset.resize=32"],
                                  ["arch=mlp_2x1000_tanh", "method.hp.output_loss=bce"]])
def test_feedback_alignment_with_b_equal_to_w_is_backprop(job_factory, arch):
    """FA's hand-passed error equals BP's gradient when its feedback matrices are the forward
    weights: checks the signal path (FA's B replaces W^T and nothing else), on the CNN, on
    BioTorch's LeNet (whose convolution-to-linear step reshapes the error) and on DRTP's tanh MLP
    with its sigmoid outputs and binary cross-entropy (the error is that loss's gradient)."""
    import torch

    from benchmark import loop
    from methods._losses import output_loss

    job = job_factory("method=fa", *arch, "dataset=digits", "method.hp.optimizer=sgd",
                      "method.hp.lr=0.1", "method.hp.momentum=0")
    data = runner.load_data(job)
    loop.seed_everything(0)
    fa = config.build_method(job, data)
    layers = [fa_layer for fa_layer in fa.modules.modules() if isinstance(fa_layer, (torch.nn.Linear, torch.nn.Conv2d))]
    fa.feedback = [layer.weight.detach().clone() for layer in layers[1:]]
    before = {n: p.detach().clone() for n, p in fa.modules.named_parameters()}
    x, y = data.train_x[:32], data.train_y[:32]
    # BP's update on the same network: plain autograd through everything.
    h = x
    for block in fa.modules["blocks"]:
        h = block(h)
    loss = output_loss(fa.modules["head"](h.flatten(1)), y, fa.hp.output_loss)
    grads = torch.autograd.grad(loss, list(fa.modules.parameters()))
    expected = {n: before[n] - 0.1 * g for (n, _), g in zip(fa.modules.named_parameters(), grads)}
    fa.train_step(x, y, torch.arange(32))
    for n, p in fa.modules.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-5), n
