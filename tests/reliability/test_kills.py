"""A sweep killed with SIGKILL at random moments, 20 times, then finished: nothing lost, nothing twice."""
from __future__ import annotations

import random
import signal
import subprocess
import time

import pytest

from benchmark import results
from tests.conftest import REPO, compose
from tests.test_tuning import CELL, check_consistent, cli_tune

ARGS = ("tuning.n_trials=8", "tuning.max_epochs=4", "tuning.n_seeds=3", "tuning.pruner=none")
KILLS = 20


@pytest.mark.soak  # 145 s: tests/test_tuning.py kills and resumes a sweep once in the default suite
def test_twenty_random_kills_then_resume(tmp_path):
    rng = random.Random(1234)
    runs = results.runs_file(tmp_path, "single")
    finished_early = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(cli_tune(tmp_path, *ARGS), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Start-up (imports) takes about 3-5 s; kill anywhere from there to a few trials in: mid-trial,
        # between trials, during finals, or while a record is being appended.
        time.sleep(rng.uniform(3.0, 7.0))
        if proc.poll() is not None:
            finished_early += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results.read_records(runs, strict=True)  # every line parses after every kill
    done = subprocess.run(cli_tune(tmp_path, *ARGS), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    job = compose(*CELL, f"results_dir={tmp_path}", *ARGS)
    check_consistent(tmp_path, job, 8, 3)
    assert finished_early < KILLS, "the sweep finished before any kill: the test killed nothing"
