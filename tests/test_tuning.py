"""Tuning: pruning, budgets, finals on distinct seeds, resuming after kill -9, several workers."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest

from benchmark import results, tuning
from tests.conftest import REPO, compose

# A small, fast cell: digits on a 64-unit MLP, a few epochs per trial.
CELL = ["method=bp", "arch=mlp", "arch.widths=[64]", "dataset=digits", "measure.emissions=false",
        "train.batch_size=64", "train.patience=0", "mode=tune"]


def tune(tmp_path, *overrides):
    job = compose(*CELL, f"results_dir={tmp_path}", *overrides)
    return job, tuning.tune_cell(job)


def study_of(job):
    spec = tuning.storage_spec(job.cfg)
    return optuna.load_study(study_name="bp__mlp__digits", storage=tuning.open_storage(spec))


def states(study):
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_tiny_study_prunes_and_completes_with_distinct_final_seeds(tmp_path):
    # Trial 0 is enqueued with a learning rate that learns; every later trial samples one so small that
    # it stays near chance, so the median pruner must prune it after the warm-up epoch.
    job = compose(
        *CELL, f"results_dir={tmp_path}", "tuning.n_trials=4", "tuning.max_epochs=4", "tuning.n_seeds=3",
        "tuning.n_startup_trials=1", "tuning.n_warmup_steps=1", "tuning.enqueue_defaults=false",
        "method.search_space.lr.low=1e-8", "method.search_space.lr.high=1e-7", "~method.search_space.weight_decay",
    )
    study, _ = tuning.study_for(job)
    with pytest.warns(UserWarning, match="out of range"):
        study.enqueue_trial({"lr": 1e-2})
        finals = tuning.tune_cell(job)
    study = study_of(job)
    assert states(study).count("COMPLETE") >= 1
    assert states(study).count("PRUNED") >= 2
    assert len(study.trials) == 4
    assert [f["seed"] for f in finals] == [1, 2, 3]
    assert all(f["kind"] == "final" and f["metrics"]["test_accuracy"] is not None for f in finals)
    records = results.read_records(results.runs_file(tmp_path, "single"))
    trial_records = [r for r in records if r["kind"] == "trial"]
    assert len(trial_records) == 4
    assert all(r["metrics"]["test_accuracy"] is None for r in trial_records)  # tuning never sees the test set
    assert {r["run_id"] for r in trial_records} == {t.user_attrs["run_id"] for t in study.trials}
    assert all(r["budget"]["n_trials"] == 4 for r in records)
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert all(f["hp"]["lr"] == best.params["lr"] for f in finals)
    attrs = study.trials[0].user_attrs  # what the dashboard shows (energy is None: no meter for it here)
    assert attrs["time_s"] > 0 and attrs["flops"] > 0 and "energy_j" in attrs and attrs["run_status"] == "completed"


def test_rerunning_a_finished_cell_runs_nothing_again(tmp_path):
    args = ("tuning.n_trials=2", "tuning.max_epochs=2", "tuning.n_seeds=2")
    tune(tmp_path, *args)
    path = results.runs_file(tmp_path, "single")
    before = path.read_bytes()
    tune(tmp_path, *args)
    assert path.read_bytes() == before


def cli_tune(tmp_path, *overrides):
    return [sys.executable, "-m", "benchmark", *CELL, f"results_dir={tmp_path}", *overrides]


def counted(study):
    return [t for t in study.get_trials(deepcopy=False) if tuning.counts_against_budget(t)]


def check_consistent(tmp_path, job, n_trials, n_seeds):
    study = study_of(job)
    live = counted(study)
    assert len(live) == n_trials
    assert all(t.state.name != "RUNNING" for t in live)
    records = results.read_records(results.runs_file(tmp_path, "single"), strict=True)
    trials = [r for r in records if r["kind"] == "trial"]
    ids = [r["run_id"] for r in trials]
    assert len(ids) == len(set(ids))  # no run recorded twice
    assert {t.user_attrs["run_id"] for t in live} == set(ids)  # storage and results agree
    finals = [r for r in records if r["kind"] == "final"]
    assert sorted(r["seed"] for r in finals) == list(range(1, n_seeds + 1))


def test_killed_sweep_resumes_to_exactly_the_requested_counts(tmp_path):
    args = ("tuning.n_trials=5", "tuning.max_epochs=6", "tuning.n_seeds=2", "tuning.pruner=none")
    runs = results.runs_file(tmp_path, "single")
    for delay in (4.0, 6.0):  # kill -9 part-way, twice
        proc = subprocess.Popen(cli_tune(tmp_path, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        target = len(results.read_records(runs)) + 1
        while time.time() < deadline and len(results.read_records(runs)) < target and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(delay / 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(cli_tune(tmp_path, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    job = compose(*CELL, f"results_dir={tmp_path}", *args)
    check_consistent(tmp_path, job, 5, 2)


def two_workers_exactly_the_budget(tmp_path, storage: str):
    """Two worker processes tune one cell on `storage` at once; the budget holds exactly."""
    args = ("tuning.n_trials=6", "tuning.max_epochs=3", "tuning.n_seeds=2", f"tuning.storage={storage}")
    workers = [subprocess.Popen(cli_tune(tmp_path, *args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-800:] for o in outs]
    job = compose(*CELL, f"results_dir={tmp_path}", *args)
    check_consistent(tmp_path, job, 6, 2)
    return job


def test_two_workers_on_one_journal_file_run_exactly_the_budget(tmp_path):
    job = two_workers_exactly_the_budget(tmp_path, f"journal:{tmp_path / 'journal.log'}")
    study = study_of(job)
    assert len({t.user_attrs["worker_pid"] for t in study.trials}) == 2  # both really worked


def test_trial_orphaned_between_ask_and_labelling_is_recovered(tmp_path):
    """A worker killed right after study.ask(), before it labelled the trial with its identity,
    leaves an unlabelled RUNNING trial: the next run must fail it and re-run the slot, not wait."""
    args = ("tuning.n_trials=3", "tuning.max_epochs=2", "tuning.n_seeds=1")
    job = compose(*CELL, f"results_dir={tmp_path}", *args)
    study, _ = tuning.study_for(job)
    orphan = study.ask()
    done = subprocess.run(cli_tune(tmp_path, *args), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-1000:]
    study = study_of(job)
    assert study.trials[orphan.number].state.name == "FAIL"
    assert study.trials[orphan.number].user_attrs["reason"] == tuning.DEAD
    check_consistent(tmp_path, job, 3, 1)


def test_a_trial_labelled_halfway_is_not_taken_for_a_dead_workers():
    """On a database server a worker labels its new trial in separate writes; another worker that
    reads it in between must not fail it (that crashed the first worker's `tell` with
    UpdateFinishedTrialError in a two-worker PostgreSQL run). Only a complete label is judged."""
    import os
    import socket

    me = tuning.worker_identity()
    assert tuning.worker_alive({"worker_host": socket.gethostname()})  # the host is written last now,
    assert tuning.worker_alive({"run_id": "x", "worker_pid": os.getpid()})  # but never judge a partial label
    assert tuning.worker_alive(me)
    assert not tuning.worker_alive({**me, "worker_started": me["worker_started"] - 10})  # a recycled pid
