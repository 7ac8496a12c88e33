"""Output losses by name, shared so that 'bce' means the same thing in every method that offers it
(BP, FA, DFA and the target-projection methods, `hp.output_loss`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

OUTPUT_LOSSES = ("ce", "bce")


def output_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """ce: softmax cross-entropy of the logits, mean over the batch.
    bce: a sigmoid on every class score and binary cross-entropy against the one-hot label, mean
    over batch *and* classes (PyTorch's default reduction, as the DRTP reference's default output
    layer computes it; its gradient is 1/classes of a per-sample sum's). Prediction is the argmax of
    the logits either way (the sigmoid is monotone)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, y)


def output_difference(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The network's output minus the one-hot label, per sample and unaveraged (sigmoid outputs
    for bce, softmax for ce): the error the DRTP reference's DFA sends to every hidden layer."""
    one_hot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return (torch.sigmoid(logits) if kind == "bce" else F.softmax(logits, dim=1)) - one_hot


def output_error(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The gradient of `output_loss` with respect to the logits (FA and DFA send it down through
    their fixed matrices): `output_difference` averaged as the loss is, over the batch for ce, over
    batch and classes for bce. tests/test_faithfulness.py checks both against autograd."""
    return output_difference(logits, y, kind) / (logits.numel() if kind == "bce" else len(y))
