"""How a method learns, not only how well: alignment with backprop, per-layer read-outs, robustness.

Off by default and never in tuning trials (config `diagnostics.enabled`); on in the
`diagnostics_mnist` experiment. Turning them on does not change training (a test compares final
weights bit for bit): they read gradients and weights, they never write them, they restore the
buffers a reference forward pass touches (BatchNorm statistics) and they draw random numbers from
their own generators or inside `torch.random.fork_rng`. Their time is kept apart
(`Meters.excluded`), out of the method's training time, energy and FLOPs.

1. Alignment with BP (`Alignment`), at `alignment_points` training steps spread evenly over the
   run. Before the method's real step on a batch, the gradient that end-to-end backprop of
   cross-entropy gives each trained parameter at the current weights on that batch (autograd of
   CE(`method.differentiable_scores(x)`, y), which is the prediction the method is judged by).
   During the real step, what the method hands its optimizer for each parameter (read by an
   optimizer step pre-hook, before the optimizer transforms it), or what a method that updates by
   hand passes to `Method.hand_over`. Per layer (the parameters of one module, weight and bias
   together): the cosine of the two and the ratio of their norms. Where there is no BP-comparable
   loss (`Method.bp_comparable` False, e.g. FF's goodness layers) or a layer has no BP gradient
   (not on the prediction path, e.g. a local auxiliary head), the layer is left empty with the
   reason, never given a number. For feedback-alignment methods also BioTorch's weight
   alignment: the angle between each forward weight and its fixed feedback matrix
   (`Method.feedback_pairs`).
2. Per-layer read-outs (`layer_probes`): a linear probe (multinomial logistic regression, L-BFGS,
   on standardised features of a fixed subset of training images) on each layer's representation
   at the end of training (`Method.representations`), scored on the test set.
3. Robustness (`robustness`): test accuracy on a fixed subset of the test set under Gaussian input
   noise and under FGSM (x + eps * sign(grad_x CE)), both in pixel units of the [0, 1] image
   (converted with the dataset's normalisation) and clipped to the valid pixel range. The FGSM
   gradient is autograd through `differentiable_scores`: the method's own prediction, so for FF
   the read-out on neutral-label activations and for CaFo the sum of its predictors' scores
   (`Method.attack_note` says what each method's attack differentiates).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook


@dataclass
class DiagnosticsConfig:
    """Config `diagnostics.*`; the metadata is each field's valid range."""

    enabled: bool = field(default=False, metadata={})
    alignment_points: int = field(default=20, metadata={"ge": 0})
    probe_train_samples: int = field(default=10000, metadata={"ge": 100})
    probe_iterations: int = field(default=100, metadata={"ge": 1})
    probe_max_features: int = field(default=4096, metadata={"ge": 16})
    robustness_samples: int = field(default=2000, metadata={"ge": 10})
    noise_sigmas: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.4], metadata={"min_items": 0})
    fgsm_epsilons: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2], metadata={"min_items": 0})


def figure(value, unit: str, source: str, **extra) -> dict:
    """A diagnostic figure, with its unit and how it was obtained (all are measured, none estimated)."""
    return {"value": value, "unit": unit, "source": source, "estimated": False, **extra}


# ------------------------------------------------------------------------------------------------
# 1. Alignment with BP


def layers_of(method) -> dict[str, list[nn.Parameter]]:
    """Trained parameters grouped by the module that owns them ("blocks.0.0": weight, bias)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in method.modules.named_parameters():
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(p)
    return groups


@contextmanager
def all_parameters_differentiable(method):
    """Methods that update by hand keep requires_grad off; the BP reference needs it on for a moment."""
    params = list(method.modules.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextmanager
def buffers_kept(method):
    """A forward pass in training mode updates BatchNorm's running statistics: put them back."""
    saved = [(b, b.detach().clone()) for b in method.modules.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def bp_reference(method, x: torch.Tensor, y: torch.Tensor) -> dict[nn.Parameter, torch.Tensor | None]:
    """d CE(differentiable_scores(x), y) / d p for every parameter, at the current weights; None
    for a parameter the prediction does not depend on. Touches no .grad, buffer or RNG stream."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), buffers_kept(method), all_parameters_differentiable(method) as params:
        with torch.enable_grad():
            scores = method.differentiable_scores(x)
            if scores is None or not scores.requires_grad:
                return {p: None for p in params}
            loss = F.cross_entropy(scores.float(), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {p: (None if g is None else g.detach()) for p, g in zip(params, grads)}


@contextmanager
def signals_seen(method):
    """What the method hands its optimizers (or `hand_over`) during the block: {parameter: gradient},
    the first signal for each parameter, cloned before the optimizer step transforms anything."""
    seen: dict[nn.Parameter, torch.Tensor] = {}

    def before_optimizer_step(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and p not in seen:
                    seen[p] = p.grad.detach().clone()

    def handed_over(params, signals):
        for p, g in zip(params, signals):
            if p not in seen:
                seen[p] = g.detach().clone()

    handle = register_optimizer_step_pre_hook(before_optimizer_step)
    method._update_sink = handed_over
    try:
        yield seen
    finally:
        handle.remove()
        method._update_sink = None


def cosine_and_ratio(ours: list[torch.Tensor], bp: list[torch.Tensor]) -> tuple[float | None, float | None]:
    a = torch.cat([g.flatten().double() for g in ours])
    b = torch.cat([g.flatten().double() for g in bp])
    na, nb = a.norm().item(), b.norm().item()
    if nb == 0.0:
        return None, None
    return (a @ b).item() / (na * nb) if na > 0 else 0.0, na / nb


def angle_deg(w: torch.Tensor, b: torch.Tensor) -> float:
    cos = F.cosine_similarity(w.detach().flatten().double(), b.detach().flatten().double(), dim=0).clamp(-1, 1)
    return float(torch.rad2deg(torch.arccos(cos)))


class Alignment:
    """Alignment with BP at `points` training steps spread evenly over the run (see the module doc)."""

    def __init__(self, method, points: int):
        self.method = method
        self.points = points
        self.at: set[int] = set()
        self.layers = layers_of(method)
        self.series: dict[str, dict[str, list]] = {}  # layer -> {"step", "epoch", "cosine", "norm_ratio"}
        self.weight_alignment: dict[str, dict[str, list]] = {}  # layer -> {"step", "angle"}
        self.empty: dict[str, str] = {}  # layer -> why it has no alignment figures
        if not method.bp_comparable:
            for layer in self.layers:
                self.empty[layer] = method.alignment_note or "no BP-comparable loss"

    def plan(self, total_steps: int) -> None:
        if self.points <= 0 or total_steps <= 0:
            return
        n = min(self.points, total_steps)
        self.at = {round(i * (total_steps - 1) / max(n - 1, 1)) for i in range(n)}

    def wants(self, step: int) -> bool:
        return step in self.at

    def step(self, x, y, step: int, epoch: int, meters, run_step):
        """Run the method's real step (`run_step`) and measure around it; returns its loss."""
        with meters.excluded():
            self._weight_alignment(step)
        if not self.method.bp_comparable:  # nothing to compare with: no reference, no capture
            return run_step()
        with meters.excluded():
            reference = bp_reference(self.method, x, y)
        with signals_seen(self.method) as seen:
            loss = run_step()
        with meters.excluded():
            self._compare(reference, seen, step, epoch)
        return loss

    def _weight_alignment(self, step: int) -> None:
        for name, w, b in self.method.feedback_pairs():
            entry = self.weight_alignment.setdefault(name, {"step": [], "angle": []})
            entry["step"].append(step)
            entry["angle"].append(angle_deg(w, b))

    def _compare(self, reference, seen, step: int, epoch: int) -> None:
        for layer, params in self.layers.items():
            with_signal = [p for p in params if p in seen]
            if not with_signal:
                continue  # not trained at this step (another phase, or frozen)
            if any(reference.get(p) is None for p in with_signal):
                self.empty.setdefault(layer, "not on the prediction path: end-to-end BP of the prediction's cross-entropy gives it no gradient")
                continue
            cos, ratio = cosine_and_ratio([seen[p] for p in with_signal], [reference[p] for p in with_signal])
            entry = self.series.setdefault(layer, {"step": [], "epoch": [], "cosine": [], "norm_ratio": []})
            entry["step"].append(step)
            entry["epoch"].append(epoch)
            entry["cosine"].append(cos)
            entry["norm_ratio"].append(ratio)

    def result(self) -> dict:
        out = {
            "source": "cosine and norm ratio between the method's gradient signal (optimizer step pre-hook or "
                      "Method.hand_over, before the optimizer) and end-to-end BP of cross-entropy of "
                      "Method.differentiable_scores, same weights, same batch",
            "unit": "cosine: 1; norm_ratio: ours / BP",
            "points": sorted(self.at),
            "layers": self.series,
            "order": [layer for layer in self.layers if layer in self.series],  # network order (records sort keys)
            "empty": dict(self.empty),
        }
        for layer in self.layers:
            if layer not in self.series and layer not in self.empty:
                out["empty"][layer] = "never handed a gradient signal at a measured step (not trained by a gradient, or trained without an optimizer and without hand_over)"
        if self.weight_alignment:
            out["weight_alignment"] = {
                "source": "angle between each forward weight and its fixed feedback matrix (BioTorch's weight alignment)",
                "unit": "degree",
                "layers": self.weight_alignment,
            }
        return out


# ------------------------------------------------------------------------------------------------
# 2. Per-layer read-outs: linear probes


@torch.no_grad()
def features(method, x: torch.Tensor, batch: int, max_features: int) -> list[tuple[str, torch.Tensor]]:
    """Each layer's representation of x, flattened; conv maps average-pooled down to at most
    `max_features` values (a 32x28x28 map would be 25,088 features an image)."""
    collected: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(x), batch):
        for name, h in method.representations(x[start : start + batch]):
            if h.dim() == 4 and h[0].numel() > max_features:
                side = max(1, int((max_features / h.shape[1]) ** 0.5))
                h = F.adaptive_avg_pool2d(h, side)
            collected.setdefault(name, []).append(h.flatten(1).float())
    return [(name, torch.cat(parts)) for name, parts in collected.items()]


def fit_probe(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int, iterations: int) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS from zeros (deterministic), small L2."""
    probe = nn.Linear(train_f.shape[1], num_classes).to(train_f.device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=iterations, history_size=10,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(train_f), train_y) + 1e-4 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe


def layer_probes(method, data, cfg: DiagnosticsConfig, batch: int) -> dict:
    n = min(cfg.probe_train_samples, len(data.train_y))
    was_training = method.modules.training
    method.train(False)
    try:
        train_feats = features(method, data.train_x[:n], batch, cfg.probe_max_features)
        test_feats = dict(features(method, data.test_x, batch, cfg.probe_max_features))
    finally:
        method.train(was_training)
    if not train_feats:
        return {"note": method.representations_note or "the method exposes no per-layer representation"}
    out = {}
    for name, f in train_feats:
        mean, std = f.mean(0), f.std(0).clamp_min(1e-6)  # standardised on the probe's training images
        probe = fit_probe((f - mean) / std, data.train_y[:n], data.num_classes, cfg.probe_iterations)
        with torch.no_grad():
            pred = probe((test_feats[name] - mean) / std).argmax(1)
        acc = (pred == data.test_y).float().mean().item()
        out[name] = figure(acc, "fraction", f"linear probe (L-BFGS logistic regression, {cfg.probe_iterations} "
                                            f"iterations) on {n} training images' features, test set",
                           features=int(f.shape[1]))
    return out


# ------------------------------------------------------------------------------------------------
# 3. Robustness: Gaussian noise and FGSM


def pixel_scale(data, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(std, lo, hi) to turn pixel units into the normalised input's units and clip to [0, 1] pixels.
    Without a recorded normalisation the input is taken as it is (std 1, no clipping)."""
    norm = (data.info or {}).get("normalisation")
    if not norm:
        one = torch.ones((), device=like.device)
        return one, torch.full((), -float("inf"), device=like.device), torch.full((), float("inf"), device=like.device)
    shape = (1, -1) + (1,) * (like.dim() - 2)
    mean = torch.tensor(norm["mean"], device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(norm["std"], device=like.device, dtype=like.dtype).view(shape)
    return std, (0 - mean) / std, (1 - mean) / std


def accuracy(method, x, y, batch: int) -> float:
    """Accuracy of `differentiable_scores` (the same scores as `predict`, computed afresh: a
    method may cache its evaluation features by tensor address, which perturbed copies reuse)."""
    correct = 0
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        scores = method.differentiable_scores(xb)
        if scores is None:  # not differentiable: its plain prediction (no cache issue then assumed)
            with torch.no_grad():
                scores = method.predict(xb)
        correct += (scores.detach().argmax(1) == y[start : start + batch]).sum().item()
    return correct / len(y)


def fgsm(method, x, y, eps_norm, lo, hi, batch: int) -> torch.Tensor | None:
    """x + eps * sign(grad_x CE(differentiable_scores(x), y)), clipped; None if the scores have no
    gradient with respect to the input."""
    out = []
    for start in range(0, len(x), batch):
        xb = x[start : start + batch].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scores = method.differentiable_scores(xb)
            if scores is None or not scores.requires_grad:
                return None
            (grad,) = torch.autograd.grad(F.cross_entropy(scores.float(), y[start : start + batch]), xb)
        out.append(torch.maximum(torch.minimum(xb.detach() + eps_norm * grad.sign(), hi), lo))
    return torch.cat(out)


def robustness(method, data, cfg: DiagnosticsConfig, seed: int, batch: int) -> dict:
    n = min(cfg.robustness_samples, len(data.test_y))
    x, y = data.test_x[:n], data.test_y[:n]
    std, lo, hi = pixel_scale(data, x)
    was_training = method.modules.training
    method.train(False)
    source = f"test accuracy on the first {n} test images"
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            out = {"clean": figure(accuracy(method, x, y, batch), "fraction", source), "noise": {}, "fgsm": {}}
            gen = torch.Generator(device=x.device).manual_seed(seed)
            for sigma in cfg.noise_sigmas:
                noisy = torch.maximum(torch.minimum(x + torch.randn(x.shape, generator=gen, device=x.device) * sigma / std, hi), lo)
                out["noise"][str(sigma)] = figure(accuracy(method, noisy, y, batch), "fraction",
                                                  f"{source}, Gaussian noise sigma={sigma} (pixel units), clipped to [0, 1]")
            for eps in cfg.fgsm_epsilons:
                adv = fgsm(method, x, y, eps / std, lo, hi, batch)
                if adv is None:
                    out["fgsm"][str(eps)] = {"value": None, "unit": "fraction", "source": source,
                                             "estimated": False, "why_empty": "the prediction has no gradient with respect to the input"}
                    continue
                out["fgsm"][str(eps)] = figure(accuracy(method, adv, y, batch), "fraction",
                                               f"{source}, FGSM eps={eps} (pixel units), clipped to [0, 1]")
    finally:
        method.train(was_training)
    out["attack"] = method.attack_note
    return out


def end_of_training(method, data, cfg: DiagnosticsConfig, seed: int, batch: int) -> dict:
    """Per-layer read-outs and robustness of the trained method, timed apart."""
    t0 = time.perf_counter()
    out = {"probes": layer_probes(method, data, cfg, batch), "robustness": robustness(method, data, cfg, seed, batch)}
    out["seconds"] = figure(time.perf_counter() - t0, "s", "time.perf_counter around the end-of-training diagnostics")
    return out
