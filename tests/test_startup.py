"""Start-up: a single run imports only what it uses (issue 18). The wall time itself is measured
by `make perf` (a timed test would be flaky on a shared machine); these check the causes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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
