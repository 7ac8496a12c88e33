"""Diagnostics (benchmark/diagnostics.py): alignment with BP, per-layer probes, robustness, and
that none of them changes training or the method's own figures."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import config, diagnostics, loop
from benchmark.data import Splits
from benchmark.meters import MeasureConfig, Meters
from benchmark.spec import Locality, Method

CPU = torch.device("cpu")


def run(job, alignment_points: int = 0, epochs: int = 2, seed: int = 0):
    """Train the job's method on its data with (or without) alignment; (method, data, alignment)."""
    from benchmark.runner import load_data, train_settings

    data = load_data(job)
    cfg = train_settings(job, data)
    cfg.epochs, cfg.patience = epochs, 0
    loop.seed_everything(seed)
    method = config.build_method(job, data)
    meters = Meters(MeasureConfig(energy="none", emissions=False), CPU)
    alignment = diagnostics.Alignment(method, alignment_points) if alignment_points else None
    out = loop.train(method, data, cfg, meters, seed, alignment=alignment)
    assert out["status"] == "completed", out["error"]
    return method, data, alignment, meters


def test_bp_alignment_is_one_by_construction(job_factory):
    job = job_factory("method=bp", "arch=mlp", "arch.widths=[64,64]", "dataset=digits", "train.batch_size=64")
    _, _, alignment, meters = run(job, alignment_points=6, epochs=1)
    result = alignment.result()
    assert len(result["points"]) == 6
    assert set(result["layers"]) == {"net.blocks.0.1", "net.blocks.1.0", "net.head.1"}  # block 0: flatten, linear
    for layer, series in result["layers"].items():
        assert len(series["cosine"]) == 6
        assert all(abs(c - 1) < 1e-5 for c in series["cosine"]), (layer, series["cosine"])
        assert all(abs(r - 1) < 1e-5 for r in series["norm_ratio"]), (layer, series["norm_ratio"])
    assert meters.seconds["diagnostics"] > 0


def test_fa_weight_alignment_rises_over_training(job_factory):
    job = job_factory("method=fa", "arch=mlp", "arch.widths=[64,64]", "dataset=digits", "train.batch_size=32", "method.hp.lr=0.003")
    _, _, alignment, _ = run(job, alignment_points=10, epochs=8)
    angles = alignment.result()["weight_alignment"]["layers"]
    assert set(angles) == {"layer1", "layer2"}
    for layer, series in angles.items():
        first, last = series["angle"][0], series["angle"][-1]
        assert 85 < first < 95, (layer, first)  # random matrices start near orthogonal
        assert last < first - 5, (layer, series["angle"])  # W comes to align with B
    # FA's updates of the hidden layers align with BP's gradient more as B and W align.
    cos = alignment.result()["layers"]["blocks.0.1"]["cosine"]
    assert cos[-1] > cos[0]


@pytest.mark.parametrize("method, arch", [("bp", "cnn"), ("fa", "mlp"), ("ff", "mlp"), ("pepita", "mlp"),
                                          ("mf", "mlp"), ("local", "mlp"), ("fg", "mlp")])
def test_diagnostics_do_not_change_training(job_factory, method, arch):
    """Final weights and buffers with diagnostics on equal those with them off, bit for bit."""
    small = ["arch.widths=[64,64]"] if arch == "mlp" else []
    job = job_factory(f"method={method}", f"arch={arch}", *small, "dataset=digits", "train.batch_size=64")
    plain, *_ = run(job, alignment_points=0)
    watched, data, alignment, _ = run(job, alignment_points=7)
    diagnostics.end_of_training(watched, data, diagnostics.DiagnosticsConfig(probe_train_samples=200, probe_iterations=5,
                                                                              robustness_samples=50), 0, 64)
    a, b = plain.modules.state_dict(), watched.modules.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert alignment.result()["points"], "the run was watched"


def test_alignment_leaves_layers_without_a_bp_loss_empty_with_the_reason(job_factory):
    ff_job = job_factory("method=ff", "arch=mlp", "arch.widths=[64,64]", "dataset=digits", "train.batch_size=64")
    _, _, alignment, _ = run(ff_job, alignment_points=3, epochs=1)
    result = alignment.result()
    assert result["layers"] == {}
    assert "goodness" in result["empty"]["layers.0"]
    local_job = job_factory("method=local", "arch=mlp", "arch.widths=[64,64]", "dataset=digits", "train.batch_size=64")
    _, _, alignment, _ = run(local_job, alignment_points=3, epochs=1)
    result = alignment.result()
    assert "stages.0.0.1" in result["layers"]  # the first block's linear layer: BP of the prediction reaches it
    assert result["order"][0].startswith("stages.0") and result["order"][-1].startswith("heads.")  # network order
    first_head = [why for layer, why in result["empty"].items() if layer.startswith("heads.0.")]
    assert first_head and all("prediction path" in why for why in first_head)  # its auxiliary head: BP does not


def test_probes_score_each_layer(job_factory):
    job = job_factory("method=bp", "arch=mlp", "arch.widths=[64,64]", "dataset=digits", "train.batch_size=64")
    method, data, _, _ = run(job, epochs=3)
    probes = diagnostics.layer_probes(method, data, diagnostics.DiagnosticsConfig(probe_iterations=30), 256)
    assert set(probes) == {"block0", "block1"}
    for fig in probes.values():
        assert fig["unit"] == "fraction" and "linear probe" in fig["source"]
        assert 0.8 < fig["value"] <= 1.0  # digits' hidden layers of a trained BP net are linearly separable


def test_excluded_time_is_taken_out_of_the_window():
    meters = Meters(MeasureConfig(energy="none", emissions=False, flops=False), CPU)
    with meters.window("train"):
        with meters.excluded():
            time.sleep(0.2)
    assert meters.seconds["diagnostics"] >= 0.2
    assert meters.seconds["train"] < 0.05
    assert meters.summary(0, [])["time_diagnostics"]["value"] >= 0.2


class Linear(Method):
    """A fixed linear classifier on 2-pixel images: FGSM and noise by hand are easy for it."""

    name = "test_linear"
    locality = Locality("global", "test")
    Hyper = object

    def __init__(self, weight, bias):
        super().__init__({"kind": "mlp"}, (1, 1, 2), 2, None, CPU)
        self.modules["net"] = nn.Linear(2, 2)
        with torch.no_grad():
            self.modules["net"].weight.copy_(weight)
            self.modules["net"].bias.copy_(bias)

    def predict(self, x):
        return self.modules["net"](x.flatten(1))


def test_robustness_matches_a_hand_computation():
    weight, bias = torch.tensor([[2.0, -1.0], [-1.0, 1.5]]), torch.tensor([0.1, -0.2])
    method = Linear(weight, bias)
    mean, std = 0.5, 0.25  # normalised input = (pixel - 0.5) / 0.25
    pixels = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.55, 0.5], [0.45, 0.5], [0.6, 0.4], [0.3, 0.35]])
    x = ((pixels - mean) / std).view(-1, 1, 1, 2)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    data = Splits(x, y, x, y, x, y, 2, info={"normalisation": {"mean": [mean], "std": [std]}})
    cfg = diagnostics.DiagnosticsConfig(robustness_samples=6, noise_sigmas=[0.3], fgsm_epsilons=[0.1])
    out = diagnostics.robustness(method, data, cfg, seed=7, batch=4)

    def acc(z):
        return ((z.flatten(1) @ weight.T + bias).argmax(1) == y).float().mean().item()

    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert out["clean"]["value"] == pytest.approx(acc(x))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * 0.3 / std
    assert out["noise"]["0.3"]["value"] == pytest.approx(acc((x + noise).clamp(lo, hi)))
    # d CE / d x for logits W x + b is W^T (softmax - onehot)
    p = F.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    grad = (p - F.one_hot(y, 2).float()) @ weight
    adv = (x.flatten(1) + 0.1 / std * grad.sign()).clamp(lo, hi)
    assert out["fgsm"]["0.1"]["value"] == pytest.approx(acc(adv))
    assert out["fgsm"]["0.1"]["value"] < out["clean"]["value"]  # the attack does something here
    assert out["fgsm"]["0.1"]["unit"] == "fraction" and "pixel units" in out["fgsm"]["0.1"]["source"]


def test_diagnostics_experiment_turns_them_on_and_tuning_never_does(tmp_path):
    jobs = [j for j in config.preflight(["experiment=diagnostics_mnist", f"results_dir={tmp_path}"]) if j.supported]
    assert {j.cfg.method.name for j in jobs} == {"bp", "fa", "dfa", "ff", "mf", "local", "pepita", "fg"}
    assert all(j.diagnostics.enabled and j.cfg.mode == "run" for j in jobs)
    assert not config.check(config.compose([f"results_dir={tmp_path}"])).diagnostics.enabled  # off by default


def test_a_run_records_diagnostics_and_a_tuning_trial_never_does(job_factory):
    from benchmark import runner

    job = job_factory("method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "train.epochs=1", "train.batch_size=128",
                      "diagnostics.enabled=true", "diagnostics.alignment_points=3", "diagnostics.probe_iterations=5",
                      "diagnostics.robustness_samples=50")
    record = runner.execute(job, kind="run", write=False)
    assert set(record["diagnostics"]) >= {"alignment", "probes", "robustness", "seconds"}
    assert record["measurements"]["time_diagnostics"]["value"] > 0
    assert "diagnostics" not in runner.execute(job, kind="trial", write=False)
