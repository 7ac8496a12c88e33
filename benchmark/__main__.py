"""Command line: `python -m benchmark ...` or `bpfree-bench ...` (a Hydra app).

    python -m benchmark method=bp arch=mlp dataset=mnist            one run
    python -m benchmark -m method=bp arch=mlp,cnn dataset=mnist     a grid (Hydra multirun)
    python -m benchmark experiment=smoke                             tune + finals of a named grid

Every job the command line would launch is composed and checked first (benchmark.config.preflight):
bad input stops here with one line, before anything trains. A single run (no -m, no sweeping
experiment) then runs that checked job at once: Hydra's app would only compose the same config a
second time and make an empty output folder. A grid goes to Hydra's launcher; each task picks up its
checked job by its overrides, so a job is checked once per process (a launcher that runs tasks in
other processes, joblib or SLURM, checks them again there).
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from benchmark.config import CONFIG_DIR, Job, check, plan
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


def run_job(job: Job) -> None:
    from benchmark import runner

    cfg = job.cfg
    if job.supported and job.measure.emissions:
        from benchmark.energy import warm_up_codecarbon

        warm_up_codecarbon(job.measure.country_iso_code)
    try:
        if not job.supported:
            print(f"skipped {runner.cell_name(cfg)}: {job.unsupported_because}")
        elif cfg.get("resume") and cfg.mode == "run" and (earlier := runner.finished_earlier(job)) is not None:
            print(f"kept {earlier['cell']} seed={earlier['seed']}: completed earlier ({earlier['finished_at']}), not re-run")
        elif cfg.mode == "tune":
            from benchmark import tuning  # Optuna: only a tuning job pays for its import

            tuning.tune_cell(job)
        else:
            report_run(runner.execute(job), cfg)
    except UserError as err:  # also one that only shows now, e.g. a download that failed
        fail(err)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        job = CHECKED.get(tuple(sorted(HydraConfig.get().overrides.task))) or check(cfg)
    except UserError as err:
        fail(err)
    run_job(job)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from benchmark.storage import password_to_environment

    sys.argv[1:] = argv = password_to_environment(sys.argv[1:])  # Hydra's app reads sys.argv
    if not any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help", "--shell-completion") or a.startswith("--cfg") for a in argv):
        try:
            jobs, multirun = plan(argv)
        except UserError as err:
            fail(err)
        if not multirun:
            [job] = jobs
            return run_job(job)
        CHECKED.update({tuple(sorted(job.overrides)): job for job in jobs})
    task()


if __name__ == "__main__":
    main()
