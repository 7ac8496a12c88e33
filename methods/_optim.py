"""Optimizers by name, shared by every method so that 'adam' means the same thing everywhere."""
from __future__ import annotations

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
