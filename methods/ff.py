"""Forward-Forward.

Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", arXiv 2212.13345 (2022).
Reference implementation followed for the details the paper leaves open: loeweX/Forward-Forward.

- Locality: per layer. Each layer has its own loss and its own optimizer; its input is the
  previous layer's output, length-normalised and detached, so no gradient reaches earlier layers.
  The linear read-out (prediction mode "linear") is its own unit and reads detached activations.
- Loss: goodness g = sum of squared activations of the layer; logistic loss on g - theta, with
  theta = threshold_per_unit x width: positives pushed above theta, negatives below.
  Optional peer normalisation (loeweX): keep each unit's running mean activity on positives close
  to the layer's mean.
- Positives / negatives: the image with the true label written one-hot into its first 10 input
  values / with a wrong label there, drawn uniformly from the other classes (never the true one,
  unlike a popular re-implementation that draws any label). Each layer's input is divided by its
  root-mean-square, so only its direction passes on.
- Prediction, both available (hp.predict):
  "goodness": every label written in turn (the ten candidates as one batched pass); the label
  whose goodness, summed over the layers after the first, is largest wins (the paper's method).
  "linear": a linear classifier, trained alongside, on the normalised activations of the layers
  after the first for the image with a neutral label (0.1 everywhere). It is trained only when
  the run predicts with it (loeweX trains it always, as a probe; that cost is not FF's).
- Schedule: loeweX's linear learning-rate cooldown over the second half of the budget
  (hp.lr_cooldown, on by default as in the reference), for the layers and the read-out.

Differences from the paper: the paper's MNIST figure (1.36% error) used 60 epochs of 4x2000 with
full-batch-like schedules we do not reproduce; here the epoch budget is the experiment's, shared
with BP. Batch size: loeweX's 100; on small datasets the harness lowers it so an epoch has at least
75 steps (configs/method/ff.yaml), since FF needs many small steps (digits at batch 128 gives 10
steps an epoch and FF stays near chance). From loeweX we take the initialisation (N(0, 1/width)
weights, zero bias), the RMS normalisation, theta = width, peer normalisation and the
"full-gradient ReLU" (the gradient passes where the unit is off, hp.full_grad_relu) -- a trick the
paper does not describe. Differences from the comparison's code (Przemyslaw11/BeyondBackpropagation): we
default to AdamW as its best MNIST setting does, but its threshold convention and tuned values
differ (our theta is per unit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.spec import Locality, Method, register
from methods._optim import OPTIMIZERS, make_optimizer


@dataclass
class FFHyper:
    optimizer: str = field(metadata={"choices": OPTIMIZERS})
    lr: float = field(metadata={"gt": 0})
    weight_decay: float = field(metadata={"ge": 0})
    momentum: float = field(metadata={"ge": 0, "le": 1})
    threshold_per_unit: float = field(metadata={"gt": 0})
    peer_normalization: float = field(metadata={"ge": 0})
    peer_momentum: float = field(metadata={"ge": 0, "le": 1})
    full_grad_relu: bool = field(metadata={})
    predict: str = field(metadata={"choices": ("goodness", "linear")})
    classifier_lr: float = field(metadata={"gt": 0})
    classifier_weight_decay: float = field(metadata={"ge": 0})
    lr_cooldown: bool = field(metadata={})  # loeweX: lr decays linearly to 0 over the second half


def cooldown_factor(step: int, total_steps: int) -> float:
    """loeweX's schedule: full rate for the first half of the budget, then a linear decay to zero
    (loeweX steps it per epoch; here per optimizer step, over the phase's step budget)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 if progress <= 0.5 else 2.0 * (1.0 - progress)


class FullGradReLU(torch.autograd.Function):
    """ReLU forward; identity backward (loeweX): off units still learn to turn on."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


def rms_normalise(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide by the root-mean-square: the length is removed, only the direction passes on."""
    return z / (z.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)


@register
class ForwardForward(Method):
    name = "ff"
    locality = Locality("layer", "each layer's loss reaches only that layer; the read-out reads detached activations")
    supported_archs = ("mlp",)
    Hyper = FFHyper

    def __init__(self, arch, input_shape, num_classes, hp: FFHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        in_features = int(torch.Size(input_shape).numel())
        if in_features < num_classes:
            raise ValueError(f"FF writes the label into the first {num_classes} inputs; the input has {in_features}")
        widths = list(arch["widths"])
        layers = nn.ModuleList()
        for fan_in, width in zip([in_features] + widths[:-1], widths):
            layer = nn.Linear(fan_in, width)
            nn.init.normal_(layer.weight, std=1 / math.sqrt(width))
            nn.init.zeros_(layer.bias)
            layers.append(layer)
        self.modules["layers"] = layers.to(device)
        self.readout_layers = self.voting_layers(len(widths))
        classifier = nn.Linear(sum(widths[i] for i in self.readout_layers), num_classes, bias=False)
        nn.init.zeros_(classifier.weight)
        self.modules["classifier"] = classifier.to(device)
        self.optimizers = [
            make_optimizer(hp.optimizer, layer.parameters(), hp.lr, hp.weight_decay, hp.momentum) for layer in layers
        ]
        self.classifier_optimizer = make_optimizer(
            hp.optimizer, classifier.parameters(), hp.classifier_lr, hp.classifier_weight_decay, hp.momentum
        )
        self.running_means = [torch.full((w,), 0.5, device=device) for w in widths]
        self.relu = FullGradReLU.apply if hp.full_grad_relu else F.relu
        self.steps_done, self.total_steps = 0, 1

    @staticmethod
    def voting_layers(n_layers: int) -> list[int]:
        """The layers the goodness vote and the linear read-out use: those after the first
        (Hinton, sec. 3.3: the first layer's goodness says little beyond the input's)."""
        return list(range(1, n_layers)) or [0]

    def start_phase(self, phase, train_x, train_y, total_steps):
        self.steps_done, self.total_steps = 0, max(total_steps, 1)

    def apply_cooldown(self) -> None:
        if not self.hp.lr_cooldown:
            return
        factor = cooldown_factor(self.steps_done, self.total_steps)
        for optimizer in self.optimizers:
            optimizer.param_groups[0]["lr"] = self.hp.lr * factor
        self.classifier_optimizer.param_groups[0]["lr"] = self.hp.classifier_lr * factor

    # -- inputs with a label written in ---------------------------------------------------------
    def with_label(self, x: torch.Tensor, label_values: torch.Tensor) -> torch.Tensor:
        """Flattened x with its first num_classes values replaced by `label_values` (N, C)."""
        flat = x.flatten(1).clone()
        flat[:, : self.num_classes] = label_values
        return flat

    def wrong_labels(self, y: torch.Tensor) -> torch.Tensor:
        """A label different from y, uniform over the other classes."""
        offset = torch.randint(1, self.num_classes, y.shape, device=y.device)
        return (y + offset) % self.num_classes

    # -- the local loss -------------------------------------------------------------------------
    def margin(self, a: torch.Tensor) -> torch.Tensor:
        """Goodness minus the threshold, per row: the logit of "this input is positive"."""
        return a.pow(2).sum(dim=1) - self.hp.threshold_per_unit * a.shape[1]

    def layer_loss(self, i: int, a: torch.Tensor, n_pos: int, others: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Logistic loss of layer i's margin; `others` (constant, no gradient) is added to the
        logit by the collaborative variant (methods/lcff.py), 0 here."""
        logit = self.margin(a) + others
        is_positive = torch.zeros_like(logit)
        is_positive[:n_pos] = 1.0
        loss = F.binary_cross_entropy_with_logits(logit, is_positive)
        if self.hp.peer_normalization > 0:
            m = self.hp.peer_momentum
            self.running_means[i] = self.running_means[i].detach() * m + a[:n_pos].mean(0) * (1 - m)
            peer = (self.running_means[i].mean() - self.running_means[i]).pow(2).mean()
            loss = loss + self.hp.peer_normalization * peer
        return loss

    def positives_then_negatives(self, x, y) -> torch.Tensor:
        """The step's first layer input: x with its true label, then x with a wrong label, normalised."""
        one_hot = F.one_hot(y, self.num_classes).float()
        wrong = F.one_hot(self.wrong_labels(y), self.num_classes).float()
        return rms_normalise(torch.cat([self.with_label(x, one_hot), self.with_label(x, wrong)]))

    def train_step(self, x, y, idx):
        self.apply_cooldown()
        self.steps_done += 1
        z = self.positives_then_negatives(x, y)
        total = torch.zeros((), device=x.device)
        for i, (layer, optimizer) in enumerate(zip(self.modules["layers"], self.optimizers)):
            a = self.relu(layer(z))
            loss = self.layer_loss(i, a, len(y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            z = rms_normalise(a.detach())  # the boundary: nothing flows back into layer i
        if self.hp.predict == "linear":
            # Only a run that predicts with the read-out pays for training it: under "goodness"
            # it would add ~a fifth to FF's training FLOPs, time and energy for nothing.
            total += self.train_readout(x, y)
        return total

    def train_readout(self, x, y) -> torch.Tensor:
        features = self.neutral_features(x).detach()
        loss = F.cross_entropy(self.modules["classifier"](features), y)
        self.classifier_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.classifier_optimizer.step()
        return loss.detach()

    # -- prediction -----------------------------------------------------------------------------
    def layer_activations(self, z: torch.Tensor):
        """Unnormalised activations of each layer in turn for already-labelled flat inputs z, one
        layer alive at a time (prediction keeps only the running goodness)."""
        z = rms_normalise(z)
        for layer in self.modules["layers"]:
            a = F.relu(layer(z))
            yield a
            z = rms_normalise(a)

    def activations(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Unnormalised activations of every layer for already-labelled flat inputs z."""
        return list(self.layer_activations(z))

    def neutral_activations(self, x) -> list[torch.Tensor]:
        """Every layer's RMS-normalised activations for x with the neutral label (0.1 for each class)."""
        neutral = torch.full((len(x), self.num_classes), 1.0 / self.num_classes, device=x.device)
        return [rms_normalise(a) for a in self.layer_activations(self.with_label(x, neutral))]

    def readout_features(self, x):
        acts = self.neutral_activations(x)
        return torch.cat([acts[i] for i in self.readout_layers], dim=1)

    @torch.no_grad()
    def neutral_features(self, x):
        return self.readout_features(x)

    def goodness_scores(self, x):
        """(N, C) goodness summed over the voting layers, all C labels in one batched pass."""
        n, c = len(x), self.num_classes
        candidates = torch.eye(c, device=x.device).repeat(n, 1)  # row k*c + j holds label j
        z = self.with_label(x.repeat_interleave(c, dim=0), candidates)
        # Layer by layer: C x N rows of every layer's activations held at once grew the peak memory
        # with depth (235 -> 774 MiB RSS from 2 to 16 layers of 256 at evaluation batch 2000).
        goodness = sum(a.pow(2).sum(dim=1) for i, a in enumerate(self.layer_activations(z)) if i in self.readout_layers)
        return goodness.view(n, c)

    def predict(self, x):
        if self.hp.predict == "goodness":
            # Goodness per unit, so the scores are on a scale a softmax (val loss) can use.
            width = sum(self.modules["layers"][i].out_features for i in self.readout_layers)
            return self.goodness_scores(x) / width
        return self.modules["classifier"](self.neutral_features(x))

    # -- what the diagnostics read -------------------------------------------------------------
    bp_comparable = False
    alignment_note = ("FF's layers are trained for goodness, not for the read-out's cross-entropy, and the read-out "
                      "trains on detached features: no layer has a BP-comparable loss")
    attack_note = ("FGSM differentiates FF's prediction: the read-out's logits on the neutral-label activations "
                   "(hp.predict=goodness: the summed goodness of every candidate label), by autograd through the layers")

    def differentiable_scores(self, x):
        with torch.enable_grad():
            if self.hp.predict == "goodness":
                return self.predict(x)
            return self.modules["classifier"](self.readout_features(x))

    def representations(self, x):
        return [(f"layer{i}", a) for i, a in enumerate(self.neutral_activations(x))]

    def units(self):
        units = {f"layer{i}": list(layer.parameters()) for i, layer in enumerate(self.modules["layers"])}
        units["classifier"] = list(self.modules["classifier"].parameters())
        return units
