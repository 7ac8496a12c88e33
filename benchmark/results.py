"""The results schema: one JSON record per run, one line each, in <results_dir>/<experiment>/runs.jsonl.

Every method, every trial, every final run writes the same record (schema version 1):

    schema_version   1
    run_id           unique id (uuid4 hex)
    kind             "run" (a single `python -m benchmark` run), "trial" (an Optuna trial), "final"
    status           "completed" | "diverged" (NaN/inf loss) | "pruned" | "failed"
    error            one line, for diverged/failed/pruned runs; null otherwise
    experiment, cell method, arch, dataset, seed
    trial            {study, number, storage} for trials and finals; null for single runs
    config           the fully resolved config of the run
    budget           the tuning budget of the experiment (trials, max epochs, seeds, caps)
    metrics          val_accuracy, val_loss, test_accuracy, test_loss (null when not evaluated),
                     epochs_run, best_epoch, stop_reason, history [{epoch, phase, train_loss,
                     val_accuracy, val_loss, seconds}], extra (method-specific)
    measurements     {name: {value, unit, source, estimated, ...}}: energy_train, energy_eval,
                     emissions, time_total, time_train, time_eval, time_per_epoch, peak_memory,
                     activation_memory, flops_train, flops_eval, throughput_train (see benchmark/meters.py);
                     time_diagnostics where diagnostics ran during training
    diagnostics      only with diagnostics.enabled (never for trials): alignment {layers: {name:
                     {step, epoch, cosine, norm_ratio}}, empty: {name: why}, weight_alignment},
                     probes {layer: figure}, robustness {clean, noise {sigma: figure}, fgsm {eps:
                     figure}, attack}, seconds (see benchmark/diagnostics.py)
    data             name, sha256, canonical, canonical_basis, n_train/n_val/n_test, split seed, ...
    environment      git sha, package versions, python, device, CPU and GPU model, hostname;
                     speed_probe {value GFLOP/s, before, after, ...} for single and final runs
                     (benchmark/meters.py: speed_probe; absent in records before 2026-12-07)
    started_at, finished_at   ISO 8601 UTC

Writes are atomic: each record is one `write` of a whole line on a file opened O_APPEND, under an
exclusive flock, then fsync'd. A killed writer leaves either the whole line or nothing; two
writers never interleave.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
from pathlib import Path


from benchmark.errors import UserError
from benchmark.storage import redact

SCHEMA_VERSION = 1


def runs_file(results_dir: str | os.PathLike, experiment: str) -> Path:
    return Path(results_dir) / experiment / "runs.jsonl"


def _clean(value):
    """JSON has no NaN/inf: store them as null (the status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def encode(record: dict) -> bytes:
    """One JSON line; no URL in it keeps its password (storage.redact)."""
    return (redact(json.dumps(_clean(record), sort_keys=True, default=str, allow_nan=False)) + "\n").encode()


def append(path: str | os.PathLike, record: dict) -> None:
    """Append one record atomically (see module docstring)."""
    missing = {"schema_version", "run_id", "status"} - set(record)
    if missing:
        raise ValueError(f"record lacks {sorted(missing)}")
    line = encode(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _repair_tail(fd, path)
        written = os.write(fd, line)
        if written != len(line):  # disk full mid-line: cut the partial line back off
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
        os.fsync(fd)
    except OSError as err:
        raise UserError(f"cannot write results to {path} ({err.strerror or err})", "free space or fix permissions, then re-run: finished runs are kept") from None
    finally:
        os.close(fd)


def _repair_tail(fd: int, path: Path) -> None:
    """A file whose last byte is not a newline ends in a torn line (a writer died in a very old
    version, or the disk filled): end it, so the next record starts on a line of its own."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def read_records(path: str | os.PathLike, strict: bool = False) -> list[dict]:
    """All records of a runs.jsonl. A line that does not parse is skipped with a warning (or raises
    a UserError naming the file and line when `strict`). Large committed reproductions keep their
    records gzipped (runs.jsonl.gz); runs appended later go to the plain file beside it, so both
    are read, the gzipped part first (the order the runs were written)."""
    import gzip

    path = Path(path)
    records = []
    for part, opener in ((path.with_name(path.name + ".gz"), gzip.open), (path, open)):
        if not part.exists():
            continue
        with opener(part, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    if strict:
                        raise UserError(f"{part}:{number} is not a JSON record", "delete or repair that line") from None
                    import warnings

                    warnings.warn(f"{part}:{number}: skipped a line that is not a JSON record", stacklevel=2)
    return records


def loss_rise(run: dict) -> float | None:
    """How far a run's training loss climbed, and stayed, above where it started: per phase, the
    highest median of any RISE_WINDOW consecutive later epochs' mean training losses (of all later
    epochs where there are fewer), divided by the phase's first epoch's; the largest over the phases.

    Training that works brings the loss below its first epoch's mean and keeps it there: every
    committed reproduction stays under 0.66x. A loss that stays above the first epoch's (by more
    than UNSTABLE_RISE's margin: `climbed`) is a run near divergence, however good its accuracy:
    DFA at too high a rate kept 85 % on Fashion-MNIST while its loss climbed 23-fold
    (docs/reproduction/README.md). The median makes a
    one-epoch spike that recovers at once no rise: FF on the 4x2000 MLP spiked to 0.97x its first
    epoch's loss at epoch 96 of 100 and was back at 0.02x the next, a run that reproduces its paper
    (0.42x by this reading). The loop stops only on a NaN/inf loss, so the report says this, and
    tuning ranks such a trial below every stable one (benchmark/tuning.py: best_trial). Phases with
    one epoch, or a loss that is not positive (a ratio means nothing there), are left out; None
    when no phase is left."""
    by_phase: dict = {}
    for h in (run.get("metrics") or {}).get("history", []):
        if h.get("train_loss") is not None:
            by_phase.setdefault(h.get("phase"), []).append(h["train_loss"])
    rises = [_sustained_peak(losses[1:]) / losses[0] for losses in by_phase.values()
             if len(losses) > 1 and all(x > 0 for x in losses)]
    return max(rises) if rises else None


RISE_WINDOW = 3  # epochs: a loss above its start in two of three consecutive epochs is a climb, one is a spike


def _sustained_peak(losses: list[float]) -> float:
    """The highest median of RISE_WINDOW consecutive values (of all of them where there are fewer)."""
    windows = [losses[i:i + RISE_WINDOW] for i in range(max(1, len(losses) - RISE_WINDOW + 1))]
    return max(statistics.median(w) for w in windows)


# How far above its first epoch's mean a loss must stay to count as climbing (see loss_rise). Not 1.0:
# a loss on a plateau drifts by a percent or so, and ForwardGNN's top-down loss on Cora rose 0.5 %
# over its first 4 epochs before falling to 0.11x of its start (a run of 69.9 % test accuracy).
# Runs on their way to diverging stay tens of percent to orders of magnitude above it: DFA at
# MNIST's rate on Fashion-MNIST 1.41x and 22.6x, DFA's 3-epoch probe at 3e-4 1.85x.
UNSTABLE_RISE = 1.1


def climbed(rise: float | None) -> bool:
    """Whether a loss_rise is an unstable run's: the one rule the report and tuning both apply."""
    return rise is not None and rise > UNSTABLE_RISE


def load(path: str | os.PathLike):
    """Records as a pandas DataFrame: one row per run; nested fields flattened with dots
    (metrics.test_accuracy, measurements.energy_train.value, ...)."""
    import pandas as pd  # here, not at the top: a single run never loads results as a table

    path = Path(path)
    if path.is_dir():
        path = path / "runs.jsonl"
    records = read_records(path)
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, max_level=3)
