"""Physical forward-forward (PhyFF / PhyLL): model-free training of deep physical networks.

Momeni, Rahmani, Mallejac, del Hougne, Fleury, "Backpropagation-free training of deep physical
neural networks", Science 382 (2023), arXiv 2304.11042. Reference code: MomeniAli/PhyLL
(Optics/optics_pnn.py, the image-classification network; main.py, its all-digital twin), read
for every detail below.

The network alternates layers that can only be *run* (a physical system: light through a
multimode medium, sound through a cavity) with small digital layers that are trained:
    h_0 = input with the label written in;  h_k = D_k(P_k(h_{k-1}))
P_k is the physical layer: a fixed, noisy, non-differentiable black box. Nothing about it is
known to the training rule or modelled by it; it is run forward, under no_grad, and its output is
just data. D_k is a digital Linear (with bias), the only thing trained.

- Local loss (per layer, the paper's contrastive rule): the goodness of D_k's output is its cosine
  similarity with a fixed random unit vector p_k, g = cos(|h_k|, p_k); for the same image with its
  true label (positive) and with a wrong one (negative), loss = softplus(-threshold * (g_pos -
  g_neg)), mean over the batch. Each layer's input is the previous layer's output, detached.
- Positives and negatives: the label is written as a block of 10 rows the image's width, all zero
  but the label's row, which holds the batch's largest |pixel|; the block goes above *and* below the
  image (the reference's overlay for the optical network). Negatives carry a wrong label drawn
  uniformly from the other classes.
- Prediction: every label written in turn; the label whose goodness summed over the layers is
  largest wins.
- Optimisation as the reference: each layer takes hp.internal_steps Adam steps on every batch
  (20 there, on batches of 10,000 images), layer after layer; threshold 5; lr 5e-5 (the optical
  network's; its digital twin, main.py, uses 1e-4).

The physical layer here is a simulation, since this benchmark has no optics bench: a fixed random
complex transmission matrix (real and imaginary parts N(0, 1/fan_in)), the detected field's
magnitude |A x| as the reference's camera reads |ifft(T fft(x))|, plus fresh Gaussian read-out
noise on every pass (hp.physical_noise, relative to the mean magnitude). The reference's
transmission matrix is a measured one (a data.mat not in its repository), its input goes through
an FFT, a mask, 2x upsampling and its output through 3x3 average pooling to 26x26 detectors; ours
is the same kind of map (a fixed complex linear transform, then a magnitude) without those
instrument details. Its vector p is shared by the layers after the first (p_vector1), as here.

Locality: per layer. The transmission matrices are parameters that *would* receive gradient if
anything traced them (requires_grad on), but they belong to no unit and are declared frozen: the
audit fails if any backward pass reaches them or if they change, so it proves that the black box is
never differentiated through, and a test shows it catching a version that is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.spec import Locality, Method, register
from methods._optim import OptimizerHyper, make_optimizer

LABEL_ROWS = 10  # the label block's height: one row per class (the reference's X = 10)


@dataclass
class PFFHyper(OptimizerHyper):
    threshold: float = field(metadata={"gt": 0})  # the contrastive loss's scale (reference: 5)
    internal_steps: int = field(metadata={"ge": 1})  # optimiser steps per layer on each batch (reference: 20)
    physical_noise: float = field(metadata={"ge": 0})  # read-out noise, relative to the mean magnitude


class PhysicalLayer(nn.Module):
    """A simulated physical system: out = |A x| + noise, A a fixed random complex matrix. Run only
    forward (under no_grad by its caller's contract, and `forward` enforces it)."""

    def __init__(self, fan_in: int, fan_out: int, noise: float):
        super().__init__()
        scale = 1 / math.sqrt(fan_in)
        # requires_grad stays on so that the audit would see any backward pass reaching them.
        self.real = nn.Parameter(torch.randn(fan_out, fan_in) * scale)
        self.imag = nn.Parameter(torch.randn(fan_out, fan_in) * scale)
        self.noise = noise

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = torch.sqrt((x @ self.real.T) ** 2 + (x @ self.imag.T) ** 2)
        if self.noise > 0:
            level = self.noise * magnitude.mean(dim=1, keepdim=True)
            magnitude = magnitude + level * torch.randn_like(magnitude)
        return magnitude


@register
class PhysicalForwardForward(Method):
    name = "pff"
    locality = Locality("layer", "each digital layer's loss reaches only that layer; the physical layers are run "
                                 "forward only (no_grad) and are frozen")
    supported_archs = ("mlp",)
    Hyper = PFFHyper
    compilable = False
    compile_note = "the physical layers run under no_grad by design; only the small digital layers would compile"

    def __init__(self, arch, input_shape, num_classes, hp: PFFHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        if num_classes > LABEL_ROWS:
            raise ValueError(f"pff writes the label as one of {LABEL_ROWS} rows; this dataset has {num_classes} classes")
        width = int(input_shape[-1])  # the label rows are as wide as the image
        fan_in = int(torch.Size(input_shape).numel()) + 2 * LABEL_ROWS * width
        widths = list(arch["widths"])
        self.modules["physical"] = nn.ModuleList(
            PhysicalLayer(a, b, hp.physical_noise) for a, b in zip([fan_in] + widths[:-1], widths)).to(device)
        self.modules["digital"] = nn.ModuleList(nn.Linear(w, w) for w in widths).to(device)
        self.optimizers = [make_optimizer(hp.optimizer, layer.parameters(), hp.lr, hp.weight_decay, hp.momentum)
                           for layer in self.modules["digital"]]
        # The goodness targets: fixed random unit vectors, one for the first layer and one shared
        # by the later ones (the reference's p_vector0 and p_vector1), where their widths allow.
        drawn: dict[tuple[int, int], torch.Tensor] = {}
        for k, w in enumerate(widths):
            target = drawn.setdefault((min(k, 1), w), F.normalize(torch.randn(w), dim=0))
            self.modules.register_buffer(f"target{k}", target.clone().to(device))

    # -- inputs with a label written in ---------------------------------------------------------
    def with_label(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """x as rows of its width, a 10-row label block above and below, flattened (no label
        written where `labels` is None)."""
        rows = x.reshape(len(x), -1, x.shape[-1])
        block = torch.zeros(len(x), LABEL_ROWS, rows.shape[-1], device=x.device, dtype=x.dtype)
        if labels is not None:
            block[torch.arange(len(x), device=x.device), labels] = x.abs().max()
        return torch.cat([block, rows, block], dim=1).flatten(1)

    def wrong_labels(self, y: torch.Tensor) -> torch.Tensor:
        offset = torch.randint(1, self.num_classes, y.shape, device=y.device)
        return (y + offset) % self.num_classes

    # -- the local loss -------------------------------------------------------------------------
    def goodness(self, k: int, h: torch.Tensor) -> torch.Tensor:
        target = getattr(self.modules, f"target{k}")
        return F.cosine_similarity(h.abs(), target.expand_as(h), dim=1, eps=1e-6)

    def layer_output(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.modules["digital"][k](self.modules["physical"][k](h))

    def train_step(self, x, y, idx):
        h_pos, h_neg = self.with_label(x, y), self.with_label(x, self.wrong_labels(y))
        total = torch.zeros((), device=x.device)
        for k, optimizer in enumerate(self.optimizers):
            # The physical layer runs once per batch: its output is data for the digital layer's steps.
            # Positives and negatives in one batch (one matrix product per step instead of two).
            seen = self.modules["physical"][k](torch.cat([h_pos, h_neg]))
            digital = self.modules["digital"][k]
            for _ in range(self.hp.internal_steps):
                g_pos, g_neg = self.goodness(k, digital(seen)).chunk(2)
                loss = F.softplus(-self.hp.threshold * (g_pos - g_neg)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += loss.detach()
            with torch.no_grad():  # the boundary: the next layer sees this one's output as data
                h_pos, h_neg = digital(seen).chunk(2)
        return total

    # -- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x):
        scores = []
        for label in range(self.num_classes):
            h = self.with_label(x, torch.full((len(x),), label, device=x.device, dtype=torch.long))
            total = torch.zeros(len(x), device=x.device)
            for k in range(len(self.optimizers)):
                h = self.layer_output(k, h)
                total += self.goodness(k, h)
            scores.append(total)
        # Summed cosine similarities lie in [-L, L]; scaled so a softmax (validation loss) can use them.
        return self.hp.threshold * torch.stack(scores, dim=1)

    # -- what the audit and the diagnostics read -----------------------------------------------
    def units(self):
        return {f"digital{k}": list(layer.parameters()) for k, layer in enumerate(self.modules["digital"])}

    def frozen_parameters(self):
        return list(self.modules["physical"].parameters())

    bp_comparable = False
    alignment_note = ("the physical layers are a black box run forward only: no end-to-end gradient exists to "
                      "compare with")
    attack_note = "no FGSM: the prediction runs through the physical black box, which has no gradient"

    def differentiable_scores(self, x):
        return None

    def representations(self, x):
        out, h = [], self.with_label(x, None)  # no label written: what the image alone evokes
        with torch.no_grad():
            for k in range(len(self.optimizers)):
                h = self.layer_output(k, h)
                out.append((f"layer{k}", h))
        return out
