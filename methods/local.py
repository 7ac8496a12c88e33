"""Supervised local learning with auxiliary classifiers (the DGL / InfoPro family).

Belilovsky, Eickenberg, Oyallon, "Decoupled Greedy Learning of CNNs", ICML 2020 (DGL), and
Wang, Ni, Song, Yang, Huang, "Revisiting Locally Supervised Learning: an Alternative to
End-to-End Training", ICLR 2021 (InfoPro).

- Locality: per module. The network's blocks are cut into K contiguous modules (hp.modules;
  0 = one module per block). Module k reads module k-1's output *detached* and is trained, on the
  same batch, by the cross-entropy of its own small auxiliary classifier; no gradient crosses a
  module boundary. This is DGL's synchronous form (all modules step on every batch).
- Loss: cross-entropy of each module's auxiliary classifier.
- Targets: the labels.
- Prediction: the last module's classifier, which is the end-to-end network's own head (the
  same head BP trains), so the predicting network is exactly BP's architecture.
- Auxiliary classifiers (hp.aux): "dgl" (default), DGL's auxiliary network: conv-BN-ReLU layers,
  2x2 average pooling, a two-layer MLP, at widths of its own (see `dgl_head` for the one change:
  maps are pooled to at most 8x8 first); "linear", the small head (2x2 pooling + a linear map, or
  a linear map for vectors), the weakest of the family, kept for comparison. InfoPro adds a
  reconstruction decoder, which this module leaves out: it is the supervised-only variant.

Memory: only one module's activations are held for backward at a time, so the activation memory
of a training step is that of the largest module rather than the whole network. Every run
records it (`activation_memory`, bytes autograd held for backward during a step) beside BP's on
the same cell; see README.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import archs
from benchmark.spec import Locality, Method, register
from methods._optim import OptimizerHyper, make_optimizer


@dataclass
class LocalHyper(OptimizerHyper):
    modules: int = field(metadata={"ge": 0})  # K; 0 = one module per block
    aux: str = field(metadata={"choices": ("dgl", "linear")})  # auxiliary classifier kind
    aux_channels: int = field(metadata={"ge": 1})  # dgl: conv width
    aux_convs: int = field(metadata={"ge": 0})  # dgl: conv layers
    aux_hidden: int = field(metadata={"ge": 1})  # dgl: MLP hidden width


def split(n_blocks: int, k: int) -> list[range]:
    """n_blocks cut into k contiguous, nearly equal modules (earlier ones get the remainder)."""
    k = n_blocks if k == 0 else min(k, n_blocks)
    sizes = [n_blocks // k + (1 if i < n_blocks % k else 0) for i in range(k)]
    starts = [sum(sizes[:i]) for i in range(k)]
    return [range(s, s + size) for s, size in zip(starts, sizes)]


def small_head(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """hp.aux=linear: a linear map (vectors) or 2x2 average pooling then a linear map (maps)."""
    if len(shape) == 1:
        return nn.Linear(shape[0], num_classes)
    pool = min(2, shape[1])
    return nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(shape[0] * pool * pool, num_classes))


def dgl_head(shape: tuple[int, ...], num_classes: int, channels: int, convs: int, hidden: int) -> nn.Module:
    """hp.aux=dgl: DGL's auxiliary network (eugenium/DGL): a few 3x3 conv-BN-ReLU layers, average
    pooling to 2x2, then a two-layer MLP with BatchNorm. Its widths (hp.aux_channels, hp.aux_hidden)
    do not depend on the trunk's, so a thin first stage still gets a capable classifier. Feature
    maps are first average-pooled to at most 8x8 (DGL's "mlp-sr" variant also shrinks them first):
    it bounds the auxiliary net's cost on full-resolution stages. Vectors get the MLP alone."""
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(min(8, shape[1]))]
    in_ch = shape[0]
    for _ in range(convs):
        layers += [nn.Conv2d(in_ch, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        in_ch = channels
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(in_ch * 4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
               nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


@register
class LocalLearning(Method):
    name = "local"
    locality = Locality("block", "each module trained by its own auxiliary classifier on its predecessor's detached output")
    supported_archs = ("mlp", "cnn", "resnet")
    Hyper = LocalHyper

    def __init__(self, arch, input_shape, num_classes, hp: LocalHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        net = archs.build(arch, input_shape)
        groups = split(len(net.blocks), hp.modules)
        self.modules["stages"] = nn.ModuleList(nn.Sequential(*(net.blocks[i] for i in g)) for g in groups).to(device)
        end_to_end_head = archs.Chain(net, num_classes).head  # BP's head, for the last module
        self.modules["heads"] = nn.ModuleList(self.auxiliary_heads(net, groups) + [end_to_end_head]).to(device)
        self.optimizers = [
            make_optimizer(hp.optimizer, self.trained(k), hp.lr, hp.weight_decay, hp.momentum)
            for k in range(len(groups))
        ]

    def trained(self, k: int) -> list[nn.Parameter]:
        """Module k's trained parameters: its blocks and its head (a head may hold fixed copies)."""
        stage, head = self.modules["stages"][k], self.modules["heads"][k]
        return [p for p in (*stage.parameters(), *head.parameters()) if p.requires_grad]

    def auxiliary_heads(self, net: archs.Blocks, groups: list[range]) -> list[nn.Module]:
        """One auxiliary classifier per module but the last (AugLocal and MAN build theirs here)."""
        return [self.auxiliary(net.out_shapes[g[-1]], self.num_classes) for g in groups[:-1]]

    def auxiliary(self, shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if self.hp.aux == "linear":
            return small_head(shape, num_classes)
        return dgl_head(shape, num_classes, self.hp.aux_channels, self.hp.aux_convs, self.hp.aux_hidden)

    def train_step(self, x, y, idx):
        total, h = torch.zeros((), device=x.device), x
        for stage, head, optimizer in zip(self.modules["stages"], self.modules["heads"], self.optimizers):
            h = stage(h.detach())  # the boundary
            loss = F.cross_entropy(head(h), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # frees this module's graph before the next module runs
            optimizer.step()
            total += loss.detach()
        return total / len(self.optimizers)

    def predict(self, x):
        h = x
        for stage in self.modules["stages"]:
            h = stage(h)
        return self.modules["heads"][-1](h)

    def representations(self, x):
        out, h = [], x
        for k, stage in enumerate(self.modules["stages"]):
            h = stage(h)
            out.append((f"module{k}", h))
        return out

    def extra_metrics(self):
        return {"modules": len(self.modules["stages"])}

    def units(self):
        return {f"module{k}": self.trained(k) for k in range(len(self.modules["stages"]))}
