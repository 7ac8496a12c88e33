"""`python -m benchmark.perf --only startup` (issue 18's single-run start-up goal, < 3 s and
< 500 MB): each figure is one fresh process's own wall time and peak RSS, and the rows say which
torch build each interpreter imports."""
from __future__ import annotations

import sys

import pytest

from benchmark import perf

PY = sys.executable


def test_a_child_peak_is_its_own_not_the_parents_high_water_mark():
    # This test process has torch imported (hundreds of MB). A process spawned straight from it
    # would carry that high-water mark into its own count; started through the launcher, an empty
    # interpreter reads tens of MB and one holding 200 MiB reads at least that.
    _, empty = perf.child_cost([PY, "-c", "pass"])
    _, holding = perf.child_cost([PY, "-c", "block = b'x' * (200 * 2**20)"])
    assert empty < 100, empty
    assert holding >= 200 and holding - empty >= 190, (empty, holding)


def test_a_child_wall_time_counts_its_whole_life():
    wall, _ = perf.child_cost([PY, "-c", "import time; time.sleep(0.4)"])
    assert 0.4 <= wall < 5


def test_a_failed_child_is_an_error_naming_its_output_not_a_figure():
    with pytest.raises(RuntimeError, match="exited 3: no such settings"):
        perf.child_cost([PY, "-c", "import sys; print('no such settings', file=sys.stderr); sys.exit(3)"])


def test_the_section_interleaves_interpreters_and_labels_rows_by_torch_build(monkeypatch):
    calls = []

    def fake_cost(command, cwd=perf.REPO_ROOT):
        calls.append(command)
        python, kind = command[0], "run" if "benchmark" in command else "floor"
        base = {"/py/cuda": 4.0, "/py/cpu": 2.0}[python] + (1.0 if kind == "run" else 0.0)
        return base + 0.1 * len(calls), 100 * base

    monkeypatch.setattr(perf, "child_cost", fake_cost)
    monkeypatch.setattr(perf, "torch_build", lambda python: {"/py/cuda": "2.14.1+cu130", "/py/cpu": "2.14.1+cpu"}[python])
    perf.ROWS.clear()
    perf.section_startup(3, ["/py/cuda", "/py/cpu"])

    # Each round runs every interpreter's floor and then its run, so a quiet spell favours none.
    assert [(c[0], "run" if "benchmark" in c else "floor") for c in calls[:4]] == [
        ("/py/cuda", "floor"), ("/py/cuda", "run"), ("/py/cpu", "floor"), ("/py/cpu", "run")]
    runs = [c for c in calls if "benchmark" in c]
    assert all(c[1:6] == list(perf.STARTUP_RUN) for c in runs)
    results_dirs = [c[-1] for c in runs]
    assert all(d.startswith("results_dir=") for d in results_dirs) and len(set(results_dirs)) == len(runs)

    rows = {r["item"]: r for r in perf.ROWS}
    assert len(rows) == 8
    cpu_run_wall = rows["2.14.1+cpu: single run (bp, digits, 1 epoch), wall"]
    assert cpu_run_wall["unit"] == "s" and "goal < 3 s" in cpu_run_wall["note"]
    assert cpu_run_wall["value"] == pytest.approx(3.0 + 0.1 * 8)  # the median of rounds 1-3 (calls 4, 8, 12)
    cuda_rss = rows["2.14.1+cu130: single run (bp, digits, 1 epoch), peak RSS"]
    assert cuda_rss["unit"] == "MiB" and cuda_rss["value"] == 500 and "goal < 500 MB" in cuda_rss["note"]
    assert rows["2.14.1+cpu: import torch + one Adam step, peak RSS"]["value"] == 200


def test_an_interpreter_that_is_not_executable_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "perf.csv"
    with pytest.raises(SystemExit) as stop:
        perf.main(["--only", "startup", "--python", str(tmp_path / "missing-python"), "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--python" in err and "not an executable file" in err and "Traceback" not in err
    assert not out.exists()
