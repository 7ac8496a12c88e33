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
