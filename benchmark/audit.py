"""The BP-free audit: check a method's declared gradient locality against what it really does.

During one training step we intercept every backward pass (torch.autograd.backward, which
Tensor.backward calls, and torch.autograd.grad) and walk the autograd graph from its roots to the
parameters it reaches. A method declares `units()`: groups of parameters that no single backward
pass may span. The audit fails when

- one backward pass reaches parameters of two units (gradient crossed a boundary),
- a backward pass reaches a parameter that belongs to no declared unit,
- a method with locality "none" (forward-only) runs any backward pass,
- a parameter the method declares frozen (`frozen_parameters()`) changed during the step.

A method whose locality is "global" (BP) passes trivially: it claims nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class AuditReport:
    method: str
    locality: str
    backward_passes: list[set[str]] = field(default_factory=list)  # units each pass reached
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def reachable_parameters(roots) -> set[int]:
    """ids of the leaf tensors (parameters) the autograd graph of `roots` reaches."""
    seen_nodes, found, stack = set(), set(), []
    for root in roots:
        if not isinstance(root, torch.Tensor):
            continue
        if root.grad_fn is None:
            if root.requires_grad:
                found.add(id(root))
            continue
        stack.append(root.grad_fn)
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it writes into
        if variable is not None:
            found.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


@contextmanager
def record_backward_passes(log: list[set[int]]):
    """Patch torch.autograd.backward / grad to log the parameters each pass reaches."""
    original_backward, original_grad = torch.autograd.backward, torch.autograd.grad

    def as_list(t):
        return list(t) if isinstance(t, (list, tuple)) else [t]

    def backward(tensors, *args, **kwargs):
        log.append(reachable_parameters(as_list(tensors)))
        return original_backward(tensors, *args, **kwargs)

    def grad(outputs, *args, **kwargs):
        log.append(reachable_parameters(as_list(outputs)))
        return original_grad(outputs, *args, **kwargs)

    torch.autograd.backward, torch.autograd.grad = backward, grad
    try:
        yield
    finally:
        torch.autograd.backward, torch.autograd.grad = original_backward, original_grad


def audit_step(method, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> AuditReport:
    """Run one `train_step` of `method` under the audit and report what crossed which boundary."""
    report = AuditReport(method.name, method.locality.kind)
    unit_of = {id(p): name for name, params in method.units().items() for p in params}
    frozen = method.frozen_parameters()
    before = [p.detach().clone() for p in frozen]
    passes: list[set[int]] = []
    with record_backward_passes(passes):
        method.train_step(x, y, idx)
    names = {id(p): n for n, p in method.modules.named_parameters()}
    for i, reached in enumerate(passes):
        units = {unit_of.get(pid, "<undeclared>") for pid in reached}
        report.backward_passes.append(units)
        if method.locality.kind == "none":
            report.violations.append(f"backward pass {i} ran, but the method declares no backward pass at all")
        elif method.locality.kind != "global" and len(units) > 1:
            report.violations.append(f"backward pass {i} reached several units: {sorted(units)}")
        undeclared = [names.get(pid, "?") for pid in reached if pid not in unit_of]
        if undeclared and method.locality.kind != "global":
            report.violations.append(f"backward pass {i} reached parameters in no declared unit: {undeclared[:3]}")
    for p, old in zip(frozen, before):
        if not torch.equal(p.detach(), old):
            report.violations.append(f"a frozen parameter changed: {names.get(id(p), '?')}")
    return report


def audit_phases(method, data, batch_size: int = 32) -> list[AuditReport]:
    """Audit one step of every phase the method declares (with a 1-epoch-per-phase budget)."""
    reports = []
    n = len(data.train_y)
    idx = torch.arange(min(batch_size, n), device=data.train_x.device)
    for phase in method.phases(10):
        method.start_phase(phase, data.train_x, data.train_y, 1)
        reports.append(audit_step(method, data.train_x[idx], data.train_y[idx], idx))
    return reports
