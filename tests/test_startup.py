"""Start-up: a single run imports only what it uses (issue 18). The wall time itself is measured
by `make perf` (a timed test would be flaky on a shared machine); these check the causes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark import data as data_mod

ROOT = Path(__file__).resolve().parents[1]

# Heavy packages a one-epoch run on digits with emissions off has no use for, and what each costs
# at import on the 2-core machine (README: Speed).
NOT_FOR_A_SINGLE_RUN = ("sklearn", "scipy", "pandas", "matplotlib", "optuna", "codecarbon", "statsmodels",
                        "torch_geometric")


def test_digits_read_directly_equal_scikit_learn():
    from sklearn.datasets import load_digits

    raw = data_mod.load_digits(Path("/unused"), False)
    bunch = load_digits()
    expected = (bunch.images * 255.0 / 16.0).round().astype(np.uint8)[:, None]
    np.testing.assert_array_equal(np.concatenate([raw.train_images, raw.test_images]), expected)
    np.testing.assert_array_equal(np.concatenate([raw.train_labels, raw.test_labels]), bunch.target)
    assert len(raw.test_labels) == 297


def test_single_run_imports_only_what_it_uses(tmp_path):
    probe = tmp_path / "modules.json"
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(probe)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        "sys.argv = ['benchmark', 'method=bp', 'dataset=digits', 'train.epochs=1', 'measure.emissions=false',"
        f" 'results_dir={tmp_path}']\n"
        "runpy.run_module('benchmark', run_name='__main__', alter_sys=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "completed" in out.stdout
    loaded = {name.split(".")[0] for name in json.loads(probe.read_text())}
    assert not loaded & set(NOT_FOR_A_SINGLE_RUN), sorted(loaded & set(NOT_FOR_A_SINGLE_RUN))
    # a single run runs its checked job directly: no Hydra output folder is made
    assert not (tmp_path / "single" / "hydra").exists()
    assert (tmp_path / "single" / "runs.jsonl").exists()


def _count_full_composes(monkeypatch, argv) -> tuple[int, list]:
    """How many whole configs (the root `config`, every group) `config.plan(argv)` composes."""
    import hydra

    from benchmark import config

    calls = []
    real = hydra.compose

    def counting(config_name=None, overrides=(), **kwargs):
        calls.append(config_name)
        return real(config_name, overrides=overrides, **kwargs)

    monkeypatch.setattr(hydra, "compose", counting)
    jobs, _ = config.plan(argv)
    return calls.count("config"), jobs


def test_single_run_composes_its_config_once(monkeypatch, tmp_path):
    # The method's own arch (arch=native) is put in place by composing the arch group alone.
    full, jobs = _count_full_composes(monkeypatch, ["method=ff", "dataset=digits", f"results_dir={tmp_path}"])
    assert full == 1
    assert jobs[0].cfg.arch.kind == "mlp" and "hydra" not in jobs[0].cfg


def test_a_grid_composes_each_job_once_beside_its_own(monkeypatch, tmp_path):
    argv = ["-m", "method=bp", "arch=mlp,cnn", "dataset=digits", f"results_dir={tmp_path}"]
    full, jobs = _count_full_composes(monkeypatch, argv)
    assert [job.cfg.arch.name for job in jobs] == ["mlp", "cnn"]
    assert full == 1 + len(jobs)


def _dry_run_venv(tmp_path, *assignments):
    """The commands `make venv` would run for a venv that does not exist yet (make -n runs nothing)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "venv", f"VENV={tmp_path / 'venv'}", *assignments],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "pip install" in line and "torch==" in line]


def test_make_venv_installs_torch_from_the_index_it_is_given(tmp_path):
    """A laptop without an NVIDIA GPU installs PyTorch's CPU-only build of the pinned versions."""
    index = "https://download.pytorch.org/whl/cpu"
    (line,) = _dry_run_venv(tmp_path, f"TORCH_INDEX={index}")
    assert "torch==2.14.1" in line and "torchvision==0.29.1" in line
    assert line.split().count("--index-url") == 1 and line.split()[-1] == index
    (default,) = _dry_run_venv(tmp_path)
    assert "--index-url" not in default
