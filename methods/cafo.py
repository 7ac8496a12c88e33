"""Cascaded-Forward (CaFo): `cafo_rand` and `cafo_dfa`.

Zhao, Wang, Zhang, Zhang, Wang, "The Cascaded Forward Algorithm for Neural Network Training",
arXiv 2303.09728 (2023). Official code: Graph-ZKY/CaFo.

- Locality: per block. Each block's linear predictor has its own loss on that block's detached,
  flattened output; no predictor's gradient reaches a block. `cafo_rand` never updates the blocks
  (they stay at their random initialisation); `cafo_dfa` first trains them with direct feedback
  alignment, where each block's update comes from the output error sent through a fixed random
  matrix, and the block's input is detached, so no gradient crosses blocks either.
- Loss per predictor (hp.loss): "ce" cross-entropy (Adam on a bias-free linear map, as the
  comparison does; the official code's own "BP" mode), "mse" the closed-form least-squares solution
  of the official code (one solve, no epochs), "sparsemax" the sparsemax loss (Martins & Astudillo
  2016).
- Targets: the labels (one-hot for MSE).
- Prediction: the sum over blocks of each predictor's class probabilities (softmax; the sparsemax
  mapping for the sparsemax loss; the raw linear output for MSE, as the official code... applies a
  softmax there too, which we follow).

Differences from the official code: the three predictors are trained together on each batch
rather than one after the other (they are independent given the frozen blocks, so only the early
stopping is joint); BatchNorm statistics of the random blocks are the training set's (estimated
on a fixed 10,000 of its images before freezing) rather than each full batch's; features are
computed once and cached for the whole phase (the official code also forwards each block once),
in hp.cache_dtype (float16: half the bytes; the predictors still compute in float32) and within
hp.cache_budget_mb, beyond which the blocks that do not fit are recomputed per batch
(`FeatureStore`; README: Memory). `cafo_dfa`: the official
repository has no DFA training script; we follow the paper's description (blocks trained by DFA
first, then the predictors) with Adam and Gaussian feedback matrices. The comparison (Spyra 2025)
trained the DFA blocks a fixed 5 epochs on MNIST and 250 on CIFAR-10; here they get
hp.dfa_fraction of the run's epoch budget, run in full (a fixed phase: no early stopping). The
comparison's code gives the last block the head's backpropagated error (its DFA replaces the
gradients of the blocks before it only) and unit-norm feedback rows; here every block, the last
included, gets its own random projection of the error, as DFA defines it (Adam makes the
feedback's scale immaterial). Its CIFAR figures used random crop + horizontal flip,
which the cifar dataset configs now apply too (`augment: crop_flip`, black padding; its crop pads
by reflection, `augment: crop_flip_reflect`, which its paper files set). With augmented batches the predictors train on each batch's
own crops, run through the frozen blocks, as the comparison's code does: no training-set cache.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import archs
from benchmark.spec import Locality, Method, Phase, register
from methods._optim import OPTIMIZERS, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class CaFoHyper:
    loss: str = field(metadata={"choices": ("ce", "mse", "sparsemax")})
    optimizer: str = field(metadata={"choices": OPTIMIZERS})
    lr: float = field(metadata={"gt": 0})
    weight_decay: float = field(metadata={"ge": 0})
    ridge: float = field(metadata={"ge": 0})  # MSE closed form: lambda of (F'F + lambda I)^-1 F'Y
    # Not tuned, not part of the algorithm: how the frozen blocks' features are kept (FeatureStore).
    cache_dtype: str = field(metadata={"choices": ("float32", "float16", "bfloat16")})
    cache_budget_mb: float = field(metadata={"ge": 0})


@dataclass
class CaFoDFAHyper(CaFoHyper):
    dfa_lr: float = field(metadata={"gt": 0})
    dfa_fraction: float = field(metadata={"gt": 0, "le": 0.9})  # share of the epoch budget for DFA
    dfa_weight_decay: float = field(default=0.0, metadata={"ge": 0})  # the blocks' and the DFA head's


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Martins & Astudillo 2016)."""
    z_sorted, _ = z.sort(dim=1, descending=True)
    k = torch.arange(1, z.shape[1] + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(dim=1)
    support = (1 + k * z_sorted) > cumsum
    k_max = support.sum(dim=1, keepdim=True)
    tau = (cumsum.gather(1, k_max - 1) - 1) / k_max.to(z.dtype)
    return (z - tau).clamp(min=0)


def sparsemax_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sparsemax loss; its gradient w.r.t. z is sparsemax(z) - onehot(y)."""
    p = sparsemax(z)
    support = p > 0
    tau = ((z * support).sum(1) - 1) / support.sum(1)
    loss = -z.gather(1, y[:, None]).squeeze(1) + 0.5 * ((z**2 - tau[:, None] ** 2) * support).sum(1) + 0.5
    return loss.mean()


# Images per chunk when the frozen blocks run over a whole set (statistics, cache). Small on
# purpose: 2,000 images of the first block's 32x28x28 maps are 200 MB temporaries, fresh pages from
# the OS for every chunk, and on this project's CPU the same forward pass took 1.4-1.6x as long in
# chunks of 2,000 as in chunks of 256 (4,000 images, one thread).
CHUNK = 256


class FeatureStore:
    """Every frozen block's flattened output for a fixed input tensor, read by row index.

    A block's features are kept (in `dtype`) while they fit `budget_bytes`, deepest block first:
    a block that is not kept is recomputed per batch from the nearest block before it, and the
    deep blocks are the expensive ones to recompute (in the CaFo CNN, block 3's 512-channel
    convolution is 80 % of the FLOPs while block 1 is under 1 %). What a batch reads is float32
    whatever is kept, so only the rounding of kept features differs from no cache at all.
    """

    def __init__(self, blocks: nn.ModuleList, x: torch.Tensor, dtype: torch.dtype, budget_bytes: float, chunk: int = CHUNK):
        self.blocks, self.x = blocks, x
        with torch.no_grad():
            probe = [h[0].shape for h in _block_outputs(blocks, x[:1])]
        self.shapes = probe
        itemsize = torch.tensor([], dtype=dtype).element_size()
        row_items = [torch.Size(shape).numel() for shape in probe]
        kept_blocks = set()
        for i in reversed(range(len(blocks))):  # deepest first: the costliest to recompute
            if row_items[i] * itemsize * len(x) <= budget_bytes:
                kept_blocks.add(i)
                budget_bytes -= row_items[i] * itemsize * len(x)
        self.kept: dict[int, torch.Tensor] = {
            i: torch.empty(len(x), row_items[i], dtype=dtype, device=x.device) for i in sorted(kept_blocks)
        }
        self.nbytes = sum(t.numel() * itemsize for t in self.kept.values())
        self.full_nbytes = sum(row_items) * itemsize * len(x)  # what keeping every block would take
        self.chunk = chunk
        self._fill()

    @torch.no_grad()
    def _fill(self) -> None:
        for start in range(0, len(self.x) if self.kept else 0, self.chunk):
            for i, h in enumerate(_block_outputs(self.blocks, self.x[start : start + self.chunk])):
                if i in self.kept:
                    self.kept[i][start : start + self.chunk] = h.flatten(1)

    # A checkpoint (benchmark/checkpoint.py) leaves the kept features out, up to gigabytes, and
    # recomputes them when loaded: the blocks are frozen, so they come back the same.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["kept"] = {i: (t.shape, t.dtype) for i, t in self.kept.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        device = self.x.device
        self.kept = {i: torch.empty(shape, dtype=dtype, device=device) for i, (shape, dtype) in state["kept"].items()}
        self._fill()

    @property
    def kept_blocks(self) -> set[int]:
        return set(self.kept)

    def __len__(self) -> int:
        return len(self.x)

    @torch.no_grad()
    def features(self, rows) -> list[torch.Tensor]:
        """Float32 flattened features of every block for `rows` (an index tensor or a slice)."""
        out, h = [], (None if 0 in self.kept else self.x[rows])
        for i, block in enumerate(self.blocks):
            if i in self.kept:
                flat = self.kept[i][rows].float()
                h = flat.view(-1, *self.shapes[i])  # the next block, if recomputed, starts here
            else:
                h = block(h)
                flat = h.flatten(1)
            out.append(flat)
        return out


def _block_outputs(blocks: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    outs, h = [], x
    for block in blocks:
        h = block(h)
        outs.append(h)
    return outs


class CaFoBase(Method):
    locality = Locality("block", "each predictor's loss reaches only its own linear map; blocks are trained, if at all, by DFA with detached inputs")
    supported_archs = ("cnn",)
    train_blocks = False

    def __init__(self, arch, input_shape, num_classes, hp, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        net = archs.build(arch, input_shape)
        self.modules["blocks"] = net.blocks.to(device)
        self.modules["predictors"] = nn.ModuleList(
            nn.Linear(net.out_features(i), num_classes, bias=False) for i in range(len(net.blocks))
        ).to(device)
        self.predictor_optimizers = [
            make_optimizer(hp.optimizer, p.parameters(), hp.lr, hp.weight_decay) for p in self.modules["predictors"]
        ]
        self.blocks_frozen = False
        self._train_store: FeatureStore | None = None
        self._eval_cache: dict[tuple, FeatureStore] = {}
        self.set_blocks_trainable(False)

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if self.blocks_frozen:  # frozen blocks always use their fixed BatchNorm statistics
            self.modules["blocks"].eval()

    def set_blocks_trainable(self, on: bool) -> None:
        for p in self.modules["blocks"].parameters():
            p.requires_grad_(on)

    # -- features of the frozen blocks, computed once ------------------------------------------
    BATCHNORM_SAMPLES = 10_000

    @torch.no_grad()
    def fit_batchnorm(self, x: torch.Tensor, chunk: int = CHUNK) -> None:
        """Set each random block's BatchNorm statistics to the training set's, estimated on a fixed
        random 10,000 of its images (all of them when fewer), block by block: the layers before
        BatchNorm run on those images in chunks (the blocks before it already fitted), and the
        per-channel mean and unbiased variance, summed in float64, become the running statistics.
        With hundreds of thousands of values per channel the estimate's error is far below the
        cache's float16 rounding, and memory stays at one chunk."""
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: self.BATCHNORM_SAMPLES]
        sample = x[pick.to(x.device)]
        blocks = self.modules["blocks"]
        for i, block in enumerate(blocks):
            *body, bn = block  # conv -> ReLU -> pool, then BatchNorm
            total = total_sq = None
            count = 0
            for start in range(0, len(sample), chunk):
                h = sample[start : start + chunk]
                for earlier in blocks[:i]:
                    h = earlier(h)
                pre = nn.Sequential(*body)(h).double()
                sums, sq = pre.sum(dim=(0, 2, 3)), (pre * pre).sum(dim=(0, 2, 3))
                total, total_sq = (sums, sq) if total is None else (total + sums, total_sq + sq)
                count += pre.numel() // pre.shape[1]
            mean = total / count
            bn.running_mean.copy_(mean)
            bn.running_var.copy_((total_sq - count * mean * mean) / (count - 1))
            bn.eval()

    def feature_store(self, x: torch.Tensor) -> FeatureStore:
        """A store for x within what is left of hp.cache_budget_mb (the training set's store first)."""
        used = sum(store.nbytes for store in [self._train_store, *self._eval_cache.values()] if store is not None)
        budget = max(self.hp.cache_budget_mb * 2**20 - used, 0)
        return FeatureStore(self.modules["blocks"], x, getattr(torch, self.hp.cache_dtype), budget)

    def freeze_blocks(self, train_x: torch.Tensor) -> None:
        self.modules["blocks"].eval()
        self.set_blocks_trainable(False)
        self.blocks_frozen = True
        self._eval_cache.clear()
        self._train_store = None
        if not self.train_blocks:  # random blocks: statistics from the training set
            self.fit_batchnorm(train_x)
        # DFA-trained blocks keep the statistics they learned with
        if self.augmented_inputs:
            # Each batch is a fresh crop and flip (the CIFAR recipe): features cached for the
            # unaugmented images would train the predictors on other inputs than the run's, so
            # every batch runs through the frozen blocks, as the comparison's code does.
            return
        self._train_store = self.feature_store(train_x)
        recomputed = self.recomputed_blocks()
        if recomputed:
            # Each of those blocks costs one more forward pass over the training set every epoch:
            # over a long predictor phase (the comparison's 227 epochs) that is most of the run.
            log.warning("cafo: block(s) %s of the training set's features exceed method.hp.cache_budget_mb=%g "
                        "(all blocks need %.0f MiB in %s) and are recomputed every batch; raise the budget "
                        "where memory allows", ", ".join(str(i + 1) for i in recomputed), self.hp.cache_budget_mb,
                        self._train_store.full_nbytes / 2**20, self.hp.cache_dtype)

    def recomputed_blocks(self) -> list[int]:
        """The blocks (0-based) whose training-set features are not kept, so are run per batch."""
        store = self._train_store
        return [] if store is None else [i for i in range(len(store.shapes)) if i not in store.kept_blocks]

    def extra_metrics(self):
        store = self._train_store
        if store is None:
            if self.blocks_frozen and self.augmented_inputs:
                return {"feature_cache": {"kept_blocks": [], "note": "augmented training batches: every batch "
                                          "runs through the frozen blocks, nothing cached"}}
            return {}
        return {"feature_cache": {"kept_blocks": sorted(i + 1 for i in store.kept_blocks),
                                  "recomputed_blocks": [i + 1 for i in self.recomputed_blocks()],
                                  "kept_mib": store.nbytes / 2**20, "all_blocks_mib": store.full_nbytes / 2**20,
                                  "dtype": self.hp.cache_dtype, "budget_mib": self.hp.cache_budget_mb}}

    # -- the predictors' local losses -----------------------------------------------------------
    def start_phase(self, phase, train_x, train_y, total_steps):
        if phase.name != "predictors":
            return
        self.freeze_blocks(train_x)
        if self.hp.loss == "mse":
            self.fit_least_squares(train_x, train_y)

    @torch.no_grad()
    def fit_least_squares(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The official code's closed form: W = (F'F + ridge I)^-1 F'Y, one solve per block, over
        the unaugmented training set (a closed form sees each image once)."""
        targets = F.one_hot(y, self.num_classes).float()
        store = self._train_store if self._train_store is not None else FeatureStore(self.modules["blocks"], x, torch.float32, 0)
        grams, cross = None, None
        for start in range(0, len(y), 2000):  # F'F and F'Y summed over chunks of the training set
            rows = slice(start, start + 2000)
            feats = store.features(rows)
            g = [f.T @ f for f in feats]
            c = [f.T @ targets[rows] for f in feats]
            grams, cross = (g, c) if grams is None else ([a + b for a, b in zip(grams, g)], [a + b for a, b in zip(cross, c)])
        for gram, ft_y, predictor in zip(grams, cross, self.modules["predictors"]):
            gram.diagonal().add_(self.hp.ridge)
            w = torch.linalg.lstsq(gram, ft_y).solution
            predictor.weight.copy_(w.T)

    def predictor_loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hp.loss == "sparsemax":
            return sparsemax_loss(scores, y)
        if self.hp.loss == "mse":
            return F.mse_loss(scores, F.one_hot(y, self.num_classes).float())
        return F.cross_entropy(scores, y)

    def train_predictors(self, x, y, idx) -> torch.Tensor:
        total = torch.zeros((), device=y.device)
        if self._train_store is not None:
            batch_features = self._train_store.features(idx)  # computed under no_grad: detached
        else:  # augmented batches: this batch's own images through the frozen blocks
            with torch.no_grad():
                batch_features = [h.flatten(1) for h in _block_outputs(self.modules["blocks"], x)]
        for feats, predictor, optimizer in zip(batch_features, self.modules["predictors"], self.predictor_optimizers):
            loss = self.predictor_loss(predictor(feats), y)
            if self.hp.loss != "mse":  # MSE is solved in closed form in start_phase
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += loss.detach()
        return total

    def train_step(self, x, y, idx):
        return self.train_predictors(x, y, idx)

    # -- prediction: the sum of the blocks' votes -----------------------------------------------
    def features_for(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Block features of an evaluation batch, cached while the blocks are frozen: the loop
        evaluates the same preloaded validation slices every epoch."""
        if not self.blocks_frozen:
            with torch.no_grad():
                return [h.flatten(1) for h in _block_outputs(self.modules["blocks"], x)]
        key = (x.data_ptr(), x.shape, x.device)
        if key not in self._eval_cache:
            self._eval_cache[key] = self.feature_store(x)
        return self._eval_cache[key].features(slice(None))

    def vote(self, scores: torch.Tensor) -> torch.Tensor:
        return sparsemax(scores) if self.hp.loss == "sparsemax" else F.softmax(scores, dim=1)

    def predict(self, x):
        feats = self.features_for(x)
        probs = sum(self.vote(p(f)) for f, p in zip(feats, self.modules["predictors"]))
        # Scores whose argmax is the summed vote and whose softmax is a usable val loss.
        return torch.log(probs / len(feats) + 1e-12)

    attack_note = ("FGSM differentiates CaFo's prediction, the log of the predictors' mean vote, by autograd through "
                   "the blocks (computed afresh, not from the evaluation cache)")

    def differentiable_scores(self, x):
        with torch.enable_grad():
            feats = [h.flatten(1) for h in _block_outputs(self.modules["blocks"], x)]
            probs = sum(self.vote(p(f)) for f, p in zip(feats, self.modules["predictors"]))
            return torch.log(probs / len(feats) + 1e-12)

    def units(self):
        units = {f"predictor{i}": list(p.parameters()) for i, p in enumerate(self.modules["predictors"])}
        units.update({f"block{i}": list(b.parameters()) for i, b in enumerate(self.modules["blocks"])})
        return units

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters a training step must leave untouched (checked by the audit)."""
        return list(self.modules["blocks"].parameters()) if self.blocks_frozen or not self.train_blocks else []


@register
class CaFoRand(CaFoBase):
    name = "cafo_rand"
    Hyper = CaFoHyper

    def phases(self, epochs):
        return [Phase("predictors", 1 if self.hp.loss == "mse" else epochs)]


@register
class CaFoDFA(CaFoBase):
    name = "cafo_dfa"
    Hyper = CaFoDFAHyper
    train_blocks = True

    def __init__(self, arch, input_shape, num_classes, hp, device):
        super().__init__(arch, input_shape, num_classes, hp, device)
        last = len(self.modules["blocks"]) - 1
        out_dim = self.modules["predictors"][last].in_features
        # The DFA output layer (trained on its own detached input) and the fixed feedback matrices.
        self.modules["dfa_head"] = nn.Linear(out_dim, num_classes).to(device)
        gen = torch.Generator(device="cpu").manual_seed(int(torch.initial_seed()) % 2**31)
        self.feedback = [
            (torch.randn(num_classes, self.modules["predictors"][i].in_features, generator=gen)
             / num_classes**0.5).to(device)
            for i in range(len(self.modules["blocks"]))
        ]
        self.block_optimizers = [
            make_optimizer(hp.optimizer, b.parameters(), hp.dfa_lr, hp.dfa_weight_decay) for b in self.modules["blocks"]
        ]
        self.head_optimizer = make_optimizer(hp.optimizer, self.modules["dfa_head"].parameters(), hp.dfa_lr,
                                             hp.dfa_weight_decay)

    def phases(self, epochs):
        dfa_epochs = min(max(1, round(epochs * self.hp.dfa_fraction)), max(epochs - 1, 1))
        predictor_epochs = 1 if self.hp.loss == "mse" else max(epochs - dfa_epochs, 1)
        # The DFA epochs are a set budget (the paper's and the comparison's): no early stopping.
        return [Phase("dfa_blocks", dfa_epochs, fixed=True), Phase("predictors", predictor_epochs)]

    def start_phase(self, phase, train_x, train_y, total_steps):
        if phase.name == "dfa_blocks":
            self.set_blocks_trainable(True)
            self.modules["blocks"].train()
        else:
            super().start_phase(phase, train_x, train_y, total_steps)

    def train_step(self, x, y, idx):
        if self.blocks_frozen:
            return self.train_predictors(x, y, idx)
        return self.dfa_step(x, y)

    def dfa_step(self, x, y) -> torch.Tensor:
        """Direct feedback alignment: the output error e = softmax(head) - onehot reaches block i
        as e @ B_i (B_i fixed, random); each block's input is detached."""
        outputs, h = [], x
        for block in self.modules["blocks"]:
            h = block(h.detach())
            outputs.append(h)
        logits = self.modules["dfa_head"](outputs[-1].detach().flatten(1))
        loss = F.cross_entropy(logits, y)
        self.head_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.head_optimizer.step()
        error = (F.softmax(logits.detach(), dim=1) - F.one_hot(y, self.num_classes).float()) / len(y)
        for out, feedback, optimizer in zip(outputs, self.feedback, self.block_optimizers):
            optimizer.zero_grad(set_to_none=True)
            out.backward((error @ feedback).view_as(out))
            optimizer.step()
        return loss.detach()

    def predict(self, x):
        if not self.blocks_frozen:  # during DFA: the DFA network's own output
            h = x
            for block in self.modules["blocks"]:
                h = block(h)
            return self.modules["dfa_head"](h.flatten(1))
        return super().predict(x)

    def units(self):
        units = super().units()
        units["dfa_head"] = list(self.modules["dfa_head"].parameters())
        return units
