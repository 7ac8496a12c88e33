"""Harness core: the loop, early stopping, divergence, results, determinism."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from benchmark import loop, results, runner
from benchmark.meters import MeasureConfig, Meters
from benchmark.spec import Locality, Method


def test_bp_mlp_learns_digits_above_90_percent(job_factory):
    job = job_factory("method=bp", "arch=mlp", "dataset=digits", "train.epochs=30", "train.patience=0")
    record = runner.execute(job)
    assert record["status"] == "completed"
    assert record["metrics"]["test_accuracy"] > 0.90
    assert record["metrics"]["epochs_run"] == 30


@dataclass
class ScriptedHyper:
    pass


class Scripted(Method):
    """A method whose validation accuracy follows a script: one epoch = one step here."""

    name = "scripted"
    locality = Locality("global", "test stub")
    Hyper = ScriptedHyper

    def __init__(self, accuracies, losses=None, confidence=None):
        super().__init__({"kind": "mlp"}, (1,), 2, ScriptedHyper(), torch.device("cpu"))
        self.modules["counter"] = torch.nn.Linear(1, 1, bias=False)  # holds the epoch as state
        torch.nn.init.zeros_(self.modules["counter"].weight)
        self.accuracies, self.losses = accuracies, losses or {}
        self.confidence = confidence  # per epoch, the logits' scale: sets the validation loss apart from accuracy

    def epoch(self) -> int:
        return int(self.modules["counter"].weight.item())

    def train_step(self, x, y, idx):
        with torch.no_grad():
            self.modules["counter"].weight += 1
        return torch.tensor(self.losses.get(self.epoch(), 1.0))

    def predict(self, x):
        # The first `acc * n` samples are right (label 0), the rest wrong.
        acc = self.accuracies[min(self.epoch(), len(self.accuracies)) - 1]
        right = torch.arange(len(x)) < round(acc * len(x))
        scale = self.confidence[min(self.epoch(), len(self.confidence)) - 1] if self.confidence else 1.0
        return scale * torch.stack([right.float(), (~right).float()], dim=1)


def scripted_data(n=10):
    from benchmark.data import Splits

    x, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    return Splits(x, y, x.clone(), y.clone(), x.clone(), y.clone(), 2)


def train_scripted(method, **cfg):
    base = dict(epochs=10, batch_size=10, eval_batch_size=10, patience=2, min_delta=0.0, restore_best=True)
    meters = Meters(MeasureConfig(emissions=False, energy="none"), torch.device("cpu"))
    return loop.train(method, scripted_data(), loop.TrainConfig(**{**base, **cfg}), meters, seed=0)


def test_early_stopping_stops_after_patience_and_restores_best():
    method = Scripted([0.5, 0.8, 0.6, 0.7, 0.9, 0.9])
    out = train_scripted(method, patience=2)
    m = out["metrics"]
    assert m["stop_reason"] == "early_stopping"
    assert m["epochs_run"] == 4  # best at 2, then two epochs without improvement
    assert m["best_epoch"] == 2
    assert method.epoch() == 2  # the best state was restored
    assert m["val_accuracy"] == pytest.approx(0.8)


def test_stopping_on_the_validation_loss_counts_loss_not_accuracy_and_still_restores_best_accuracy():
    """Accuracy rises every epoch while the loss gets worse from epoch 3 (over-confident logits):
    stop_on=val_loss stops after two epochs without a lower loss and restores the most accurate
    state seen; stop_on=val_accuracy runs on."""
    script = dict(accuracies=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9], confidence=[1, 1, 4, 8, 8, 8])
    by_loss = Scripted(**script)
    m = train_scripted(by_loss, patience=2, epochs=6, stop_on="val_loss")["metrics"]
    losses = [h["val_loss"] for h in m["history"]]
    assert losses[2] > losses[1] and losses[3] > losses[1]  # the script does what it says
    assert (m["stop_reason"], m["epochs_run"], m["best_epoch"]) == ("early_stopping", 4, 4)
    assert by_loss.epoch() == 4 and m["val_accuracy"] == pytest.approx(0.7)
    m = train_scripted(Scripted(**script), patience=2, epochs=6)["metrics"]
    assert (m["stop_reason"], m["epochs_run"], m["best_epoch"]) == ("max_epochs", 6, 6)


def test_early_stopping_off_runs_every_epoch():
    out = train_scripted(Scripted([0.5, 0.4, 0.3]), patience=0, epochs=5)
    assert out["metrics"]["epochs_run"] == 5
    assert out["metrics"]["stop_reason"] == "max_epochs"


def test_a_run_logging_to_a_file_reports_its_epochs_at_most_once_a_minute(capsys):
    """Background reproductions run for hours with stdout in a file: each epoch that ends a
    minute or more after the last line prints one line; faster epochs print nothing."""
    now = [0.0]
    log = loop.EpochLog(total=5, desc="ff/mlp/mnist", clock=lambda: now[0])
    for seconds in (10, 70, 20, 20, 30):  # epoch lengths: lines after epochs 2 and 5
        now[0] += seconds
        log.update(1)
        log.set_postfix(val_acc="0.9")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["ff/mlp/mnist: epoch 2/5 val_acc=0.9", "ff/mlp/mnist: epoch 5/5 val_acc=0.9"]


def test_nan_loss_ends_run_as_diverged():
    out = train_scripted(Scripted([0.5] * 10, losses={3: float("nan")}), patience=0)
    assert out["status"] == "diverged"
    assert out["metrics"]["epochs_run"] == 3
    assert "nan" in out["error"]


def test_diverged_run_is_recorded_not_raised(job_factory, monkeypatch):
    from methods.bp import BP

    job = job_factory("method=bp", "dataset=digits", "train.epochs=3")
    real_step = BP.train_step
    monkeypatch.setattr(BP, "train_step", lambda self, x, y, idx: real_step(self, x, y, idx) * float("inf"))
    record = runner.execute(job)
    assert record["status"] == "diverged"
    saved = results.read_records(results.runs_file(job.cfg.results_dir, "single"))
    assert [r["status"] for r in saved] == ["diverged"]


def test_exception_in_training_is_recorded_as_failed(job_factory, monkeypatch):
    from methods.bp import BP

    def out_of_memory(self, x, y, idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr(BP, "train_step", out_of_memory)
    record = runner.execute(job_factory("method=bp", "dataset=digits", "train.epochs=2"))
    assert record["status"] == "failed"
    assert record["error"].startswith("out of memory")


def test_results_round_trip_through_load(job_factory):
    job = job_factory("method=bp", "dataset=digits", "train.epochs=2")
    first, second = runner.execute(job), runner.execute(job, seed=7)
    path = results.runs_file(job.cfg.results_dir, "single")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == [first["run_id"], second["run_id"]]
    frame = results.load(path)
    assert list(frame["run_id"]) == [first["run_id"], second["run_id"]]
    assert list(frame["seed"]) == [0, 7]
    assert frame["metrics.test_accuracy"].tolist() == [first["metrics"]["test_accuracy"], second["metrics"]["test_accuracy"]]
    assert frame["measurements.time_train.unit"].tolist() == ["s", "s"]
    assert set(frame["data.sha256"]) == {first["data"]["sha256"]}
    assert frame["data.canonical"].tolist() == [True, True]


def test_same_seed_gives_identical_metrics_and_other_seed_does_not(job_factory):
    job = job_factory("method=bp", "dataset=digits", "train.epochs=3", "arch=mlp_3x1000")
    a, b, c = runner.execute(job), runner.execute(job), runner.execute(job, seed=1)
    strip = lambda r: [(h["train_loss"], h["val_accuracy"], h["val_loss"]) for h in r["metrics"]["history"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert a["metrics"]["test_accuracy"] == b["metrics"]["test_accuracy"]
    assert strip(a) != strip(c)


def test_record_schema_has_every_documented_field(job_factory):
    record = runner.execute(job_factory("method=bp", "dataset=digits", "train.epochs=1"))
    for key in ("schema_version", "run_id", "kind", "status", "experiment", "cell", "method", "arch", "dataset",
                "seed", "config", "metrics", "measurements", "data", "environment", "started_at", "finished_at"):
        assert key in record, key
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "epochs_run", "stop_reason", "history"):
        assert key in record["metrics"], key
    assert record["environment"]["packages"]["torch"].startswith("2.14")
    assert record["data"]["n_train"] + record["data"]["n_val"] == 1500
    for name, fig in record["measurements"].items():
        assert {"value", "unit", "source", "estimated"} <= set(fig), name


def test_validation_split_is_disjoint_and_seeded():
    from benchmark.data import load_splits

    a = load_splits("digits", ".", False, 300, 0, torch.device("cpu"))
    b = load_splits("digits", ".", False, 300, 0, torch.device("cpu"))
    c = load_splits("digits", ".", False, 300, 1, torch.device("cpu"))
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    train_rows = {tuple(r.tolist()) for r in a.train_x.flatten(1)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in a.val_x.flatten(1))
    assert overlap < 5  # digits has a handful of exact duplicate images; a leak would give ~300
    assert a.train_x.flatten(1).mean().abs() < 1e-4  # normalised with the training split's stats
