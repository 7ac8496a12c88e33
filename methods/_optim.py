"""Optimizers and learning-rate schedules by name, shared by every method so that 'adam' or a
'step' schedule means the same thing everywhere."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

OPTIMIZERS = ("sgd", "nag", "adam", "adamw")  # nag: SGD with Nesterov momentum


@dataclass
class OptimizerHyper:
    """The optimiser settings most methods share; a method's Hyper adds its own fields after these."""

    optimizer: str = field(metadata={"choices": OPTIMIZERS})
    lr: float = field(metadata={"gt": 0})
    weight_decay: float = field(metadata={"ge": 0})
    momentum: float = field(metadata={"ge": 0, "le": 1})  # SGD and NAG only


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nag":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name}")  # unreachable: Hyper's choices are checked first


SCHEDULES = ("none", "cosine", "step")


def schedule_factor(kind: str, step: int, total_steps: int, milestones=(0.6, 0.9)) -> float:
    """The learning rate's multiplier after `step` of a phase's `total_steps` optimizer steps.
    step: x0.1 at each milestone, a fraction of the step budget (BioTorch's x0.1 at epochs 50 and 75
    of 100 is [0.5, 0.75]; PEPITA's at 60 and 90, the default); cosine: to zero over the budget;
    none: constant."""
    progress = min(step / max(total_steps, 1), 1.0)
    if kind == "step":
        return 0.1 ** sum(progress >= m for m in milestones)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def lr_scheduler(kind: str, optimizer: torch.optim.Optimizer, total_steps: int, milestones=(0.6, 0.9)):
    """A per-step scheduler for `optimizer` following `schedule_factor`, or None for 'none'."""
    if kind == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ScheduleFactor(kind, max(total_steps, 1), tuple(milestones)))


@dataclass(frozen=True)
class ScheduleFactor:
    """`schedule_factor` of one phase, as a picklable callable (a run's checkpoint pickles the
    method with its schedulers; a lambda would not pickle)."""

    kind: str
    total_steps: int
    milestones: tuple

    def __call__(self, step: int) -> float:
        return schedule_factor(self.kind, step, self.total_steps, self.milestones)


@dataclass
class ScheduledHyper(OptimizerHyper):
    """OptimizerHyper plus a learning-rate schedule over each phase's step budget. The defaults are
    what a record written before these keys existed had (a constant rate). Keyword-only, so a
    method's Hyper can add fields without defaults after them."""

    schedule: str = field(default="none", kw_only=True, metadata={"choices": SCHEDULES})
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75], kw_only=True,
                                    metadata={"gt": 0, "lt": 1})  # step only
