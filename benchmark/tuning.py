"""Tuning one grid cell with Optuna, then re-running its best setting on distinct seeds.

For a cell (method x arch x dataset) `tune_cell`:

1. opens (or resumes) the Optuna study named after the cell, in the experiment's storage;
2. marks trials left RUNNING by a dead worker as failed (their budget slot is re-run), unless the
   dead worker had already recorded the run in runs.jsonl, in which case the study is told what
   that record says (nothing runs twice);
3. runs trials until the cell's budget (tuning.n_trials counted trials) is spent. A trial is one
   training run through the one loop, on validation data only, reporting validation accuracy to
   the pruner every epoch; completed, pruned and failed (diverged, crashed) trials count, trials
   of dead workers do not;
4. re-runs the best trial's hyperparameters on tuning.n_seeds distinct seeds (seed+1, seed+2, ...),
   evaluated once on the test set: the runs the reports use.

Several workers may run the same cell (same command, several processes or machines): they share the
study, each trial runs once and the budget is never exceeded (a claim lock for file storages, a
trial-number check for database servers). Each trial and final is one record in runs.jsonl, joined
to the study by run_id (a trial user attribute).
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import psutil

from benchmark import loop, results, runner
from benchmark.config import Job, to_dict
from benchmark.settings import SearchParam, TuningConfig
from benchmark.storage import claim_lock_path, experiment_dir, file_lock, open_storage, redact, storage_spec

log = logging.getLogger(__name__)
DEAD = "worker_died"
OVER_BUDGET = "over_budget"


# ------------------------------------------------------------------------------------------------
# Sampler, pruner, search space


def make_sampler(t: TuningConfig, seed: int) -> optuna.samplers.BaseSampler:
    if t.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if t.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(t.n_startup_trials, 1))


def make_pruner(t: TuningConfig) -> optuna.pruners.BasePruner:
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=t.max_epochs)
    if t.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=t.n_startup_trials, n_warmup_steps=t.n_warmup_steps)


def defaults_in_space(hp, space: dict[str, SearchParam]) -> dict:
    """The method's default values that the search space can express (a weight decay of 0 on a
    log scale cannot be: the sampler picks that one)."""
    return {name: getattr(hp, name) for name, param in space.items() if param.contains(getattr(hp, name))}


def suggest(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict:
    values = {}
    for name, p in space.items():
        if p.type == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            values[name] = trial.suggest_categorical(name, list(p.choices))
    return values


# ------------------------------------------------------------------------------------------------
# Budget accounting


def counts_against_budget(trial: optuna.trial.FrozenTrial) -> bool:
    state = trial.state
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING):
        return True
    # A failure counts only when it is the setting's own outcome (diverged, crashed), not a dead worker.
    return state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("run_status") in ("failed", "diverged")


def worker_identity() -> dict:
    me = psutil.Process()
    return {"worker_host": socket.gethostname(), "worker_pid": me.pid, "worker_started": me.create_time()}


IDENTITY_KEYS = ("worker_pid", "worker_started", "worker_host")  # worker_host is written last


def worker_alive(attrs: dict) -> bool:
    if not all(key in attrs for key in IDENTITY_KEYS):
        # Not yet labelled, or labelled halfway: being claimed right now (see recover_dead_trials).
        # On a database server the labels are separate writes, and another worker may read the
        # trial between them; reading a half-labelled trial as dead failed a live worker's trial.
        return True
    if attrs["worker_host"] != socket.gethostname():
        return True  # another machine: database heartbeats (fail_stale_trials) decide
    try:
        proc = psutil.Process(attrs["worker_pid"])
        return abs(proc.create_time() - attrs["worker_started"]) < 1e-3  # not a recycled pid
    except (psutil.NoSuchProcess, KeyError):
        return False


def recover_dead_trials(study: optuna.Study, records: dict[str, dict], lock: Path | None) -> None:
    """Trials left RUNNING by a dead worker: told what the worker recorded, or failed (slot re-run).

    With a file storage the claim lock is held while checking: a worker asks for a trial and labels
    it with its identity under that lock, so a RUNNING trial with no identity seen under the lock
    belongs to a worker killed in between. Database servers rely on heartbeats instead."""
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)():  # database servers only
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
    with file_lock(lock):
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            attrs = trial.user_attrs
            orphan = lock is not None and "worker_host" not in attrs
            if not orphan and worker_alive(attrs):
                continue
            record = records.get(attrs.get("run_id"))
            if record is not None:
                tell_from_record(study, trial.number, record)
            else:
                study._storage.set_trial_user_attr(trial._trial_id, "reason", DEAD)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def tell_from_record(study: optuna.Study, number: int, record: dict) -> None:
    status = record["status"]
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    for key, value in trial_user_attrs(record).items():
        study._storage.set_trial_user_attr(trial_id, key, value)
    if status == "completed":
        study.tell(number, record["metrics"]["val_accuracy"])
    elif status == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, state=optuna.trial.TrialState.FAIL)


def trial_user_attrs(record: dict) -> dict:
    """What the dashboard shows beside each trial: the run's id, outcome and costs."""
    m = record.get("measurements", {})
    value = lambda key: (m.get(key) or {}).get("value")  # noqa: E731
    energy = [value("energy_train"), value("energy_eval")]
    return {
        "run_id": record["run_id"],
        "run_status": record["status"],
        "reason": record.get("error"),
        "energy_j": sum(e for e in energy if e is not None) if any(e is not None for e in energy) else None,
        "energy_source": (m.get("energy_train") or {}).get("source"),
        "time_s": value("time_total"),
        "flops": (value("flops_train") or 0) + (value("flops_eval") or 0),
        "epochs_run": record["metrics"].get("epochs_run"),
        "loss_rise": results.loss_rise(record),
    }


# ------------------------------------------------------------------------------------------------
# The cell


def study_for(job: Job) -> tuple[optuna.Study, str]:
    cfg = job.cfg
    spec = storage_spec(cfg)
    storage = open_storage(spec)
    name = runner.cell_name(cfg)
    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        existing = 0
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=make_sampler(job.tuning, int(cfg.seed) + existing), pruner=make_pruner(job.tuning),
    )
    study.set_user_attr("experiment", cfg.experiment_name)
    study.set_user_attr("budget", {k: redact(v) if isinstance(v, str) else v for k, v in to_dict(cfg.tuning).items()})
    return study, spec


def trial_job(job: Job) -> Job:
    """The cell's config with the tuning budget's epoch cap: every method gets the same."""
    return replace(job, train=replace(job.train, epochs=job.tuning.max_epochs))


def records_by_id(cfg) -> dict[str, dict]:
    return {r["run_id"]: r for r in results.read_records(results.runs_file(cfg.results_dir, cfg.experiment_name))}


def claim_trial(study: optuna.Study, n_trials: int, lock: Path | None, first: dict | None = None):
    """Ask for a trial if the budget has a free slot; None when it is spent. `first`: parameters
    the study's very first trial uses (the method's defaults, so they are always tried)."""
    with file_lock(lock):
        trials = study.get_trials(deepcopy=False)
        if sum(counts_against_budget(t) for t in trials) >= n_trials:
            return None
        if first and not trials:
            study.enqueue_trial(first)
        trial = study.ask()
        identity = {"run_id": uuid.uuid4().hex, **worker_identity()}
        for key in ("run_id", *IDENTITY_KEYS):  # worker_host last: a trial with it is fully labelled
            trial.set_user_attr(key, identity[key])
    # Database servers have no claim lock: a trial numbered past the budget gives its slot back.
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts_against_budget(t)]
    if len(earlier) >= n_trials:
        trial.set_user_attr("reason", OVER_BUDGET)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    return trial


def epoch_callback(trial: optuna.Trial, t: TuningConfig):
    timeout, energy_cap = t.timeout_s, t.energy_cap_j

    def on_epoch(record: dict) -> None:
        trial.report(record["val_accuracy"], step=record["epoch"])
        if trial.should_prune():
            raise loop.Pruned(f"pruned at epoch {record['epoch']} (val accuracy {record['val_accuracy']:.4f})")
        if timeout is not None and record["train_seconds_cum"] >= timeout:
            raise loop.BudgetExhausted(f"wall-time cap {timeout} s")
        if energy_cap is not None and record["energy_j_cum"] >= energy_cap:
            raise loop.BudgetExhausted(f"energy cap {energy_cap} J")

    return on_epoch


def run_trial(job: Job, study: optuna.Study, trial: optuna.Trial, spec: str) -> dict:
    hp = replace(job.hp, **suggest(trial, job.search_space))
    info = {"study": study.study_name, "number": trial.number, "storage": redact(spec)}
    try:
        record = runner.execute(
            trial_job(job), kind="trial", hp=hp, on_epoch=epoch_callback(trial, job.tuning), evaluate_test=False,
            trial=info, run_id=trial.user_attrs["run_id"],
        )
    except KeyboardInterrupt:
        trial.set_user_attr("reason", DEAD)  # Ctrl-C: the slot is re-run on resume
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    tell_from_record(study, trial.number, record)
    return record


def stable(trial: optuna.trial.FrozenTrial) -> bool:
    """False when the trial's training loss climbed, and stayed, more than 10 % above its first
    epoch's (results.loss_rise, results.UNSTABLE_RISE).
    Such a run can still score well on validation (DFA kept 85 % while its loss rose 23-fold), but
    its setting is one the finals' other seeds may not survive. A trial told before this attribute
    existed counts as stable: its record is not read again."""
    return not results.climbed(trial.user_attrs.get("loss_rise"))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the best validation accuracy, stable trials ranked before every
    unstable one (an unstable trial wins only when no trial trained stably); ties to the earlier."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    return max(complete, key=lambda t: (stable(t), t.value, -t.number)) if complete else None


def final_seeds(job: Job) -> list[int]:
    """Distinct seeds for the finals, never the tuning seed itself."""
    return [int(job.cfg.seed) + 1 + i for i in range(job.tuning.n_seeds)]


def run_finals(job: Job, study: optuna.Study, spec: str) -> list[dict]:
    cfg = job.cfg
    best = best_trial(study)
    if best is None:
        log.warning("%s: no completed trial, no finals", study.study_name)
        return []
    if not stable(best):
        log.warning("%s: every completed trial's training loss climbed; the finals use trial %d (loss up %.1f-fold): "
                    "narrow the search space (lower learning rates, for one)", study.study_name, best.number,
                    best.user_attrs["loss_rise"])
    hp = replace(job.hp, **best.params)
    lock = experiment_dir(cfg) / ".locks" / f"{study.study_name}.finals.lock"
    done = []
    with file_lock(lock):  # one worker runs the finals; the others then find them recorded
        recorded = {
            r["seed"]: r for r in records_by_id(cfg).values()
            if r.get("kind") == "final" and r.get("cell") == study.study_name
            and runner.recorded_hp(r.get("hp"), hp) == dict(vars(hp))
        }
        for seed in final_seeds(job):
            if seed in recorded:
                done.append(recorded[seed])
                continue
            info = {"study": study.study_name, "number": best.number, "storage": redact(spec)}
            done.append(runner.execute(trial_job(job), kind="final", seed=seed, hp=hp, trial=info))
    return done


def tune_cell(job: Job) -> list[dict]:
    """Tune the cell of `job` to its budget, then run (or find) its finals. Returns the finals."""
    cfg = job.cfg
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, spec = study_for(job)
    lock = claim_lock_path(spec)
    recover_dead_trials(study, records_by_id(cfg), lock)
    n_trials = job.tuning.n_trials
    first = defaults_in_space(job.hp, job.search_space) if job.tuning.enqueue_defaults else None
    while (trial := claim_trial(study, n_trials, lock, first)) is not None:
        record = run_trial(job, study, trial, spec)
        rise = results.loss_rise(record)
        print(f"{study.study_name} trial {trial.number}: {record['status']}"
              + (f", val accuracy {record['metrics']['val_accuracy']:.4f}" if record["metrics"].get("val_accuracy") is not None else "")
              + (f", unstable: training loss up {rise:.1f}-fold (ranked below stable trials)" if results.climbed(rise) else ""))
    # Wait for trials other live workers are still running: the best setting is only known then.
    while any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        recover_dead_trials(study, records_by_id(cfg), lock)
        time.sleep(2)
    finals = run_finals(job, study, spec)
    for r in finals:
        acc = r["metrics"].get("test_accuracy")
        print(f"{study.study_name} final seed={r['seed']}: {r['status']}" + (f", test accuracy {acc:.4f}" if acc is not None else ""))
    return finals
