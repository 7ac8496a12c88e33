"""Shared fixtures: configs composed exactly as the command line composes them, on small data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one worker per core (pytest-xdist): each worker's torch then
    # uses one thread, so workers do not oversubscribe the cores.
    import torch

    torch.set_num_threads(1)


def compose(*overrides: str):
    """A checked config (benchmark.config.Job), as `python -m benchmark <overrides>` builds it."""
    from benchmark import config

    return config.check(config.compose(list(overrides)))


@pytest.fixture
def job_factory(tmp_path):
    """compose() with results in a temp folder and CodeCarbon off unless asked for."""

    def make(*overrides: str):
        base = [f"results_dir={tmp_path / 'results'}", "measure.emissions=false"]
        return compose(*base, *overrides)

    return make


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout,
    )
