"""`make mutate`'s defects still apply: each one's line occurs exactly once in its file, and the
file still compiles with the defect in. A refactor that moves a line would otherwise leave its
defect "STALE" and silently untested (three had gone stale before this check: dfa_transport,
bp_predict_argmin, split_test_on_val; four more when their lines were rewritten)."""
from __future__ import annotations

import pytest

from tests.mutate import DEFECTS, REPO, suite


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.name for d in DEFECTS])
def test_each_defect_applies_to_exactly_one_line_and_compiles(defect):
    source = (REPO / defect.path).read_text()
    assert source.count(defect.old) == 1, f"{defect.name}: its line occurs {source.count(defect.old)} times in {defect.path}"
    assert defect.new != defect.old
    mutated = source.replace(defect.old, defect.new)
    compile(mutated, defect.path, "exec")


def test_defect_names_are_unique():
    names = [d.name for d in DEFECTS]
    assert len(names) == len(set(names))


def test_the_mutation_run_leaves_this_check_out():
    """Run against a defect, this file would fail on every one of them (the line is gone), and be
    named as the test that caught it."""
    assert "tests/test_mutate_list.py" not in suite(REPO)
    assert "tests/test_reproduction.py" in suite(REPO)
