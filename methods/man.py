"""MAN: local learning with a momentum auxiliary network.

Su, Zhu, Shi, Han, Qiu, Luo, Wei, Gao, "Momentum Auxiliary Network for Supervised Local Learning",
ECCV 2024 (arXiv 2407.05623; extended as MAN++, arXiv 2507.16279). No reference code was found in
the stores we can read; this follows the paper's description on top of `local` (methods/local.py).

- Locality: per module, as `local`: module k reads module k-1's output detached and is trained
  by its own auxiliary network's cross-entropy.
- Auxiliary network of module k (the algorithm's change): the *next* module's blocks, as an
  exponential moving average of their parameters (hp.ema_decay), then a learnable bias (one per
  channel or unit, the paper's "learnable bias" that absorbs the mismatch between module k's
  features and those the next module was trained on), then the auxiliary classifier `local`
  would put after the next module. The EMA copy is a copy: its parameters have no gradient and
  are moved only by the EMA after each step, so module k's loss passes *through* the copy into
  module k but never into module k+1 itself (the audit checks it). The last auxiliary network
  averages the last module's blocks; the last module predicts through BP's head, as in `local`.
- EMA: after every step, copy <- decay x copy + (1 - decay) x next module (parameters and
  BatchNorm statistics), starting from the next module's initial weights.
- Targets: the labels. Prediction: the last module's head (BP's head).

Choices the paper leaves open here: the decay (0.995 by default) and where the bias sits (after
the copied blocks, before the classifier).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.spec import register
from methods.local import LocalHyper, LocalLearning


@dataclass
class MANHyper(LocalHyper):
    ema_decay: float = field(metadata={"ge": 0, "lt": 1})


class LearnableBias(nn.Module):
    """x + b, one b per channel (maps) or per unit (vectors), starting at zero."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of module whose parameters never take a gradient (the EMA moves them)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@register
class MomentumAuxiliaryNetwork(LocalLearning):
    name = "man"
    Hyper = MANHyper

    def auxiliary_heads(self, net, groups):
        stages = self.modules["stages"]
        heads = []
        for k, group in enumerate(groups[:-1]):
            nxt = groups[k + 1]
            shape = net.out_shapes[nxt[-1]]
            heads.append(nn.Sequential(frozen_copy(stages[k + 1]), LearnableBias(shape[0]),
                                       self.auxiliary(shape, self.num_classes)))
        return heads

    def train_step(self, x, y, idx):
        loss = super().train_step(x, y, idx)
        self.update_momentum_copies()
        return loss

    @torch.no_grad()
    def update_momentum_copies(self) -> None:
        decay = self.hp.ema_decay
        for k, head in enumerate(self.modules["heads"][:-1]):
            twin, source = head[0], self.modules["stages"][k + 1]
            for p_twin, p in zip(twin.parameters(), source.parameters()):
                p_twin.lerp_(p, 1 - decay)
            for b_twin, b in zip(twin.buffers(), source.buffers()):
                if b.is_floating_point():
                    b_twin.lerp_(b, 1 - decay)
                else:
                    b_twin.copy_(b)
