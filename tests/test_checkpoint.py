"""A run stopped mid-way and run again goes on from its checkpoint as if it had never stopped
(benchmark/checkpoint.py): for every method, the resumed run's epochs, its test accuracy and its
FLOPs are those of a run that was never stopped."""
from __future__ import annotations

import dataclasses

import pytest

from benchmark import runner
from benchmark import spec as methods
from benchmark.config import build_method
from tests.test_methods import learning_check, on_dataset

EPOCHS, STOP_AFTER = 3, 2
SUBSET = 384  # images per split: the property holds at any size, and every method runs three times here


@pytest.fixture
def small_images(monkeypatch):
    """Digits cut to SUBSET images per split (graphs as they are: a whole graph per step)."""
    load = runner.load_data

    def load_small(job):
        data = load(job)
        if data.graph is not None:
            return data
        cut = {k: getattr(data, k)[:SUBSET] for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return dataclasses.replace(data, **cut)

    monkeypatch.setattr(runner, "load_data", load_small)


def budget_with_a_checkpoint(job_factory, name: str) -> tuple[list[str], int]:
    """Overrides giving `name` an epoch that ends inside a phase (where checkpoints are taken), and
    the last such epoch: a layer-by-layer method then resumes past its finished phases."""
    dataset = learning_check(name).dataset
    base = [f"method={name}", *on_dataset(dataset), "train.patience=0", "measure.energy=none"]
    if dataset == "digits":
        base.append("train.batch_size=64")  # six steps an epoch (a graph takes one, whole)
    for epochs in range(EPOCHS, 4 * EPOCHS):
        job = job_factory(*base, f"train.epochs={epochs}")
        phases = build_method(job, runner.load_data(job), job.hp).phases(epochs)
        ends, mid = 0, []
        for phase in phases:
            mid += [ends + k for k in range(1, phase.epochs)]
            ends += phase.epochs
        if mid:
            return [*base, f"train.epochs={epochs}"], mid[-1]
    raise AssertionError(f"{name}: no phase longer than one epoch")


class Killed(BaseException):
    """Stands for the process being killed: not an Exception, so nothing records a failed run."""


def kill_after(epoch: int):
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:
            raise Killed

    return on_epoch


def per_epoch(record: dict) -> list[tuple]:
    return [(h["epoch"], h["phase"], h["train_loss"], h["val_accuracy"], h["val_loss"]) for h in record["metrics"]["history"]]


@pytest.mark.parametrize("name", methods.names())
def test_a_run_killed_and_run_again_goes_on_as_if_never_stopped(name, job_factory, small_images):
    budget, stop_after = budget_with_a_checkpoint(job_factory, name)
    whole = runner.execute(job_factory(*budget, "experiment_name=whole"))

    job = job_factory(*budget, "experiment_name=cut", "train.checkpoint_minutes=1e-9")  # at every epoch's end
    saver = runner.checkpointer(job, job.cfg.seed, job.hp)
    with pytest.raises(Killed):
        runner.execute(job, on_epoch=kill_after(stop_after))
    assert saver.path.exists()
    resumed = runner.execute(job)

    assert resumed["status"] == whole["status"] == "completed", resumed["error"]
    assert resumed["metrics"]["resumed_at_epochs"] == [stop_after]
    assert per_epoch(resumed) == per_epoch(whole)
    assert resumed["metrics"]["test_accuracy"] == whole["metrics"]["test_accuracy"]
    assert resumed["metrics"]["best_epoch"] == whole["metrics"]["best_epoch"]
    flops = [r["measurements"]["flops_train"]["value"] for r in (whole, resumed)]
    assert flops[1] == pytest.approx(flops[0], rel=1e-6)
    assert "resumed from checkpoints" in resumed["measurements"]["time_total"]["note"]
    assert not saver.path.exists()  # deleted once the record is written


def test_a_checkpoint_of_other_settings_is_not_picked_up(job_factory):
    budget = ["method=bp", "dataset=digits", f"train.epochs={EPOCHS}", "train.patience=0", "train.checkpoint_minutes=1e-9"]
    job = job_factory(*budget)
    with pytest.raises(Killed):
        runner.execute(job, on_epoch=kill_after(STOP_AFTER))
    other = job_factory(*budget, "method.hp.lr=0.0123")
    assert runner.checkpointer(other, other.cfg.seed, other.hp).path != runner.checkpointer(job, job.cfg.seed, job.hp).path
    record = runner.execute(other)
    assert "resumed_at_epochs" not in record["metrics"]
    assert runner.checkpointer(job, job.cfg.seed, job.hp).path.exists()  # the other run's is left alone


def test_checkpoints_are_off_by_default_and_never_in_tuning_trials(job_factory):
    job = job_factory("method=bp", "dataset=digits", "train.epochs=2")
    record = runner.execute(job)
    assert job.train.checkpoint_minutes == 0
    assert not (runner.checkpointer(job, job.cfg.seed, job.hp).path.parent).exists()
    trial = job_factory("method=bp", "dataset=digits", "train.epochs=3", "train.checkpoint_minutes=1e-9")
    with pytest.raises(Killed):
        runner.execute(trial, kind="trial", on_epoch=kill_after(2), evaluate_test=False)
    assert not runner.checkpointer(trial, trial.cfg.seed, trial.hp).path.exists()
    assert record["status"] == "completed"
