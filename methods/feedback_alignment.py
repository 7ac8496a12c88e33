"""Feedback alignment (`fa`) and direct feedback alignment (`dfa`).

FA: Lillicrap, Cownden, Tweed, Akerman, "Random synaptic feedback weights support error
backpropagation for deep learning", Nature Communications 7, 13276 (2016).
DFA: Nøkland, "Direct Feedback Alignment Provides Learning in Deep Neural Networks", NeurIPS 2016.
Reference figures: BioTorch (Sanfiz & Akrout 2021, jsalbert/biotorch), its own benchmark page,
LeNet on MNIST, test error BP 0.91 %, FA 1.70 %, DFA 1.61 %. (An earlier version of this docstring,
and ../shared/references/README.md, quote 0.84 / 1.91 / 1.71, which are not BioTorch's page's.)

- Locality: per block. Each block (and the linear head) computes its output from the previous
  block's *detached* output, and its update is one local backward pass of
  <block output, teaching signal>, so autograd never crosses a block boundary. The teaching signal
  is where the two methods differ, and it never uses a forward weight transposed:
  - FA: the signal for block i is the error at block i+1's first layer (its pre-activation
    gradient) sent down through a fixed random matrix B_{i+1} of that layer's weight shape, in
    place of W_{i+1}^T (a matmul for Linear, a transposed convolution for Conv2d). The error
    still travels layer by layer, but by B, not by W: no weight transport.
  - DFA: the signal for every block is the output error e (with cross-entropy
    (softmax(logits) - onehot(y)) / batch) sent straight to it through a fixed random matrix B_i
    (classes x block output size).
- Loss: cross-entropy at the head (or the DRTP reference's sigmoid outputs and binary
  cross-entropy, hp.output_loss=bce); its error e, the loss's gradient at the logits, drives every block.
- Targets: the labels.
- Prediction: argmax of the head's logits (the forward network is the BP network).

Diagnostics: FA's `feedback_pairs` give BioTorch's weight alignment (the angle between W_{i+1} and
B_i); DFA has none, since its B_i map the output error straight to block i and match no single
forward weight.

Feedback matrices are drawn once (seeded) and never trained. FA's B are drawn as the forward
weights are (Kaiming-uniform, PyTorch's default, or Xavier-uniform on an arch with init xavier,
as BioTorch draws both). DFA's are Nøkland's dense N(0, 1/classes) matrices by default, or
BioTorch's layer-shaped ones (hp.feedback=layer; DirectFeedbackAlignment says how they differ).

Differences from the papers/BioTorch: BioTorch swaps every Linear/Conv layer for one whose backward
uses B, in one global backward pass; here each block runs its own backward pass and the signal is
passed between blocks by hand, which gives the same weight updates for blocks of the form
layer -> nonlinearity (-> pool -> BatchNorm) and makes the locality checkable by the audit.
Checked against BioTorch's own DFA LeNet (its code, given the same weights, B and batches): the
weights differ by under 1e-8 after a step, and the two train alike
(docs/reproduction/sensitivity/reference_code/biotorch_dfa_side_by_side.py). BioTorch's
LeNet is the lenet arch (repro_fa_dfa runs BioTorch's MNIST and Fashion-MNIST benchmark on it, DFA
with feedback=layer); elsewhere the harness's cnn arch (conv-ReLU-pool-BatchNorm, 32/128/512) is
the CNN, and the MLP presets are the same as BP's. Optimiser and learning rate are tuned like
every other method's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark import archs
from benchmark.spec import Locality, Method, register
from methods._losses import OUTPUT_LOSSES, output_difference, output_error, output_loss
from methods._optim import ScheduledHyper, lr_scheduler, make_optimizer


def first_layer(block: nn.Module) -> nn.Module:
    """The block's Linear or Conv2d (the layer whose transpose FA replaces by B)."""
    return next(m for m in block.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def init_like_forward(b: torch.Tensor, net: archs.Blocks) -> torch.Tensor:
    """A fixed feedback matrix drawn as the arch draws its forward weights: Xavier-uniform where
    the arch's init is xavier (BioTorch's benchmarks), else PyTorch's default Kaiming-uniform."""
    if net.init == "xavier":
        return nn.init.xavier_uniform_(b)
    return nn.init.kaiming_uniform_(b, a=math.sqrt(5))


@dataclass
class FeedbackHyper(ScheduledHyper):
    """The optimiser and schedule (BioTorch's benchmarks decay the rate x0.1 at fixed epochs:
    schedule step), and the output loss whose error drives the blocks (ce | bce: the DRTP
    reference's sigmoid outputs and binary cross-entropy, for every method it compares)."""

    output_loss: str = field(default="ce", kw_only=True, metadata={"choices": OUTPUT_LOSSES})
    # The DRTP reference's --fc-zero-init: every Linear weight (hidden and head) starts at zero,
    # biases and convolutions keep their initialisation. The fixed random feedback still reaches
    # every unit, so the layers leave zero on the first step (BP would not: its W^T is zero).
    zero_init: bool = field(default=False, kw_only=True)


class FeedbackBase(Method):
    Hyper = FeedbackHyper
    supported_archs = ("mlp", "cnn", "lenet")

    def __init__(self, arch, input_shape, num_classes, hp: FeedbackHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        net = archs.build(arch, input_shape)
        self.modules["blocks"] = net.blocks.to(device)
        self.modules["head"] = net.init_head(nn.Linear(net.out_features(len(net.blocks) - 1), num_classes)).to(device)
        # Each block's first Linear/Conv2d, then the head: the layers whose W^T FA replaces by B.
        self.layers = [first_layer(b) for b in self.modules["blocks"]] + [self.modules["head"]]
        if hp.zero_init:
            for m in [*self.modules["blocks"].modules(), self.modules["head"]]:
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.weight)
        self.optimizers = [
            make_optimizer(hp.optimizer, m.parameters(), hp.lr, hp.weight_decay, hp.momentum)
            for m in [*self.modules["blocks"], self.modules["head"]]
        ]
        self.feedback = self.make_feedback(net)  # buffers: fixed, not parameters, never trained
        self.schedulers = [None] * len(self.optimizers)  # set per phase (start_phase)

    def start_phase(self, phase, train_x, train_y, total_steps):
        self.schedulers = [lr_scheduler(self.hp.schedule, opt, total_steps, self.hp.milestones) for opt in self.optimizers]

    def make_feedback(self, net: archs.Blocks) -> list[torch.Tensor]:
        raise NotImplementedError

    def train_blocks(self, outs: list[torch.Tensor], error: torch.Tensor) -> None:
        """Update every block from its output and the output error (FA and DFA differ here)."""
        raise NotImplementedError

    def forward_detached(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output, each block fed its predecessor's output detached."""
        outs, h = [], x
        for block in self.modules["blocks"]:
            h = block(h.detach())
            outs.append(h)
        return outs

    def train_step(self, x, y, idx):
        outs = self.forward_detached(x)
        logits = self.modules["head"](outs[-1].detach().flatten(1))
        loss = output_loss(logits, y, self.hp.output_loss)
        self.step(len(self.optimizers) - 1, loss)
        self.train_blocks(outs, self.output_signal(logits.detach(), y))
        return loss.detach()

    def output_signal(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The error the blocks learn from: the output loss's gradient at the logits."""
        return output_error(logits, y, self.hp.output_loss)

    def step(self, i: int, loss_or_outputs, grad=None) -> None:
        self.optimizers[i].zero_grad(set_to_none=True)
        torch.autograd.backward(loss_or_outputs, grad)
        self.optimizers[i].step()
        self.advance_schedule(i)

    def advance_schedule(self, i: int) -> None:
        if self.schedulers[i] is not None:
            self.schedulers[i].step()

    def predict(self, x):
        return self.modules["head"](archs.through(self.modules["blocks"], x).flatten(1))

    def units(self):
        units = {f"block{i}": list(b.parameters()) for i, b in enumerate(self.modules["blocks"])}
        units["head"] = list(self.modules["head"].parameters())
        return units


@dataclass
class DFAHyper(FeedbackHyper):
    # dense: Nøkland's B_i, classes x every unit of block i's output; dense_he: the same shape,
    # He-uniform (the DRTP reference's); layer: BioTorch's, B of the next layer's weight shape with
    # the classes as its outputs (see DirectFeedbackAlignment).
    feedback: str = field(default="dense", kw_only=True, metadata={"choices": ("dense", "dense_he", "layer")})
    # gradient: the output loss's gradient at the logits; difference: output minus label per
    # sample, unaveraged (the DRTP reference's DFA, methods/_losses.output_difference).
    error: str = field(default="gradient", kw_only=True, metadata={"choices": ("gradient", "difference")})


@register
class DirectFeedbackAlignment(FeedbackBase):
    """Two shapes of B (hp.feedback):
    - dense (Nøkland 2016): block i's signal is e @ B_i, B_i of classes x (block i's output size),
      N(0, 1/classes) entries; dense_he: the same, He-uniform with the block's output size as
      fan-in (bound sqrt(6 / units): the DRTP reference's DFA, with hp.error=difference).
    - layer (BioTorch's DFA layers): B_i has the shape of the weight of the layer after block i
      (the next block's first layer, or the head) with the class count as its output size, and the
      signal is that layer's input gradient with B as its weight and e as its output gradient,
      e repeated over every output position of a convolution (a transposed convolution of a
      spatially constant e). B is initialised as the forward weights (Xavier-uniform on an arch with
      init xavier, else PyTorch's Kaiming-uniform), as BioTorch does."""

    name = "dfa"
    locality = Locality("block", "each block's update is its output against e·B_i, the output error through a fixed random matrix; inputs detached")
    Hyper = DFAHyper

    def make_feedback(self, net):
        if self.hp.feedback == "layer":
            return [init_like_forward(torch.empty(self.num_classes, *layer.weight.shape[1:], device=self.device), net)
                    for layer in self.layers[1:]]
        if self.hp.feedback == "dense_he":
            return [nn.init.kaiming_uniform_(torch.empty(self.num_classes, net.out_features(i), device=self.device))
                    for i in range(len(net.blocks))]
        scale = 1.0 / math.sqrt(self.num_classes)
        return [
            torch.randn(self.num_classes, net.out_features(i), device=self.device) * scale
            for i in range(len(net.blocks))
        ]

    def output_signal(self, logits, y):
        if self.hp.error == "difference":
            return output_difference(logits, y, self.hp.output_loss)
        return super().output_signal(logits, y)

    def signal(self, i: int, error: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The teaching signal at block i's output: the output error through B_i."""
        b, after = self.feedback[i], self.layers[i + 1]
        if self.hp.feedback == "layer" and isinstance(after, nn.Conv2d):
            positions = [(size + 2 * p - k) // st + 1  # the next convolution's output size
                         for size, p, k, st in zip(out.shape[2:], after.padding, after.kernel_size, after.stride)]
            spread = error[:, :, None, None].expand(-1, -1, *positions)
            return torch.nn.grad.conv2d_input(out.shape, b, spread, stride=after.stride, padding=after.padding)
        return (error @ b.flatten(1)).view_as(out)  # dense B is 2-D already; a layer-shaped one is flattened

    def train_blocks(self, outs, error):
        for i, out in enumerate(outs):
            self.step(i, out, self.signal(i, error, out))


@dataclass
class FAHyper(FeedbackHyper):
    # forward: B drawn as the forward weights are (BioTorch); he: He-uniform, bound sqrt(6 / fan-in),
    # sqrt(6) times PyTorch's default Linear bound (the DRTP reference's FA: kaiming_uniform_).
    feedback_init: str = field(default="forward", kw_only=True, metadata={"choices": ("forward", "he")})


@register
class FeedbackAlignment(FeedbackBase):
    name = "fa"
    locality = Locality("block", "the error goes down block by block through fixed random matrices B in place of W^T; each block's backward pass stays inside it, inputs detached")
    Hyper = FAHyper

    def make_feedback(self, net):
        """B_i of the shape of layer i's weight, for i >= 1 (block 0's B would feed the input),
        initialised as the forward weights (BioTorch draws both the same way) or He-uniform."""
        empty = [torch.empty_like(layer.weight, device=self.device) for layer in self.layers[1:]]
        if self.hp.feedback_init == "he":
            return [nn.init.kaiming_uniform_(b) for b in empty]
        return [init_like_forward(b, net) for b in empty]

    def feedback_pairs(self):
        """Layer i+1's forward weight and the B_i that replaces its transpose."""
        return [(f"layer{i + 1}", layer.weight, b) for i, (layer, b) in enumerate(zip(self.layers[1:], self.feedback))]

    def send_down(self, delta: torch.Tensor, b: torch.Tensor, below_shape: torch.Size, layer: nn.Module) -> torch.Tensor:
        """delta (error at a layer's pre-activation) through B instead of W^T."""
        if isinstance(layer, nn.Conv2d):
            return torch.nn.grad.conv2d_input(below_shape, b, delta, stride=layer.stride, padding=layer.padding)
        return (delta @ b).view(below_shape)

    def train_blocks(self, outs, error):
        delta = error  # the error at the head's pre-activation (its logits)
        for i in reversed(range(len(outs))):
            signal = self.send_down(delta, self.feedback[i], outs[i].shape, self.layers[i + 1])
            if i == 0:
                self.step(i, outs[i], signal)
                break
            # Block i's own backward pass gives its update and the error at its first layer's
            # output (the pre-activation), which FA sends further down through B_i.
            pre = self._pre_activation[i]
            self.optimizers[i].zero_grad(set_to_none=True)
            params = list(self.modules["blocks"][i].parameters())
            grads = torch.autograd.grad(outs[i], [pre, *params], signal, allow_unused=True)
            delta = grads[0]
            for p, g in zip(params, grads[1:]):
                p.grad = g
            self.optimizers[i].step()
            self.advance_schedule(i)

    def forward_detached(self, x):
        """As the base, and keeps each block's first-layer output (its pre-activation)."""
        outs, self._pre_activation, h = [], [], x
        for block, layer in zip(self.modules["blocks"], self.layers):
            h = h.detach()
            for module in block:  # mlp and cnn blocks are nn.Sequential
                h = module(h)
                if module is layer:
                    self._pre_activation.append(h)
            outs.append(h)
        return outs
