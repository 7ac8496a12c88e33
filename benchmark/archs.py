"""Architectures, in one place, as ordered lists of blocks.

A network is `Blocks`: an `nn.ModuleList` of blocks applied in order plus the shape each block
emits. Layer-local methods train and detach block by block; end-to-end methods chain them and add
a linear head. Presets live in configs/arch/*.yaml.

- `mlp`: flatten, then per width a block Linear -> ReLU.
- `cnn`: the 3-block CNN of Cascaded-Forward and its BP baseline: per block
  conv3x3 (padding 1) -> ReLU -> maxpool 2 -> BatchNorm, channels 32, 128, 512.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.errors import UserError


@dataclass
class Blocks:
    blocks: nn.ModuleList
    out_shapes: list[tuple[int, ...]]  # shape of each block's output, batch dimension left out

    def out_features(self, i: int) -> int:
        return int(torch.Size(self.out_shapes[i]).numel())


def mlp(input_shape: tuple[int, ...], widths: list[int], bias: bool = True) -> Blocks:
    blocks, shapes, fan_in = [], [], int(torch.Size(input_shape).numel())
    for i, width in enumerate(widths):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(fan_in, width, bias=bias), nn.ReLU()]
        blocks.append(nn.Sequential(*layers))
        shapes.append((width,))
        fan_in = width
    return Blocks(nn.ModuleList(blocks), shapes)


def cnn(input_shape: tuple[int, ...], channels: list[int], kernel_size: int = 3) -> Blocks:
    in_ch, height, width = input_shape
    blocks, shapes = [], []
    for out_ch in channels:
        if height < 2 or width < 2:
            raise UserError(
                f"arch.channels={channels} pools the {input_shape[1]}x{input_shape[2]} input below 1 pixel",
                "use fewer blocks for this dataset",
            )
        blocks.append(
            nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(out_ch),
            )
        )
        in_ch, height, width = out_ch, height // 2, width // 2
        shapes.append((out_ch, height, width))
    return Blocks(nn.ModuleList(blocks), shapes)


ARCHS = {"mlp": mlp, "cnn": cnn}


def build(arch_cfg: dict, input_shape: tuple[int, ...]) -> Blocks:
    """Build the blocks of `arch_cfg` (a configs/arch/*.yaml mapping) for inputs of `input_shape`."""
    kind = arch_cfg["kind"]
    if kind not in ARCHS:
        raise UserError(f"unknown arch.kind '{kind}'", f"choose one of: {', '.join(ARCHS)}")
    params = {k: v for k, v in arch_cfg.items() if k not in ("kind", "name")}
    return ARCHS[kind](tuple(input_shape), **params)


class Chain(nn.Module):
    """Blocks applied in order, then a linear head: the end-to-end network BP trains."""

    def __init__(self, net: Blocks, num_classes: int):
        super().__init__()
        self.blocks = net.blocks
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(net.out_features(len(net.blocks) - 1), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)
