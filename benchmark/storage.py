"""Where an experiment's Optuna study lives, and the file locks that make its budget exact.

Owns: the storage spec of a config (`tuning.storage`: null for a SQLite file beside the results,
`journal:<file>`, or any SQLAlchemy URL such as a PostgreSQL server), opening it, checking it is
reachable before anything trains, the claim/finals locks used with file-based storages, and
`redact`, which takes the password out of every URL the harness writes or prints.

Credentials: records and reports are meant to be shared and committed, so a password in a storage
URL is never written (records, study attributes, reports, printed lines, errors: `redact`). Give
it outside the command line where you can: libpq reads `PGPASSWORD` or `~/.pgpass` when the URL
has none (`tuning.storage=postgresql+psycopg://alice@host/bench`), and an environment
interpolation (`tuning.storage='postgresql+psycopg://alice:${oc.env:BENCH_DB_PASSWORD}@host/bench'`)
keeps it out of shell history. Either way the report reconnects to the study with PGPASSWORD or
~/.pgpass, since the URL it finds in the records has no password.
"""
from __future__ import annotations

import contextlib
import fcntl
import random
import re
import time
import warnings
from pathlib import Path

from benchmark.errors import UserError


# scheme://user:password@  ->  scheme://user@   (a password with '@' or '/' is percent-encoded in a URL)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):[^@/\s'\"]*@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it removed; the user, host and database stay."""
    return _URL_PASSWORD.sub(r"\g<head>@", text)


def password_to_environment(argv: list[str]) -> list[str]:
    """A PostgreSQL storage override's password moved into PGPASSWORD (libpq, and so psycopg and
    every process this one starts, reads it from there), and the override without it. Hydra writes
    a multirun's overrides to multirun.yaml in the results folder; with this, a password given on
    the command line never reaches that file or any other."""
    import os
    from urllib.parse import unquote, urlsplit

    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "tuning.storage" and value.startswith("postgresql"):
            password = urlsplit(value).password
            if password is not None:
                os.environ["PGPASSWORD"] = unquote(password)
                arg = f"{key}={redact(value)}"
        out.append(arg)
    return out


def experiment_dir(cfg) -> Path:
    return Path(cfg.results_dir) / cfg.experiment_name


def storage_spec(cfg) -> str:
    spec = cfg.tuning.storage
    if spec in (None, ""):
        return f"sqlite:///{(experiment_dir(cfg) / 'optuna.db').resolve()}"
    return str(spec)


def recorded_storage(run_dir: Path, records: list[dict]) -> str | None:
    """The storage spec of the study an experiment's records were tuned in (its SQLite file
    beside them when the records name none), or None when it had no study. A server URL comes
    back without its password, as the records hold it."""
    specs = {(r.get("trial") or {}).get("storage") for r in records} - {None}
    if specs:
        return sorted(specs)[0]
    db = run_dir / "optuna.db"
    return f"sqlite:///{db.resolve()}" if db.exists() else None


def open_storage(spec: str):
    """An Optuna storage from a spec: sqlite:///file (default), journal:<file>, or any SQLAlchemy URL."""
    import optuna

    if spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if spec.startswith("sqlite"):
        # Several local processes on one SQLite file wait for the lock instead of failing.
        return optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 60}})
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(spec, heartbeat_interval=30, grace_period=120)
        except Exception:  # noqa: BLE001 - two workers creating the schema at once collide: retry
            if attempt == 2:
                raise
            time.sleep(0.5 + random.random())


def check_reachable(spec: str):
    """Open the storage once before anything trains (or a dashboard starts), and return it; a
    one-line UserError if it cannot be."""
    try:
        return open_storage(spec)
    except Exception as err:  # noqa: BLE001 - a driver's many error types all mean the same here
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(redact(f"tuning.storage {spec!r} is unreachable ({first})"), "start the database or fix the URL") from None


def claim_lock_path(spec: str) -> Path | None:
    """A lock file beside file-based storages (SQLite, journal): claiming a budget slot is atomic."""
    if spec.startswith("journal:"):
        return Path(spec.removeprefix("journal:") + ".claim.lock")
    if spec.startswith("sqlite:///"):
        return Path(spec.removeprefix("sqlite:///") + ".claim.lock")
    return None


@contextlib.contextmanager
def file_lock(path: Path | None):
    """An exclusive lock on `path` (nothing when None), released by the kernel if this process dies."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
