"""AugLocal: local learning whose auxiliary networks are built from the layers after each module.

Ma, Wu, Zhang, Chen, Wang, Zhao, Zeng, Tan, "Scaling Supervised Local Learning with Augmented
Auxiliary Networks", ICLR 2024; code ChenxiangMA/AugLocal (read for the sampling rule and the
pyramidal depth; `networks/auxiliary_nets.py`, `networks/resnet.py`).

- Locality: per module, as `local` (methods/local.py, whose training step this reuses): module k
  reads module k-1's output detached and is trained by its own auxiliary network's cross-entropy.
- Auxiliary network of module k (the algorithm's one change): a small copy of the *rest of the
  network*. With L the index of module k's last block and n blocks in all, it takes d_k of the
  blocks after L, sampled uniformly: every one of them if d_k >= n - 1 - L, else the blocks at
  round(L + i (n - 1 - L) / d_k), i = 1..d_k. Each sampled block is rebuilt, freshly initialised
  and trained only by module k's loss, at that block's width (a conv block with its pooling, a
  residual block with stride 2 where the sampled block's maps are smaller, a Linear+activation
  for an MLP), then global average pooling and a linear classifier (with BatchNorm before it when
  d_k = 1, as the reference does).
- Depth: pyramidal (the reference's --pyramid): d_k falls linearly with k from hp.aux_depth at the
  first module towards hp.aux_depth x (1 - c) + c at the last auxiliary one (c = hp.pyramid_coeff),
  d_k = max(1, round(...)); hp.pyramid=false keeps d_k = hp.aux_depth everywhere.
- Targets: the labels. Prediction: the last module's head, which is BP's head (as `local`).

Differences from the reference: it cuts ResNet-32/110 into one module per residual block and
trains 400 epochs with SGD (lr 0.8, batch 1024, cosine); here the cut, the network and the budget
are the experiment's (default: one module per block of the harness's cnn / resnet archs), and the
optimiser is tuned as for `local`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark import archs
from benchmark.spec import register
from methods.local import LocalHyper, LocalLearning


@dataclass
class AugLocalHyper(LocalHyper):
    aux_depth: int = field(metadata={"ge": 1})  # d: blocks sampled into the first module's auxiliary network
    pyramid: bool = field(metadata={})  # the auxiliary depth falls with the module's depth
    pyramid_coeff: float = field(metadata={"ge": 0, "le": 1})


def aux_depths(n_aux: int, depth: int, pyramid: bool, coeff: float) -> list[int]:
    """d_k for the n_aux auxiliary networks (the reference's pyramidal rule)."""
    if not pyramid or n_aux < 2:
        return [depth] * n_aux
    return [max(1, round(depth * (1 - k * coeff / (n_aux - 1)) + k * coeff / (n_aux - 1))) for k in range(n_aux)]


def sampled_blocks(last: int, n_blocks: int, depth: int) -> list[int]:
    """Indices of the blocks after `last` that an auxiliary network of `depth` imitates."""
    remaining = n_blocks - 1 - last
    if depth >= remaining:
        return list(range(last + 1, n_blocks))
    return [round(last + remaining / depth * i) for i in range(1, depth + 1)]


def block_like(arch: dict, net: archs.Blocks, j: int, in_shape: tuple[int, ...]) -> nn.Module:
    """A fresh block with block j's width and kind, reading `in_shape`."""
    out_shape = net.out_shapes[j]
    if arch["kind"] == "mlp":
        return nn.Sequential(nn.Linear(in_shape[0], out_shape[0]), archs.ACTIVATIONS[arch.get("activation", "relu")]())
    if arch["kind"] == "cnn":
        layers = [nn.Conv2d(in_shape[0], out_shape[0], arch.get("kernel_size", 3), padding=arch.get("kernel_size", 3) // 2),
                  nn.ReLU()]
        if in_shape[1] >= 2:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers, nn.BatchNorm2d(out_shape[0]))
    stride = 2 if out_shape[1] < in_shape[1] else 1
    return archs.BasicBlock(in_shape[0], out_shape[0], stride)


def output_shape(block: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(block.eval()(torch.zeros(2, *in_shape)).shape[1:])


@register
class AugLocal(LocalLearning):
    name = "auglocal"
    Hyper = AugLocalHyper

    def auxiliary_heads(self, net, groups):
        depths = aux_depths(len(groups) - 1, self.hp.aux_depth, self.hp.pyramid, self.hp.pyramid_coeff)
        self.aux_blocks = []  # which blocks each auxiliary network imitates (recorded with the run)
        heads = []
        for group, depth in zip(groups[:-1], depths):
            indices = sampled_blocks(group[-1], len(net.blocks), depth)
            self.aux_blocks.append(indices)
            layers, shape = [], net.out_shapes[group[-1]]
            for j in indices:
                block = block_like(self.arch, net, j, shape)
                shape = output_shape(block, shape)
                layers.append(block.train())
            heads.append(nn.Sequential(*layers, *classifier(shape, self.num_classes, batch_norm=len(indices) <= 1)))
        return heads

    def extra_metrics(self):
        return {**super().extra_metrics(), "aux_blocks": self.aux_blocks}


def classifier(shape: tuple[int, ...], num_classes: int, batch_norm: bool) -> list[nn.Module]:
    """Global average pooling (maps) then a linear layer, BatchNorm first for a one-block net."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if len(shape) == 3 else []
    if batch_norm:
        layers.append(nn.BatchNorm1d(shape[0]))
    return layers + [nn.Linear(shape[0], num_classes)]
