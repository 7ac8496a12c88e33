"""Datasets as tensors on the run's device.

Every dataset is read once into uint8/float arrays, fingerprinted, split into train / validation
(held out of the training set, seeded) / test, normalised with the training split's per-channel
statistics and moved to the device. Training batches are index slices of a seeded permutation
(`batches`): no per-sample Dataset or DataLoader in the training path, which is what makes an
MNIST epoch cost about as much as the model's arithmetic (see `make perf`).

The test split is only read by the final evaluation (`loop.evaluate_test`); tuning never sees it.
Train, validation and test indices are recorded with every run (`info["split_indices"]`: where
each split's images come from in the released arrays) so their disjointness can be checked.

Graphs (`cora`, `citeseer`, `cora_ml`) are a second kind of dataset: node classification on one
graph (`load_graph_splits`). Their "samples" are node indices: `train_x` holds the training nodes'
indices, `val_x` and `test_x` the others', and `Splits.graph` holds the node features and edges
on the device. A graph method's `train_step` receives a batch of training-node indices and runs
message passing over the whole graph (the runner makes a graph's batch the whole training set
unless train.batch_size says otherwise: one full-graph step per epoch, as the papers do).

Augmentation (`augment`, per dataset YAML): "crop_flip" is the usual CIFAR recipe (random crop of
the image padded by 4 black pixels, torchvision's RandomCrop(32, padding=4), + horizontal flip);
"crop_flip_reflect" pads by reflecting the image's border instead (the comparison's, Spyra 2025:
padding_mode="reflect"); both applied to each training batch on the device, batched and seeded
(`crop_flip`); "none" for MNIST-like data.
"""
from __future__ import annotations

import hashlib
import os
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from benchmark.archs import Graph
from benchmark.errors import UserError

# sha256 of the raw arrays (train images, train labels, test images, test labels, in that order,
# images as uint8 in N x H x W (x C) layout, labels as int64) of each canonical release. MNIST's were
# computed from the idx files whose md5 matches the original release (../shared/data/prepare.py
# checks it); Fashion-MNIST's from the Debian package of the original files; digits' from the copy
# inside scikit-learn. A dataset whose fingerprint is absent here is recorded as "unknown".
CANONICAL_SHA256 = {
    "mnist": "1e35582d42a90940c55b956deb61875c020b567ed20e3c5b174f52bf7809ed9b",
    "fashion_mnist": "ece172613115fb18b120bec8f6c02271af90b8b8f0a5af5c51cbd5ceed68e619",
    "digits": "ee9c3d4a0b70c8eea0d6df59494c03776008444f01c603039ee3692ee39d99e9",
}


@dataclass
class RawDataset:
    """Unnormalised arrays as released: images uint8 (N, C, H, W), labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    canonical_basis: str = "sha256 table in benchmark/data.py"


@dataclass
class Splits:
    """Normalised tensors on the device, plus what the results record about them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    info: dict = field(default_factory=dict)
    augment: str = "none"  # none | crop_flip | crop_flip_reflect, applied to training batches only
    pad_value: torch.Tensor | None = None  # (1, C, 1, 1): a black pixel after normalisation
    graph: "Graph | None" = None  # graph datasets: the x tensors are node indices into this graph

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.graph is not None:
            return (self.graph.features.shape[1],)  # one node's features
        return tuple(self.train_x.shape[1:])

    def to(self, device) -> "Splits":
        """The same splits with every tensor on `device`, the graph's included (a graph left behind
        crashed the graph methods on CUDA: their label blocks index its features)."""
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        graph = self.graph.to(device) if self.graph is not None else None
        return dataclasses.replace(self, **moved, graph=graph)


# ----------------------------------------------------------------------------------------------
# Loaders: one function per dataset, registered by name.

LOADERS: dict[str, Callable[[Path, bool], RawDataset]] = {}


def loader(name: str):
    def register(fn):
        LOADERS[name] = fn
        return fn

    return register


def _missing(name: str, root: Path, err: Exception) -> UserError:
    return UserError(
        f"dataset '{name}' not found under {root} ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
        "set data.root (or env BPFREE_DATA) to a folder made by `python ../shared/data/prepare.py DIR`, "
        "or allow data.download=true on a machine with internet",
    )


def _torchvision_pair(cls, name: str, root: Path, download: bool) -> tuple:
    try:
        return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
    except Exception as err:  # torchvision raises RuntimeError offline, URLError/HTTPError online
        raise _missing(name, root, err) from None


def _as_nchw(images: np.ndarray) -> np.ndarray:
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def _from_torchvision(cls, name: str, root: Path, download: bool, num_classes: int, basis: str) -> RawDataset:
    train, test = _torchvision_pair(cls, name, root, download)
    to_np = lambda a: a.numpy() if torch.is_tensor(a) else np.asarray(a)  # noqa: E731
    return RawDataset(
        _as_nchw(to_np(train.data)).astype(np.uint8),
        np.asarray(train.targets, dtype=np.int64),
        _as_nchw(to_np(test.data)).astype(np.uint8),
        np.asarray(test.targets, dtype=np.int64),
        num_classes,
        basis,
    )


@loader("mnist")
def load_mnist(root: Path, download: bool) -> RawDataset:
    from torchvision.datasets import MNIST

    return _from_torchvision(MNIST, "mnist", root, download, 10, "sha256 table in benchmark/data.py")


@loader("fashion_mnist")
def load_fashion_mnist(root: Path, download: bool) -> RawDataset:
    from torchvision.datasets import FashionMNIST

    return _from_torchvision(FashionMNIST, "fashion_mnist", root, download, 10, "sha256 table in benchmark/data.py")


@loader("cifar10")
def load_cifar10(root: Path, download: bool) -> RawDataset:
    from torchvision.datasets import CIFAR10

    # torchvision refuses to load CIFAR batches whose md5 differs from the release's.
    return _from_torchvision(CIFAR10, "cifar10", root, download, 10, "torchvision md5 check of the release files")


@loader("cifar100")
def load_cifar100(root: Path, download: bool) -> RawDataset:
    from torchvision.datasets import CIFAR100

    return _from_torchvision(CIFAR100, "cifar100", root, download, 100, "torchvision md5 check of the release files")


@loader("cifar10_jpeg")
def load_cifar10_jpeg(root: Path, download: bool) -> RawDataset:
    """CIFAR-10 re-encoded as JPEG (lossy: never the canonical pixels), read with ImageFolder once and
    cached as a .npz beside the images (or in the user cache when that folder is read-only)."""
    from torchvision.datasets import ImageFolder

    base = root / "cifar10-jpeg"
    if not (base / "train").is_dir():
        raise _missing("cifar10_jpeg", base, FileNotFoundError("no train/ folder"))
    cache = _cache_path(base, "cifar10_jpeg.npz")
    if cache.exists():
        arrays = np.load(cache)
        return RawDataset(*(arrays[k] for k in ("xtr", "ytr", "xte", "yte")), 10, "lossy JPEG copy: never canonical")
    split = {}
    for part in ("train", "test"):
        folder = ImageFolder(str(base / part))
        images = np.stack([np.asarray(folder.loader(p).convert("RGB")) for p, _ in folder.samples])
        split[part] = (_as_nchw(images), np.asarray(folder.targets, dtype=np.int64))
    raw = RawDataset(*split["train"], *split["test"], 10, "lossy JPEG copy: never canonical")
    try:
        np.savez(cache, xtr=raw.train_images, ytr=raw.train_labels, xte=raw.test_images, yte=raw.test_labels)
    except OSError:
        pass  # a read-only data folder only costs the decode next time
    return raw


def _cache_path(base: Path, name: str) -> Path:
    if os.access(base, os.W_OK):
        return base / name
    user_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bpfree-bench"
    user_cache.mkdir(parents=True, exist_ok=True)
    return user_cache / name


@loader("digits")
def load_digits(root: Path, download: bool) -> RawDataset:
    """scikit-learn's 8x8 digits (1797 images, 16 grey levels), shipped inside scikit-learn. It has no
    official test split: the last 297 images are the test set, always the same.

    The CSV that ships with scikit-learn is read directly: `sklearn.datasets` would import SciPy and
    most of scikit-learn (about 2 s and 100 MB here) for a 1797-row file. A test checks that the
    arrays equal `sklearn.datasets.load_digits()`."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("dataset=digits needs scikit-learn: pip install scikit-learn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")  # 64 pixel columns (0..16), then the label
    images = (table[:, :-1].reshape(-1, 1, 8, 8) * 255.0 / 16.0).round().astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    return RawDataset(images[:1500], labels[:1500], images[1500:], labels[1500:], 10)


# ----------------------------------------------------------------------------------------------


def fingerprint(raw: RawDataset) -> str:
    digest = hashlib.sha256()
    for array in (raw.train_images, raw.train_labels, raw.test_images, raw.test_labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def canonical_status(name: str, raw: RawDataset, sha: str) -> bool | None:
    """True/False where we know the release's fingerprint; None where we cannot tell."""
    if name == "cifar10_jpeg":
        return False
    if name in ("cifar10", "cifar100"):
        return True  # torchvision verified the release md5 before handing the arrays over
    known = CANONICAL_SHA256.get(name)
    return (sha == known) if known else None


def resolve_root(root: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(root))).resolve()


# Where each torchvision-style dataset's files sit under data.root, for a check before training.
EXPECTED_PATHS = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1",
    "cifar100": "cifar-100-python/train",
    "cifar10_jpeg": "cifar10-jpeg/train",
    "cora": "Planetoid/Cora/raw/ind.cora.x",
    "citeseer": "Planetoid/CiteSeer/raw/ind.citeseer.x",
    "cora_ml": "CitationFull/cora_ml/raw/cora_ml.npz",
}
# The side of each image dataset's images as released, for the checks made before training.
IMAGE_SIDES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32, "cifar10_jpeg": 32, "digits": 8}
DOWNLOADABLE = {"mnist", "fashion_mnist", "cifar10", "cifar100", "cora", "citeseer", "cora_ml"}


def known_datasets() -> list[str]:
    return sorted({*LOADERS, *GRAPHS})


def check_available(name: str, root, download: bool, split: int | None = None) -> None:
    """Raise the one-line UserError now, rather than after other runs have trained, when a dataset
    is neither on disk nor allowed to be downloaded (or a graph's `split` is not one it has)."""
    if name not in LOADERS and name not in GRAPHS:
        raise UserError(f"unknown dataset '{name}'", f"choose one of: {', '.join(known_datasets())}")
    if name in GRAPHS:
        check_graph_split(name, root, split)
    expected = EXPECTED_PATHS.get(name)
    if expected is None or (download and name in DOWNLOADABLE):
        return
    path = resolve_root(root) / expected
    if not path.exists():
        how = "allow data.download=true (needs internet) or " if name in DOWNLOADABLE else ""
        raise UserError(
            f"dataset '{name}' not found: looked for {path}",
            f"{how}set data.root (or env BPFREE_DATA) to a folder made by `python ../shared/data/prepare.py DIR`",
        )


def load_raw(name: str, root: str | os.PathLike, download: bool) -> RawDataset:
    if name not in LOADERS:
        raise UserError(f"unknown dataset '{name}'", f"choose one of: {', '.join(known_datasets())}")
    return LOADERS[name](resolve_root(root), download)


def load_splits(name: str, root, download: bool, val_size: int | None, split_seed: int, device: torch.device,
                augment: str = "none", split: int | None = None, resize: int | None = None,
                normalise: str = "standard") -> Splits:
    """Load, fingerprint, split, (resize,) normalise and move one dataset to `device`.
    normalise: "standard" subtracts the training split's per-channel mean and divides by its std;
    "none" keeps the pixels in [0, 1] (torchvision's ToTensor alone, as some reference codes feed
    their networks: the DRTP reference's Normalize((0,), (1,)))."""
    if name in GRAPHS:  # resize is for images: config.check_workload refuses it on a graph
        return load_graph_splits(name, root, download, split, device)
    if val_size is None:
        raise UserError(f"dataset '{name}' needs dataset.val_size", "set it in its configs/dataset/ YAML")
    raw = load_raw(name, root, download)
    sha = fingerprint(raw)
    n_train_all = len(raw.train_labels)
    if not 0 < val_size < n_train_all:
        raise UserError(
            f"data.val_size={val_size} is out of range for '{name}' ({n_train_all} training images)",
            f"use a value between 1 and {n_train_all - 1}",
        )
    train_idx, val_idx = split_indices(n_train_all, val_size, split_seed)

    def pixels(images: np.ndarray) -> torch.Tensor:
        """Images as floats in [0, 1] on the device, resized where the dataset asks."""
        x = torch.from_numpy(images).to(device).float() / 255.0
        return x if resize is None else resized(x, resize)

    train_pixels = pixels(raw.train_images[train_idx])
    if normalise == "standard":
        mean, std = _channel_stats(train_pixels)
    else:  # the identity, kept as a mean and std so every reader handles one form
        mean = torch.zeros(1, train_pixels.shape[1], 1, 1, device=train_pixels.device)
        std = torch.ones_like(mean)

    def prepare(images: np.ndarray) -> torch.Tensor:
        return (pixels(images) - mean) / std

    labels = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    info = {
        "name": name,
        "root": str(resolve_root(root)),
        "sha256": sha,
        "canonical": canonical_status(name, raw, sha),
        "canonical_basis": raw.canonical_basis,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(raw.test_labels),
        "val_size": val_size,
        "split_seed": split_seed,
        "input_shape": list(train_pixels.shape[1:]),
        "resize": resize,
        "normalisation": {"mean": mean.flatten().tolist(), "std": std.flatten().tolist(),
                          "from": "training split" if normalise == "standard" else "none: pixels in [0, 1]"},
        "augment": augment,
        # Positions in the released arrays: train/val index the released training set, test the
        # released test set (a different array), so the three can never share an image.
        "split_indices": {"train": f"released train minus {val_size} held out (seed {split_seed})",
                          "val_sha256": index_digest(val_idx), "train_sha256": index_digest(train_idx),
                          "test": "released test set, all images"},
    }
    return Splits(
        train_x=train_pixels.sub_(mean).div_(std),  # in place: no second copy of the training set
        train_y=labels(raw.train_labels[train_idx]),
        val_x=prepare(raw.train_images[val_idx]),
        val_y=labels(raw.train_labels[val_idx]),
        test_x=prepare(raw.test_images),
        test_y=labels(raw.test_labels),
        num_classes=raw.num_classes,
        info=info,
        augment=augment,
        pad_value=((0.0 - mean) / std),
    )


def split_indices(n_train_all: int, val_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions in the released training set: a seeded permutation, the first
    `val_size` held out for validation. Disjoint by construction; the test set is another array."""
    order = np.random.default_rng(split_seed).permutation(n_train_all)
    return order[val_size:], order[:val_size]


def index_digest(idx: np.ndarray) -> str:
    """A short fingerprint of an index set (order-free), recorded so a split can be checked."""
    return hashlib.sha256(np.sort(idx).astype(np.int64).tobytes()).hexdigest()[:16]


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad_value: torch.Tensor, padding: int = 4,
              reflect: bool = False) -> torch.Tensor:
    """The `crop_flip` augmentation of a training batch, on x's device, from `generator`: each image
    padded by `padding` black pixels on every side (reflect: by its own border, mirrored), cropped
    back to its size at a random offset, then flipped left-right with probability 1/2
    (torchvision's RandomCrop(32, padding=4[, padding_mode="reflect"]) + RandomHorizontalFlip, done
    for the whole batch at once with index arithmetic)."""
    n, c, h, w = x.shape
    if reflect:
        padded = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
    else:
        padded = pad_value.expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] resized to size x size, bilinear with antialiasing: what
    torchvision's transforms.Resize does to each image (BioTorch's MNIST at 32x32), once for the
    whole set (in chunks, to bound the intermediate memory)."""
    import torch.nn.functional as F

    if tuple(x.shape[2:]) == (size, size):
        return x
    chunks = [F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
              for part in x.split(8192)]
    return torch.cat(chunks).clamp_(0.0, 1.0)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of images in [0, 1]."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)[0:1]
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return mean, std


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Index tensors of one epoch: a seeded permutation cut into batches (the last one may be short)."""
    order = torch.randperm(n, generator=generator, device="cpu").to(device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


# ----------------------------------------------------------------------------------------------
# Graphs: node classification on one graph, through torch_geometric's dataset classes (imported
# only when a graph is asked for: image runs never pay for torch_geometric's import).
#
# Protocols (the split decides what a run's accuracy means):
# - `cora`, `citeseer`: Planetoid (Yang et al. 2016), its standard semi-supervised split
#   (20 labelled nodes per class, 500 validation, 1,000 test); `split` must be 0 (there is one).
# - `cora_ml`: CitationFull's Cora-ML graph with the 5 random 64/16/20 node splits released by
#   "Forward Learning of Graph Neural Networks" (Park et al., ICLR 2024); `split` 0-4 picks one
#   (the paper's 5 runs are its 5 splits).
# Features are row-normalised (each node's features sum to 1: torch_geometric's NormalizeFeatures,
# which both the GCN paper's and the ForwardGNN code's loaders apply).


@dataclass(frozen=True)
class GraphSource:
    folder: str  # under data.root, the `root` torch_geometric's class is given
    pyg_class: str  # Planetoid | CitationFull
    pyg_name: str
    splits: int  # how many splits it offers (`split` 0..splits-1)
    split_files: str | None = None  # released split files under data.root, {part} and {k} filled in


GRAPHS = {
    "cora": GraphSource("Planetoid", "Planetoid", "Cora", 1),
    "citeseer": GraphSource("Planetoid", "Planetoid", "CiteSeer", 1),
    "cora_ml": GraphSource("CitationFull", "CitationFull", "Cora_ML", 5,
                           "forwardgnn-splits/CitationFull-Cora_ML/node-5splits/{part}-node-index-split{k}.pt"),
}


def is_graph(name: str) -> bool:
    return name in GRAPHS


def check_graph_split(name: str, root, split: int | None) -> None:
    source = GRAPHS[name]
    k = 0 if split is None else split
    if not 0 <= k < source.splits:
        raise UserError(f"dataset.split={split} is out of range for '{name}' (it has {source.splits} split(s))",
                        f"use dataset.split between 0 and {source.splits - 1}")
    if source.split_files is not None:
        path = resolve_root(root) / source.split_files.format(part="train", k=k)
        if not path.exists():
            raise UserError(f"the released node splits of '{name}' are not found: looked for {path}",
                            "lay them out with `python ../shared/data/prepare.py DIR` (or copy the "
                            "NamyongPark/forwardgnn-datasplits files there) and set data.root to DIR")


def _writable_graph_root(base: Path) -> Path:
    """torch_geometric writes its processed/ files beside raw/: a read-only data folder (CI's
    ../shared/data) is copied once into the user cache, which is read from then on."""
    if os.access(base, os.W_OK):
        return base
    import shutil
    import tempfile

    copy = _cache_path(base, "") / "graphs" / base.name
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=copy.parent))
        shutil.copytree(base, staging / base.name)
        try:
            (staging / base.name).rename(copy)  # atomic: a concurrent process sees all or nothing
        except OSError:
            pass  # another process put its copy there first
        shutil.rmtree(staging, ignore_errors=True)
    return copy


def _pyg_graph(name: str, root: Path, download: bool):
    import fcntl

    source = GRAPHS[name]
    base = root / source.folder
    raw = root / EXPECTED_PATHS[name]
    if not raw.exists() and not download:
        raise _missing(name, root, FileNotFoundError(str(raw)))
    if raw.exists():
        base = _writable_graph_root(base)
    base.mkdir(parents=True, exist_ok=True)
    try:
        from benchmark.archs import import_pyg

        pyg_datasets = import_pyg("torch_geometric.datasets")
    except ImportError:
        raise UserError(f"dataset '{name}' needs torch_geometric", "pip install torch_geometric (or make venv)") from None
    # One process at a time processes the raw files (pytest-xdist workers, parallel grid cells).
    with open(base / ".bpfree.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return getattr(pyg_datasets, source.pyg_class)(str(base), source.pyg_name)[0]
        except Exception as err:  # offline download attempts and broken files alike
            raise _missing(name, root, err) from None


def _node_split(name: str, root: Path, graph, k: int) -> dict[str, np.ndarray]:
    source = GRAPHS[name]
    if source.split_files is None:  # Planetoid: the masks that come with the graph
        return {part: graph[f"{part}_mask"].nonzero().flatten().numpy() for part in ("train", "val", "test")}
    return {part: torch.load(root / source.split_files.format(part=part, k=k)).long().numpy()
            for part in ("train", "val", "test")}


def load_graph_splits(name: str, root, download: bool, split: int | None, device: torch.device) -> Splits:
    """Load one graph and one of its node splits onto `device` (see the section's comment)."""
    root = resolve_root(root)
    k = 0 if split is None else split
    check_graph_split(name, root, k)
    graph = _pyg_graph(name, root, download)
    parts = _node_split(name, root, graph, k)
    features = graph.x.float()
    features = features - features.min()
    features = features / features.sum(dim=1, keepdim=True).clamp_min(1.0)  # NormalizeFeatures
    labels = graph.y.long()
    digest = hashlib.sha256()
    for array in (graph.x.numpy(), graph.edge_index.numpy(), labels.numpy()):
        digest.update(np.ascontiguousarray(array).tobytes())
    ids = lambda part: torch.from_numpy(parts[part]).to(device)  # noqa: E731
    on_device = labels.to(device)
    info = {
        "name": name,
        "kind": "graph",
        "root": str(root),
        "sha256": digest.hexdigest(),
        "canonical": None,
        "canonical_basis": f"torch_geometric {GRAPHS[name].pyg_class}('{GRAPHS[name].pyg_name}') of the released files",
        "n_train": len(parts["train"]),
        "n_val": len(parts["val"]),
        "n_test": len(parts["test"]),
        "split": k,
        "graph": {"nodes": int(features.shape[0]), "directed_edges": int(graph.edge_index.shape[1]),
                  "features": int(features.shape[1])},
        "input_shape": [int(features.shape[1])],
        "normalisation": {"rows": "each node's features sum to 1 (NormalizeFeatures)"},
        "augment": "none",
        "split_indices": {"protocol": "Planetoid public split" if GRAPHS[name].split_files is None
                          else f"released split {k} ({GRAPHS[name].split_files.format(part='*', k=k)})",
                          **{f"{part}_sha256": index_digest(parts[part]) for part in ("train", "val", "test")}},
    }
    return Splits(
        train_x=ids("train"), train_y=on_device[ids("train")],
        val_x=ids("val"), val_y=on_device[ids("val")],
        test_x=ids("test"), test_y=on_device[ids("test")],
        num_classes=int(labels.max()) + 1,
        info=info,
        graph=Graph(features, graph.edge_index).to(device),
    )
