"""Counter-Current Learning (CCL).

Kao & Hariharan, "Counter-Current Learning: A Biologically Plausible Dual Network Approach for
Deep Learning", NeurIPS 2024, arXiv 2409.19841. Code: IandRover/CCL-NeurIPS24.

Two networks run against each other:
- the forward network maps the input x up through the blocks to the logits: a_0 = x, a_l =
  block_l(a_{l-1} detached), logits = head(a_L detached);
- the feedback network maps the targets down, mirroring it: starting from the one-hot codes of all
  classes (a classes x classes identity), c_L = act(G_head(codes)), c_{l-1} = act(G_l(c_l
  detached)) -- the *activated* c_l is what goes down, as the reference's `reverse` chain does --
  and c_0 = G_1(c_1) without activation (it lives in input space); G_l maps block l's output shape
  back to its input shape (a Linear for MLP blocks; nearest upsampling to the input size then a 3x3
  convolution for conv blocks).

- Loss, per level l = 0..L: the forward activations of the batch and the feedback codes of the
  classes are compared as a (batch x classes) similarity C = a_l c_l^T, pulled towards the
  one-hot label matrix: MSE(C, onehot(y)) / d_l * hp.loss_scale * 256 (the reference's scaling);
  plus the cross-entropy of the logits, which reaches only the head.
- Locality: per level. Level l's loss reaches block l (through a_l, input detached) and G_{l+1}
  (through c_l, input detached), nothing else; each level runs its own backward pass. Level 0
  trains only G_1 (x has no parameters).
- Targets: the labels (the feedback network sees only the class codes, never the image).
- Prediction: argmax of the forward network's logits.

Optimisation as the reference: plain SGD with separate rates for the forward (hp.lr) and
feedback (hp.feedback_lr) networks, gradient-norm clipping at hp.grad_clip, ELU activations in
its MNIST MLP (784-256x5-10; our `mlp_5x256` preset, with ELU, and BP runs the same preset),
batch 256. Clipping (hp.clip): "joint", the default because it is the reference's (one norm over
all forward parameters, one over all feedback parameters, after every level's gradient is in),
or "per_level" (each level's forward and feedback parts on their own, so a level with a large
gradient does not shrink the others' steps). The per-level gradients themselves are the same
either way; only the clipping couples the levels.

Differences from the reference: the forward blocks are the
arch's (`mlp_5x256` has no biases, as the reference; BP's twin uses the same preset) and the
head has a bias; the CNN path uses the harness's cnn blocks (conv-ReLU-pool-BatchNorm) and an
upsample + 3x3 conv mirror rather than the reference's strided convolutions.

What we found: an earlier version of this module handed each level's pre-activation down the
feedback chain (so below the top the feedback network was effectively linear); fixed, and
`tests/test_faithfulness.py` re-computes the reference's recursion to hold it. Feedback layers must
have no bias, as in the reference. With biases, every class code shares one offset and the
similarity loss cannot separate the classes: on 10k MNIST images the validation accuracy stayed at
19-38 % over 5 epochs, against 86 % after 4 epochs without them. The reference's lr = 1 suits its
100 epochs; at small budgets tuning picks the rate. At the reference's own MLP settings
(`repro_ccl`, 3 seeds, 100 epochs): 97.98 % MNIST and 88.50 % Fashion-MNIST test accuracy, BP
98.47 % and 89.54 % (the paper's figures are not held here: README, Reproductions).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import archs
from benchmark.spec import Locality, Method, register


@dataclass
class CCLHyper:
    lr: float = field(metadata={"gt": 0})
    feedback_lr: float = field(metadata={"gt": 0})
    momentum: float = field(metadata={"ge": 0, "le": 1})
    weight_decay: float = field(metadata={"ge": 0})
    grad_clip: float = field(metadata={"ge": 0})  # 0 = off
    clip: str = field(metadata={"choices": ("joint", "per_level")})
    loss_scale: float = field(metadata={"gt": 0})


class FeedbackConv(nn.Module):
    """Mirror of a conv block: back to the block's input size, then a 3x3 conv to its channels."""

    def __init__(self, out_ch: int, in_shape: tuple[int, ...]):
        super().__init__()
        self.size = in_shape[1:]
        self.conv = nn.Conv2d(out_ch, in_shape[0], 3, padding=1)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(c, size=self.size, mode="nearest"))


@register
class CounterCurrentLearning(Method):
    name = "ccl"
    locality = Locality("layer", "level l's similarity loss reaches only forward block l and feedback layer G_{l+1}; inputs of both detached")
    Hyper = CCLHyper

    def __init__(self, arch, input_shape, num_classes, hp: CCLHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        net = archs.build(arch, input_shape)
        self.shapes = [tuple(input_shape), *net.out_shapes]  # a_0 .. a_L
        self.act = archs.ACTIVATIONS[arch.get("activation", "relu")]()
        self.modules["blocks"] = net.blocks.to(device)
        self.modules["head"] = nn.Linear(net.out_features(len(net.blocks) - 1), num_classes).to(device)
        # feedback[l] maps level l+1 back to level l (feedback[L] is G_head, from the class codes)
        feedback = [self.mirror(self.shapes[l + 1], self.shapes[l]) for l in range(len(net.blocks))]
        feedback.append(nn.Linear(num_classes, net.out_features(len(net.blocks) - 1), bias=False))
        self.modules["feedback"] = nn.ModuleList(feedback).to(device)
        forward_params = [*self.modules["blocks"].parameters(), *self.modules["head"].parameters()]
        self.forward_opt = torch.optim.SGD(forward_params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        self.feedback_opt = torch.optim.SGD(
            self.modules["feedback"].parameters(), lr=hp.feedback_lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
        self.codes = torch.eye(num_classes, device=device)

    @staticmethod
    def mirror(out_shape, in_shape) -> nn.Module:
        if len(out_shape) == 1:
            return nn.Linear(out_shape[0], int(torch.Size(in_shape).numel()), bias=False)
        return FeedbackConv(out_shape[0], in_shape)

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for block in self.modules["blocks"]:
            levels.append(block(levels[-1].detach()))
        return levels

    def feedback_levels(self) -> list[torch.Tensor]:
        """c_0 .. c_L for the class codes, each computed from the level above, detached."""
        fb = self.modules["feedback"]
        top = len(self.modules["blocks"])
        c = self.act(fb[top](self.codes)).view(len(self.codes), *self.shapes[top])
        levels = [c]
        for l in reversed(range(top)):
            c = fb[l](c.detach()).view(len(self.codes), *self.shapes[l])
            if l > 0:  # every level but the input's is activated, and the activated value goes down
                c = self.act(c)
            levels.append(c)
        return levels[::-1]

    def similarity_loss(self, a: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, c = a.flatten(1), c.flatten(1)
        target = F.one_hot(y, self.num_classes).float()
        return F.mse_loss(a @ c.T, target) / a.shape[1] * self.hp.loss_scale * 256

    def train_step(self, x, y, idx):
        self.forward_opt.zero_grad(set_to_none=True)
        self.feedback_opt.zero_grad(set_to_none=True)
        a_levels, c_levels = self.forward_levels(x), self.feedback_levels()
        total = torch.zeros((), device=x.device)
        for l, (a, c) in enumerate(zip(a_levels, c_levels)):
            loss = self.similarity_loss(a, c, y)
            loss.backward()  # one backward pass per level
            if self.hp.clip == "per_level":
                self.clip_level(l)
            total += loss.detach()
        ce = F.cross_entropy(self.modules["head"](a_levels[-1].detach().flatten(1)), y)
        ce.backward()
        if self.hp.clip == "per_level":
            self.clip(self.modules["head"].parameters())
        else:  # the reference: one norm over all forward parameters, one over all feedback ones
            self.clip([*self.modules["blocks"].parameters(), *self.modules["head"].parameters()])
            self.clip(self.modules["feedback"].parameters())
        self.forward_opt.step()
        self.feedback_opt.step()
        return total + ce.detach()

    def clip(self, params) -> None:
        if self.hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params), self.hp.grad_clip)

    def clip_level(self, l: int) -> None:
        """clip=per_level: the forward and the feedback part of each level clipped on their own."""
        if l > 0:
            self.clip(self.modules["blocks"][l - 1].parameters())
        self.clip(self.modules["feedback"][l].parameters())

    def predict(self, x):
        return self.modules["head"](archs.through(self.modules["blocks"], x).flatten(1))

    def units(self):
        fb, blocks = self.modules["feedback"], self.modules["blocks"]
        units = {"level0": list(fb[0].parameters())}
        for l in range(1, len(blocks) + 1):
            units[f"level{l}"] = [*blocks[l - 1].parameters(), *fb[l].parameters()]
        units["head"] = list(self.modules["head"].parameters())
        return units
