"""Faults inside trials, concurrent writers, a full disk, bad input, exposure."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import optuna
import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark import config, report, results, tuning
from benchmark.errors import UserError
from tests.conftest import REPO, compose
from tests.test_tuning import CELL


def test_nan_oom_and_exceptions_fail_their_trial_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from methods.bp import BP

    real_step = BP.train_step
    faults = {1: torch.OutOfMemoryError("CUDA out of memory (injected)"), 2: MemoryError("injected"),
              3: RuntimeError("a bug in a method (injected)")}
    counter = {"trial": -1}

    def faulty_step(self, x, y, idx):
        number = counter["trial"]
        if number in faults:
            raise faults[number]
        loss = real_step(self, x, y, idx)
        return loss * float("nan") if number == 4 else loss

    monkeypatch.setattr(BP, "train_step", faulty_step)
    real_run_trial = tuning.run_trial

    def counting_run_trial(job, study, trial, spec):
        counter["trial"] = trial.number
        return real_run_trial(job, study, trial, spec)

    monkeypatch.setattr(tuning, "run_trial", counting_run_trial)
    job = compose(*CELL, f"results_dir={tmp_path}", "tuning.n_trials=6", "tuning.max_epochs=2", "tuning.n_seeds=1",
                  "tuning.pruner=none")
    counter["trial"] = -1
    finals = tuning.tune_cell(job)
    assert len(finals) == 1 and finals[0]["status"] == "completed"
    study = optuna.load_study(study_name="bp__mlp__digits", storage=tuning.open_storage(tuning.storage_spec(job.cfg)))
    by_number = {t.number: t for t in study.trials}
    assert len(study.trials) == 6
    assert by_number[1].user_attrs["reason"].startswith("out of memory")
    assert by_number[2].user_attrs["reason"].startswith("out of memory: MemoryError")
    assert "a bug in a method" in by_number[3].user_attrs["reason"]
    assert by_number[4].user_attrs["run_status"] == "diverged"
    assert {by_number[n].state.name for n in (1, 2, 3, 4)} == {"FAIL"}
    assert by_number[0].state.name == "COMPLETE" and by_number[5].state.name == "COMPLETE"
    out = report.build(tmp_path / "single", tmp_path / "report", pdf=False)
    failures = (out / "failures.csv").read_text()
    assert failures.count("\n") == 1 + 4  # header + four failed or diverged trials
    assert "injected" in failures and "diverged" in failures


def append_many(path, worker, n):
    for i in range(n):
        results.append(path, {"schema_version": 1, "run_id": f"{worker}-{i}", "status": "completed", "pad": "x" * 60000})


def test_two_writers_never_interleave_or_lose_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    procs = [multiprocessing.Process(target=append_many, args=(path, w, 150)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    records = results.read_records(path, strict=True)
    assert sorted(r["run_id"] for r in records) == sorted(f"{w}-{i}" for w in range(2) for i in range(150))


def test_disk_full_mid_write_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "runs.jsonl"
    results.append(path, {"schema_version": 1, "run_id": "kept", "status": "completed"})
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, data[: len(data) // 2])  # the disk filled half-way through the line

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(UserError, match="cannot write results"):
        results.append(path, {"schema_version": 1, "run_id": "lost", "status": "completed", "pad": "y" * 1000})
    monkeypatch.setattr(os, "write", real_write)
    assert [r["run_id"] for r in results.read_records(path, strict=True)] == ["kept"]


def test_disk_full_error_from_the_os_is_one_clear_line(tmp_path, monkeypatch):
    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(UserError) as info:
        results.append(tmp_path / "runs.jsonl", {"schema_version": 1, "run_id": "x", "status": "completed"})
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_line_in_results_is_named_before_training(tmp_path):
    path = results.runs_file(tmp_path, "single")
    results.append(path, {"schema_version": 1, "run_id": "a", "status": "completed"})
    with open(path, "ab") as f:
        f.write(b'{"run_id": "torn", "stat\n')
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"runs\.jsonl:2 is not a JSON record"):
        config.preflight(["dataset=digits", f"results_dir={tmp_path}"])
    assert path.read_bytes() == before  # nothing already recorded is touched


def test_unreachable_storage_url_is_one_line_before_training(tmp_path):
    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://user:pw@127.0.0.1:{port}/nothing"
    with pytest.raises(UserError) as info:
        config.preflight([*CELL, f"results_dir={tmp_path}", f"tuning.storage={url}"])
    assert "tuning.storage" in str(info.value) and "unreachable" in str(info.value)
    assert "\n" not in str(info.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["train.batch_size", "train.epochs", "train.patience", "method.hp.lr", "train.min_delta",
                         "dataset.val_size", "seed", "tuning.n_trials", "method.hp.weight_decay"]),
    value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.text(alphabet="abcxyz-_.01", min_size=1, max_size=6), st.booleans()),
)
def test_any_override_value_is_accepted_or_refused_in_one_line(tmp_path, key, value):
    text = json.dumps(value) if not isinstance(value, str) else value
    text = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(text, text)
    try:
        config.preflight([*CELL, f"results_dir={tmp_path}", f"{key}={text}"])
    except UserError as err:
        assert "\n" not in str(err) and ";" in str(err)
    # Anything else (a traceback from deep inside) fails the test.


def test_dashboard_binds_to_loopback_only(tmp_path):
    """`make dashboard`'s own command, run on a tuned folder, listens on 127.0.0.1 and nowhere else."""
    folder = tmp_path / "x"
    folder.mkdir()
    dry = subprocess.run(["make", "-n", "-s", "dashboard", f"RESULTS={tmp_path}", "EXPERIMENT=x"], cwd=REPO,
                         capture_output=True, text=True)
    command = next(line for line in dry.stdout.splitlines() if "benchmark.dashboard" in line).split()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name="probe")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command[command.index("--port") + 1] = str(port)
    proc = subprocess.Popen([sys.executable, *command[1:]], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening = []
        for _ in range(300):  # up to 60 s: its start-up (imports) takes 20 s or more on busy cores
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="tcp") if c.status == "LISTEN"]
            if listening or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the dashboard exited"
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
