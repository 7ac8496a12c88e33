"""One run, from a checked config to a record in runs.jsonl.

`execute` is what a single `python -m benchmark ...` run, every Optuna trial and every final
re-run call: load the data (once per process), seed, build the method, train through the one
loop with the meters on, and append the record. An exception inside training (out of memory,
a bug in a method) is recorded as status "failed" with its reason instead of taking the sweep down.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import traceback
import uuid
from datetime import datetime, timezone

import torch
from omegaconf import OmegaConf

from benchmark import checkpoint, diagnostics, environment, loop, results
from benchmark import data as data_mod
from benchmark.config import Job, build_method, to_dict
from benchmark.meters import Meters, speed_figure, speed_probe

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _splits(name: str, root: str, download: bool, val_size: int | None, split_seed: int, device: str, augment: str,
            split: int | None, resize: int | None, normalise: str):
    return data_mod.load_splits(name, root, download, val_size, split_seed, torch.device(device), augment, split, resize,
                                normalise)


def load_data(job: Job) -> data_mod.Splits:
    cfg, ds = job.cfg, job.dataset
    return _splits(ds.name, str(cfg.data.root), bool(cfg.data.download), ds.val_size, ds.split_seed, str(job.device),
                   ds.augment, ds.split, ds.resize, ds.normalise)


def train_settings(job: Job, data: data_mod.Splits) -> loop.TrainConfig:
    """The job's training settings with the batch size decided: train.batch_size when set, else
    the method's own (capped on small datasets, see config.BatchRule); on a graph, the whole
    training set: one full-graph step per epoch, as node classification is trained."""
    if job.batch_rule is None:
        return job.train
    if data.graph is not None:
        return dataclasses.replace(job.train, batch_size=len(data.train_y))
    return dataclasses.replace(job.train, batch_size=job.batch_rule.for_dataset(len(data.train_y)))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cell_name(cfg) -> str:
    return f"{cfg.method.name}__{cfg.arch.name}__{cfg.dataset.name}"


# What makes two runs of one cell and seed the same run, beside the hyperparameters and the arch:
# the budget and the stopping rule (a different patience or stop_on can end a run elsewhere) and
# the held-out size. A key a record predates is read as the value every run had then.
# The batch size counts where the config names one; where it leaves it to the method (null), the
# record holds the size the method chose for that dataset, which the same config chooses again.
SAME_RUN_TRAIN_KEYS = {"epochs": None, "patience": None, "min_delta": 0.0, "restore_best": True,
                       "stop_on": "val_accuracy"}
# And which data: the held-out size and its split seed, a graph's released split, the augmentation,
# the resize and the normalisation. Each of `dataset.resize=32`, `dataset.augment=crop_flip_reflect`,
# `dataset.normalise=none` or `dataset.split=3` gives other data under the same dataset name, so a
# run made with it is another run.
SAME_RUN_DATASET_KEYS = {"val_size": None, "split_seed": 0, "split": None, "augment": "none", "resize": None,
                         "normalise": "standard"}


def _same_run_key(train: dict, dataset: dict, batch_size: int | None) -> tuple:
    return (*(train.get(k, default) for k, default in SAME_RUN_TRAIN_KEYS.items()),
            *(dataset.get(k, default) for k, default in SAME_RUN_DATASET_KEYS.items()), batch_size)


def _identity(job: Job, seed: int, hp) -> tuple:
    """What a run of `job` is: cell, seed, hyperparameters, arch, budget, stopping rule, data (split,
    augmentation, resize, normalisation)."""
    cfg = job.cfg
    return (cell_name(cfg), seed, dict(vars(hp)), recorded_arch(to_dict(cfg.arch)),
            _same_run_key(dict(vars(job.train)), to_dict(cfg.dataset), job.train.batch_size))


def with_defaults(recorded: dict, schema) -> dict:
    """`recorded` with every field of the dataclass `schema` it lacks set to that field's default:
    a setting added after the record was written is read as the value every run had before it
    existed. So adding a setting does not make finished runs look new."""
    filled = dict(recorded)
    for f in dataclasses.fields(schema):
        if f.name not in filled and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING):
            filled[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return filled


def recorded_hp(recorded: dict | None, hp) -> dict | None:
    """A record's hyperparameters as `hp`'s Hyper reads them today (`with_defaults`)."""
    if recorded is None or not dataclasses.is_dataclass(hp):
        return recorded
    return with_defaults(recorded, hp)


def recorded_arch(recorded: dict | None) -> dict | None:
    """An arch (a record's, or a job's) as its kind's schema reads it today (`with_defaults`: e.g. a
    graph arch's `head`, added later, reads as `linear` in older records)."""
    from benchmark import archs

    schema = archs.SCHEMAS.get((recorded or {}).get("kind"))
    return recorded if schema is None else with_defaults(recorded, schema)


def finished_earlier(job: Job) -> dict | None:
    """A completed single run of this job already in its experiment's runs.jsonl: the same cell,
    seed, hyperparameters, arch, budget, stopping rule and data (held-out size and split, graph
    split, augmentation, resize). Experiments that set
    `resume: true` (the reproductions, depth_scaling) skip it, so a batch of runs cut short
    resumes where it stopped."""
    cfg = job.cfg
    named_batch = job.train.batch_size  # None: the method's own
    want = _identity(job, cfg.seed, job.hp)
    for r in results.read_records(results.runs_file(cfg.results_dir, cfg.experiment_name)):
        if r.get("kind") == "run" and r.get("status") == "completed":
            config = r.get("config") or {}
            got = (r.get("cell"), r.get("seed"), recorded_hp(r.get("hp"), job.hp), recorded_arch(config.get("arch")),
                   _same_run_key(config.get("train") or {}, config.get("dataset") or {},
                                 (config.get("train") or {}).get("batch_size") if named_batch is not None else None))
            if got == want:
                return r
    return None


def checkpointer(job: Job, seed: int, hp) -> checkpoint.Checkpointer:
    """The checkpoint file of this run (benchmark/checkpoint.py), named by the run's identity."""
    cfg = job.cfg
    key = checkpoint.run_key([cfg.experiment_name, cfg.method.name, cfg.dataset.name, *_identity(job, seed, hp)])
    path = results.runs_file(cfg.results_dir, cfg.experiment_name).parent / "checkpoints" / f"{key}.pt"
    return checkpoint.Checkpointer(path, key, job.train.checkpoint_minutes)


def execute(
    job: Job,
    *,
    kind: str = "run",
    seed: int | None = None,
    hp=None,
    on_epoch=None,
    evaluate_test: bool = True,
    trial: dict | None = None,
    run_id: str | None = None,
    write: bool = True,
) -> dict:
    """Train one run of `job` and append its record. `hp` replaces the config's hyperparameters
    (a tuning trial's sample); `seed` replaces cfg.seed (finals)."""
    cfg = job.cfg
    seed = cfg.seed if seed is None else seed
    hp = job.hp if hp is None else hp
    started = now()
    environment.git_sha()  # read (and cached) now: a commit made while a long run trains is not its code
    data = load_data(job)
    train_cfg = train_settings(job, data)
    loop.seed_everything(seed)
    meters = None
    watch = job.diagnostics.enabled and kind != "trial"  # never in tuning: a trial's cost is the method's
    alignment = None
    # Single runs checkpoint when asked (trials are short and tuned afresh); diagnostics runs do not
    # (their alignment schedule is not saved).
    saver = checkpointer(job, seed, hp) if job.train.checkpoint_minutes > 0 and kind == "run" and not watch else None
    resume = saver.load() if saver is not None else None
    # The machine's speed around a run whose costs are reported (not a trial's), before its meters
    # start and after they stop, so the probe is in none of its figures.
    probe_s = job.measure.speed_probe_s if kind != "trial" else 0
    speed_before = speed_probe(job.device, probe_s) if probe_s else None
    try:
        method = build_method(job, data, hp) if resume is None else resume["method"]
        meters = Meters(job.measure, job.device)
        if resume is not None:
            meters.resume_from(resume["meters"])
            log.info("resuming %s seed %d from its checkpoint after epoch %d", cell_name(cfg), seed,
                     resume["progress"].epoch_no)
        if watch:
            alignment = diagnostics.Alignment(method, job.diagnostics.alignment_points)
        outcome = loop.train(method, data, train_cfg, meters, seed, evaluate_test, on_epoch, desc=cell_name(cfg),
                             alignment=alignment, checkpoint=saver, resume=resume)
    except loop.Pruned:
        raise
    except Exception as err:  # noqa: BLE001 - any fault in a trial is recorded, the sweep goes on
        if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
            reason = f"out of memory: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.error("run failed: %s\n%s", reason, traceback.format_exc())
        outcome = {"status": "failed", "error": reason, "metrics": {"history": [], "extra": {}}}
    measurements = {}
    if meters is not None:
        metrics = outcome["metrics"]
        epoch_seconds = [h["seconds"] for h in metrics.get("history", [])]
        measurements = meters.summary(metrics.get("train_samples", 0), epoch_seconds)
    environment_info = environment.describe(job.device)
    if speed_before is not None:
        environment_info["speed_probe"] = speed_figure(speed_before, speed_probe(job.device, probe_s), job.device, probe_s)
    diagnosed = None
    if alignment is not None and outcome["status"] == "completed":
        # After the summary: the end-of-training diagnostics are in no figure of the method's.
        diagnosed = {"alignment": alignment.result(), "alignment_seconds": measurements.get("time_diagnostics"),
                     **diagnostics.end_of_training(method, data, job.diagnostics, seed, min(train_cfg.eval_batch_size, 500))}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["method"]["hp"] = dict(vars(hp))
    resolved["train"]["batch_size"] = train_cfg.batch_size
    resolved["train"]["batch_size_from"] = "train.batch_size" if job.batch_rule is None else (
        "the whole graph (every training node, one step per epoch)" if data.graph is not None else
        f"the method's own ({job.batch_rule.size}; at least {job.batch_rule.min_steps} steps per epoch)")
    record = {
        "schema_version": results.SCHEMA_VERSION,
        "run_id": run_id or uuid.uuid4().hex,
        "kind": kind,
        "status": outcome["status"],
        "error": outcome["error"],
        "experiment": cfg.experiment_name,
        "cell": cell_name(cfg),
        "method": cfg.method.name,
        "arch": cfg.arch.name,
        "dataset": cfg.dataset.name,
        "seed": seed,
        "hp": dict(vars(hp)),
        "trial": trial,
        "budget": to_dict(cfg.tuning) if cfg.mode == "tune" else {"epochs": job.train.epochs},
        "config": resolved,
        "metrics": outcome["metrics"],
        "measurements": measurements,
        "locality": {"kind": job.method_cls.locality.kind, "description": job.method_cls.locality.description},
        "data": data.info,
        "environment": environment_info,
        "started_at": started,
        "finished_at": now(),
    }
    if diagnosed is not None:
        record["diagnostics"] = diagnosed
    if write:
        results.append(results.runs_file(cfg.results_dir, cfg.experiment_name), record)
    if saver is not None:
        saver.discard()  # the record is written: the run is over, whatever its status
    return record
