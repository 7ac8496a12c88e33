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
    """A stretch of training with its own epoch budget and its own early stopping. A `fixed` phase
    is a set budget, as its paper trains it: every epoch runs, and it ends at its last state (no
    early stopping, no restore of its best-validation state)."""

    name: str
    epochs: int
    fixed: bool = False


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
        # Set by the loop before training: True when each training batch is augmented afresh
        # (the dataset's `augment`), so a method must train on the `x` it is given and never
        # serve a batch from features it cached for the unaugmented training set.
        self.augmented_inputs = False

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

    # -- what the diagnostics read (benchmark/diagnostics.py; off unless asked for) ---------------
    bp_comparable: ClassVar[bool] = True  # False: no end-to-end CE gradient to compare with (say why)
    alignment_note: ClassVar[str] = ""
    attack_note: ClassVar[str] = "FGSM differentiates the method's prediction (`predict`) by autograd"
    representations_note: ClassVar[str] = ""  # why `representations` is empty, where it is
    _update_sink = None  # set by the diagnostics while they watch one step; None otherwise

    def differentiable_scores(self, x: torch.Tensor) -> torch.Tensor | None:
        """The class scores `predict` gives, as a differentiable function of x and every trained
        parameter: the loss whose end-to-end BP gradient the alignment compares with, and what
        FGSM differentiates. Default: `predict` with autograd on (override where predict runs
        under no_grad). None where the prediction is not differentiable."""
        with torch.enable_grad():
            return self.predict(x)

    def representations(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Each trained layer's or block's output for x (name, tensor), for the per-layer linear
        probes. Default: the outputs of `self.modules["blocks"]` or of a `net` with blocks."""
        if "blocks" in self.modules:
            blocks = self.modules["blocks"]
        elif "net" in self.modules:
            blocks = getattr(self.modules["net"], "blocks", None)
        else:
            blocks = None
        if blocks is None:
            return []
        out, h = [], x
        for i, block in enumerate(blocks):
            h = block(h)
            out.append((f"block{i}", h))
        return out

    def feedback_pairs(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(layer, forward weight, fixed feedback matrix of its shape) for BioTorch's weight
        alignment; empty unless the method sends errors through fixed feedback weights."""
        return []

    def hand_over(self, params: list[nn.Parameter], signals: list[torch.Tensor]) -> None:
        """A method that updates parameters by hand (no optimizer) calls this with the gradient
        signal it is about to apply, before any momentum or learning rate: the diagnostics read
        it here. Free when nothing watches."""
        if self._update_sink is not None:
            self._update_sink(params, signals)

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
