"""BioTorch's feedback-alignment benchmark (repro_fa_dfa): its LeNet, images resized to 32x32, the
step schedule shared by BP and FA/DFA, and records written before a setting existed still resuming."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from benchmark import archs, audit, config, runner
from benchmark import data as data_mod
from benchmark.errors import UserError
from methods._optim import schedule_factor
from tests.conftest import compose

LENET = {"kind": "lenet", "channels": [6, 16, 120], "pool": [True, True, False], "widths": [84], "init": "xavier"}


def test_lenet_is_biotorchs_mnist_lenet():
    """jsalbert/biotorch le_net.py (LeNetMNIST): 6, 16, 120 5x5 convolutions, the first two pooled,
    then 84 units and the 10-way output: 61,706 parameters on 32x32 images."""
    net = archs.build(LENET, (1, 32, 32))
    assert net.out_shapes == [(6, 14, 14), (16, 5, 5), (120, 1, 1), (84,)]
    chain = archs.Chain(net, 10)
    assert sum(p.numel() for p in chain.parameters()) == 156 + 2416 + 48120 + 10164 + 850
    assert chain(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_xavier_init_covers_every_layer_and_the_head():
    torch.manual_seed(0)
    net = archs.build(LENET, (1, 32, 32))
    chain = archs.Chain(net, 10)
    layers = [m for m in chain.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) == 5  # four blocks and the head
    for layer in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.8 * bound  # uniform over the whole range, not PyTorch's default
        assert torch.count_nonzero(layer.bias) == 0
    default = archs.build({**LENET, "init": "default"}, (1, 32, 32))
    assert torch.count_nonzero(default.blocks[0][0].bias) > 0


def test_lenet_on_unresized_mnist_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="dataset.resize=32"):
        compose("method=fa", "arch=lenet", "dataset=mnist", "data.download=true", f"results_dir={tmp_path}")
    job = compose("method=fa", "arch=lenet", "dataset=mnist", "dataset.resize=32", "data.download=true",
                  f"results_dir={tmp_path}")
    assert job.dataset.resize == 32
    with pytest.raises(UserError, match="dataset.resize"):
        compose("method=bp", "arch=gcn", "dataset=cora", "dataset.resize=32", f"results_dir={tmp_path}")


def test_resize_happens_once_at_load_and_is_recorded():
    plain = data_mod.load_splits("digits", ".", False, 300, 0, torch.device("cpu"))
    big = data_mod.load_splits("digits", ".", False, 300, 0, torch.device("cpu"), resize=32)
    for part in ("train_x", "val_x", "test_x"):
        assert getattr(big, part).shape[1:] == (1, 32, 32)
        assert getattr(big, part).shape[0] == getattr(plain, part).shape[0]
    assert big.info["resize"] == 32 and big.info["input_shape"] == [1, 32, 32]
    # normalised with the resized training split's own statistics
    assert big.train_x.mean().abs() < 1e-4 and big.train_x.std() == pytest.approx(1.0, abs=1e-3)
    # bilinear resizing keeps the picture: the 8x8 image is the 32x32 one averaged back down
    back = torch.nn.functional.avg_pool2d(big.test_x, 4)
    corr = torch.corrcoef(torch.stack([back.flatten(), plain.test_x.flatten()]))[0, 1]
    assert corr > 0.95


def test_normalise_none_keeps_pixels_in_0_1_records_it_and_is_another_run(tmp_path):
    """dataset.normalise=none (the DRTP reference feeds ToTensor's [0, 1] pixels) leaves every split
    as released / 255, says so in the record, and is a different run from the standardised one."""
    standard = data_mod.load_splits("digits", ".", False, 300, 0, torch.device("cpu"))
    raw = data_mod.load_splits("digits", ".", False, 300, 0, torch.device("cpu"), normalise="none")
    for part in ("train_x", "val_x", "test_x"):
        x = getattr(raw, part)
        assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
        assert getattr(standard, part).shape == x.shape
    assert standard.train_x.mean().abs() < 1e-4 and raw.train_x.mean() > 0.1
    assert raw.info["normalisation"]["from"].startswith("none") and raw.info["normalisation"]["std"] == [1.0]
    assert float(raw.pad_value.flatten()[0]) == 0.0  # a black pixel is 0
    job = compose("method=bp", "dataset=digits", "dataset.normalise=none", f"results_dir={tmp_path}")
    assert job.dataset.normalise == "none"
    same = runner._same_run_key({}, {"normalise": "none"}, None)
    assert same != runner._same_run_key({}, {}, None) == runner._same_run_key({}, {"normalise": "standard"}, None)
    with pytest.raises(UserError, match="dataset.normalise"):
        compose("method=bp", "arch=gcn", "dataset=cora", "dataset.normalise=none", f"results_dir={tmp_path}")


def test_step_schedule_decays_at_its_milestones():
    factors = [schedule_factor("step", s, 100, (0.5, 0.75)) for s in (0, 49, 50, 74, 75, 99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert schedule_factor("none", 80, 100, (0.5,)) == 1.0
    assert schedule_factor("cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["bp", "fa", "dfa"])
def test_every_optimizer_of_the_method_follows_the_schedule(method, tmp_path):
    """At 8 steps with milestones at 1/2 and 3/4: the rate is lr for steps 0-3, lr/10 for 4-5, lr/100
    after, in every optimiser (FA/DFA keep one per block and one for the head)."""
    job = compose(f"method={method}", "arch=lenet", "dataset=digits", "dataset.resize=32", "method.hp.optimizer=sgd",
                  "method.hp.lr=0.05", "method.hp.schedule=step", "method.hp.milestones=[0.5,0.75]",
                  "measure.emissions=false", f"results_dir={tmp_path}")
    data = runner.load_data(job)
    model = config.build_method(job, data)
    model.start_phase(model.phases(8)[0], data.train_x, data.train_y, total_steps=8)
    optimizers = getattr(model, "optimizers", None) or [model.optimizer]
    seen = []
    for step in range(8):
        seen.append({round(g["lr"], 10) for opt in optimizers for g in opt.param_groups})
        idx = torch.arange(step * 16, step * 16 + 16)
        model.train_step(data.train_x[idx], data.train_y[idx], idx)
    assert seen == [{0.05}] * 4 + [{0.005}] * 2 + [{0.0005}] * 2


@pytest.mark.parametrize("method", ["fa", "dfa"])
def test_feedback_alignment_on_lenet_keeps_its_locality(method):
    job = compose(f"method={method}", "arch=lenet", "dataset=digits", "dataset.resize=32", "measure.emissions=false")
    data = runner.load_data(job)
    torch.manual_seed(0)
    model = config.build_method(job, data)
    reports = audit.audit_phases(model, data)
    assert reports and all(r.ok for r in reports), [r.violations for r in reports]
    passes = [units for r in reports for units in r.backward_passes]
    assert passes and all(len(units) == 1 for units in passes)
    assert len(set().union(*passes)) == 5  # four blocks and the head, each its own pass


def test_a_record_from_before_a_setting_existed_still_counts_as_finished(tmp_path):
    """The schedule keys came after records without them: such a record is read with the
    defaults (a constant rate), so `make repro` keeps it instead of re-running it."""
    job = compose("method=bp", "arch=mlp", "arch.widths=[16]", "dataset=digits", "train.epochs=1", "mode=run",
                  "resume=true", "measure.emissions=false", f"results_dir={tmp_path}", "experiment_name=old")
    record = runner.execute(job)
    assert runner.finished_earlier(job)["run_id"] == record["run_id"]
    runs = tmp_path / "old" / "runs.jsonl"
    old = json.loads(runs.read_text().splitlines()[0])
    for key in ("schedule", "milestones"):
        old["hp"].pop(key)
    runs.write_text(json.dumps(old) + "\n")
    assert runner.finished_earlier(job)["run_id"] == record["run_id"]
    # ... but only as the default: a run asking for another schedule is a new run
    stepped = compose("method=bp", "arch=mlp", "arch.widths=[16]", "dataset=digits", "train.epochs=1", "mode=run",
                      "resume=true", "method.hp.schedule=step", "measure.emissions=false", f"results_dir={tmp_path}",
                      "experiment_name=old")
    assert runner.finished_earlier(stepped) is None


def test_dfa_layer_feedback_is_the_input_gradient_of_a_layer_with_weights_b():
    """BioTorch's DFA layer hands its input the gradient it would get if its weight were B (classes
    as outputs) and its output gradient were e, repeated over every output position. Re-derived
    here by autograd through such a layer, independently of the method's transposed convolution."""
    job = compose("method=dfa", "arch=lenet", "dataset=digits", "dataset.resize=32", "method.hp.feedback=layer",
                  "measure.emissions=false")
    data = runner.load_data(job)
    torch.manual_seed(0)
    model = config.build_method(job, data)
    x = data.train_x[:4]
    outs = model.forward_detached(x)
    error = torch.randn(4, 10)
    for i, out in enumerate(outs):
        after, b = model.layers[i + 1], model.feedback[i]
        probe = out.detach().clone().requires_grad_(True)
        if isinstance(after, nn.Conv2d):
            y = torch.nn.functional.conv2d(probe, b, stride=after.stride, padding=after.padding)
            y.backward(error[:, :, None, None].expand_as(y))
        else:
            (probe.flatten(1) @ b.T).backward(error)
        assert torch.allclose(model.signal(i, error, out), probe.grad, atol=1e-6), i
        assert b.shape[0] == 10 and b.shape[1:] == after.weight.shape[1:]


@pytest.mark.parametrize("method", ["fa", "dfa"])
def test_feedback_is_drawn_as_the_forward_weights_are(method):
    """On an arch with init xavier (BioTorch's benchmarks), B is Xavier-uniform of its own shape."""
    overrides = ["method.hp.feedback=layer"] if method == "dfa" else []
    job = compose(f"method={method}", "arch=lenet", "dataset=digits", "dataset.resize=32", *overrides,
                  "measure.emissions=false")
    torch.manual_seed(0)
    model = config.build_method(job, runner.load_data(job))
    for b in model.feedback:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(b)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert 0.8 * bound < b.abs().max() <= bound


@pytest.mark.parametrize("method", ["bp", "dfa"])
def test_a_scheduled_method_survives_a_checkpoint(method, tmp_path):
    """Checkpoints pickle the method whole, schedulers included: the schedule goes on where it was."""
    job = compose(f"method={method}", "arch=lenet", "dataset=digits", "dataset.resize=32", "method.hp.optimizer=sgd",
                  "method.hp.lr=0.05", "method.hp.schedule=step", "measure.emissions=false", f"results_dir={tmp_path}")
    data = runner.load_data(job)
    model = config.build_method(job, data)
    model.start_phase(model.phases(4)[0], data.train_x, data.train_y, total_steps=4)
    for step in range(2):
        idx = torch.arange(step * 16, step * 16 + 16)
        model.train_step(data.train_x[idx], data.train_y[idx], idx)
    torch.save(model, tmp_path / "method.pt")
    restored = torch.load(tmp_path / "method.pt", weights_only=False)
    optimizer = (getattr(restored, "optimizers", None) or [restored.optimizer])[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)  # after 2 of 4 steps: past 0.5
    idx = torch.arange(16)
    restored.train_step(data.train_x[idx], data.train_y[idx], idx)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0005)  # 3 of 4: past 0.75
