"""PEPITA: Present the Error to Perturb the Input To modulate Activity.

Dellaferrera & Kreiman, "Error-driven Input Modulation: Solving the Credit Assignment Problem
without a Backward Pass", ICML 2022, arXiv 2201.11665. Code: GiorgiaD/PEPITA.

Algorithm, per batch (no backward pass, no autograd: the updates are written out):
1. Standard pass: h_l = ReLU(W_l h_{l-1}), output o = softmax(W_L h_{L-1}); error e = o - onehot(y).
2. Modulated pass: the input is perturbed by the error through a fixed random matrix F,
   x' = x + F e, and run through the same network: h'_l, o', e' = o' - onehot(y).
3. Updates (each from quantities available at the layer, two forward passes):
   dW_1 = (h_1 - h'_1)^T x',   dW_l = (h_l - h'_l)^T h'_{l-1} (hidden l > 1),   dW_L = e'^T h'_{L-1},
   applied as W <- W - lr * momentum-SGD(dW / batch).

- Locality: none (no backward pass at all); the audit checks that none runs.
- Targets: the labels, one-hot, compared with the softmax output.
- Prediction: argmax of the output of the standard pass.
- F: uniform in [-1, 1] * sqrt(6 / input size) * hp.f_scale (the reference's 0.05), fixed.
- Layers have no bias and He-uniform initialisation, as the reference; dropout on hidden
  activations (the reference keeps 90 %), with the same mask in both passes; as in the reference
  (numpy `functions.py`), the hidden deltas are masked once more before the update.

Defaults are the reference's MNIST command (README of GiorgiaD/PEPITA, numpy version): eta 0.1,
momentum 0.9, batch 64, dropout keep 0.9, F scale 0.05, eta x0.1 at epochs 60 and 90 of 100
(hp.schedule=step, placed at 60 % and 90 % of the run's step budget). The update is the batch
mean (the reference divides the summed per-sample updates by the batch size), so an experiment
that sets train.batch_size=128 for every method gives PEPITA half as many steps per epoch of the
same size, not larger steps. Differences from the reference: by default the harness standardises
the input with the training split's mean and standard deviation, while the reference feeds pixels
in [0, 1], which changes the size of the error's input perturbation F e relative to the image
(`dataset.normalise=none` gives the reference's pixels; `repro_pepita` uses it); the epoch budget
is the harness's. The paper reports 98.01 % on MNIST with one hidden layer of 1024 (its Table 1, 100
epochs); our `mlp_1x1024` preset is that network.
Deeper MLPs run, but the paper shows PEPITA degrading with depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.spec import Locality, Method, register
from methods._optim import SCHEDULES, schedule_factor


@dataclass
class PEPITAHyper:
    lr: float = field(metadata={"gt": 0})
    momentum: float = field(metadata={"ge": 0, "lt": 1})
    f_scale: float = field(metadata={"gt": 0})
    keep_rate: float = field(metadata={"gt": 0, "le": 1})  # dropout keep probability
    schedule: str = field(metadata={"choices": SCHEDULES})


@register
class PEPITA(Method):
    name = "pepita"
    locality = Locality("none", "two forward passes, the second on the input modulated by the output error; updates from activation differences, no backward pass")
    supported_archs = ("mlp",)
    Hyper = PEPITAHyper

    def __init__(self, arch, input_shape, num_classes, hp: PEPITAHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        n_in = int(torch.Size(input_shape).numel())
        sizes = [n_in, *arch["widths"], num_classes]
        layers = nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in zip(sizes[:-1], sizes[1:]))
        for layer in layers:
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")  # He uniform, as the reference
            layer.weight.requires_grad_(False)  # updated by hand below, never by autograd
        self.modules["layers"] = layers.to(device)
        bound = math.sqrt(6.0 / n_in)
        self.input_feedback = (torch.rand(n_in, num_classes, device=device) * 2 - 1) * bound * hp.f_scale
        self.velocity = [torch.zeros_like(layer.weight) for layer in self.modules["layers"]]
        self.steps_done, self.total_steps = 0, 1

    def start_phase(self, phase, train_x, train_y, total_steps):
        self.total_steps, self.steps_done = max(total_steps, 1), 0

    def run(self, x: torch.Tensor, masks: list[torch.Tensor] | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden activations (dropout applied) and the softmax output."""
        hidden, h = [], x
        for i, layer in enumerate(self.modules["layers"][:-1]):
            h = F.relu(layer(h))
            if masks is not None:
                h = h * masks[i]
            hidden.append(h)
        return hidden, F.softmax(self.modules["layers"][-1](h), dim=1)

    def dropout_masks(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        keep = self.hp.keep_rate
        if keep >= 1.0:
            return None
        widths = [layer.out_features for layer in self.modules["layers"][:-1]]
        return [torch.bernoulli(torch.full((len(x), w), keep, device=x.device)) / keep for w in widths]

    @torch.no_grad()
    def train_step(self, x, y, idx):
        x = x.flatten(1)
        target = F.one_hot(y, self.num_classes).float()
        masks = self.dropout_masks(x)
        hidden, out = self.run(x, masks)  # 1. standard pass
        error = out - target
        x_mod = x + error @ self.input_feedback.T  # 2. the error perturbs the input
        hidden_mod, out_mod = self.run(x_mod, masks)
        inputs_mod = [x_mod, *hidden_mod]
        deltas = [h - h_mod for h, h_mod in zip(hidden, hidden_mod)]
        if masks is not None:  # the reference masks the hidden deltas once more (they hold it already)
            deltas = [d * m for d, m in zip(deltas, masks)]
        deltas.append(out_mod - target)
        self.apply_updates([d.T @ a / len(x) for d, a in zip(deltas, inputs_mod)])
        return F.cross_entropy(torch.log(out.clamp_min(1e-12)), y)

    def apply_updates(self, grads: list[torch.Tensor]) -> None:
        self.hand_over([layer.weight for layer in self.modules["layers"]], grads)
        lr = self.hp.lr * schedule_factor(self.hp.schedule, self.steps_done, self.total_steps)
        for layer, v, g in zip(self.modules["layers"], self.velocity, grads):
            v.mul_(self.hp.momentum).add_(g, alpha=lr)  # the reference's momentum: v = m v + lr dW
            layer.weight.sub_(v)
        self.steps_done += 1

    @torch.no_grad()
    def predict(self, x):
        _, out = self.run(x.flatten(1), None)
        return torch.log(out.clamp_min(1e-12))

    def differentiable_scores(self, x):
        with torch.enable_grad():
            _, out = self.run(x.flatten(1), None)
            return torch.log(out.clamp_min(1e-12))

    def representations(self, x):
        hidden, _ = self.run(x.flatten(1), None)
        return [(f"layer{i}", h) for i, h in enumerate(hidden)]

    def units(self):
        return {f"layer{i}": list(layer.parameters()) for i, layer in enumerate(self.modules["layers"])}
