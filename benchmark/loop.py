"""The one training loop, for every method.

Per phase the method declares: `start_phase`, then epochs of `train_step` over index-sliced batches
of the preloaded training tensors, validation after every epoch, early stopping on validation
accuracy (patience, min_delta; the best state is restored at the end of the phase). A non-finite
training loss ends the run with status "diverged". After the last phase, the test set is
evaluated once, unless the caller is a tuning trial (which never sees the test set).

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
) -> dict:
    """Train `method` on `data` and return the run's metrics (see benchmark/results.py).
    `alignment` (benchmark.diagnostics.Alignment, or None): measured at the steps it plans."""
    order = torch.Generator().manual_seed(seed)
    augment_rng = torch.Generator(device=data.train_x.device).manual_seed(seed)
    data = apply_speed_options(method, data, cfg)
    autocast = lambda: precision(cfg, data.train_x.device)  # noqa: E731
    n = len(data.train_y)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    history: list[dict] = []
    status, stop_reason, error = "completed", "max_epochs", None
    best_epoch, samples_seen, epoch_no = 0, 0, 0
    phases = method.phases(cfg.epochs)
    bar = progress_bar(sum(p.epochs for p in phases), desc)
    step_no = 0  # over the whole run, for the diagnostics' schedule
    if alignment is not None:
        alignment.plan(sum(p.epochs for p in phases) * steps_per_epoch)
    try:
        for phase in phases:
            with meters.window("train"):
                meters.start_phase(
                    lambda: method.start_phase(phase, data.train_x, data.train_y, phase.epochs * steps_per_epoch), phase.name
                )
            phase_best, phase_state, bad_epochs = -1.0, None, 0
            phase_best_loss = math.inf
            phase_reason = "max_epochs"
            for _ in range(phase.epochs):
                epoch_no += 1
                t0 = meters.elapsed()["seconds"]
                with meters.window("train"):
                    loss_sum = torch.zeros((), device=data.train_x.device)
                    for step, idx in enumerate(batches(n, cfg.batch_size, order, data.train_x.device)):
                        x, y = data.train_x[idx], data.train_y[idx]
                        if data.augment == "crop_flip":
                            x = crop_flip(x, augment_rng, data.pad_value)
                        with autocast():
                            run_step = lambda: meters.train_step(lambda: method.train_step(x, y, idx), len(idx), method.modules.parameters())  # noqa: E731
                            if alignment is not None and alignment.wants(step_no):
                                loss = alignment.step(x, y, step_no, epoch_no, meters, run_step)
                            else:
                                loss = run_step()
                        loss_sum += loss.float()
                        step_no += 1
                    train_loss = loss_sum.item() / steps_per_epoch  # the epoch's one sync
                samples_seen += n
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
                better_acc = val_acc > phase_best + acc_delta
                if better_acc:
                    phase_best, best_epoch = val_acc, epoch_no
                    if cfg.restore_best:
                        phase_state = method.state_dict()
                better_loss = val_loss < phase_best_loss - cfg.min_delta
                if better_loss:
                    phase_best_loss = val_loss
                improved = better_acc if cfg.stop_on == "val_accuracy" else better_loss
                bad_epochs = 0 if improved else bad_epochs + 1
                if on_epoch is not None:
                    on_epoch(record)  # may raise Pruned or BudgetExhausted
                if cfg.patience and bad_epochs >= cfg.patience:
                    phase_reason = "early_stopping"
                    break
            if status != "completed":
                break
            stop_reason = phase_reason
            if cfg.restore_best and phase_state is not None:
                method.load_state_dict(phase_state)
    except Pruned as err:
        status, stop_reason, error = "pruned", "pruned", str(err) or "pruned by the tuner"
    except BudgetExhausted as err:
        stop_reason = f"budget: {err}"
    finally:
        bar.close()

    metrics = {
        "epochs_run": epoch_no,
        "best_epoch": best_epoch,
        "stop_reason": stop_reason,
        "history": history,
        "val_accuracy": None,
        "val_loss": None,
        "test_accuracy": None,
        "test_loss": None,
        "train_samples": samples_seen,
        "extra": {},
    }
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
