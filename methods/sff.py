"""Scalable Forward-Forward (SFF).

Krutsylo, "Scalable Forward-Forward Algorithm", arXiv 2501.03176 (2025).

- Locality: per block. Each block reads the previous block's output, layer-normalised (per
  sample, over all its features, no learned affine; hp.layer_norm, on as the author describes it)
  and *detached*; backprop runs
  only inside the block (through its convolutions, BatchNorms and residual shortcut) and its
  class head. The blocks of a ResNet-18 (`resnet` arch: stem + 8 residual blocks) are the units.
- Goodness per class: a 1x1 convolution maps the block's output to one channel per class; the
  goodness of class c is the mean square of channel c over the spatial positions. Unlike FF's
  single goodness, there are no negative samples: the label chooses which goodness must win.
- Loss: cross-entropy over the blocks' class goodnesses (softmax over classes of the goodness).
- Targets: the labels.
- Prediction: the average over blocks of each block's softmax vote; hp.vote_from skips the
  first blocks (their features are too shallow to vote well).

Implemented from the paper's description and its author's summary (krutsylo.neocities.org/sff): no
public reference code was available to check against, so loss scale (mean vs sum of squares), the
voting set and where the normalisation sits (the goodness reads the raw block output, the next
block its layer-normalised copy, as FF does between layers) are our choices, all stated here. The
paper trains ResNet-18 (width 64) on CIFAR-10 for many epochs on a GPU; the `resnet18_w8` preset
(width 8) keeps a CPU run to minutes per epoch.
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
class SFFHyper(OptimizerHyper):
    vote_from: int = field(metadata={"ge": 0})  # first block whose vote counts at prediction
    layer_norm: bool = field(metadata={})  # the author's: each block's output layer-normalised


def normalise(h: torch.Tensor) -> torch.Tensor:
    """Layer normalisation of each sample's block output over all its features (no learned scale
    or shift): as in FF, the next block sees the pattern of the activity, not its size, so the
    goodness a block reached cannot be read off by the next one."""
    return F.layer_norm(h, h.shape[1:])


def class_goodness(maps: torch.Tensor) -> torch.Tensor:
    """(N, classes, H, W) -> (N, classes): mean square activity of each class channel."""
    return maps.pow(2).mean(dim=(2, 3))


@register
class ScalableForwardForward(Method):
    name = "sff"
    locality = Locality("block", "backprop only inside each block and its 1x1 class convolution; block inputs detached")
    supported_archs = ("cnn", "resnet")
    Hyper = SFFHyper

    def __init__(self, arch, input_shape, num_classes, hp: SFFHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        net = archs.build(arch, input_shape)
        self.modules["blocks"] = net.blocks.to(device)
        self.modules["class_convs"] = nn.ModuleList(
            nn.Conv2d(shape[0], num_classes, kernel_size=1) for shape in net.out_shapes
        ).to(device)
        self.optimizers = [
            make_optimizer(hp.optimizer, [*b.parameters(), *c.parameters()], hp.lr, hp.weight_decay, hp.momentum)
            for b, c in zip(self.modules["blocks"], self.modules["class_convs"])
        ]
        self.vote_from = min(hp.vote_from, len(net.blocks) - 1)

    def next_input(self, h: torch.Tensor) -> torch.Tensor:
        return normalise(h) if self.hp.layer_norm else h

    def train_step(self, x, y, idx):
        total, h = torch.zeros((), device=x.device), x
        for block, conv, optimizer in zip(self.modules["blocks"], self.modules["class_convs"], self.optimizers):
            out = block(h.detach())  # the boundary
            loss = F.cross_entropy(class_goodness(conv(out)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            h = self.next_input(out)
        return total / len(self.optimizers)

    def predict(self, x):
        votes, h = [], x
        for i, (block, conv) in enumerate(zip(self.modules["blocks"], self.modules["class_convs"])):
            out = block(h)
            if i >= self.vote_from:
                votes.append(F.softmax(class_goodness(conv(out)), dim=1))
            h = self.next_input(out)
        return torch.log(torch.stack(votes).mean(0).clamp_min(1e-12))

    def extra_metrics(self):
        return {"voting_blocks": len(self.modules["blocks"]) - self.vote_from}

    def units(self):
        return {
            f"block{i}": [*b.parameters(), *c.parameters()]
            for i, (b, c) in enumerate(zip(self.modules["blocks"], self.modules["class_convs"]))
        }
