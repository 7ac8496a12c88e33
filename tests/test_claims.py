"""The claims a benchmark of BP-free methods rests on, checked from their properties (issue 20):
no weight transport in the feedback methods, test figures from the test split alone, and
statistics that match textbook values. Fast: the unit tier catches these in seconds."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from benchmark import data as data_mod
from benchmark import config, loop, runner
from benchmark.meters import MeasureConfig, Meters
from tests.conftest import compose

# -- No weight transport ----------------------------------------------------------------------------
#
# Backprop sends the error down through W^T: change a forward weight W_k and the updates of every
# layer below k change, even when the network's output on the batch does not. Feedback alignment,
# DFA and PEPITA send it through fixed matrices (or the input), DRTP and tpSGD send none (the label
# goes through fixed matrices instead), so a change of W_k that leaves the
# batch's forward pass as it was leaves the updates of the layers below exactly as they were.
# The test makes such a change: the head's weights move inside the null space of the batch's last
# hidden activations (more units than samples), so the logits, the error and every activation are
# unchanged, while W^T changes a lot.


def head_layer(method) -> torch.nn.Linear:
    """The output layer: PEPITA's last layer, FA/DFA's head, BP's head."""
    if "layers" in method.modules:
        return method.modules["layers"][-1]
    if "net" in method.modules:
        return method.modules["net"].head[-1]
    return method.modules["head"]


def last_hidden(method, x):
    """The activations the output layer reads, for the batch x."""
    if "layers" in method.modules:  # PEPITA: hidden layers then the output layer
        return method.run(x.flatten(1), None)[0][-1]
    blocks = method.modules["net"].blocks if "net" in method.modules else method.modules["blocks"]
    for block in blocks:
        x = block(x)
    return x.flatten(1)


def update_of_lower_layers(name: str, perturb: bool):
    overrides = {"pepita": ["arch=mlp_1x1024", "method.hp.keep_rate=1.0"], "bp": ["arch=mlp"]}.get(name, ["arch=mlp"])
    job = compose(f"method={name}", "dataset=digits", "measure.emissions=false", *overrides,
                  *(["method.hp.optimizer=sgd", "method.hp.momentum=0", "method.hp.lr=0.1"] if name != "pepita" else ["method.hp.momentum=0"]))
    data = runner.load_data(job)
    torch.manual_seed(0)
    method = config.build_method(job, data)
    x, y = data.train_x[:16], data.train_y[:16]
    head_weight = head_layer(method).weight
    lower = [p for p in method.modules.parameters() if all(p is not q for q in head_layer(method).parameters())]
    if perturb:
        with torch.no_grad():
            h = last_hidden(method, x)
            basis = torch.linalg.qr(h.T)[0]  # columns span the batch's activations
            noise = torch.randn_like(head_weight)
            null_move = noise - noise @ basis @ basis.T  # zero on every activation of the batch
            head_weight.add_(5.0 * null_move / null_move.norm() * head_weight.norm())
    before = [p.detach().clone() for p in lower]
    torch.manual_seed(1)
    method.train_step(x, y, torch.arange(16))
    return [p.detach() - b for p, b in zip(lower, before)]


@pytest.mark.parametrize("name", ["fa", "dfa", "pepita", "drtp", "tpsgd"])
def test_feedback_methods_do_not_transport_forward_weights(name):
    plain, moved = update_of_lower_layers(name, False), update_of_lower_layers(name, True)
    assert any(u.abs().sum() > 0 for u in plain), "nothing was updated"
    for u, v in zip(plain, moved):
        assert torch.allclose(u, v, atol=1e-6, rtol=1e-4)


def test_the_weight_transport_check_sees_backprop():
    """The same change moves BP's updates of the lower layers: the check has power."""
    plain, moved = update_of_lower_layers("bp", False), update_of_lower_layers("bp", True)
    assert any(not torch.allclose(u, v, atol=1e-6, rtol=1e-4) for u, v in zip(plain, moved))


# -- Splits ---------------------------------------------------------------------------------------

class Constant(torch.nn.Module):
    pass


def probe_dataset(root, download):
    """Splits that can be told apart by label alone: every training image is class 1, every test
    image class 2."""
    rng = np.random.default_rng(0)
    return data_mod.RawDataset(
        rng.integers(0, 255, (200, 1, 8, 8), dtype=np.uint8), np.full(200, 1, np.int64),
        rng.integers(0, 255, (50, 1, 8, 8), dtype=np.uint8), np.full(50, 2, np.int64), 10)


def test_test_accuracy_is_computed_on_the_test_split(monkeypatch, job_factory):
    """A predictor that always says class 2 is right on every test image and on no training or
    validation image: the figure named test accuracy must be 1, validation accuracy 0."""
    monkeypatch.setitem(data_mod.LOADERS, "probe", probe_dataset)
    splits = data_mod.load_splits("probe", "/unused", False, 40, 0, torch.device("cpu"))
    job = job_factory("method=bp", "arch=mlp", "dataset=digits")
    method = config.build_method(job, splits)
    method.predict = lambda x: torch.nn.functional.one_hot(torch.full((len(x),), 2), 10).float()
    cfg = dataclasses.replace(job.train, epochs=1, batch_size=32, patience=0)
    out = loop.train(method, splits, cfg, Meters(MeasureConfig(energy="none", emissions=False), job.device), seed=0)
    assert out["metrics"]["test_accuracy"] == 1.0
    assert out["metrics"]["val_accuracy"] == 0.0


def test_train_validation_and_test_never_overlap():
    """Validation is held out of the released training set by a seeded permutation; test is the
    released test set. The record names both index sets by digest, and they are disjoint."""
    n, val_size, seed = 1500, 300, 0
    train_idx, val_idx = data_mod.split_indices(n, val_size, seed)
    assert len(set(train_idx) & set(val_idx)) == 0 and len(train_idx) + len(val_idx) == n
    splits = data_mod.load_splits("digits", "/unused", False, val_size, seed, torch.device("cpu"))
    info = splits.info
    assert info["split_indices"]["val_sha256"] == data_mod.index_digest(val_idx)
    assert info["split_indices"]["train_sha256"] == data_mod.index_digest(train_idx)
    assert (info["n_train"], info["n_val"], info["n_test"]) == (1200, 300, 297)
    raw = data_mod.load_raw("digits", "/unused", False)
    expected_test = (torch.from_numpy(raw.test_images).float() / 255.0 - splits.info["normalisation"]["mean"][0]) \
        / splits.info["normalisation"]["std"][0]
    assert torch.allclose(splits.test_x, expected_test, atol=1e-5)  # test_x is the released test set
    assert torch.equal(splits.val_y, torch.from_numpy(raw.train_labels[val_idx]))
    assert torch.equal(splits.train_y, torch.from_numpy(raw.train_labels[train_idx]))
    assert torch.equal(splits.test_y, torch.from_numpy(raw.test_labels))


# -- Statistics -----------------------------------------------------------------------------------

def test_confidence_interval_uses_students_t():
    from benchmark.report.numbers import mean_ci95

    mean, half, n = mean_ci95([1.0, 2.0, 3.0])  # sd 1, n 3: t(0.975, 2) = 4.303 (tables)
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    _, half5, _ = mean_ci95([2.0, 4.0, 6.0, 8.0, 10.0])  # sd sqrt(10), t(0.975, 4) = 2.776
    assert half5 == pytest.approx(2.776445 * math.sqrt(10) / math.sqrt(5), rel=1e-5)
    assert math.isnan(mean_ci95([5.0])[1])  # one value: no interval, not a zero-width one


def test_welch_test_matches_a_hand_computation():
    from benchmark.report.numbers import welch

    # a = 1..4, b = 2, 4, ..., 10: t = -2.2514, Welch-Satterthwaite df = 5.5208, p = 0.06913.
    assert welch([1, 2, 3, 4], [2, 4, 6, 8, 10]) == pytest.approx(0.069134, rel=1e-4)
    assert welch([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert math.isnan(welch([1.0], [2.0, 3.0]))


# -- Prediction -----------------------------------------------------------------------------------

def test_bp_predicts_the_classes_it_learned():
    """A fast check of the prediction path: BP fits 64 digits in 60 full-batch steps, and its
    predict() ranks the learned classes first (a sign flip or a wrong argmax would fail)."""
    job = compose("method=bp", "arch=mlp", "arch.widths=[64]", "dataset=digits", "measure.emissions=false")
    data = runner.load_data(job)
    torch.manual_seed(0)
    method = config.build_method(job, data)
    x, y = data.train_x[:64], data.train_y[:64]
    for _ in range(60):
        method.train_step(x, y, torch.arange(64))
    with torch.no_grad():
        assert (method.predict(x).argmax(1) == y).float().mean() >= 0.95


def test_holm_matches_the_textbook_step_down():
    """Holm (1979) on p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted p_(i) x (m - i + 1), made
    monotone: 0.005x4 = 0.02, 0.01x3 = 0.03, 0.03x2 = 0.06, 0.04x1 = 0.04 -> 0.06."""
    from benchmark.report.numbers import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([math.nan, 0.02])[0]) and holm([math.nan, 0.02])[1] == pytest.approx(0.02)


def test_significance_is_decided_after_holm_and_small_differences_are_named():
    from benchmark.report import numbers

    def row(method, arch, accs):
        mean, ci, n = numbers.mean_ci95(accs)
        return numbers.Row("mnist", arch, method, n, mean, ci, {}, list(range(n)), accs)

    bp = [0.980, 0.981, 0.982]
    rows = [row("bp", "a", bp), row("bp", "b", bp),
            row("x", "a", [0.975, 0.976, 0.977]),  # 0.5 pp under BP, tight seeds: raw p tiny, survives Holm
            row("y", "b", [0.970, 0.980, 0.990])]  # noisy: inside the noise
    out = {s["method"]: s for s in numbers.significance_sentences(rows)}
    assert out["x"]["p_holm"] >= out["x"]["p_value"]
    assert "a small difference, but worse than BP" in out["x"]["sentence"] and "Holm-adjusted p=" in out["x"]["sentence"]
    assert "inside the seed noise" in out["y"]["sentence"]


def test_a_difference_significant_only_before_the_correction_makes_no_claim(monkeypatch):
    """Two comparisons at raw p = 0.03 and 0.04: each below 0.05 alone, neither after Holm
    (0.06, 0.06), so neither sentence may say better or worse."""
    from benchmark.report import numbers

    def row(method, arch, accs):
        mean, ci, n = numbers.mean_ci95(accs)
        return numbers.Row("mnist", arch, method, n, mean, ci, {}, list(range(n)), accs)

    raw = {"x": 0.03, "y": 0.04}
    monkeypatch.setattr(numbers, "welch", lambda a, b: raw["x"] if a[0] == 0.95 else raw["y"])
    bp = [0.980, 0.981, 0.982]
    rows = [row("bp", "a", bp), row("bp", "b", bp), row("x", "a", [0.95, 0.96, 0.97]), row("y", "b", [0.94, 0.95, 0.96])]
    out = {s["method"]: s for s in numbers.significance_sentences(rows)}
    assert out["x"]["p_holm"] == pytest.approx(0.06) and out["y"]["p_holm"] == pytest.approx(0.06)
    for s in out.values():
        assert "inside the seed noise" in s["sentence"] and "worse" not in s["sentence"]
