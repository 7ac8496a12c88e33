"""`python -m benchmark.dashboard results/<experiment>` (`make dashboard`): optuna-dashboard on the
study the experiment was tuned in.

The study is wherever the experiment's records say it was tuned: the SQLite file beside the
results by default, the journal file when cells ran in parallel (`WORKERS=2`), or a database
server (its password from PGPASSWORD or ~/.pgpass: records never hold it). A folder with no study
is a one-line error, not a dashboard on a fresh empty database.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark import results
from benchmark.errors import UserError
from benchmark.storage import check_reachable, recorded_storage, redact


def study_storage(run_dir: Path) -> str:
    """The storage spec of `run_dir`'s study; a UserError when there is none to show."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a results folder", "pass an experiment's results folder, e.g. results/default")
    spec = recorded_storage(run_dir, results.read_records(run_dir / "runs.jsonl"))
    if spec is None:
        raise UserError(f"{run_dir} holds no Optuna study (no tuned records, no optuna.db)",
                        "tune the experiment first (make bench), or pass the folder of one that was tuned")
    if spec.startswith("journal:") and not Path(spec.removeprefix("journal:")).exists():
        raise UserError(f"the study's journal file {spec.removeprefix('journal:')} is not found",
                        "run from the folder the experiment was tuned from, or copy the journal back")
    return spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the experiment's results folder, e.g. results/default")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        spec = study_storage(Path(args.run_dir))
        storage = check_reachable(spec)
    except UserError as err:
        print(f"bpfree-bench dashboard: error: {err}", file=sys.stderr)
        sys.exit(2)
    from optuna_dashboard import run_server

    print(f"Optuna dashboard: http://{args.host}:{args.port}  (study storage {redact(spec)})", flush=True)
    run_server(storage, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
