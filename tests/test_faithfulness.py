"""Each method does what its paper and reference code do (issue 13): one test per fix, written so
that the earlier, weaker implementation fails it."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark import config, runner
from tests.conftest import compose


def build(*overrides: str):
    job = compose("dataset=digits", "measure.emissions=false", *overrides)
    data = runner.load_data(job)
    torch.manual_seed(0)
    method = config.build_method(job, data)
    return method, data


# -- Counter-Current Learning ----------------------------------------------------------------------

def test_ccl_feedback_chain_is_the_references_recursion():
    """The reference (IandRover/CCL-NeurIPS24, models.py `reverse`): c_L = act(B_out 1hot), then
    c_{l-1} = act(B_l c_l) with the *activated* c_l, and c_0 = B_1 c_1 without activation."""
    ccl, _ = build("method=ccl", "arch=mlp_5x256")
    fb = ccl.modules["feedback"]
    act = F.elu
    with torch.no_grad():
        c = act(ccl.codes @ fb[-1].weight.T)
        expected = [c]
        for l in reversed(range(len(fb) - 1)):
            c = c @ fb[l].weight.T
            if l > 0:
                c = act(c)
            expected.append(c)
        got = ccl.feedback_levels()
    for want, have in zip(expected[::-1], got):
        assert torch.allclose(want, have.flatten(1), atol=1e-6)


def _grads_at_step(method, x, y):
    """The gradients each optimizer sees at its step (after clipping)."""
    seen = {}
    for name, opt in (("forward", method.forward_opt), ("feedback", method.feedback_opt)):
        def capture(*args, _name=name, _opt=opt, **kwargs):
            seen[_name] = [p.grad.detach().clone() for g in _opt.param_groups for p in g["params"] if p.grad is not None]
        opt.step = capture
    method.train_step(x, y, torch.arange(len(y)))
    return seen


@pytest.mark.parametrize("clip", ["joint", "per_level"])
def test_ccl_clipping(clip):
    ccl, data = build("method=ccl", "arch=mlp_5x256", f"method.hp.clip={clip}", "method.hp.grad_clip=1e-3")
    x, y = data.train_x[:64], data.train_y[:64]
    grads = _grads_at_step(ccl, x, y)
    norm = lambda gs: math.sqrt(sum(float(g.pow(2).sum()) for g in gs))  # noqa: E731
    if clip == "joint":  # the reference: one norm over all forward, one over all feedback params
        assert norm(grads["forward"]) == pytest.approx(1e-3, rel=1e-3)
        assert norm(grads["feedback"]) == pytest.approx(1e-3, rel=1e-3)
    else:  # each level's parts clipped alone: the total exceeds one clip
        assert norm(grads["forward"]) > 2e-3


# -- Forward-Forward --------------------------------------------------------------------------------

def _step_flops(method, data):
    from torch.utils.flop_counter import FlopCounterMode

    x, y = data.train_x[:32], data.train_y[:32]
    with FlopCounterMode(display=False) as counter:
        method.train_step(x, y, torch.arange(32))
    return counter.get_total_flops()


def test_ff_trains_its_readout_only_when_it_predicts_with_it():
    goodness, data = build("method=ff", "arch=mlp", "method.hp.predict=goodness")
    linear, _ = build("method=ff", "arch=mlp", "method.hp.predict=linear")
    goodness_flops, linear_flops = _step_flops(goodness, data), _step_flops(linear, data)
    assert torch.count_nonzero(goodness.modules["classifier"].weight) == 0  # untouched (starts at zero)
    assert torch.count_nonzero(linear.modules["classifier"].weight) > 0
    assert goodness_flops < 0.95 * linear_flops  # the read-out's cost is not charged to goodness runs


def test_ff_learning_rate_cooldown_is_loewex_linear_decay():
    from methods.ff import cooldown_factor

    assert [cooldown_factor(s, 100) for s in (0, 25, 50)] == [1.0, 1.0, 1.0]
    assert cooldown_factor(75, 100) == pytest.approx(0.5)
    assert cooldown_factor(100, 100) == pytest.approx(0.0)
    ff, data = build("method=ff", "arch=mlp")
    assert ff.hp.lr_cooldown  # on by default, as the reference
    ff.start_phase(ff.phases(1)[0], data.train_x, data.train_y, total_steps=4)
    for _ in range(4):
        ff.train_step(data.train_x[:16], data.train_y[:16], torch.arange(16))
    assert ff.optimizers[0].param_groups[0]["lr"] == pytest.approx(ff.hp.lr * cooldown_factor(3, 4))


def test_ff_negatives_never_carry_the_true_label():
    ff, _ = build("method=ff", "arch=mlp")
    y = torch.arange(10).repeat(100)
    assert not torch.any(ff.wrong_labels(y) == y)


def test_ff_loss_pushes_positives_up_and_negatives_down():
    """The local loss is small when the first n_pos rows (positives) have high goodness and the
    rest low, and large the other way round: it knows which rows are which."""
    ff, _ = build("method=ff", "arch=mlp", "method.hp.peer_normalization=0")
    high, low = torch.full((8, 1000), 2.0), torch.zeros(8, 1000)
    right = ff.layer_loss(0, torch.cat([high, low]), n_pos=8)
    wrong = ff.layer_loss(0, torch.cat([low, high]), n_pos=8)
    assert right < 0.1 < wrong


# -- Scalable FF ----------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_sff_feeds_each_block_a_layer_normalised_input(training):
    sff, data = build("method=sff", "arch=cnn")
    seen = []
    hook = sff.modules["blocks"][1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    x, y = data.train_x[:16], data.train_y[:16]
    if training:
        sff.train_step(x, y, torch.arange(16))
    else:
        with torch.no_grad():
            sff.predict(x)
    hook.remove()
    flat = seen[0].flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(16), atol=1e-4)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(16), atol=1e-2)


# -- Local learning -------------------------------------------------------------------------------

def test_local_learning_uses_dgl_auxiliary_networks_by_default():
    local, _ = build("method=local", "arch=resnet18_w8")
    first_aux = local.modules["heads"][0]
    convs = [m for m in first_aux.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in first_aux.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) >= 2 and len(linears) == 2  # a few convs, then a two-layer MLP
    assert convs[0].out_channels == local.hp.aux_channels  # its width is its own, not the trunk's (8)
    small, _ = build("method=local", "arch=resnet18_w8", "method.hp.aux=linear")
    assert not any(isinstance(m, torch.nn.Conv2d) for m in small.modules["heads"][0].modules())


# -- PEPITA ---------------------------------------------------------------------------------------

def test_pepita_defaults_are_the_references_mnist_command():
    """GiorgiaD/PEPITA README: --eta 0.1 --batch_size 64 --dropout 0.9, eta x0.1 at epochs 60, 90 of 100."""
    from methods.pepita import schedule_factor

    job = compose("method=pepita", "dataset=digits")
    assert job.hp.lr == 0.1 and job.hp.keep_rate == 0.9 and job.hp.schedule == "step"
    assert job.batch_rule.size == 64
    assert [schedule_factor("step", s, 100) for s in (0, 59, 60, 89, 90)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


# -- Published figures ----------------------------------------------------------------------------

def test_quoted_figures_are_the_sources():
    import methods.cafo
    import methods.feedback_alignment
    import methods.mf

    assert "BP 0.91 %, FA 1.70 %, DFA 1.61 %" in methods.feedback_alignment.__doc__  # BioTorch's page
    assert "5 epochs on MNIST and 250 on CIFAR-10" in " ".join(methods.cafo.__doc__.split())
    assert "14 epochs on MNIST" in " ".join(methods.mf.__doc__.split())


# -- CIFAR augmentation ---------------------------------------------------------------------------

def test_crop_flip_is_a_shifted_and_maybe_mirrored_copy_seeded():
    from benchmark.data import crop_flip

    x = torch.randn(32, 3, 8, 8)
    pad = torch.full((1, 3, 1, 1), -5.0)
    out = crop_flip(x, torch.Generator().manual_seed(1), pad)
    again = crop_flip(x, torch.Generator().manual_seed(1), pad)
    assert torch.equal(out, again)  # seeded
    padded = torch.full((32, 3, 16, 16), -5.0)
    padded[:, :, 4:12, 4:12] = x
    shifted = flipped = 0
    for i in range(32):
        crops = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        match_plain = any(torch.equal(out[i], c) for c in crops)
        match_flip = any(torch.equal(out[i], c.flip(2)) for c in crops)
        assert match_plain or match_flip
        shifted += not torch.equal(out[i], x[i]) and not torch.equal(out[i], x[i].flip(2))
        flipped += match_flip and not match_plain
    assert shifted > 16 and 4 < flipped < 28


def test_augmentation_is_on_for_cifar_and_off_for_mnist_like_data():
    for name, kind in (("cifar10", "crop_flip"), ("cifar100", "crop_flip"), ("cifar10_jpeg", "crop_flip"),
                       ("mnist", "none"), ("fashion_mnist", "none"), ("digits", "none")):
        assert config.compose([f"dataset={name}"]).dataset.augment == kind, name


def test_the_loop_trains_on_augmented_batches_only_when_asked(job_factory):
    from benchmark import loop
    from benchmark.meters import Meters

    job = job_factory("method=bp", "arch=cnn", "dataset=digits")
    data = runner.load_data(job)
    seen = []

    class Spy(job.method_cls):
        def train_step(self, x, y, idx):
            seen.append((x.clone(), idx.clone()))
            return super().train_step(x, y, idx)

    cfg = runner.train_settings(job, data)
    cfg = type(cfg)(**{**vars(cfg), "epochs": 1, "patience": 0})
    for kind in ("none", "crop_flip"):
        seen.clear()
        method = Spy(dict(job.cfg.arch), data.input_shape, data.num_classes, job.hp, job.device)
        import dataclasses

        loop.train(method, dataclasses.replace(data, augment=kind), cfg, Meters(job.measure, job.device), seed=0)
        x, idx = seen[0]
        assert torch.equal(x, data.train_x[idx]) == (kind == "none")


# -- Out of the box -------------------------------------------------------------------------------

def test_no_arch_means_the_methods_native_arch():
    from benchmark import spec as methods

    for name in methods.names():
        job = compose(f"method={name}", "dataset=digits")
        assert job.cfg.arch.name == job.cfg.method.native_arch, name
        assert job.cfg.arch.kind in job.method_cls.supported_archs, name
    assert compose("method=cafo_rand", "dataset=digits").cfg.arch.name == "cnn"
    assert compose("method=bp", "arch=resnet18_w8", "dataset=digits").cfg.arch.name == "resnet18_w8"  # named wins


def test_batch_size_is_the_methods_own_and_shrinks_on_small_datasets(job_factory):
    rule = config.BatchRule(size=100, min_steps=75)
    assert rule.for_dataset(55_000) == 100 and rule.for_dataset(1200) == 16
    job = job_factory("method=ff", "dataset=digits", "train.epochs=1")
    record = runner.execute(job)
    assert record["config"]["train"]["batch_size"] == 16  # 1200 digits / 75 steps
    assert "method's own" in record["config"]["train"]["batch_size_from"]
    fixed = runner.execute(job_factory("method=ff", "dataset=digits", "train.epochs=1", "train.batch_size=50"))
    assert fixed["config"]["train"]["batch_size"] == 50


# -- BP with activation checkpointing --------------------------------------------------------------

def test_bp_checkpoint_takes_bps_step_and_holds_less_for_backward():
    from benchmark.memory import SavedTensorPeak

    steps = {}
    for name in ("bp", "bp_checkpoint"):
        method, data = build(f"method={name}", "arch=mlp", "arch.widths=[64,64,64,64]")
        idx = torch.arange(64)
        peak = SavedTensorPeak(list(method.modules.parameters()))
        with peak.watching():
            method.train_step(data.train_x[idx], data.train_y[idx], idx)
        steps[name] = (peak.peak, [p.detach().clone() for p in method.modules.parameters()])
    for a, b in zip(steps["bp"][1], steps["bp_checkpoint"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # only each block's input is kept (plus the head's saves), not every activation inside the blocks
    assert steps["bp_checkpoint"][0] < 0.75 * steps["bp"][0]
