"""The BP-free audit, run over every registered method, and shown to catch a broken one."""
from __future__ import annotations

import pytest
import torch

from benchmark import spec as methods
from benchmark import archs, audit, config, runner
from methods.ff import ForwardForward
from tests.conftest import compose, graph_root

NATIVE = {"mlp": "arch=mlp", "cnn": "arch=cnn"}


def build(name: str, arch: str | None = None):
    cls = methods.get(name)
    arch = arch or f"arch={cls.supported_archs[0]}"
    on_graph = cls.supported_archs[0] in archs.GRAPH_KINDS  # graph methods are audited on Cora
    dataset = ["dataset=cora", f"data.root={graph_root()}"] if on_graph else ["dataset=digits"]
    job = compose(f"method={name}", arch, *dataset, "measure.emissions=false")
    data = runner.load_data(job)
    torch.manual_seed(0)
    return config.build_method(job, data), data


@pytest.mark.parametrize("name", methods.names())
def test_every_method_keeps_its_declared_gradient_locality(name):
    method, data = build(name)
    reports = audit.audit_phases(method, data)
    assert reports, "the audit ran no phase"
    for report in reports:
        assert report.ok, f"{name}: {report.violations}"
    if method.locality.kind in ("layer", "block"):
        # A local method must actually run local backward passes, each inside one unit.
        passes = [units for r in reports for units in r.backward_passes]
        assert passes and all(len(units) == 1 for units in passes)
        assert len(set().union(*passes)) > 1, "every pass hit the same unit: nothing was local"


class FFWithoutDetach(ForwardForward):
    """Forward-Forward with the layer boundary removed: layer i's loss reaches layers < i."""

    name = "ff_broken"

    def train_step(self, x, y, idx):
        import torch.nn.functional as F

        from methods.ff import rms_normalise

        one_hot = F.one_hot(y, self.num_classes).float()
        wrong = F.one_hot(self.wrong_labels(y), self.num_classes).float()
        z = rms_normalise(torch.cat([self.with_label(x, one_hot), self.with_label(x, wrong)]))
        loss = 0
        for i, layer in enumerate(self.modules["layers"]):
            a = self.relu(layer(z))
            loss = loss + self.layer_loss(i, a, len(y))
            z = rms_normalise(a)  # no detach: the bug
        for optimizer in self.optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss.detach()


def test_audit_catches_gradient_crossing_layers():
    job = compose("method=ff", "arch=mlp_3x1000", "dataset=digits", "measure.emissions=false")
    data = runner.load_data(job)
    broken = FFWithoutDetach(dict(job.cfg.arch), data.input_shape, 10, job.hp, job.device)
    idx = torch.arange(16)
    report = audit.audit_step(broken, data.train_x[idx], data.train_y[idx], idx)
    assert not report.ok
    assert any("several units" in v for v in report.violations)


def test_audit_catches_a_changed_frozen_block():
    method, data = build("cafo_rand")
    method.start_phase(method.phases(1)[0], data.train_x, data.train_y, 1)
    real_step = method.train_step

    def step_that_touches_blocks(x, y, idx):
        with torch.no_grad():
            next(method.modules["blocks"].parameters()).add_(1.0)
        return real_step(x, y, idx)

    method.train_step = step_that_touches_blocks
    idx = torch.arange(8)
    report = audit.audit_step(method, data.train_x[idx], data.train_y[idx], idx)
    assert any("frozen parameter changed" in v for v in report.violations)


def test_audit_proves_the_physical_black_box_is_never_differentiated():
    """pff's physical layers run under no_grad: the audit, which sees every backward pass, finds
    none reaching them. A version that runs them with autograd on (as if the simulator were a
    differentiable model of the physics) is caught, because their parameters belong to no unit."""
    from methods import pff

    method, data = build("pff", "arch=mlp_2x256")
    idx = torch.arange(16)
    assert audit.audit_step(method, data.train_x[idx], data.train_y[idx], idx).ok
    assert all(p.requires_grad for p in method.frozen_parameters())  # a traced use would show

    traced = pff.PhysicalLayer.forward.__wrapped__  # the same map without its no_grad

    def differentiable(self, x):
        with torch.enable_grad():
            return traced(self, x)

    original = pff.PhysicalLayer.forward
    pff.PhysicalLayer.forward = differentiable
    try:
        h = method.with_label(data.train_x[idx], data.train_y[idx])
        assert method.modules["physical"][0](h).requires_grad  # now it is traced
        broken = PFFThroughThePhysics(method)
        report = audit.audit_step(broken, data.train_x[idx], data.train_y[idx], idx)
    finally:
        pff.PhysicalLayer.forward = original
    assert any("no declared unit" in v for v in report.violations), report.violations


class PFFThroughThePhysics:
    """pff with its layer boundary removed too: the second layer's loss flows back through the
    (now traced) physical layer into the first, the way a model-based trainer would."""

    def __init__(self, method):
        self.method = method

    def __getattr__(self, name):
        return getattr(self.method, name)

    def train_step(self, x, y, idx):
        m = self.method
        h = m.with_label(x, y)
        for k in range(len(m.optimizers)):
            h = m.layer_output(k, h)  # no detach between layers
        loss = -m.goodness(len(m.optimizers) - 1, h).mean()
        loss.backward()
        return loss.detach()


def test_audit_sees_bp_as_one_global_pass():
    method, data = build("bp")
    [report] = audit.audit_phases(method, data)
    assert report.ok and len(report.backward_passes) == 1
    assert report.backward_passes[0] == {"all"}
