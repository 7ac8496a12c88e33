"""The one training loop, for every method.

Per phase the method declares: `start_phase`, then epochs of `train_step` over index-sliced batches
of the preloaded training tensors, validation after every epoch, early stopping on validation
accuracy or loss (patience, min_delta, stop_on; the best-validation-accuracy state is restored at
the end of the phase), except in a `fixed` phase, which runs its epochs and keeps its last state.
A non-finite training loss ends the run with status "diverged". After the last phase, the test
set is evaluated once, unless the caller is a tuning trial (which never sees the test set). With
`checkpoint_minutes`, the whole state is saved at epoch ends (`Progress`, benchmark/checkpoint.py)
and a run started again goes on from there.

Cost discipline: the loss is summed on the device and read once per epoch (one sync per epoch,
not per step); the meters count FLOPs on the first step and evaluation batch of each phase and
scale them by what was run.

Speed options (config `train.*`, all off by default; `make perf` measures whether each helps on
the machine at hand, see README):
- `compile`: torch.compile each of the method's blocks and heads in place (the modules stay the
  same objects, so state dicts, optimisers and the audit are unchanged). Methods that trace their
  own forward with torch.func (`compilable = False`) refuse it.
- `autocast`: "bf16" runs every training step and prediction under torch.autocast(bfloat16);
  parameters, optimiser state and the loss sum stay float32.
- `channels_last`: image tensors and the method's conv weights in NHWC memory format.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmark import checkpoint as ckpt
from benchmark.data import Splits, batches, crop_flip
from benchmark.meters import Meters
from benchmark.spec import Method


class Pruned(Exception):
    """Raised by an `on_epoch` callback to stop a trial that a pruner gave up on."""


class BudgetExhausted(Exception):
    """Raised by an `on_epoch` callback when a wall-time or energy cap is reached."""


@dataclass
class TrainConfig:
    """The training budget and options (config `train.*`); the metadata is each field's valid range."""

    epochs: int = field(metadata={"ge": 1})
    batch_size: int | None = field(metadata={"ge": 1})  # None in config: the method's own (runner decides)
    eval_batch_size: int = field(metadata={"ge": 1})
    patience: int = field(metadata={"ge": 0})  # epochs without improvement before stopping; 0 = off
    min_delta: float = field(metadata={"ge": 0})  # a smaller improvement (accuracy, 0..1) does not count
    restore_best: bool = field(metadata={})
    compile: bool = field(default=False, metadata={})
    autocast: str = field(default="none", metadata={"choices": ("none", "bf16")})
    channels_last: bool = field(default=False, metadata={})
    # Reproductions only: also evaluate the test set after every epoch, recorded in the history as
    # `test_accuracy`, so a report can show a paper's own protocol (the best test epoch) beside the
    # harness's. Never used to select anything; tuning trials never see the test set either way.
    test_every_epoch: bool = field(default=False, metadata={})
    # What the patience counts epochs without improving: the validation accuracy (the default), or
    # the validation loss (some papers' codes stop on it). Either way the state restored is the one
    # with the best validation accuracy: the harness's protocol does not change with a paper's rule.
    stop_on: str = field(default="val_accuracy", metadata={"choices": ("val_accuracy", "val_loss")})
    # Save the run's whole state at an epoch's end at most every this many minutes, so the same
    # command run again goes on from there (benchmark/checkpoint.py); 0 = never. Single runs only.
    checkpoint_minutes: float = field(default=0.0, metadata={"ge": 0})
    # At most this many epochs, whatever an experiment or paper file sets (None: no cap). For a
    # reproduction whose paper's schedule does not fit the machine: `epochs` is lowered to it when
    # the config is checked (config.apply_epoch_cap), so records hold the budget the run had, and
    # the report flags rows below their paper's epochs as budget-limited.
    epoch_cap: int | None = field(default=None, metadata={"ge": 1})


def precision(cfg: TrainConfig, device: torch.device):
    """The autocast context of training steps and predictions (a no-op unless autocast=bf16)."""
    if cfg.autocast == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_modules(root: torch.nn.Module) -> int:
    """torch.compile, in place, every module held in the method's ModuleDicts/ModuleLists (its
    blocks, heads, predictors). Returns how many were compiled."""
    count = 0
    for child in root.children():
        if isinstance(child, (torch.nn.ModuleDict, torch.nn.ModuleList)):
            count += compile_modules(child)
        else:
            child.compile()
            count += 1
    return count


def apply_speed_options(method: Method, data: Splits, cfg: TrainConfig) -> Splits:
    """Apply `compile` and `channels_last` before training; returns the data to train on."""
    if cfg.channels_last:
        method.modules.to(memory_format=torch.channels_last)
        nhwc = {
            k: v.contiguous(memory_format=torch.channels_last)
            for k, v in vars(data).items() if isinstance(v, torch.Tensor) and v.dim() == 4
        }
        data = dataclasses.replace(data, **nhwc)  # a copy: the cached splits stay as they were
    if cfg.compile:
        count = compile_modules(method.modules)
        # Blocks of one kind share their forward's code object, and dynamo caches compiled code per
        # code object (8 entries by default): without this, blocks past the 8th silently run eager.
        import torch._dynamo as dynamo

        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 4 * count)
    return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(method: Method, x: torch.Tensor, y: torch.Tensor, batch_size: int, meters: Meters,
             autocast=contextlib.nullcontext):
    """(accuracy, mean cross-entropy of the method's class scores) over x, y."""
    method.train(False)
    correct, loss_sum = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with autocast():
            scores = meters.eval_batch(lambda: method.predict(xb), len(yb))
        correct += (scores.argmax(1) == yb).sum()
        loss_sum += F.cross_entropy(scores.float(), yb, reduction="sum")
    method.train(True)
    return correct.item() / len(y), loss_sum.item() / len(y)


def progress_bar(total: int, desc: str):
    """tqdm on a terminal; elsewhere (nohup, CI) a plain line at most once a minute."""
    if not sys.stdout.isatty():
        return EpochLog(total, desc)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


class EpochLog:
    """The progress of a run whose output goes to a file: one line per epoch, but no more than one
    a minute. A reproduction runs for hours in the background and its log should say how far it
    got; a digits run's sub-second epochs print nothing, so CI logs stay as they were."""

    interval_s = 60.0

    def __init__(self, total: int, desc: str, clock: Callable[[], float] | None = None):
        import time

        self.total, self.desc, self.done = total, desc, 0
        self.clock = clock or time.monotonic
        self.last = self.clock()

    def update(self, n: int) -> None:
        self.done += n

    def set_postfix(self, **fields) -> None:
        now = self.clock()
        if now - self.last < self.interval_s:
            return
        self.last = now
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"{self.desc or 'run'}: epoch {self.done}/{self.total} {shown}", flush=True)

    def close(self) -> None:
        pass


@dataclass
class Progress:
    """Where a run stands at the end of an epoch: with the method and the random streams, all a
    checkpoint needs to go on from there (benchmark/checkpoint.py)."""

    phase_index: int = 0
    epochs_in_phase: int = 0  # epochs of the current phase already run
    epoch_no: int = 0  # over the whole run
    step_no: int = 0  # over the whole run, for the diagnostics' schedule
    samples_seen: int = 0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    phase_best: float = -1.0  # the phase's best validation accuracy so far
    phase_best_loss: float = math.inf
    phase_state: dict | None = None  # the method's state at phase_best (restore_best)
    bad_epochs: int = 0  # epochs since what stop_on watches last improved
    resumed_at_epochs: list[int] = field(default_factory=list)

    def start_phase(self, index: int) -> None:
        self.phase_index, self.epochs_in_phase = index, 0
        self.phase_best, self.phase_best_loss, self.phase_state, self.bad_epochs = -1.0, math.inf, None, 0


def train(
    method: Method,
    data: Splits,
    cfg: TrainConfig,
    meters: Meters,
    seed: int,
    evaluate_test: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    desc: str = "",
    alignment=None,
    checkpoint=None,
    resume: dict | None = None,
) -> dict:
    """Train `method` on `data` and return the run's metrics (see benchmark/results.py).
    `alignment` (benchmark.diagnostics.Alignment, or None): measured at the steps it plans.
    `checkpoint` (benchmark.checkpoint.Checkpointer, or None): saved at epoch ends when due;
    `resume`: the state it loaded, to go on from (`method` is then the checkpoint's own)."""
    order = torch.Generator().manual_seed(seed)
    augment_rng = torch.Generator(device=data.train_x.device).manual_seed(seed)
    data = apply_speed_options(method, data, cfg)
    autocast = lambda: precision(cfg, data.train_x.device)  # noqa: E731
    n = len(data.train_y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    status, stop_reason, error = "completed", "max_epochs", None
    phases = method.phases(cfg.epochs)
    method.augmented_inputs = data.augment != "none"
    progress = Progress()
    if resume is not None:
        progress = resume["progress"]
        progress.resumed_at_epochs.append(progress.epoch_no)
        ckpt.set_rng_states(resume["rng"], order, augment_rng)
    p = progress
    history = p.history
    bar = progress_bar(sum(ph.epochs for ph in phases), desc)
    bar.update(p.epoch_no)
    if alignment is not None:
        alignment.plan(sum(ph.epochs for ph in phases) * steps_per_epoch)
    try:
        for phase_index, phase in enumerate(phases):
            if phase_index < p.phase_index:
                continue  # finished before the checkpoint
            if p.epochs_in_phase and phase_index == p.phase_index:
                meters.resume_phase(phase.name)  # set up before the checkpoint; the method holds it
            else:
                p.start_phase(phase_index)
                with meters.window("train"):
                    meters.start_phase(
                        lambda: method.start_phase(phase, data.train_x, data.train_y, phase.epochs * steps_per_epoch), phase.name
                    )
            phase_reason = "max_epochs"
            while p.epochs_in_phase < phase.epochs:
                p.epoch_no += 1
                p.epochs_in_phase += 1
                epoch_no = p.epoch_no
                t0 = meters.elapsed()["seconds"]
                with meters.window("train"):
                    loss_sum = torch.zeros((), device=data.train_x.device)
                    for step, idx in enumerate(batches(n, cfg.batch_size, order, data.train_x.device)):
                        x, y = data.train_x[idx], data.train_y[idx]
                        if data.augment != "none":  # crop_flip or crop_flip_reflect (settings checks the name)
                            x = crop_flip(x, augment_rng, data.pad_value, reflect=data.augment == "crop_flip_reflect")
                        with autocast():
                            run_step = lambda: meters.train_step(lambda: method.train_step(x, y, idx), len(idx), method.modules.parameters())  # noqa: E731
                            if alignment is not None and alignment.wants(p.step_no):
                                loss = alignment.step(x, y, p.step_no, epoch_no, meters, run_step)
                            else:
                                loss = run_step()
                        loss_sum += loss.float()
                        p.step_no += 1
                    train_loss = loss_sum.item() / steps_per_epoch  # the epoch's one sync
                p.samples_seen += n
                if not math.isfinite(train_loss):
                    status, stop_reason = "diverged", "non-finite training loss"
                    error = f"training loss became {train_loss} in epoch {epoch_no} (phase {phase.name})"
                    history.append(_epoch_record(epoch_no, phase.name, train_loss, None, None, meters, t0))
                    break
                with meters.window("eval"):
                    val_acc, val_loss = evaluate(method, data.val_x, data.val_y, cfg.eval_batch_size, meters, autocast)
                    if cfg.test_every_epoch and evaluate_test:
                        epoch_test_acc, _ = evaluate(method, data.test_x, data.test_y, cfg.eval_batch_size, meters, autocast)
                record = _epoch_record(epoch_no, phase.name, train_loss, val_acc, val_loss, meters, t0)
                if cfg.test_every_epoch and evaluate_test:
                    record["test_accuracy"] = epoch_test_acc
                history.append(record)
                bar.update(1)
                bar.set_postfix(phase=phase.name, loss=f"{train_loss:.4f}", val_acc=f"{val_acc:.4f}")
                # min_delta is in the unit of what the patience watches (accuracy 0..1, or loss).
                acc_delta = cfg.min_delta if cfg.stop_on == "val_accuracy" else 0.0
                better_acc = val_acc > p.phase_best + acc_delta
                if better_acc:
                    p.phase_best, p.best_epoch = val_acc, epoch_no
                    if cfg.restore_best:
                        p.phase_state = method.state_dict()
                better_loss = val_loss < p.phase_best_loss - cfg.min_delta
                if better_loss:
                    p.phase_best_loss = val_loss
                improved = better_acc if cfg.stop_on == "val_accuracy" else better_loss
                p.bad_epochs = 0 if improved else p.bad_epochs + 1
                stopping = bool(cfg.patience and p.bad_epochs >= cfg.patience and not phase.fixed)
                if checkpoint is not None and not stopping and p.epochs_in_phase < phase.epochs and checkpoint.due():
                    # Outside the train and eval windows: its seconds count in the run's total only.
                    checkpoint.save({"method": method, "progress": p, "rng": ckpt.rng_states(order, augment_rng),
                                     "meters": meters.snapshot()})
                if on_epoch is not None:
                    on_epoch(record)  # may raise Pruned or BudgetExhausted
                if stopping:
                    phase_reason = "early_stopping"
                    break
            if status != "completed":
                break
            stop_reason = phase_reason
            if cfg.restore_best and p.phase_state is not None and not phase.fixed:
                method.load_state_dict(p.phase_state)
    except Pruned as err:
        status, stop_reason, error = "pruned", "pruned", str(err) or "pruned by the tuner"
    except BudgetExhausted as err:
        stop_reason = f"budget: {err}"
    finally:
        bar.close()

    metrics = {
        "epochs_run": p.epoch_no,
        "best_epoch": p.best_epoch,
        "stop_reason": stop_reason,
        "history": history,
        "val_accuracy": None,
        "val_loss": None,
        "test_accuracy": None,
        "test_loss": None,
        "train_samples": p.samples_seen,
        "extra": {},
    }
    if p.resumed_at_epochs:
        metrics["resumed_at_epochs"] = p.resumed_at_epochs  # from checkpoints, after these epochs
    if status == "completed":
        with meters.window("eval"):
            metrics["val_accuracy"], metrics["val_loss"] = evaluate(
                method, data.val_x, data.val_y, cfg.eval_batch_size, meters, autocast
            )
            if evaluate_test:
                metrics["test_accuracy"], metrics["test_loss"] = evaluate(
                    method, data.test_x, data.test_y, cfg.eval_batch_size, meters, autocast
                )
        metrics["extra"] = method.extra_metrics()
    elif history and history[-1]["val_accuracy"] is not None:
        metrics["val_accuracy"] = max(h["val_accuracy"] for h in history if h["val_accuracy"] is not None)
    return {"status": status, "error": error, "metrics": metrics}


def _epoch_record(epoch, phase, train_loss, val_acc, val_loss, meters: Meters, t0: float) -> dict:
    totals = meters.elapsed()
    return {
        "epoch": epoch,
        "phase": phase,
        "train_loss": train_loss,
        "val_accuracy": val_acc,
        "val_loss": val_loss,
        "seconds": totals["seconds"] - t0,
        "train_seconds_cum": totals["train_seconds"],
        "energy_j_cum": totals["joules"],
    }
