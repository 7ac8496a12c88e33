"""Mono-Forward.

Gong, Li, Abdulla, "Mono-Forward: Backpropagation-Free Algorithm for Efficient Neural Network
Training Harnessing Local Errors", arXiv 2501.09238 (2025).

- Locality: per layer. Layer i computes a_i = ReLU(W_i a_{i-1}) from the previous layer's
  detached output, and owns a projection matrix M_i (classes x width); its loss reaches only W_i
  and M_i.
- Loss: cross-entropy of the goodness scores a_i M_i^T against the label.
- Targets: the labels (no negatives are made).
- Prediction: the last layer's projection, argmax of a_L M_L^T.

Two schedules (hp.schedule): "joint", every layer updated on every batch (the paper), and "greedy",
the comparison's: layer 1 trained alone, then frozen while layer 2 trains, and so on, each layer
getting an equal share of the run's epoch budget (the comparison trained each layer 14 epochs on
MNIST, each layer with its own budget, so its MF trained longer than its BP). In the greedy
schedule the frozen layers' outputs for the training set are computed once per phase, not every
epoch, and prediction during phase k uses layer k's projection.

Differences from the paper: optimiser and learning rate are tuned by the harness like every other
method's; the paper's MNIST figures use its own longer schedules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.spec import Locality, Method, Phase, register
from methods._optim import OptimizerHyper, make_optimizer


@dataclass
class MFHyper(OptimizerHyper):
    schedule: str = field(metadata={"choices": ("joint", "greedy")})


@register
class MonoForward(Method):
    name = "mf"
    locality = Locality("layer", "each layer's cross-entropy through its own projection M_i reaches only W_i and M_i")
    supported_archs = ("mlp",)
    Hyper = MFHyper

    def __init__(self, arch, input_shape, num_classes, hp: MFHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        widths = list(arch["widths"])
        fan_ins = [int(torch.Size(input_shape).numel())] + widths[:-1]
        self.modules["layers"] = nn.ModuleList(nn.Linear(i, o) for i, o in zip(fan_ins, widths)).to(device)
        self.modules["projections"] = nn.ModuleList(nn.Linear(w, num_classes, bias=False) for w in widths).to(device)
        self.optimizers = [
            make_optimizer(hp.optimizer, [*layer.parameters(), *proj.parameters()], hp.lr, hp.weight_decay, hp.momentum)
            for layer, proj in zip(self.modules["layers"], self.modules["projections"])
        ]
        self.active = list(range(len(widths)))  # layers updated by train_step (greedy: one)
        self._frozen_input: torch.Tensor | None = None  # greedy: cached input of the active layer

    def phases(self, epochs):
        if self.hp.schedule == "joint":
            return [Phase("joint", epochs)]
        n = len(self.modules["layers"])
        per_layer = max(1, epochs // n)
        return [Phase(f"layer{i}", per_layer) for i in range(n)]

    @torch.no_grad()
    def forward_through(self, x: torch.Tensor, n_layers: int, chunk: int = 5000) -> torch.Tensor:
        out = []
        for start in range(0, len(x), chunk):
            h = x[start : start + chunk].flatten(1)
            for layer in self.modules["layers"][:n_layers]:
                h = F.relu(layer(h))
            out.append(h)
        return torch.cat(out)

    def start_phase(self, phase, train_x, train_y, total_steps):
        if self.hp.schedule == "greedy":
            k = int(phase.name.removeprefix("layer"))
            self.active = [k]
            # Layers before k are frozen from now on: their output is computed once per phase,
            # unless every batch is augmented afresh (then it is computed from the batch).
            self._frozen_input = self.forward_through(train_x, k) if k > 0 and not self.augmented_inputs else None

    def train_step(self, x, y, idx):
        first = self.active[0]
        h = self._frozen_input[idx] if self._frozen_input is not None else self.forward_through(x, first)
        total = torch.zeros((), device=x.device)
        for i in self.active:
            a = F.relu(self.modules["layers"][i](h.detach()))  # the boundary: input detached
            loss = F.cross_entropy(self.modules["projections"][i](a), y)
            self.optimizers[i].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers[i].step()
            total += loss.detach()
            h = a
        return total

    def predict(self, x):
        top = self.active[-1]
        return self.modules["projections"][top](self.forward_through(x, top + 1))

    def differentiable_scores(self, x):
        top, h = self.active[-1], x.flatten(1)
        with torch.enable_grad():
            for layer in self.modules["layers"][: top + 1]:
                h = F.relu(layer(h))
            return self.modules["projections"][top](h)

    def representations(self, x):
        out, h = [], x.flatten(1)
        for i, layer in enumerate(self.modules["layers"]):
            h = F.relu(layer(h))
            out.append((f"layer{i}", h))
        return out

    def units(self):
        return {
            f"layer{i}": [*layer.parameters(), *proj.parameters()]
            for i, (layer, proj) in enumerate(zip(self.modules["layers"], self.modules["projections"]))
        }
