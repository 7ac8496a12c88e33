"""Adding a method is one module plus one YAML: dropped into a copy of the project with no other
edit, a new method (a copy of bp.py registered under another name) is covered by the audit, the
learning test, the config tests and the smoke grid, and passes them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import graph_root

ROOT = Path(__file__).resolve().parent.parent


def project_with_new_method(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for name in ("benchmark", "methods", "configs", "tests"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    module = (ROOT / "methods" / "bp.py").read_text().replace('name = "bp"', 'name = "bp_twin"')
    assert 'name = "bp_twin"' in module
    (root / "methods" / "bp_twin.py").write_text(module)
    yaml = (ROOT / "configs" / "method" / "bp.yaml").read_text().replace("name: bp\n", "name: bp_twin\n")
    (root / "configs" / "method" / "bp_twin.yaml").write_text(yaml)
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    # The copy has no ../shared beside it: it reads the graphs (smoke_graph's preflight) from ours.
    env = {**os.environ, "PYTHONPATH": str(root), "BPFREE_CONFIGS": str(root / "configs"),
           "BPFREE_DATA": str(graph_root())}
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True)


def test_a_new_method_module_and_yaml_are_all_it_takes(tmp_path):
    root = project_with_new_method(tmp_path)
    # The registry, the smoke grid (method=glob(*)) and the tests' parametrisation all see it.
    grid = run(root, "-c", "from benchmark import config, spec; print(spec.names());"
                           "print(sorted({o for j in config.expand(['experiment=smoke']) for o in j if o.startswith('method=')}))")
    assert grid.returncode == 0, grid.stderr[-2000:]
    assert "'bp_twin'" in grid.stdout and "'method=bp_twin'" in grid.stdout
    # The audit, the learning test and the config tests cover it, and it passes them.
    tests = run(root, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "bp_twin or smoke_benchmark_covers",
                "tests/test_audit.py", "tests/test_methods.py", "tests/test_configs.py")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "3 passed" in tests.stdout, tests.stdout[-1000:]
