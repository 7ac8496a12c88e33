"""End-to-end backpropagation (the baseline every other method is compared with).

Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors", Nature 1986.

- Locality: global. One loss at the output; its gradient flows through every block.
- Loss: cross-entropy of the linear head's logits (hp.output_loss=ce), or a sigmoid per class and
  binary cross-entropy against the one-hot label (bce: the DRTP reference's output for every
  method it compares, BP included; repro_drtp).
- Targets: the labels.
- Prediction: argmax of the head's logits.
- On a graph (arch gcn or sage): the whole graph runs forward, the loss is over the batch's
  training nodes (the whole training set per step unless train.batch_size says otherwise), as the
  ForwardGNN code's BP trainer; the network is the arch's graph layers and a linear head.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark import archs
from benchmark.spec import Locality, Method, register
from methods._losses import OUTPUT_LOSSES, output_loss
from methods._optim import ScheduledHyper, lr_scheduler, make_optimizer


@dataclass
class BPHyper(ScheduledHyper):
    """The optimiser and schedule (none | cosine | step), an optional clip of the gradient's
    norm over all parameters before each step (off by default; Counter-Current Learning's reference
    clips its BP baseline at 1, as its CCL: repro_ccl), and the output loss (ce | bce)."""

    grad_clip: float = field(default=0.0, kw_only=True, metadata={"ge": 0})  # 0 = off
    output_loss: str = field(default="ce", kw_only=True, metadata={"choices": OUTPUT_LOSSES})


@register
class BP(Method):
    name = "bp"
    supported_archs = ("mlp", "cnn", "lenet", "resnet", "gcn", "sage")
    locality = Locality("global", "one loss at the output; gradient flows end to end")
    Hyper = BPHyper

    def __init__(self, arch, input_shape, num_classes, hp: BPHyper, device, graph: archs.Graph | None = None):
        super().__init__(arch, input_shape, num_classes, hp, device)
        self.modules["net"] = archs.Chain(archs.build(arch, input_shape), num_classes, graph).to(device)
        self.optimizer = make_optimizer(hp.optimizer, self.modules.parameters(), hp.lr, hp.weight_decay, hp.momentum)
        self.scheduler = None

    def start_phase(self, phase, train_x, train_y, total_steps):
        # Stepped per batch over the phase's whole step budget, so a cosine decays to zero exactly
        # at the last allowed epoch (early stopping may end the run before that).
        self.scheduler = lr_scheduler(self.hp.schedule, self.optimizer, total_steps, self.hp.milestones)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.modules["net"](x)

    def train_step(self, x, y, idx):
        loss = output_loss(self.logits(x), y, self.hp.output_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.modules.parameters(), self.hp.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()

    def predict(self, x):
        return self.modules["net"](x)

