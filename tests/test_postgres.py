"""Two tuning workers on one PostgreSQL study: exactly the budget, each trial once.

A real server (Debian's postgresql package; .ci/run installs it) is started on a temp data
directory and a loopback port, and stopped afterwards. Skipped, saying why, only where the server
binaries or the psycopg driver are not installed.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.test_tuning import two_workers_exactly_the_budget


def server_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pytest.importorskip("psycopg", reason="the psycopg driver (test extra) is not installed")
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries are not installed (Debian package postgresql)")
    # Outside pytest's private temp tree: the server's user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="bpfree-pg-"))
    data = base / "data"
    run_as = []
    if os.geteuid() == 0:  # the server refuses to run as root: use the package's postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        base.chmod(0o777)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "bench"], check=True, capture_output=True)
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(data.parent / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://bench@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tmp_path, postgres_url):
    two_workers_exactly_the_budget(tmp_path, postgres_url)
