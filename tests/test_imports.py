"""Imports run one way: command line -> tuning -> runner -> config -> spec, and the harness reaches
methods only through the registry. The contracts are import-linter's, in pyproject.toml."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: install the test extra (pip install -e '.[test]')")
    return subprocess.run([str(LINT)], cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_import_contracts_are_kept():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def copy_project(tmp_path: Path) -> Path:
    for name in ("benchmark", "methods"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, planted", [
    ("benchmark/config.py", "from benchmark import tuning  # a circle back up the layers\n"),
    ("benchmark/loop.py", "import methods.bp  # the harness importing a method by name\n"),
    ("methods/bp.py", "from benchmark import runner  # a method reaching into the harness\n"),
])
def test_a_new_circle_breaks_a_contract(tmp_path, module, planted):
    root = copy_project(tmp_path)
    path = root / module
    text = path.read_text()
    cut = text.index("\nfrom benchmark")  # after the module's docstring and __future__ import
    path.write_text(text[:cut + 1] + planted + text[cut + 1:])
    out = lint(root)
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout[-2000:]
