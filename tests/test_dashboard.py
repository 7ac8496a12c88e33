"""`make dashboard` opens the study an experiment was tuned in, wherever it lives (SQLite beside the
results, a journal file when cells ran in parallel, a server), and refuses a folder without one."""
from __future__ import annotations

import json

import optuna
import pytest

from benchmark import dashboard
from benchmark.storage import open_storage


def tuned_folder(tmp_path, spec: str | None):
    """A results folder with one tuned record naming `spec` (none: an untuned run), and a study
    with one trial in that storage."""
    folder = tmp_path / "results" / "exp"
    folder.mkdir(parents=True)
    trial = None if spec is None else {"study": "exp__bp", "number": 0, "storage": spec}
    (folder / "runs.jsonl").write_text(json.dumps({"experiment": "exp", "kind": "trial", "trial": trial}) + "\n")
    if spec is not None:
        study = optuna.create_study(study_name="exp__bp", storage=open_storage(spec), direction="maximize")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    return folder


def served_studies(monkeypatch, folder) -> list[str]:
    """Run the command with the server replaced by a stub: the names of the studies it would serve."""
    import optuna_dashboard

    seen = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, host, port: seen.update(storage=storage, host=host))
    dashboard.main([str(folder), "--port", "0"])
    assert seen["host"] == "127.0.0.1"  # this machine only, unless asked
    return [s.study_name for s in optuna.get_all_study_summaries(seen["storage"])]


def test_the_journal_of_a_parallel_experiment_is_served_not_an_empty_sqlite_file(tmp_path, monkeypatch):
    folder = tuned_folder(tmp_path, f"journal:{tmp_path / 'elsewhere' / 'optuna.journal'}")
    assert served_studies(monkeypatch, folder) == ["exp__bp"]
    assert not (folder / "optuna.db").exists()


def test_the_default_sqlite_study_beside_the_results_is_served(tmp_path, monkeypatch):
    folder = tmp_path / "results" / "exp"
    folder.mkdir(parents=True)
    spec = f"sqlite:///{folder / 'optuna.db'}"
    tuned_folder(tmp_path / "other", spec)  # the study only: records that predate the storage field
    (folder / "runs.jsonl").write_text(json.dumps({"experiment": "exp", "kind": "final"}) + "\n")
    assert served_studies(monkeypatch, folder) == ["exp__bp"]


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a results folder"),
    ("untuned", "holds no Optuna study"),
    ("journal gone", "journal file"),
])
def test_a_folder_without_a_study_is_one_line_and_starts_no_server(case, message, tmp_path, monkeypatch, capsys):
    import optuna_dashboard

    if case == "missing":
        folder = tmp_path / "nope"
    elif case == "untuned":
        folder = tuned_folder(tmp_path, None)
    else:
        journal = tmp_path / "j" / "optuna.journal"
        folder = tuned_folder(tmp_path, f"journal:{journal}")
        journal.unlink()
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda *a, **k: pytest.fail("a server started"))
    with pytest.raises(SystemExit) as stop:
        dashboard.main([str(folder)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
