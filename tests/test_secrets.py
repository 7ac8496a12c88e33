"""Credentials stay out of results: a storage URL's password never reaches a record, a report,
a printed line or an error, on a real PostgreSQL server that demands it (the cluster user's case).

The server is Debian's postgresql package (.ci/run installs it), started with password
authentication on a temp data directory; skipped, saying why, only where it is not installed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from benchmark.storage import redact
from tests.conftest import run_cli
from tests.test_postgres import server_binary


def test_redact_drops_only_the_password():
    url = "postgresql+psycopg://alice:s3cr%40t@db.example:5432/bench"
    assert redact(url) == "postgresql+psycopg://alice@db.example:5432/bench"
    assert redact(f"error: tuning.storage '{url}' is unreachable") == (
        "error: tuning.storage 'postgresql+psycopg://alice@db.example:5432/bench' is unreachable")
    for kept in ("sqlite:////tmp/x/optuna.db", "journal:/tmp/j.log", "postgresql://alice@host/db", "mysql://u@h:1/d"):
        assert redact(kept) == kept


@pytest.fixture(scope="module")
def server_with_password():
    pytest.importorskip("psycopg", reason="the psycopg driver (test extra) is not installed")
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries are not installed (Debian package postgresql)")
    password = "pw-" + secrets.token_hex(8)
    base = Path(tempfile.mkdtemp(prefix="bpfree-pgpw-"))
    data, pwfile = base / "data", base / "pwfile"
    pwfile.write_text(password + "\n")
    run_as = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        base.chmod(0o777)
        pwfile.chmod(0o644)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, initdb, "-D", str(data), "-A", "scram-sha-256", "-U", "alice", f"--pwfile={pwfile}"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield port, password
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def every_file_text(folder: Path) -> dict[Path, str]:
    return {p: p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()}


def test_no_output_of_a_tuned_run_holds_the_storage_password(tmp_path, server_with_password):
    port, password = server_with_password
    url = f"postgresql+psycopg://alice:{password}@127.0.0.1:{port}/postgres"
    results_dir, report_dir = tmp_path / "results", tmp_path / "reports"
    tune = run_cli("method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "mode=tune", "measure.emissions=false",
                   "tuning.n_trials=1", "tuning.max_epochs=1", "tuning.n_seeds=1", f"tuning.storage={url}",
                   f"results_dir={results_dir}", "experiment_name=pw")
    assert tune.returncode == 0, tune.stderr[-2000:]
    # A multirun: Hydra writes its overrides to multirun.yaml in the results folder.
    grid = run_cli("-m", "method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", "mode=tune", "measure.emissions=false",
                   "tuning.n_trials=1", "tuning.max_epochs=1", "tuning.n_seeds=1", f"tuning.storage={url}",
                   f"results_dir={results_dir}", "experiment_name=pw_grid")
    assert grid.returncode == 0, grid.stderr[-2000:]
    assert list((results_dir / "pw_grid").glob("hydra/multirun-*/multirun.yaml"))
    # The report reconnects to the study without the password: libpq takes it from PGPASSWORD.
    import sys

    report = subprocess.run([sys.executable, "-m", "benchmark.report", str(results_dir / "pw"), "--out", str(report_dir), "--no-pdf"],
                            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})
    assert report.returncode == 0, report.stderr[-2000:]
    files = {**every_file_text(results_dir), **every_file_text(report_dir)}
    assert any(p.name == "runs.jsonl" for p in files) and any(p.name == "index.html" for p in files)
    leaks = [str(p) for p, text in files.items() if password in text]
    assert not leaks, f"the password is written in {leaks}"
    for stream in (tune.stdout, tune.stderr, grid.stdout, grid.stderr, report.stdout, report.stderr):
        assert password not in stream
    page = (report_dir / "index.html").read_text()
    assert f"alice@127.0.0.1:{port}" in page  # the storage is still named, only without its password
    assert "study not readable" not in page  # and the report read the study through PGPASSWORD
    # The dashboard opens the same study through PGPASSWORD (its server stubbed: no port is bound).
    import optuna
    import optuna_dashboard

    from benchmark import dashboard

    served = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PGPASSWORD", password)
        patch.setattr(optuna_dashboard, "run_server", lambda storage, host, port: served.update(storage=storage))
        dashboard.main([str(results_dir / "pw")])
        assert [s.study_name for s in optuna.get_all_study_summaries(served["storage"])]
    # A server that is down: the one-line error names the storage without its password.
    down_url = f"postgresql+psycopg://alice:{password}@127.0.0.1:1/postgres"
    down = run_cli("method=bp", "dataset=digits", "mode=tune", f"tuning.storage={down_url}",
                   f"results_dir={tmp_path / 'down'}")
    assert down.returncode == 2 and "unreachable" in down.stderr
    assert password not in down.stderr and password not in down.stdout
