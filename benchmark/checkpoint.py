"""Checkpoints within a run, so a run longer than a working session survives being killed.

A reproduction at a paper's budget can take longer than the machine is lent (FF on the 4x2000 MLP:
about 7 h a seed on one CPU thread). With `train.checkpoint_minutes: M` (the reproductions set it),
a single run (never a tuning trial) saves, at the end of an epoch at most every M minutes, all it
needs to go on as if never stopped: the method object itself (modules, optimisers, schedules,
caches: pickled whole, so no method has to list its state), where the loop stands (phase, epoch,
best state, patience count, history), every random generator, and the meters' totals. Running the
same command again finds the file and goes on from there; tests/test_checkpoint.py proves, for
every method, that a run stopped and resumed gives the same history and test accuracy as one that
never stopped. The file is deleted once the run has written its record.

Where: `<results_dir>/<experiment>/checkpoints/<key>.pt`, the key a hash of what makes two runs
the same run (runner.finished_earlier's identity), so a checkpoint is never picked up by a run
with other settings. The files are this machine's own (pickles: load only your own) and are not
committed (.gitignore). A checkpoint is never taken at the end of a phase: a phase's restore and
the next phase's set-up happen in one go.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

FORMAT = 1


def run_key(identity) -> str:
    """A short, stable name for a run's identity (any JSON-able value)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def rng_states(*generators: torch.Generator) -> dict:
    """Every random stream a run draws from: Python's, NumPy's, torch's (and CUDA's), the loop's."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": [g.get_state() for g in generators],
    }


def set_rng_states(states: dict, *generators: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for g, state in zip(generators, states["generators"]):
        g.set_state(state)


class Checkpointer:
    """One run's checkpoint file: `load` what an earlier process left, `save` when `due`,
    `discard` once the run's record is written."""

    def __init__(self, path: Path, key: str, every_minutes: float, clock=time.monotonic):
        self.path, self.key, self.every_s, self.clock = Path(path), key, every_minutes * 60.0, clock
        self.last_saved = self.clock()

    def load(self) -> dict | None:
        """The state an earlier process saved for this run, or None (no file, or another run's)."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)  # our own pickle; tensors back where they were
        if state.get("format") != FORMAT or state.get("key") != self.key:
            return None
        return state

    def due(self) -> bool:
        return self.clock() - self.last_saved >= self.every_s

    def save(self, state: dict) -> None:
        """Write atomically: a process killed while writing leaves the previous checkpoint whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"format": FORMAT, "key": self.key, **state}, tmp)
        os.replace(tmp, self.path)
        self.last_saved = self.clock()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".tmp").unlink(missing_ok=True)
