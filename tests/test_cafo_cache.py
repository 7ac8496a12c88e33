"""CaFo's feature cache (issue 18): compact and bounded, the same predictions as no cache at all."""
from __future__ import annotations

import pytest
import torch

from methods.cafo import FeatureStore
from tests.test_faithfulness import build


def frozen(method: str = "cafo_rand", *overrides: str):
    cafo, data = build(f"method={method}", "arch=cnn", *overrides)
    cafo.start_phase(next(p for p in cafo.phases(2) if p.name == "predictors"), data.train_x, data.train_y, 10)
    return cafo, data


def test_store_keeps_deepest_blocks_within_budget_and_recomputes_the_rest():
    cafo, data = frozen()
    blocks, x = cafo.modules["blocks"], data.train_x
    full = FeatureStore(blocks, x, torch.float32, budget_bytes=float("inf"))
    assert full.kept_blocks == {0, 1, 2}
    row_bytes = [full.kept[i].shape[1] * 4 for i in range(3)]
    budget = (row_bytes[2] + row_bytes[1]) * len(x)  # room for the two deepest blocks only
    part = FeatureStore(blocks, x, torch.float32, budget_bytes=budget)
    assert part.kept_blocks == {1, 2} and part.nbytes <= budget
    none = FeatureStore(blocks, x, torch.float32, budget_bytes=0)
    assert none.kept_blocks == set() and none.nbytes == 0
    rows = torch.arange(0, len(x), 7)
    for a, b, c in zip(full.features(rows), part.features(rows), none.features(rows)):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_float16_cache_halves_the_bytes_and_changes_features_only_by_rounding():
    cafo, data = frozen()
    blocks, x = cafo.modules["blocks"], data.train_x
    exact = FeatureStore(blocks, x, torch.float32, float("inf"))
    half = FeatureStore(blocks, x, torch.float16, float("inf"))
    assert half.nbytes * 2 == exact.nbytes
    for a, b in zip(exact.features(slice(None)), half.features(slice(None))):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_budget_changes_memory_not_predictions(loss):
    # The same seed with the whole cache in float32 and with no cache at all: identical predictions.
    cached, data = frozen("cafo_rand", f"method.hp.loss={loss}", "method.hp.cache_dtype=float32",
                          "method.hp.cache_budget_mb=100000")
    uncached, _ = frozen("cafo_rand", f"method.hp.loss={loss}", "method.hp.cache_dtype=float32",
                         "method.hp.cache_budget_mb=0")
    assert cached._train_store.nbytes > 0 and uncached._train_store.nbytes == 0
    idx = torch.arange(64)
    for method in (cached, uncached):
        method.train_step(data.train_x[idx], data.train_y[idx], idx)
    torch.testing.assert_close(cached.predict(data.test_x), uncached.predict(data.test_x))


def test_a_run_that_recomputes_blocks_says_so_in_its_log_and_record(caplog):
    """A budget too small for every block costs a forward pass per recomputed block per epoch: the
    run warns once, naming the blocks and the setting, and the record keeps what was kept."""
    with caplog.at_level("WARNING", logger="methods.cafo"):
        whole, _ = frozen("cafo_rand", "method.hp.cache_budget_mb=100000")
    assert not caplog.records
    assert whole.extra_metrics()["feature_cache"]["recomputed_blocks"] == []
    with caplog.at_level("WARNING", logger="methods.cafo"):
        none, _ = frozen("cafo_rand", "method.hp.cache_budget_mb=0")
    [warning] = caplog.records
    assert "block(s) 1, 2, 3" in warning.getMessage() and "cache_budget_mb" in warning.getMessage()
    cache = none.extra_metrics()["feature_cache"]
    assert cache["kept_blocks"] == [] and cache["recomputed_blocks"] == [1, 2, 3] and cache["kept_mib"] == 0
    assert cache["all_blocks_mib"] == pytest.approx(whole.extra_metrics()["feature_cache"]["kept_mib"])


def test_augmented_batches_train_on_their_own_crops_not_on_the_cache():
    """With `augment: crop_flip` each batch is a fresh crop and flip: the predictors must see those
    images through the frozen blocks (the comparison's code does), not the cached features of the
    unaugmented training set."""
    cafo, data = build("method=cafo_rand", "arch=cnn")
    cafo.augmented_inputs = True  # what the loop sets for an augmented dataset
    cafo.start_phase(next(p for p in cafo.phases(2) if p.name == "predictors"), data.train_x, data.train_y, 10)
    assert cafo._train_store is None and cafo.extra_metrics()["feature_cache"]["kept_blocks"] == []
    idx = torch.arange(32)
    seen = []
    predictor = cafo.modules["predictors"][0]
    handle = predictor.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    crops = data.train_x[idx].flip(3)  # stands for an augmented batch: not the images at idx
    cafo.train_step(crops, data.train_y[idx], idx)
    handle.remove()
    expected = cafo.modules["blocks"][0](crops).flatten(1)
    torch.testing.assert_close(seen[0], expected)


def test_closed_form_predictors_with_augmented_batches_solve_on_the_training_set():
    plain, data = frozen("cafo_rand", "method.hp.loss=mse", "method.hp.cache_dtype=float32")
    augmented, _ = build("method=cafo_rand", "arch=cnn", "method.hp.loss=mse", "method.hp.cache_dtype=float32")
    augmented.augmented_inputs = True
    augmented.start_phase(next(p for p in augmented.phases(2) if p.name == "predictors"), data.train_x, data.train_y, 10)
    assert augmented._train_store is None
    torch.testing.assert_close(augmented.predict(data.test_x), plain.predict(data.test_x))


def test_mf_greedy_with_augmented_batches_forwards_each_batch():
    """MF's greedy phases cache the frozen layers' output for the training set; augmented batches
    must go through those layers afresh instead."""
    mf, data = build("method=mf", "arch=mlp_2x256", "method.hp.schedule=greedy")
    mf.augmented_inputs = True
    mf.start_phase(mf.phases(2)[1], data.train_x, data.train_y, 10)
    assert mf._frozen_input is None
    idx = torch.arange(16)
    crops = data.train_x[idx].flip(3)  # stands for an augmented batch
    seen = []
    handle = mf.modules["layers"][1].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    mf.train_step(crops, data.train_y[idx], idx)
    handle.remove()
    torch.testing.assert_close(seen[0], mf.forward_through(crops, 1))


def test_the_loop_tells_a_method_its_batches_are_augmented():
    from benchmark import loop

    import dataclasses

    cafo, data = build("method=cafo_rand", "arch=cnn")
    # a copy: the loaded splits are shared with the process's other tests
    data = dataclasses.replace(data, augment="crop_flip", pad_value=torch.zeros(1, data.train_x.shape[1], 1, 1))
    cfg = loop.TrainConfig(epochs=1, batch_size=256, eval_batch_size=512, patience=0, min_delta=0.0, restore_best=False)
    from benchmark.meters import MeasureConfig, Meters

    out = loop.train(cafo, data, cfg, Meters(MeasureConfig(energy="none", emissions=False, flops=False), torch.device("cpu")), seed=0)
    assert cafo.augmented_inputs and cafo._train_store is None
    assert out["metrics"]["test_accuracy"] is not None
