"""The method contract: everything a training method sees of the harness, and the registry.

This module owns the interface between the harness and the methods, the way AlgoPerf's `spec.py`
is its whole contract. Modules in `methods/` import this (and the small helpers `archs`, `errors`,
`validate`); they never import the harness above it (loop, meters, runner, tuning, reports), and
this module never imports the harness either: import-linter contracts in pyproject.toml enforce
both directions (`make test` runs them).

A method is built from an architecture config, the input shape and class count, its
hyperparameters and a device. The one training loop (benchmark/loop.py) then calls, per phase the
method declares, `start_phase`, then `train_step` on index-sliced batches, then `predict` for
validation. Methods with phases (layer by layer, blocks then heads) declare them in `phases`, so
there is never a second loop.

Each method also declares its gradient locality (`units`) and what a step must leave untouched
(`frozen_parameters`); `benchmark.audit` checks both against what a training step really does.

Registry: a method module registers its class with `@register`. The harness finds the modules by
importing every module of the `methods` package on first use (by name, so the harness has no
import of `methods` in its code): adding a method is one module plus one YAML in configs/method/.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.validate import check_fields

METHODS_PACKAGE = "methods"  # where the registry looks for method modules
REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available under `cls.name`."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are registered as '{cls.name}'")
    REGISTRY[cls.name] = cls
    return cls


def _import_all() -> None:
    package = importlib.import_module(METHODS_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{METHODS_PACKAGE}.{info.name}")


def get(name: str) -> type["Method"]:
    """The registered method class called `name` (one-line UserError naming the choices if none)."""
    if name not in REGISTRY:
        _import_all()
    if name not in REGISTRY:
        raise UserError(f"unknown method '{name}'", f"choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def names() -> list[str]:
    """Every registered method's name, sorted."""
    _import_all()
    return sorted(REGISTRY)


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own epoch budget and its own early stopping."""

    name: str
    epochs: int


@dataclass(frozen=True)
class Locality:
    """What a method claims about its gradients.

    kind: "global" (end-to-end backprop), "layer" or "block" (one backward pass never spans two
    units), or "none" (no backward pass at all: forward-only estimates or hand-written updates).
    """

    kind: str
    description: str


def check_hyperparameters(schema: type, values: dict, method: str):
    """The method's hyperparameter dataclass built from config values (one-line UserError if bad)."""
    return check_fields("method.hp", schema, values, f"configs/method/{method}.yaml")


class Method:
    """Base class. Subclasses set `name`, `locality`, `supported_archs`, `Hyper` and implement the
    abstract parts; the defaults cover a single-phase method whose modules are in `self.modules`."""

    name: ClassVar[str]
    locality: ClassVar[Locality]
    supported_archs: ClassVar[tuple[str, ...]] = ("mlp", "cnn")
    Hyper: ClassVar[type]
    compilable: ClassVar[bool] = True  # train.compile may torch.compile its modules
    compile_note: ClassVar[str] = ""  # why not, when compilable is False

    def __init__(self, arch: dict, input_shape: tuple[int, ...], num_classes: int, hp, device: torch.device):
        self.arch = arch
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.hp = hp
        self.device = device
        self.modules = nn.ModuleDict()  # everything with state: saved, restored, audited

    # -- the interface the loop uses ------------------------------------------------------------
    def phases(self, epochs: int) -> list[Phase]:
        """How the run's epoch budget is spent. One phase unless the algorithm is staged."""
        return [Phase("train", epochs)]

    def start_phase(self, phase: Phase, train_x: torch.Tensor, train_y: torch.Tensor, total_steps: int) -> None:
        """Called once before each phase's first epoch (e.g. to cache frozen features).
        `total_steps`: the most optimizer steps the phase may take (for schedules)."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """One update on a batch; returns the batch's training loss as a 0-d tensor (not synced)."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, num_classes) of the method as it stands (at the current phase)."""
        raise NotImplementedError

    # -- what the audit checks ------------------------------------------------------------------
    def units(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups that no single backward pass may span (the locality declaration)."""
        return {"all": list(self.modules.parameters())}

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters a training step must leave untouched (none, unless a phase freezes some)."""
        return []

    def extra_metrics(self) -> dict:
        """Method-specific figures recorded with the run (e.g. per-layer accuracies)."""
        return {}

    # -- state, for early stopping's restore ----------------------------------------------------
    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.modules.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.modules.load_state_dict(state)

    def train(self, mode: bool = True) -> None:
        self.modules.train(mode)

    @classmethod
    def check_arch(cls, arch: dict) -> None:
        if arch["kind"] not in cls.supported_archs:
            raise UserError(
                f"method '{cls.name}' does not support arch '{arch.get('name', arch['kind'])}' ({arch['kind']})",
                f"use an arch of kind: {', '.join(cls.supported_archs)}",
            )
