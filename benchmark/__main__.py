"""Command line: `python -m benchmark ...` or `bpfree-bench ...` (a Hydra app).

    python -m benchmark method=bp arch=mlp dataset=mnist            one run
    python -m benchmark -m method=bp arch=mlp,cnn dataset=mnist     a grid (Hydra multirun)
    python -m benchmark experiment=smoke                             tune + finals of a named grid

Every job the command line would launch is composed and checked first (benchmark.config.preflight):
bad input stops here with one line, before anything trains. Hydra then launches the jobs; each task
picks up its checked job by its overrides, so a job is checked once per process (a launcher that
runs tasks in other processes, joblib or SLURM, checks them again there).
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from benchmark.config import CONFIG_DIR, Job, check, preflight
from benchmark.errors import UserError

CHECKED: dict[tuple[str, ...], Job] = {}  # preflight's jobs, by their sorted overrides


def fail(err: UserError) -> None:
    from benchmark.storage import redact

    print(redact(f"bpfree-bench: error: {err}"), file=sys.stderr)
    sys.exit(2)


def report_run(record: dict, cfg: DictConfig) -> None:
    from benchmark import results

    acc = record["metrics"].get("test_accuracy")
    print(
        f"{record['cell']} seed={record['seed']}: {record['status']}"
        + (f", test accuracy {acc:.4f}" if acc is not None else "")
        + (f" ({record['error']})" if record["error"] else "")
        + f" -> {results.runs_file(cfg.results_dir, cfg.experiment_name)}"
    )
    if record["status"] == "failed":
        sys.exit(1)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from benchmark import runner, tuning

    try:
        job = CHECKED.get(tuple(sorted(HydraConfig.get().overrides.task))) or check(cfg)
        if not job.supported:
            print(f"skipped {runner.cell_name(cfg)}: {cfg.method.name} does not run on {cfg.arch.kind} architectures")
        elif cfg.mode == "tune":
            tuning.tune_cell(job)
        else:
            report_run(runner.execute(job), cfg)
    except UserError as err:  # also one that only shows now, e.g. a download that failed
        fail(err)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:]
    if not any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help", "--shell-completion") or a.startswith("--cfg") for a in argv):
        try:
            CHECKED.update({tuple(sorted(job.overrides)): job for job in preflight(argv)})
        except UserError as err:
            fail(err)
    task()


if __name__ == "__main__":
    main()
