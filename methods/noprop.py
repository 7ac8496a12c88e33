"""NoProp: discrete time (`noprop_dt`), continuous time (`noprop_ct`) and flow matching (`noprop_fm`).

Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
Forward-propagation", arXiv 2503.24322 (2025). Reference figures (NoProp-DT, ../shared/references):
CIFAR-10 80.54 %, CIFAR-100 46.06 % (with its CNN blocks and long GPU training). Its MNIST figure,
quoted here as 99.47 % since this module was written, could not be checked against any copy of the
paper the project can read; configs/published.yaml therefore holds it as not held.

Like a diffusion model over the label: T blocks, block t learns to denoise a noisy label
embedding given the image, each on its own.

- Noise schedule: signal levels S_0 < S_1 < ... < S_T from the cosine schedule
  S_t = cos^2(pi/2 * (1 - t/T + s) / (1 + s)), s = 0.008 (S_0 = 0: pure noise; S_T ~ 1),
  capped at hp.max_signal. q(z_t | y) = N(sqrt(S_t) u_y, (1 - S_t) I).
- Local loss of block t (t = 1..T): draw z_{t-1} ~ q(z_{t-1} | y), predict the clean embedding
  u_hat = block_t(x, z_{t-1}), loss w_t * ||u_hat - u_y||^2 with the paper's weight
  w_t = (T/2) * hp.eta * (SNR(t) - SNR(t-1)), SNR = S / (1 - S). Every block is updated on
  every batch, each by its own backward pass and optimiser.
- Classifier: a linear map p(y | z_T) trained by cross-entropy on z_T ~ q(z_T | y). It starts
  as 10 x the (one-hot) embedding's read-out instead of at random: with few optimiser steps (small
  datasets) a random start left it untrained while the denoising chain itself was already right.
- Prediction: z_0 ~ N(0, I); for t = 1..T, z_t = a_t u_hat_t + b_t z_{t-1} + sqrt(c_t) eps (the
  Gaussian posterior of the noising process, as the paper's DT inference); then the classifier's
  logits on z_T. The noise at prediction comes from a fixed-seed generator, so evaluating the same
  model twice gives the same scores.
- Block: the image goes through the arch's blocks (so BP's twin has the same image network)
  then a linear map to hp.hidden; the noisy label through Linear(classes, hidden); the two are
  concatenated, mapped by two layers to class logits, and u_hat = softmax(logits) @ W_embed.
- Locality: per block (each block's loss reaches only its own parameters; the classifier is its
  own unit). There are T copies of the image network: T times BP's parameters.

Differences from the paper, and why:
- Class embeddings are fixed one-hot vectors (the paper's ablations include this option; its main
  runs learn W_embed jointly with all blocks, which would make one parameter shared by every
  block's loss and the method no longer block-local). No KL term is needed then.
- The blocks' image path is any harness MLP/CNN. `repro_noprop` runs the paper's MNIST setting on
  arch cnn_noprop (32/64/128 channels, the layers public re-implementations read from the paper's
  Figure 6, an image here), capped at 10 of its 100 epochs on a 2-core CPU: its report rows are
  budget-limited, not a verdict on the method.
- Stability: the SNR weights span five orders of magnitude across blocks (S_T is near 1). With a
  per-block Adam(W) optimiser, a constant weight on a block's loss does not change its update
  (Adam divides it out), so the weighting matters only for SGD; hp.max_signal caps S_T (0.999 by
  default) so that SGD's last block does not take steps ~10^3 times the others'. Public
  re-implementations report divergence with SGD; we saw none with AdamW (see the closing note).

NoProp-CT (`noprop_ct`), the paper's continuous-time variant, shares DT's noising process,
blocks and classifier, with one change of structure: there is *one* denoising network
u_hat(x, z_t, t), conditioned on the time t in [0, 1] (Fourier features of t join the noisy label
on its label path), instead of T networks.
- Noise schedule (hp.noise_schedule): "learned", the paper's, trained with everything else, in
  the variational-diffusion form (Kingma et al. 2021; as quoted, see below): S(t) = sigmoid(-gamma(t)),
  so SNR(t) = exp(-gamma(t)), with gamma(t) = gamma_0 + (gamma_1 - gamma_0) (1 - gamma_bar(t)) and
  gamma_bar rising monotonically from 0 at t = 0 to 1 at t = 1 (LearnedSchedule); or "cosine",
  DT's fixed schedule at continuous t, S(t) = cos^2(pi/2 * (1 - t + s) / (1 + s)), capped at
  hp.max_signal.
- Local loss, the paper's L_CT: draw t ~ U(0, 1) per example, z_t ~ q(z_t | y), and add
  (hp.eta / 2) * SNR'(t) * ||u_hat(x, z_t, t) - u_y||^2 (the continuous limit of DT's weights;
  SNR' in closed form), the classifier's cross-entropy on z_1 ~ q(z_1 | y), and the prior's
  KL(q(z_0 | y) || N(0, I)). One backward pass of the sum, then every module's optimiser. The KL is
  0 for the cosine schedule (S(0) = 0); for the learned one it pulls S(0) down, as the
  cross-entropy pulls S(1) up, while the denoising term pulls both ends inwards.
- Prediction: the DT posterior step on hp.inference_steps equal steps of t from 0 to 1 (the
  discretised ODE the paper solves), at the schedule's levels, then the classifier. The image
  path depends on neither z nor t, so it runs once per prediction and only the label path and
  the fusion layers run at each step. Measured on NoProp-FM with the CNN image path (`python -m
  benchmark paper=li2025_noprop_fm_cnn_noprop_mnist train.epochs=1`, one thread, beside another
  run): the run's evaluations (validation twice, test once: 20,000 images) took 20 s instead of
  586 s when each step ran the whole network, with the same accuracies (98.30 / 98.58 %).
- Locality: declared "global", honestly: no signal passes along the time chain in training (the
  chain runs only at prediction), but the one network is trained end to end by backprop through
  all its layers, as one DT block is. What CT avoids is the chain of T separately trained blocks,
  not backprop inside a network; the audit therefore checks nothing for it, and the report shows
  it as a global method (the paper, too, trains its single CT/FM model by backprop).
- Differences, and what they cost: the paper's appendix on the schedule could not be read here
  (every copy stops before it); the gamma form above is the one a public re-implementation
  (bayesianempirimancer/jax-noprop) quotes from it. Our own choices: the monotone network
  (a positive slope plus positive sigmoids, gamma_1 - gamma_0 kept positive, so SNR' is never a
  negative weight whatever is learned), its start (a straight line in log-SNR from S = 0.0009 to
  0.9991, about the cosine schedule's capped range) and its optimiser (the denoiser's, without
  weight decay).
  Measured (`python -m benchmark method=noprop_ct dataset=mnist train.epochs=3 train.patience=0
  seed=S`, seeds 0 and 1, one thread, other runs on the cores; `method.hp.noise_schedule=cosine`
  for the fixed one): test accuracy learned 81.45 / 79.75 %, cosine 69.75 / 72.68 %. In three
  epochs the learned ends hardly move (S(1) from 0.99909 to 0.99901, S(0) from 0.00091 to
  0.00083), so the gain is the starting shape. At 20 epochs (`train.epochs=20`, seeds 0 and 1) the
  learned schedule reaches 90.65 / 89.38 % (best validation at epochs 17 and 19), its ends moved
  inwards (S(0) 0.0006, S(1) 0.9989); the cosine one peaks at epochs 4 and 2 (73.41 / 72.68 %),
  its validation accuracy then swinging between 21 and 73 %. Either way SNR'(t) spans orders of
  magnitude and the examples drawn near t = 1, where denoising is trivial, dominate each batch: t
  > 0.9 carries 74 % of the expected loss weight at the learned start (97 % with the cosine
  schedule), t < 0.5 under 0.1 % with either, and weighting every t alike
  (hp.loss_weight="uniform") gives 96.72 / 96.65 % (learned) and 96.37 / 96.75 % (cosine) on the
  same seeds. The default stays the paper's weight; the search space offers both weights and both
  schedules.

NoProp-FM (`noprop_fm`), the flow-matching variant: the same single time-conditioned network,
but it predicts a velocity, and the noisy label lies on the straight line between noise and label.
- Local loss: z_0 ~ N(0, I), t ~ U(0, 1), z_t = t u_y + (1 - t) z_0; the network's output v
  (its raw scores, not a point of the embeddings' simplex) is regressed onto u_y - z_0:
  ||v(x, z_t, t) - (u_y - z_0)||^2. There is no classifier to train.
- Prediction: Euler steps of dz/dt = v from z_0 ~ N(0, I) (fixed-seed generator) over
  hp.inference_steps, and the class whose embedding is nearest to z_1 wins (scores: minus the
  squared distance to each embedding). The image path runs once per prediction, as CT's.
- Locality: "global", as CT's (one network trained end to end by backprop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import archs
from benchmark.spec import Locality, Method, register
from methods._optim import OptimizerHyper, make_optimizer


@dataclass
class NoPropHyper(OptimizerHyper):
    steps: int = field(metadata={"ge": 1})  # T
    eta: float = field(metadata={"gt": 0})
    hidden: int = field(metadata={"ge": 1})
    max_signal: float = field(metadata={"gt": 0, "lt": 1})


def cosine_signal_levels(steps: int, cap: float) -> torch.Tensor:
    """DT's S_0..S_T: the cosine schedule (`signal_level`) at t = 0, 1/T, ..., 1."""
    return signal_level(torch.arange(steps + 1, dtype=torch.float64) / steps, cap)


class DenoisingBlock(nn.Module):
    def __init__(self, arch: dict, input_shape, num_classes: int, hidden: int, label_extra: int = 0):
        super().__init__()
        net = archs.build(arch, input_shape)
        self.image = nn.Sequential(
            *net.blocks, nn.Flatten(), nn.Linear(net.out_features(len(net.blocks) - 1), hidden), nn.ReLU()
        )
        self.label = nn.Sequential(nn.Linear(num_classes + label_extra, hidden), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def scores(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Class scores from the image's features (`self.image(x)`) and the noisy label z. The
        image path is the costly part and does not depend on z (nor on t): a prediction that
        steps along a chain with one network computes it once and reuses it at every step."""
        return self.fuse(torch.cat([features, self.label(z)], dim=1))

    def estimate(self, features: torch.Tensor, z: torch.Tensor, embed: torch.Tensor, *time) -> torch.Tensor:
        """The predicted clean embedding u_hat: the scores' softmax over the class embeddings
        (`time`: the t of a time-conditioned block, passed on to its scores)."""
        return F.softmax(self.scores(features, z, *time), dim=1) @ embed

    def forward(self, x: torch.Tensor, z: torch.Tensor, embed: torch.Tensor, *time) -> torch.Tensor:
        return self.estimate(self.image(x), z, embed, *time)


TIME_FEATURES = 16  # Fourier features of t fed to the continuous-time networks' label path


def time_features(t: torch.Tensor) -> torch.Tensor:
    """(N,) times in [0, 1] -> (N, TIME_FEATURES) sines and cosines at octave frequencies."""
    freqs = math.pi * 2.0 ** torch.arange(TIME_FEATURES // 2, device=t.device, dtype=t.dtype)
    angles = t[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeDenoisingBlock(DenoisingBlock):
    """DT's block with the time t joining the noisy label: one network for every t."""

    def __init__(self, arch: dict, input_shape, num_classes: int, hidden: int):
        super().__init__(arch, input_shape, num_classes, hidden, label_extra=TIME_FEATURES)

    def scores(self, features, z, t):
        return super().scores(features, torch.cat([z, time_features(t)], dim=1))


def posterior_step(s_prev: float, s: float, u_hat: torch.Tensor, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z at signal level s from z at s_prev and the predicted clean embedding: the Gaussian
    q(z_s | z_{s_prev}, u) of the noising process (DT's inference step; CT's on its time grid)."""
    alpha = s_prev / s
    a = math.sqrt(s) * (1 - alpha) / (1 - s_prev)
    b = math.sqrt(alpha) * (1 - s) / (1 - s_prev)
    c = (1 - s) * (1 - alpha) / (1 - s_prev)
    return a * u_hat + b * z + math.sqrt(max(c, 0.0)) * noise


@register
class NoPropDT(Method):
    name = "noprop_dt"
    locality = Locality("block", "block t learns to denoise the label from (image, z_{t-1}) alone; no signal passes between blocks in training")
    Hyper = NoPropHyper

    def __init__(self, arch, input_shape, num_classes, hp: NoPropHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        self.modules["blocks"] = nn.ModuleList(
            DenoisingBlock(arch, input_shape, num_classes, hp.hidden) for _ in range(hp.steps)
        ).to(device)
        self.modules["classifier"] = nn.Linear(num_classes, num_classes).to(device)
        with torch.no_grad():  # start by reading the class embedding (logits = 10 z): see docstring
            self.modules["classifier"].weight.copy_(10 * torch.eye(num_classes))
            self.modules["classifier"].bias.zero_()
        self.optimizers = [
            make_optimizer(hp.optimizer, m.parameters(), hp.lr, hp.weight_decay, hp.momentum)
            for m in [*self.modules["blocks"], self.modules["classifier"]]
        ]
        self.embed = torch.eye(num_classes, device=device)  # fixed one-hot class embeddings
        levels = cosine_signal_levels(hp.steps, hp.max_signal)
        snr = levels / (1 - levels)
        self.weights = ((hp.steps / 2) * hp.eta * (snr[1:] - snr[:-1])).float().tolist()
        self.levels = levels.float().tolist()

    def noisy(self, u: torch.Tensor, t: int) -> torch.Tensor:
        """z_t ~ q(z_t | y) for clean embeddings u."""
        s = self.levels[t]
        return math.sqrt(s) * u + math.sqrt(1 - s) * torch.randn_like(u)

    def train_step(self, x, y, idx):
        u = self.embed[y]
        total = torch.zeros((), device=x.device)
        for t, (block, optimizer) in enumerate(zip(self.modules["blocks"], self.optimizers), start=1):
            u_hat = block(x, self.noisy(u, t - 1), self.embed)
            loss = self.weights[t - 1] * (u_hat - u).pow(2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        loss = F.cross_entropy(self.modules["classifier"](self.noisy(u, self.hp.steps)), y)
        self.optimizers[-1].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[-1].step()
        return total + loss.detach()

    def posterior_step(self, t: int, u_hat: torch.Tensor, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return posterior_step(self.levels[t - 1], self.levels[t], u_hat, z, noise)

    def predict(self, x):
        gen = torch.Generator(device=x.device).manual_seed(0)

        def gaussian():
            return torch.randn(len(x), self.num_classes, generator=gen, device=x.device)

        z = gaussian()
        for t, block in enumerate(self.modules["blocks"], start=1):
            z = self.posterior_step(t, block(x, z, self.embed), z, gaussian())
        return self.modules["classifier"](z)

    def extra_metrics(self):
        return {"steps": self.hp.steps, "loss_weights": self.weights}

    def units(self):
        units = {f"block{t}": list(b.parameters()) for t, b in enumerate(self.modules["blocks"], start=1)}
        units["classifier"] = list(self.modules["classifier"].parameters())
        return units


def signal_level(t: torch.Tensor, cap: float, s: float = 0.008) -> torch.Tensor:
    """DT's cosine schedule at continuous t (tensor), capped."""
    return (torch.cos(math.pi / 2 * (1 - t + s) / (1 + s)) ** 2).clamp(0.0, cap)


def snr_derivative(t: torch.Tensor, cap: float, s: float = 0.008) -> torch.Tensor:
    """d/dt of SNR(t) = S / (1 - S) for the cosine S (closed form; 0 where S is capped)."""
    angle = math.pi / 2 * (1 - t + s) / (1 + s)
    # S = cos^2(a), SNR = cot^2(a), dSNR/da = -2 cot(a) / sin^2(a), da/dt = -pi / (2 (1 + s))
    d = 2 * torch.cos(angle) / torch.sin(angle) ** 3 * (math.pi / (2 * (1 + s)))
    return torch.where(signal_level(t, 1.0, s) > cap, torch.zeros_like(d), d)


class CosineSchedule(nn.Module):
    """DT's fixed cosine signal level as a function of continuous t (no parameters)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def levels(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S(t) and SNR'(t)."""
        return signal_level(t, self.cap), snr_derivative(t, self.cap)

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        return signal_level(t, self.cap)


class LearnedSchedule(nn.Module):
    """CT's trainable noise schedule, in the variational-diffusion form (Kingma et al. 2021) quoted
    from the paper's appendix (module docstring): gamma(t) = gamma_0 + (gamma_1 - gamma_0)
    (1 - gamma_bar(t)), signal level S(t) = sigmoid(-gamma(t)), so SNR(t) = exp(-gamma(t)).

    gamma_bar rises monotonically from 0 at t = 0 to 1 at t = 1: f(t) normalised by f(0) and f(1),
    f(t) = a t + sum_j h_j sigmoid(r_j (t - c_j)) with a, h_j, r_j kept positive by softplus, so f
    is increasing whatever the weights learn. gamma_1 - gamma_0 is kept positive the same way, so
    the signal always grows with t (noise at t = 0, label at t = 1) and SNR' stays a weight >= 0.
    It starts near a straight line in log-SNR from gamma = +7 (S = 0.0009) to -7 (S = 0.9991),
    about the cosine schedule's capped range."""

    def __init__(self, features: int = 16, gamma_clean: float = -7.0, gamma_range: float = 14.0):
        super().__init__()
        inv_softplus = lambda v: math.log(math.expm1(v))  # noqa: E731
        self.gamma_clean = nn.Parameter(torch.tensor(gamma_clean))  # gamma_0, at t = 1
        self.raw_range = nn.Parameter(torch.tensor(inv_softplus(gamma_range)))  # gamma_1 - gamma_0
        self.raw_slope = nn.Parameter(torch.tensor(inv_softplus(1.0)))
        self.raw_heights = nn.Parameter(torch.full((features,), inv_softplus(0.01)))  # near-linear start
        self.raw_rates = nn.Parameter(torch.full((features,), inv_softplus(10.0)))
        self.centres = nn.Parameter(torch.linspace(0.0, 1.0, features))

    def _f(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(t) and f'(t) (closed form: the derivative is needed as a loss weight, not a gradient)."""
        rates, heights = F.softplus(self.raw_rates), F.softplus(self.raw_heights)
        sig = torch.sigmoid(rates * (t[:, None] - self.centres))
        slope = F.softplus(self.raw_slope)
        return slope * t + (heights * sig).sum(1), slope + (heights * rates * sig * (1 - sig)).sum(1)

    def levels(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S(t) and SNR'(t) = -gamma'(t) exp(-gamma(t)), from one evaluation of f at t and at the
        ends 0 and 1 (which normalise it)."""
        n = len(t)
        f, df = self._f(torch.cat([t, t.new_tensor([0.0, 1.0])]))
        f, df, f0, f1 = f[:n], df[:n], f[n], f[n + 1]
        gamma_range = F.softplus(self.raw_range)
        gamma = self.gamma_clean + gamma_range * (1 - (f - f0) / (f1 - f0))
        return torch.sigmoid(-gamma), gamma_range * df / (f1 - f0) * torch.exp(-gamma)

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        return self.levels(t)[0]


def kl_to_prior(signal: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """KL( q(z_0 | y) || N(0, I) ), mean over the batch, for q(z_0 | y) = N(sqrt(S_0) u_y, (1 - S_0) I):
    the paper's prior term. It is 0 when S_0 = 0 (the cosine schedule) and pulls a learned S_0 down."""
    d = u.shape[1]
    return 0.5 * (signal * u.pow(2).sum(1) - d * signal - d * torch.log1p(-signal)).mean()


@dataclass
class NoPropContinuousHyper(OptimizerHyper):
    eta: float = field(metadata={"gt": 0})
    hidden: int = field(metadata={"ge": 1})
    max_signal: float = field(metadata={"gt": 0, "lt": 1})
    inference_steps: int = field(metadata={"ge": 1})
    loss_weight: str = field(default="snr_derivative", metadata={"choices": ("snr_derivative", "uniform")})  # CT only
    noise_schedule: str = field(default="learned", metadata={"choices": ("learned", "cosine")})  # CT only


class NoPropContinuous(Method):
    """One time-conditioned network and a linear classifier (NoProp-CT; FM drops the classifier)."""

    Hyper = NoPropContinuousHyper

    def __init__(self, arch, input_shape, num_classes, hp: NoPropContinuousHyper, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        self.modules["denoiser"] = TimeDenoisingBlock(arch, input_shape, num_classes, hp.hidden).to(device)
        self.embed = torch.eye(num_classes, device=device)  # fixed one-hot class embeddings, as DT

    def make_optimizers(self) -> None:
        """One optimiser per module (FM: the denoiser; CT: also the classifier and a learned
        schedule, which takes no weight decay: its gamma ends are log-SNRs, not weights to shrink)."""
        hp = self.hp
        self.optimizers = {
            name: make_optimizer(hp.optimizer, module.parameters(), hp.lr,
                                 0.0 if name == "schedule" else hp.weight_decay, hp.momentum)
            for name, module in self.modules.items() if list(module.parameters())
        }

    def step(self, loss: torch.Tensor) -> None:
        """One backward pass of the whole loss, then every module's optimiser."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()

    def times(self, n: int, device) -> list[torch.Tensor]:
        """The prediction grid's times t_0 = 0 < ... < t_K = 1, as (n,) tensors."""
        grid = torch.linspace(0, 1, self.hp.inference_steps + 1, device=device)
        return [grid[k].expand(n) for k in range(len(grid))]

    def units(self):
        return {name: list(self.modules[name].parameters()) for name in self.modules}


@register
class NoPropCT(NoPropContinuous):
    name = "noprop_ct"
    locality = Locality("global", "one time-conditioned denoiser trained end to end by backprop at sampled times (no signal along the time chain), the classifier and the noise schedule")

    def __init__(self, arch, input_shape, num_classes, hp, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        self.modules["classifier"] = nn.Linear(num_classes, num_classes).to(device)
        with torch.no_grad():  # as DT: start by reading the class embedding
            self.modules["classifier"].weight.copy_(10 * torch.eye(num_classes))
            self.modules["classifier"].bias.zero_()
        self.modules["schedule"] = (LearnedSchedule() if hp.noise_schedule == "learned" else CosineSchedule(hp.max_signal)).to(device)
        self.make_optimizers()

    @staticmethod
    def noisy(u: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """z ~ q(z | y) = N(sqrt(S) u_y, (1 - S) I) at signal level S (one per example, or one for all)."""
        s = signal.reshape(-1, 1)
        return s.sqrt() * u + (1 - s).sqrt() * torch.randn_like(u)

    def train_step(self, x, y, idx):
        """The paper's L_CT, one backward pass: the SNR'-weighted denoising loss at t ~ U(0, 1), the
        classifier's cross-entropy on z_1 ~ q(z_1 | y), and the prior's KL at t = 0. The
        denoising loss reaches only the denoiser and the schedule, the cross-entropy the classifier
        and the schedule, the KL the schedule. The schedule is evaluated once, at the sampled times
        and at t = 1 and 0."""
        n = len(y)
        u = self.embed[y]
        t = torch.rand(n, device=x.device)
        signal, snr_rate = self.modules["schedule"].levels(torch.cat([t, t.new_tensor([1.0, 0.0])]))
        u_hat = self.modules["denoiser"](x, self.noisy(u, signal[:n]), self.embed, t)
        if self.hp.loss_weight == "uniform":  # every t counts alike (see the docstring)
            weight = torch.full_like(t, 0.5 * self.hp.eta)
        else:
            weight = 0.5 * self.hp.eta * snr_rate[:n]
        denoising = (weight * (u_hat - u).pow(2).sum(1)).mean()
        classification = F.cross_entropy(self.modules["classifier"](self.noisy(u, signal[n])), y)
        prior = kl_to_prior(signal[n + 1], u)
        loss = denoising + classification + prior
        self.step(loss)
        return loss.detach()

    def predict(self, x):
        gen = torch.Generator(device=x.device).manual_seed(0)
        z = torch.randn(len(x), self.num_classes, generator=gen, device=x.device)
        times = self.times(len(x), x.device)
        levels = self.modules["schedule"].signal(torch.stack([v[0] for v in times])).tolist()
        denoiser = self.modules["denoiser"]
        features = denoiser.image(x)  # once: the image path does not change along the chain
        for k, t_prev in enumerate(times[:-1]):
            u_hat = denoiser.estimate(features, z, self.embed, t_prev)
            noise = torch.randn(z.shape, generator=gen, device=x.device)
            z = posterior_step(levels[k], levels[k + 1], u_hat, z, noise)
        return self.modules["classifier"](z)

    def extra_metrics(self):
        """The schedule's signal levels at the ends, S(0) and S(1) (learned or fixed)."""
        with torch.no_grad():
            ends = self.modules["schedule"].signal(torch.tensor([0.0, 1.0], device=self.embed.device)).tolist()
        return {"noise_schedule": self.hp.noise_schedule, "signal_start": ends[0], "signal_end": ends[1]}


@register
class NoPropFM(NoPropContinuous):
    name = "noprop_fm"
    locality = Locality("global", "one time-conditioned velocity network trained end to end by backprop at sampled times (no signal along the time chain)")

    def __init__(self, arch, input_shape, num_classes, hp, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        self.make_optimizers()

    def train_step(self, x, y, idx):
        u = self.embed[y]
        z0 = torch.randn_like(u)
        t = torch.rand(len(y), device=x.device)
        z_t = t[:, None] * u + (1 - t[:, None]) * z0
        denoiser = self.modules["denoiser"]
        velocity = denoiser.scores(denoiser.image(x), z_t, t)
        loss = (velocity - (u - z0)).pow(2).sum(1).mean()
        self.step(loss)
        return loss.detach()

    def predict(self, x):
        gen = torch.Generator(device=x.device).manual_seed(0)
        z = torch.randn(len(x), self.num_classes, generator=gen, device=x.device)
        times = self.times(len(x), x.device)
        denoiser = self.modules["denoiser"]
        features = denoiser.image(x)  # once: the image path does not change along the chain
        for t_prev, t in zip(times, times[1:]):
            z = z + (t - t_prev)[:, None] * denoiser.scores(features, z, t_prev)
        return -torch.cdist(z, self.embed).pow(2)  # the nearest class embedding wins
