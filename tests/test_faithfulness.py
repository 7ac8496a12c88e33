"""Each method does what its paper and reference code do (issue 13): one test per fix, written so
that the earlier, weaker implementation fails it."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import archs, config, runner
from methods.ff import rms_normalise
from tests.conftest import compose, graph_root


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


def _bp_grad_norm_at_step(*overrides: str) -> float:
    bp, data = build("method=bp", "arch=mlp_5x256", "method.hp.optimizer=sgd", "method.hp.lr=1.0", *overrides)
    seen = []
    bp.optimizer.step = lambda *a, **k: seen.append(math.sqrt(sum(float(p.grad.pow(2).sum())
                                                                   for p in bp.modules.parameters() if p.grad is not None)))
    bp.train_step(data.train_x[:64], data.train_y[:64], torch.arange(64))
    return seen[0]


def test_bp_clips_its_gradient_norm_as_ccls_reference_baseline():
    """CCL's reference trains its BP baseline with the same clip as CCL (norm 1 over all forward
    parameters); repro_ccl's BP sets method.hp.grad_clip=1. Off by default."""
    unclipped = _bp_grad_norm_at_step()
    assert unclipped > 1e-2  # so the clip below has something to cut
    assert _bp_grad_norm_at_step("method.hp.grad_clip=1e-3") == pytest.approx(1e-3, rel=1e-3)
    assert _bp_grad_norm_at_step("method.hp.grad_clip=1e6") == pytest.approx(unclipped, rel=1e-6)


def test_bp_bce_output_is_the_drtp_references_loss():
    """repro_drtp trains BP as the DRTP reference trains every method: a sigmoid on each class score
    and PyTorch's binary cross-entropy, mean over batch and classes. One plain SGD step on the head
    equals -lr times that loss's gradient, written out: (sigmoid(z) - onehot)^T h / (N * classes)."""
    bp, data = build("method=bp", "arch=mlp_2x1000_tanh", "method.hp.optimizer=sgd", "method.hp.momentum=0",
                     "method.hp.lr=0.5", "method.hp.output_loss=bce")
    x, y = data.train_x[:16], data.train_y[:16]
    head = bp.modules["net"].head[1]  # Flatten, Linear
    with torch.no_grad():
        h = archs.through(bp.modules["net"].blocks, x).flatten(1)
        z = head(h)
    expected = -0.5 * ((torch.sigmoid(z) - F.one_hot(y, 10).float()).T @ h) / (16 * 10)
    before = head.weight.detach().clone()
    bp.train_step(x, y, torch.arange(16))
    assert torch.allclose(head.weight.detach() - before, expected, atol=1e-6, rtol=1e-4)
    ce, _ = build("method=bp", "arch=mlp_2x1000_tanh")
    assert ce.hp.output_loss == "ce"  # the default: softmax cross-entropy


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


def test_crop_flip_reflect_pads_with_the_mirrored_border():
    """The comparison's CIFAR crop (padding_mode="reflect"): every output is a crop of the image
    padded by its own mirrored border, never of a black frame."""
    import torch.nn.functional as F

    from benchmark.data import crop_flip

    x = torch.randn(32, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(1), torch.full((1, 3, 1, 1), -5.0), reflect=True)
    assert not (out == -5.0).any()
    mirrored = F.pad(x, (4, 4, 4, 4), mode="reflect")
    assert torch.equal(mirrored[:, :, 4:12, 4:12], x) and torch.equal(mirrored[:, :, 3, 4:12], x[:, :, 1])
    shifted = 0
    for i in range(32):
        crops = [mirrored[i, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
        shifted += not torch.equal(out[i], x[i]) and not torch.equal(out[i], x[i].flip(2))
    assert shifted > 16


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
    for kind in ("none", "crop_flip", "crop_flip_reflect"):
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
        graph_only = methods.get(name).supported_archs[0] in archs.GRAPH_KINDS
        dataset = ["dataset=cora", f"data.root={graph_root()}"] if graph_only else ["dataset=digits"]
        job = compose(f"method={name}", *dataset)
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


# -- Target projection (DRTP, tpSGD) ---------------------------------------------------------------

def first_block_update(method, x, y):
    weight = method.modules["blocks"][0][1].weight  # Flatten, Linear, activation
    before = weight.detach().clone()
    method.train_step(x, y, torch.arange(len(y)))
    return weight.detach() - before


@pytest.mark.parametrize("layer_loss", ["drtp", "l2", "l1"])
def test_target_projection_hidden_update_is_the_papers_rule(layer_loss):
    """One SGD step on the first hidden layer equals the hand-written rule, with d = the signal at
    the layer's output gated by tanh' = 1 - h^2 (summed over the batch for DRTP, as its reference
    does; averaged for tpSGD's losses): dW = -lr * d^T x."""
    method, data = build("method=drtp", "arch=mlp", "arch.activation=tanh", "method.hp.optimizer=sgd",
                         "method.hp.momentum=0", "method.hp.lr=0.01", f"method.hp.layer_loss={layer_loss}")
    x, y = data.train_x[:8], data.train_y[:8]
    layer = method.modules["blocks"][0][1]
    with torch.no_grad():
        h = torch.tanh(layer(x.flatten(1)))
        target = F.one_hot(y, 10).float() @ method.feedback[0]
        signal = {"drtp": target, "l2": 2 * (h - target) / len(y), "l1": torch.sign(h - target) / len(y)}[layer_loss]
        expected = -0.01 * ((signal * (1 - h**2)).T @ x.flatten(1))
    assert torch.allclose(first_block_update(method, x, y), expected, atol=1e-6, rtol=1e-4)


def test_target_projection_hidden_updates_never_see_the_output():
    """No error reaches a hidden block (unlike DFA): any change of the output layer, which changes
    the network's output and error, leaves the hidden blocks' updates exactly as they were."""
    updates = []
    for scale in (1.0, -7.0):
        method, data = build("method=drtp", "arch=mlp", "method.hp.optimizer=sgd", "method.hp.momentum=0")
        with torch.no_grad():
            method.modules["head"].weight.mul_(scale).add_(scale)
        updates.append(first_block_update(method, data.train_x[:16], data.train_y[:16]))
    assert updates[0].abs().sum() > 0
    assert torch.equal(updates[0], updates[1])


def test_target_projection_defaults_are_the_references():
    drtp, _ = build("method=drtp", "arch=mlp")
    tpsgd, _ = build("method=tpsgd", "arch=mlp")
    assert (drtp.hp.layer_loss, drtp.hp.output_loss, drtp.hp.projection) == ("drtp", "bce", "kaiming")
    assert (tpsgd.hp.layer_loss, tpsgd.hp.output_loss) == ("l2", "ce")
    bound = math.sqrt(6 / 1000)  # He-uniform, fan-in = the block's 1000 outputs (the DRTP reference)
    assert bound >= drtp.feedback[0].abs().max() > 0.9 * bound


@pytest.mark.parametrize("kind", ["ce", "bce"])
def test_the_error_feedback_methods_send_is_the_output_losss_gradient(kind):
    """FA, DFA (and the output layer of DRTP) read the output error from methods._losses, written
    out; it must be exactly the gradient of the loss the head is trained on."""
    from methods._losses import output_error, output_loss

    logits = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    (grad,) = torch.autograd.grad(output_loss(logits, y, kind), logits)
    assert torch.allclose(output_error(logits.detach(), y, kind), grad, atol=1e-7)


def test_fa_he_feedback_is_the_drtp_references():
    """The DRTP reference's FA draws B with kaiming_uniform_ (bound sqrt(6 / fan-in));
    feedback_init=forward draws it as PyTorch draws a Linear weight (bound 1 / sqrt(fan-in))."""
    he, _ = build("method=fa", "arch=mlp_2x1000_tanh", "method.hp.feedback_init=he")
    forward, _ = build("method=fa", "arch=mlp_2x1000_tanh")
    assert he.feedback[0].shape == (1000, 1000)  # the second layer's weight, fan-in 1000
    assert math.sqrt(6 / 1000) >= he.feedback[0].abs().max() > 0.95 * math.sqrt(6 / 1000)
    assert 1 / math.sqrt(1000) >= forward.feedback[0].abs().max() > 0.95 / math.sqrt(1000)


def test_dfa_difference_error_is_the_drtp_references():
    """The DRTP reference's DFA writes (sigmoid output - onehot) @ B_i, per sample and unaveraged,
    into the gradient at each hidden block's output, B_i He-uniform (classes x units). One plain
    SGD step on the first layer equals that rule gated by tanh' = 1 - h^2: dW = -lr d^T x."""
    dfa, data = build("method=dfa", "arch=mlp_2x1000_tanh", "method.hp.optimizer=sgd", "method.hp.momentum=0",
                      "method.hp.lr=1e-3", "method.hp.output_loss=bce", "method.hp.error=difference",
                      "method.hp.feedback=dense_he")
    assert math.sqrt(6 / 1000) >= dfa.feedback[0].abs().max() > 0.95 * math.sqrt(6 / 1000)
    x, y = data.train_x[:8], data.train_y[:8]
    layer = dfa.modules["blocks"][0][1]  # Flatten, Linear, activation
    with torch.no_grad():
        h = torch.tanh(layer(x.flatten(1)))
        z = dfa.modules["head"](archs.through(dfa.modules["blocks"], x).flatten(1))
        signal = (torch.sigmoid(z) - F.one_hot(y, 10).float()) @ dfa.feedback[0]
        expected = -1e-3 * ((signal * (1 - h**2)).T @ x.flatten(1))
    before = layer.weight.detach().clone()
    dfa.train_step(x, y, torch.arange(8))
    assert torch.allclose(layer.weight.detach() - before, expected, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("method", ["fa", "dfa", "drtp"])
def test_zero_init_starts_every_linear_weight_at_zero_and_the_feedback_moves_them(method):
    """The DRTP reference's --fc-zero-init: hidden and head weights start at zero (biases as
    drawn); the fixed random feedback, not W^T, carries the signal, so one step moves the first
    layer off zero."""
    net, data = build(f"method={method}", "arch=mlp_2x1000_tanh", "method.hp.output_loss=bce",
                      "method.hp.zero_init=true")
    linears = [m for m in [*net.modules["blocks"].modules(), net.modules["head"]] if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(not m.weight.any() for m in linears)
    assert any(m.bias.any() for m in linears)
    net.train_step(data.train_x[:16], data.train_y[:16], torch.arange(16))
    assert linears[0].weight.any()


# -- Layer-collaborative FF ------------------------------------------------------------------------

def ff_first_layer_update(name: str, last_layer_scale: float):
    method, data = build(f"method={name}", "arch=mlp_3x1000", "method.hp.optimizer=sgd", "method.hp.momentum=0",
                         "method.hp.lr=0.01", "method.hp.peer_normalization=0", "method.hp.lr_cooldown=false")
    with torch.no_grad():
        method.modules["layers"][-1].weight.mul_(last_layer_scale)
    first = method.modules["layers"][0].weight
    before = first.detach().clone()
    torch.manual_seed(1)  # the same negatives in both runs
    method.train_step(data.train_x[:32], data.train_y[:32], torch.arange(32))
    return first.detach() - before


def test_lcff_layers_learn_from_the_whole_networks_goodness():
    """LCFF's first layer learns from the last layer's goodness (a constant in its loss), FF's does
    not: scaling the last layer's weights changes LCFF's first-layer update and leaves FF's as it was."""
    assert torch.equal(ff_first_layer_update("ff", 1.0), ff_first_layer_update("ff", 3.0))
    assert not torch.allclose(ff_first_layer_update("lcff", 1.0), ff_first_layer_update("lcff", 3.0))


def test_lcff_layer_loss_is_the_papers():
    """Layer k's gradient is that of the logistic loss of m_k + sum_{j != k} m_j with the sum held
    constant: recomputed here from the activations, the same weight gradient."""
    method, data = build("method=lcff", "arch=mlp_3x1000", "method.hp.peer_normalization=0")
    x, y = data.train_x[:16], data.train_y[:16]
    grads = {}
    for i, layer in enumerate(method.modules["layers"]):
        layer.weight.register_hook(lambda g, i=i: grads.__setitem__(i, g.clone()))
    torch.manual_seed(1)
    wrong = method.wrong_labels(y)
    z = rms_normalise(torch.cat([method.with_label(x, F.one_hot(y, 10).float()),
                                 method.with_label(x, F.one_hot(wrong, 10).float())]))
    acts = []
    for layer in method.modules["layers"]:
        acts.append(method.relu(layer(z)))
        z = rms_normalise(acts[-1].detach())
    margins = [a.pow(2).sum(1) - a.shape[1] * method.hp.threshold_per_unit for a in acts]
    labels = torch.cat([torch.ones(16), torch.zeros(16)])
    expected = []
    for k, m in enumerate(margins):
        others = sum(margins[j].detach() for j in range(len(margins)) if j != k)
        expected.append(torch.autograd.grad(F.binary_cross_entropy_with_logits(m + others, labels),
                                            method.modules["layers"][k].weight, retain_graph=True)[0])
    torch.manual_seed(1)
    method.train_step(x, y, torch.arange(16))
    for k in range(len(margins)):
        assert torch.allclose(grads[k], expected[k], atol=1e-6, rtol=1e-4)


def goodness_per_layer(method, x):
    """(layers, N, C): each layer's goodness for every image with every candidate label."""
    n, c = len(x), method.num_classes
    z = method.with_label(x.repeat_interleave(c, dim=0), torch.eye(c).repeat(n, 1))
    return torch.stack([a.pow(2).sum(1).view(n, c) for a in method.layer_activations(z)])


@pytest.mark.parametrize(("name", "voters"), [("ff", [1, 2]), ("lcff", [0, 1, 2])])
def test_ff_votes_after_the_first_layer_and_lcff_with_every_layer(name, voters):
    """FF's vote skips the first layer (Hinton); LCFF's loss trains the sum of every layer's margin,
    so its vote sums every layer's goodness. The first layer is scaled up so that counting it or
    not changes the scores."""
    method, data = build(f"method={name}", "arch=mlp_3x1000")
    with torch.no_grad():
        method.modules["layers"][0].weight.mul_(5.0)
    x = data.train_x[:8]
    per_layer = goodness_per_layer(method, x)
    with torch.no_grad():
        scores = method.goodness_scores(x)
    assert torch.allclose(scores, per_layer[voters].sum(0), rtol=1e-5)
    other_rule = [1, 2] if name == "lcff" else [0, 1, 2]
    assert not torch.allclose(scores, per_layer[other_rule].sum(0), rtol=1e-3)


# -- AugLocal and MAN (local learning's auxiliary networks) -----------------------------------------

def test_auglocal_samples_later_blocks_uniformly_with_pyramidal_depth():
    from methods.auglocal import aux_depths, sampled_blocks

    depths = aux_depths(15, 3, pyramid=True, coeff=0.5)  # ResNet-32 cut into 16 modules, d = 3
    assert depths[0] == 3 and all(a >= b >= 1 for a, b in zip(depths, depths[1:])) and depths[-1] == 2
    assert aux_depths(4, 3, pyramid=False, coeff=0.5) == [3, 3, 3, 3]
    for last in range(15):
        for depth in (1, 2, 3, 5):
            picked = sampled_blocks(last, 16, depth)
            assert picked[-1] == 15 and len(picked) == min(depth, 15 - last)  # always reaches the end
            assert all(last < a < b for a, b in zip(picked, picked[1:])) and picked[0] > last
    assert sampled_blocks(0, 16, 3) == [5, 10, 15]


def test_auglocal_auxiliary_networks_are_fresh_blocks_of_the_later_widths():
    method, _ = build("method=auglocal", "arch=cnn", "method.hp.aux_depth=2")
    assert method.aux_blocks == [[1, 2], [2]]
    convs = [m for m in method.modules["heads"][0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 512]  # blocks 1 and 2's widths
    trunk = {id(p) for p in method.modules["stages"].parameters()}
    assert not any(id(p) in trunk for p in method.modules["heads"].parameters())  # copies, not shared


def test_man_auxiliary_network_is_an_ema_of_the_next_module():
    method, data = build("method=man", "arch=cnn", "method.hp.ema_decay=0.9")
    twin, nxt = method.modules["heads"][0][0], method.modules["stages"][1]
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), nxt.parameters()))  # starts as a copy
    assert not any(p.requires_grad for p in twin.parameters())
    before = [p.detach().clone() for p in twin.parameters()]
    method.train_step(data.train_x[:32], data.train_y[:32], torch.arange(32))
    for old, new, source in zip(before, twin.parameters(), nxt.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * source.detach(), atol=1e-6)
    bias = method.modules["heads"][0][1].bias
    assert bias.requires_grad and bias.abs().sum() > 0  # the learnable bias is trained by module 0


# -- NoProp's continuous-time and flow-matching variants --------------------------------------------

def test_noprop_ct_loss_weight_is_the_snr_derivative():
    from methods.noprop import signal_level, snr_derivative

    t = torch.linspace(0.05, 0.9, 18, dtype=torch.float64)
    snr = lambda v: signal_level(v, 1.0) / (1 - signal_level(v, 1.0))  # noqa: E731
    finite = (snr(t + 1e-6) - snr(t - 1e-6)) / 2e-6
    assert torch.allclose(snr_derivative(t, 1.0), finite, rtol=1e-4)
    assert snr_derivative(torch.tensor([0.999999]), 0.999).item() == 0.0  # capped: no weight


@pytest.mark.parametrize("name", ["noprop_ct", "noprop_fm"])
def test_noprop_continuous_prediction_follows_its_ode_to_the_label(name):
    """With an oracle network (CT: the clean embedding of class 3; FM: the straight-line velocity
    towards it), the prediction's chain ends at class 3 from any noise: the inference path is the
    paper's (CT's posterior steps over t, FM's Euler steps of dz/dt = v)."""
    method, data = build(f"method={name}", "arch=mlp_1x1024", "method.hp.inference_steps=8")
    target = method.embed[3]
    denoiser = method.modules["denoiser"]
    if name == "noprop_ct":
        denoiser.estimate = lambda features, z, embed, t: target.expand_as(z)
    else:
        denoiser.scores = lambda features, z, t: (target - z) / (1 - t)[:, None]
    assert torch.all(method.predict(data.test_x[:20]).argmax(1) == 3)


@pytest.mark.parametrize("name", ["noprop_ct", "noprop_fm"])
def test_noprop_continuous_prediction_runs_the_image_path_once(name):
    """The image path does not depend on z or t, so a prediction computes it once, not once per
    ODE step (40 by default): the same scores as the chain run with the whole network at every
    step, for 1/40 of the image path's cost."""
    method, data = build(f"method={name}", "arch=cnn", "method.hp.inference_steps=6")
    denoiser = method.modules["denoiser"].eval()
    x = data.test_x[:24]
    calls = []
    hook = denoiser.image.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        fast = method.predict(x)
    hook.remove()
    assert len(calls) == 1

    gen = torch.Generator().manual_seed(0)  # the chain again, the whole network at each step
    z = torch.randn(len(x), method.num_classes, generator=gen)
    times = method.times(len(x), x.device)
    with torch.no_grad():
        if name == "noprop_fm":
            for t_prev, t in zip(times, times[1:]):
                z = z + (t - t_prev)[:, None] * denoiser.scores(denoiser.image(x), z, t_prev)
            slow = -torch.cdist(z, method.embed).pow(2)
        else:
            from methods.noprop import posterior_step

            levels = method.modules["schedule"].signal(torch.stack([v[0] for v in times])).tolist()
            for k, t_prev in enumerate(times[:-1]):
                noise = torch.randn(z.shape, generator=gen)
                z = posterior_step(levels[k], levels[k + 1], denoiser(x, z, method.embed, t_prev), z, noise)
            slow = method.modules["classifier"](z)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_noprop_fm_regresses_the_velocity_from_noise_to_label():
    """FM's loss is ||v - (u_y - z_0)||^2 at z_t = t u_y + (1 - t) z_0: recomputed here with the same
    random draws, the same value."""
    method, data = build("method=noprop_fm", "arch=mlp_1x1024")
    x, y = data.train_x[:16], data.train_y[:16]
    torch.manual_seed(5)
    u = method.embed[y]
    z0, t = torch.randn_like(u), torch.rand(16)
    with torch.no_grad():
        denoiser = method.modules["denoiser"]
        expected = (denoiser.scores(denoiser.image(x), t[:, None] * u + (1 - t[:, None]) * z0, t) - (u - z0)).pow(2).sum(1).mean()
    torch.manual_seed(5)
    assert torch.allclose(method.train_step(x, y, torch.arange(16)), expected, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["snr_derivative", "uniform"])
@pytest.mark.parametrize("schedule", ["learned", "cosine"])
def test_noprop_ct_step_is_the_papers_loss(weighting, schedule):
    """One CT step's loss, recomputed with the same random draws: (eta/2) w(t) ||u_hat - u||^2 at
    z_t ~ q(z_t | y) (w = SNR'(t), or 1 for hp.loss_weight=uniform), plus the classifier's
    cross-entropy on z_1 ~ q(z_1 | y), plus KL(q(z_0 | y) || N(0, I)); all at the schedule's levels."""
    from methods.noprop import kl_to_prior

    method, data = build("method=noprop_ct", "arch=mlp_1x1024", f"method.hp.loss_weight={weighting}",
                         f"method.hp.noise_schedule={schedule}")
    x, y = data.train_x[:16], data.train_y[:16]
    sched, eta = method.modules["schedule"], method.hp.eta
    torch.manual_seed(3)
    u = method.embed[y]
    t = torch.rand(16)
    z, z1 = method.noisy(u, sched.signal(t)), method.noisy(u, sched.signal(torch.ones(16)))
    with torch.no_grad():
        weight = sched.levels(t)[1] if weighting == "snr_derivative" else torch.ones(16)
        denoising = (0.5 * eta * weight * (method.modules["denoiser"](x, z, method.embed, t) - u).pow(2).sum(1)).mean()
        expected = denoising + F.cross_entropy(method.modules["classifier"](z1), y) + kl_to_prior(sched.signal(torch.zeros(1)), u)
    torch.manual_seed(3)
    assert torch.allclose(method.train_step(x, y, torch.arange(16)), expected, rtol=1e-5)


def test_noprop_ct_learned_schedule_is_monotone_with_its_closed_form_weight():
    """The trainable schedule: S(t) = sigmoid(-gamma(t)) rises from noise to label for any weights
    it may learn, its ends are sigmoid(-gamma_1) and sigmoid(-gamma_0), SNR'(t) (the loss weight)
    is the derivative of S / (1 - S), and a training step moves it (it is trained, not fixed)."""
    from methods.noprop import LearnedSchedule

    torch.manual_seed(0)
    sched = LearnedSchedule().double()
    with torch.no_grad():
        for p in sched.parameters():  # any weights, of either sign: monotone by construction
            p.copy_(3 * torch.randn_like(p))
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    with torch.no_grad():
        s = sched.signal(torch.linspace(0, 1, 200, dtype=torch.float64))
        assert torch.all(s[1:] > s[:-1])
        gamma_0 = sched.gamma_clean
        gamma_1 = gamma_0 + F.softplus(sched.raw_range)
        ends = sched.signal(torch.tensor([0.0, 1.0], dtype=torch.float64))
        assert torch.allclose(ends, torch.sigmoid(-torch.stack([gamma_1, gamma_0])))
        snr = lambda v: sched.signal(v) / (1 - sched.signal(v))  # noqa: E731
        finite = (snr(t + 1e-6) - snr(t - 1e-6)) / 2e-6
        assert torch.allclose(sched.levels(t)[1], finite, rtol=1e-4)

    method, data = build("method=noprop_ct", "arch=mlp_1x1024")
    before = [p.detach().clone() for p in method.modules["schedule"].parameters()]
    method.train_step(data.train_x[:32], data.train_y[:32], torch.arange(32))
    assert all(not torch.equal(b, p) for b, p in zip(before, method.modules["schedule"].parameters()))


def test_noprop_prior_kl_is_the_gaussian_kl():
    from methods.noprop import kl_to_prior

    u = torch.eye(10, dtype=torch.float64)[torch.tensor([1, 4, 7])]
    signal = torch.tensor([0.3], dtype=torch.float64)
    q = torch.distributions.Normal(signal.sqrt() * u, (1 - signal).sqrt().expand_as(u))
    p = torch.distributions.Normal(torch.zeros_like(u), torch.ones_like(u))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(kl_to_prior(signal, u), expected)
    assert kl_to_prior(torch.zeros(1, dtype=torch.float64), u).item() == 0.0  # the cosine schedule's S_0
