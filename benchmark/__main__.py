"""Command line: `python -m benchmark ...` or `bpfree-bench ...` (a Hydra app).

    python -m benchmark method=bp arch=mlp dataset=mnist            one run
    python -m benchmark -m method=bp arch=mlp,cnn dataset=mnist     a grid (Hydra multirun)
    python -m benchmark experiment=smoke                             tune + finals of a named grid

Every job the command line would launch is composed and checked first (benchmark.config.preflight):
bad input stops here with one line, before anything trains.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from benchmark.config import CONFIG_DIR, check, preflight
from benchmark.errors import UserError


def fail(err: UserError) -> None:
    print(f"bpfree-bench: error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> None:
    from benchmark import results, runner

    try:
        job = check(cfg)
    except UserError as err:
        fail(err)
    if not job.supported:
        print(f"skipped {runner.cell_name(cfg)}: {cfg.method.name} does not run on {cfg.arch.kind} architectures")
        return
    if cfg.mode == "tune":
        from benchmark import tuning

        tuning.tune_cell(job)
    else:
        record = runner.execute(job)
        m = record["metrics"]
        acc = m.get("test_accuracy")
        print(
            f"{record['cell']} seed={record['seed']}: {record['status']}"
            + (f", test accuracy {acc:.4f}" if acc is not None else "")
            + (f" ({record['error']})" if record["error"] else "")
            + f" -> {results.runs_file(cfg.results_dir, cfg.experiment_name)}"
        )
        if record["status"] == "failed":
            sys.exit(1)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:]
    if not any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help", "--shell-completion") or a.startswith("--cfg") for a in argv):
        try:
            preflight(argv)
        except UserError as err:
            fail(err)
    task()


if __name__ == "__main__":
    main()
