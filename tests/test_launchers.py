"""Grids across processes and clusters run the same code as here (issue 18, item 5): Hydra's joblib
launcher (local processes, the cores shared out) and the SLURM launcher's submitit code path through
submitit's local executor."""
from __future__ import annotations

import os

from benchmark import results
from tests.conftest import run_cli

GRID = ("-m", "method=bp,mf", "arch=mlp", "arch.widths=[32]", "dataset=digits", "train.epochs=1",
        "measure.emissions=false")


def test_submitit_local_runs_every_cell_of_a_grid(tmp_path):
    out = run_cli(*GRID, f"results_dir={tmp_path}", "hydra/launcher=submitit_local", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    records = results.read_records(tmp_path / "single" / "runs.jsonl")
    assert sorted(r["method"] for r in records) == ["bp", "mf"]
    assert all(r["status"] == "completed" for r in records)
    # each cell ran in a process of its own, submitted through submitit
    assert len(list(tmp_path.glob("single/hydra/multirun-*/.submitit/*/*_result.pkl"))) == 2


def test_local_processes_share_the_cores_between_workers(tmp_path):
    out = run_cli(*GRID, f"results_dir={tmp_path}", "hydra/launcher=local_processes",
                  f"tuning.storage=journal:{tmp_path / 'optuna.journal'}", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    records = results.read_records(tmp_path / "single" / "runs.jsonl")
    assert sorted(r["method"] for r in records) == ["bp", "mf"]
    # two workers (configs/hydra/launcher/local_processes.yaml): each gets half of the cores as torch threads
    assert {r["environment"]["cpu_count"] for r in records} == {max(1, (os.cpu_count() or 1) // 2)}
