"""Speed benchmark: `make perf` (all sections) or `make perf-overhead` (meters only).

    python -m benchmark.perf [--only overhead|loop|energy|data|methods|reference|options|probe|startup]
                             [--device auto|cpu|cuda] [--repeats 5] [--python PATH,...] [--out results/perf.csv]

Every comparison is a ratio measured side by side in this one process, interleaved (A, B, A, B...),
over several repeats; the table reports medians. Sections:

- overhead: the same BP MLP (2x1000) training (a) through the harness with every meter on, (b)
  through the harness with every meter off, (c) as a bare PyTorch loop over the same preloaded
  tensors. Goals, per epoch (the epochs after the first): (a)/(b) <= 1.03 and (a)/(c) <= 1.03. The
  fixed cost of a run (config, build, meters, the first step's counting, final validation, record)
  is reported apart, in seconds: on a GPU an MNIST epoch is under a second, and a one-epoch ratio
  would be mostly that fixed cost.
- loop: the harness step's parts one by one (inline step, loss sum, the method's train_step,
  Meters.train_step), each as a ratio to the bare inline epoch.
- energy (CUDA only): the same BP epochs read by NVML's energy counter and by NVML power sampled
  every 0.1 s and integrated, side by side: how far the fallback backend is from the counter.
- data: a harness epoch vs the usual torchvision Dataset + DataLoader pipeline (ToTensor,
  Normalize, shuffling DataLoader) for the same model and data. Goal: >= 2x faster.
- methods: per registered method on its native architecture, training samples/s, achieved FLOP/s
  (FlopCounterMode count / time) and that as a fraction of this machine's fp32 matmul peak
  (measured here with a large GEMM; a large convolution's rate is printed beside it, since a CNN
  method can exceed the GEMM where the convolution library is faster), and the ATen operators one
  training step dispatches (what a launch-bound GPU step pays for).
- reference: time per epoch of our FF and CaFo vs a minimal re-implementation, in this script, of
  the public references' training steps (FF: loeweX/Forward-Forward's per-sample dataset of
  positive/negative/neutral images and one optimizer over all layers; CaFo: frozen blocks forwarded
  again for every predictor batch), same architecture, batch size and data, with accuracy after the
  same epochs.
- options: the speed options of config `train.*` (compile, autocast=bf16, channels_last), each
  against the same training with the option off: BP on the 2x1000 MLP and on the 3-block CNN, and
  local learning on the CNN. The method is built and compiled once; epochs are timed after a
  warm-up epoch, so compile time is reported separately, not mixed into the ratio.
- probe: whether the speed probe every run records (benchmark/meters.py: speed_probe) follows the
  machine's speed: the probe and a bare BP MLP epoch (a 10,000-image slice), quiet and then beside
  one and two busy processes per core, each as its speed against the quiet one. The report trusts
  a cost ratio between runs only where their probes agree; this says how well the probe tells.
  A CPU question (busy processes take CPU time): skipped with --device cuda.
- startup: issue 18's single run (`python -m benchmark method=bp dataset=digits train.epochs=1`)
  and the floor under it (`import torch` and one Adam step, which imports torch._dynamo), each as a
  fresh process: its wall time and its peak RSS (the kernel's count for that child, as
  `/usr/bin/time` reads it). `--python` names further interpreters to time beside this one,
  interleaved, e.g. a venv with PyTorch's CPU-only build: each row is labelled by the torch build
  the interpreter imports. Goals: < 3 s and < 500 MB.

--device: where the overhead, methods and options sections run (auto = CUDA when present). The
data and reference sections are CPU questions (a DataLoader feeding a CPU model; the public
references' CPU steps) and always run on the CPU. On CUDA every timing is synchronised.

Uses MNIST when `BPFREE_DATA` (or ./data) holds it, else synthetic MNIST-shaped tensors (said so).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark import archs, loop
from benchmark.data import Splits, batches, load_splits
from benchmark.meters import MeasureConfig, Meters, probe_side, speed_probe
from benchmark.perf_reference import REFERENCE_FF, reference_cafo_epoch, reference_ff_epoch

ROWS: list[dict] = []
DEVICE = torch.device("cpu")  # set by --device


def emit(section: str, item: str, value: float, unit: str, note: str = "") -> None:
    ROWS.append({"section": section, "item": item, "value": value, "unit": unit, "note": note})
    print(f"{section:10s} {item:58s} {value:12.4g} {unit:10s} {note}", flush=True)


def mnist_or_synthetic(n_train: int | None) -> tuple[Splits, str]:
    root = os.environ.get("BPFREE_DATA", "data")
    try:
        data = load_splits("mnist", root, False, 5000, 0, torch.device("cpu"))
        source = "MNIST"
    except Exception:  # noqa: BLE001 - no offline copy: the speed question does not need real pixels
        g = torch.Generator().manual_seed(0)
        make = lambda n: (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
        (xt, yt), (xv, yv), (xs, ys) = make(55000), make(5000), make(10000)
        data, source = Splits(xt, yt, xv, yv, xs, ys, 10), "synthetic MNIST-shaped tensors"
    if n_train:
        data.train_x, data.train_y = data.train_x[:n_train], data.train_y[:n_train]
    return data, source


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(candidates: dict, repeats: int, inner: bool = False):
    """Median seconds of each candidate, run A, B, C, A, B, C, ... after one warm-up each. With
    `inner`, each candidate returns a list of times it measured itself (its epochs), and the
    element-wise medians of those come back too: (whole, inner)."""
    for fn in candidates.values():
        fn()
    times = {name: [] for name in candidates}
    parts = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync()
            t0 = time.perf_counter()
            part = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            parts[name].append(part)
    whole = {name: statistics.median(t) for name, t in times.items()}
    if inner:
        return whole, {name: [statistics.median(col) for col in zip(*p)] for name, p in parts.items()}
    return whole


# ------------------------------------------------------------------------------------------------


def method_from_config(name: str, arch: str, data: Splits, device: torch.device | None = None, overrides=(),
                       dataset: str = "digits"):
    """A method built exactly as `python -m benchmark method=<name> arch=<arch> <overrides>` builds it."""
    import dataclasses
    import tempfile

    from benchmark import config

    job = config.check(config.compose([f"method={name}", f"arch={arch}", f"dataset={dataset}", "measure.emissions=false",
                                       f"results_dir={tempfile.gettempdir()}/bpfree-perf", *overrides]))
    torch.manual_seed(0)
    return config.build_method(dataclasses.replace(job, device=device or DEVICE), data)


def bp_method(data: Splits):
    """BP on the 2x1000 MLP (arch mlp) at its defaults."""
    return method_from_config("bp", "mlp", data)


def harness_run(data: Splits, meters_on: bool, epochs: int):
    """A whole harness run of BP on the 2x1000 MLP (build, meters, `epochs` epochs, final
    validation, summary). Returns the seconds of each training epoch (train + per-epoch
    validation, as the run's own epoch records time them): the whole call is timed outside."""
    cfg = loop.TrainConfig(epochs=epochs, batch_size=128, eval_batch_size=2000, patience=0, min_delta=0.0, restore_best=False)
    measure = MeasureConfig() if meters_on else MeasureConfig(energy="none", emissions=False, flops=False)

    def run() -> float:
        torch.manual_seed(0)
        method = bp_method(data)
        meters = Meters(measure, DEVICE)
        out = loop.train(method, data, cfg, meters, seed=0, evaluate_test=False)
        meters.summary(len(data.train_y), [])
        return [h["seconds"] for h in out["metrics"]["history"]]

    return run


def bare_run(data: Splits, epochs: int):
    """The same training as a bare PyTorch loop over the same preloaded tensors; returns the
    seconds of each epoch (training and one validation pass), synchronised like the harness."""
    def run() -> list[float]:
        torch.manual_seed(0)
        net = archs.Chain(archs.mlp(data.input_shape, [1000, 1000]), 10).to(DEVICE)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        order = torch.Generator().manual_seed(0)
        seconds = []
        for _ in range(epochs):
            sync()
            t0 = time.perf_counter()
            for idx in batches(len(data.train_y), 128, order, DEVICE):
                loss = F.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():  # the harness validates once per epoch too
                for start in range(0, len(data.val_y), 2000):
                    net(data.val_x[start : start + 2000]).argmax(1)
            sync()
            seconds.append(time.perf_counter() - t0)
        return seconds

    return run


def section_overhead(repeats: int, epochs: int) -> None:
    """Two questions, kept apart: what the harness costs per epoch of training, once it runs (the
    goal: a few percent), and what it costs once per run (composing and checking the config,
    building the method, starting the meters, the first step's FLOP count and saved-tensor hooks,
    the final validation, the record). The per-epoch figures are the epochs after the first; the
    fixed cost is the whole call minus `epochs` of those. On a CPU an epoch is long and the fixed
    cost vanishes in it; on a GPU an MNIST epoch is under a second and a one-epoch ratio would be
    mostly the fixed cost."""
    if epochs < 2:
        raise SystemExit("--overhead-epochs must be at least 2: the per-epoch figures are the epochs after the first")
    data, source = mnist_or_synthetic(None)
    data = data.to(DEVICE)
    candidates = {"on": harness_run(data, True, epochs), "off": harness_run(data, False, epochs), "bare": bare_run(data, epochs)}
    whole, per_run_epochs = interleaved(candidates, repeats, inner=True)
    steady = {k: statistics.mean(v[1:]) for k, v in per_run_epochs.items()}
    note = f"BP MLP 2x1000, epochs 2-{epochs} of {source}, median of {repeats} runs, {DEVICE.type}"
    emit("overhead", "harness, every meter on (s/epoch)", steady["on"], "s", note)
    emit("overhead", "harness, every meter off (s/epoch)", steady["off"], "s", note)
    emit("overhead", "bare PyTorch loop, same tensors (s/epoch)", steady["bare"], "s", note)
    emit("overhead", "meters on / meters off, per epoch", steady["on"] / steady["off"], "ratio", "goal <= 1.03")
    emit("overhead", "harness (meters on) / bare loop, per epoch", steady["on"] / steady["bare"], "ratio", "goal <= 1.03")
    for key, label in (("on", "harness, meters on"), ("off", "harness, meters off"), ("bare", "bare loop")):
        emit("overhead", f"{label}: fixed cost per run (s)", whole[key] - epochs * steady[key], "s",
             f"whole call minus {epochs} steady epochs: config, build, meters, first-step counting, final validation, record")
    emit("overhead", "whole run, harness (meters on) / bare loop", whole["on"] / whole["bare"], "ratio",
         f"fixed costs included; {epochs} epochs")


def section_loop(repeats: int) -> None:
    """Where the harness loop's per-step cost is, part by part: one BP epoch as the bare step inline,
    with the epoch's loss sum, through `BP.train_step`, and through `Meters.train_step` with the
    loss sum (what loop.train does per step), interleaved. Meant for launch-bound GPUs, where a
    few Python calls a step could show."""
    from benchmark.meters import Meters as _Meters

    data, source = mnist_or_synthetic(None)
    data = data.to(DEVICE)
    meters = _Meters(MeasureConfig(energy="none", emissions=False, flops=False), DEVICE)

    def variant(name: str):
        torch.manual_seed(0)
        method = bp_method(data)
        net, opt = method.modules["net"], method.optimizer
        order = torch.Generator().manual_seed(0)

        def epoch():
            loss_sum = torch.zeros((), device=DEVICE)
            for idx in batches(len(data.train_y), 128, order, DEVICE):
                x, y = data.train_x[idx], data.train_y[idx]
                if name.startswith("inline"):
                    loss = F.cross_entropy(net(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                elif name == "BP.train_step":
                    loss = method.train_step(x, y, idx)
                else:
                    loss = meters.train_step(lambda: method.train_step(x, y, idx), len(idx), method.modules.parameters())
                if name.endswith("sum"):
                    loss_sum += loss.detach().float()

        return epoch

    names = ["inline", "inline + loss sum", "BP.train_step", "Meters.train_step + loss sum"]
    med = interleaved({n: variant(n) for n in names}, repeats)
    note = f"BP MLP 2x1000, one epoch of {source}, median of {repeats}, {DEVICE.type}"
    for n in names[1:]:
        emit("loop", f"{n} / inline", med[n] / med["inline"], "ratio", note)


def section_energy(repeats: int) -> None:
    """On CUDA: the same BP epochs read by NVML's energy counter and by power sampled every 0.1 s
    and integrated, side by side in one process (the two backends `measure.energy=auto` picks from)."""
    from benchmark.energy import NvmlEnergy

    if DEVICE.type != "cuda":
        emit("energy", "skipped: NVML energy needs a CUDA device", math.nan, "", "run with --device cuda")
        return
    try:
        nvml = NvmlEnergy(DEVICE.index or 0, 0.1)
    except OSError as err:
        emit("energy", "skipped: NVML unavailable", math.nan, "", str(err)[:80])
        return
    if nvml.source != "nvml_energy_counter":
        emit("energy", "skipped: this GPU has no NVML energy counter", math.nan, "", nvml.info["gpu_model"])
        return
    data, source = mnist_or_synthetic(None)
    data = data.to(DEVICE)
    train = bare_run(data, 3)
    nvml.start_sampling(also_with_counter=True)
    counter, sampled, seconds = [], [], []
    for _ in range(repeats):
        c0, s0 = nvml.counter_j(), nvml.sampled_j()
        seconds.append(train())
        time.sleep(0.3)  # let both readings catch up with the last kernels (counter ~100 ms, sampler 100 ms)
        counter.append(nvml.counter_j() - c0)
        sampled.append(nvml.sampled_j() - s0)
    nvml.stop_sampling()
    note = f"BP MLP 2x1000, 3 epochs of {source}, median of {repeats}, {nvml.info['gpu_model']}"
    emit("energy", "NVML energy counter (J per 3 epochs)", statistics.median(counter), "J", note)
    emit("energy", "NVML power sampled at 0.1 s, integrated (J)", statistics.median(sampled), "J", note)
    emit("energy", "sampled / counter", statistics.median(s / c for s, c in zip(sampled, counter)), "ratio", "1 = the two agree")
    emit("energy", "training time per 3 epochs (s)", statistics.median(seconds), "s", note + "; each reading also spans 0.3 s idle after it")


def section_data(repeats: int) -> None:
    from torchvision import datasets, transforms

    root = os.environ.get("BPFREE_DATA", "data")
    try:
        dataset = datasets.MNIST(root, train=True, download=False,
                                 transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    except Exception:  # noqa: BLE001
        emit("data", "skipped: no MNIST under BPFREE_DATA", math.nan, "", "the DataLoader side needs the files")
        return
    data, _ = mnist_or_synthetic(None)
    net = archs.Chain(archs.mlp((1, 28, 28), [1000, 1000]), 10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(x, y):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def tensors():
        order = torch.Generator().manual_seed(0)
        for idx in batches(len(data.train_y), 128, order, torch.device("cpu")):
            step(data.train_x[idx], data.train_y[idx])

    def dataloader():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2):
            step(x, y)

    med = interleaved({"tensors": tensors, "dataloader": dataloader}, max(2, repeats // 2))
    emit("data", "preloaded tensors + index slices (s/epoch)", med["tensors"], "s", "BP MLP 2x1000, MNIST 55k/60k")
    emit("data", "torchvision Dataset + DataLoader, 2 workers (s/epoch)", med["dataloader"], "s", "60k images")
    per_image = (med["dataloader"] / len(dataset)) / (med["tensors"] / len(data.train_y))
    emit("data", "DataLoader / tensors, per image", per_image, "x", "goal >= 2")


def busy_processes(count: int) -> list[subprocess.Popen]:
    """`count` Python processes spinning on a core each: other work taking the machine's time."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def section_probe(repeats: int) -> None:
    if DEVICE.type != "cpu":
        emit("probe", "skipped: a CPU question", math.nan, "", "run with --device cpu")
        return
    data, source = mnist_or_synthetic(10000)
    epoch = bare_run(data, 1)
    cpu, seconds = torch.device("cpu"), MeasureConfig().speed_probe_s  # as runs probe
    cores = os.cpu_count() or 1
    speeds = {}
    for per_core in (0, 1, 2):
        spinning = busy_processes(per_core * cores)
        try:
            time.sleep(0.5 if spinning else 0)  # let the spinners start
            epochs, probes = [], []
            for _ in range(repeats):
                epochs.append(epoch()[0])
                probes.append(speed_probe(cpu, seconds))
        finally:
            for proc in spinning:
                proc.kill()
                proc.wait()
        speeds[per_core] = (statistics.median(epochs), statistics.median(probes))
    quiet_epoch, quiet_probe = speeds[0]
    note = f"{torch.get_num_threads()} threads, {cores} cores; median of {repeats}; BP MLP 2x1000, {source} (10k)"
    emit("probe", "quiet: BP epoch (s)", quiet_epoch, "s", note)
    emit("probe", "quiet: speed probe (GFLOP/s)", quiet_probe, "GFLOP/s",
         f"fp32 {probe_side(cpu)}x{probe_side(cpu)} matmuls over {seconds:g} s, as runs record it")
    for per_core in (1, 2):
        busy_epoch, busy_probe = speeds[per_core]
        emit("probe", f"{per_core} busy process(es) per core: BP speed vs quiet", quiet_epoch / busy_epoch, "x", note)
        emit("probe", f"{per_core} busy process(es) per core: probe vs quiet", busy_probe / quiet_probe, "x",
             "should follow the line above")


STARTUP_RUN = ("-m", "benchmark", "method=bp", "dataset=digits", "train.epochs=1")  # issue 18's single run
# The floor of any PyTorch training run: the import, and the first optimiser step, which imports
# torch._dynamo (most of the floor's time and memory after the import itself).
TORCH_FLOOR = ("-c", "import torch; p = torch.zeros(1, requires_grad=True); p.sum().backward(); "
                     "torch.optim.Adam([p]).step()")
REPO_ROOT = Path(__file__).resolve().parents[1]  # `-m benchmark` from here works for any interpreter


# Started in a small Python process of its own, the command's peak RSS is its own: a process spawned
# straight from this one (torch imported, hundreds of MB) would inherit this one's high-water mark,
# which Linux carries across the exec into the child's count.
LAUNCHER = ("import os, subprocess, sys, time; start = time.perf_counter(); "
            "child = subprocess.Popen(sys.argv[1:]); _, status, usage = os.wait4(child.pid, 0); "
            "print('\\nstartup-cost', time.perf_counter() - start, os.waitstatus_to_exitcode(status), "
            "usage.ru_maxrss, flush=True)")


def child_cost(command: list[str], cwd: Path = REPO_ROOT) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of one fresh process running `command`, from the kernel's
    resource usage of that process alone (`os.wait4`, as `/usr/bin/time` reads it). A failed
    command is an error with the tail of its output, not a figure."""
    found = subprocess.run([sys.executable, "-c", LAUNCHER, *command], cwd=cwd, capture_output=True, text=True)
    lines = found.stdout.strip().splitlines()
    if found.returncode != 0 or not lines or not lines[-1].startswith("startup-cost "):
        raise RuntimeError(f"the launcher of {' '.join(command)} failed: {found.stderr.strip().splitlines()[-1:]}")
    _, wall, code, max_rss = lines[-1].split()
    if int(code) != 0:
        tail = (found.stderr.strip() or "\n".join(lines[:-1])).splitlines()[-1:]
        raise RuntimeError(f"{' '.join(command)} exited {code}: {' '.join(tail)}")
    rss_bytes = int(max_rss) * (1 if sys.platform == "darwin" else 1024)  # macOS counts bytes, Linux KiB
    return float(wall), rss_bytes / 2**20


def torch_build(python: str) -> str:
    """The torch version an interpreter imports (e.g. 2.14.1+cu130, 2.13.0+cpu): what its start-up
    rows are labelled by."""
    found = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    if found.returncode != 0:
        raise RuntimeError(f"{python} cannot import torch: {found.stderr.strip().splitlines()[-1:]}")
    return found.stdout.strip()


def section_startup(repeats: int, pythons: list[str]) -> None:
    if not hasattr(os, "wait4"):
        emit("startup", "skipped: needs os.wait4 (Linux, macOS)", math.nan, "", "")
        return
    import tempfile

    labels = {python: torch_build(python) for python in pythons}
    costs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):  # interleaved: every interpreter's floor and run in each round
        for python in pythons:
            costs.setdefault((python, "floor"), []).append(child_cost([python, *TORCH_FLOOR]))
            with tempfile.TemporaryDirectory() as results:  # fresh, so resume finds nothing to skip
                costs.setdefault((python, "run"), []).append(
                    child_cost([python, *STARTUP_RUN, f"results_dir={results}"]))
    what = {"floor": "import torch + one Adam step", "run": "single run (bp, digits, 1 epoch)"}
    goals = {"floor": ("the floor of any PyTorch run",) * 2, "run": ("goal < 3 s", "goal < 500 MB (477 MiB)")}
    for (python, kind), samples in costs.items():
        label, note = f"{labels[python]}: {what[kind]}", f"median of {repeats}; {python}"
        wall_goal, rss_goal = goals[kind]
        emit("startup", f"{label}, wall", statistics.median(s[0] for s in samples), "s", f"{note}; {wall_goal}")
        emit("startup", f"{label}, peak RSS", statistics.median(s[1] for s in samples), "MiB",
             f"{note}, the kernel's count for the child; {rss_goal}")


def best_rate(kernel, flops: int, repeats: int = 5) -> float:
    """FLOP/s of one kernel call at its fastest of `repeats`, after a warm-up call."""
    kernel()
    return flops / min(timed(kernel) for _ in range(repeats))


def matmul_peak() -> float:
    n = 8192 if DEVICE.type == "cuda" else 4096
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    return best_rate(lambda: a @ b, 2 * n**3)


def conv_rate() -> float:
    """FLOP/s of a large fp32 3x3 convolution. Reported beside the GEMM peak because the two run
    on different libraries (BLAS for the GEMM, oneDNN or cuDNN for the convolution): where the
    convolution is faster, as with MKL's GEMM on an AMD CPU, a CNN method's fraction of the GEMM
    peak can exceed 1, and its ratio to BP's MLP fraction says more about the libraries than the
    method."""
    return best_rate(*large_conv())


def large_conv(batch: int = 64, channels: int = 256, size: int = 32):
    """A 3x3 same-padding convolution and its FLOPs counted as FlopCounterMode counts the methods'
    (two per multiply-add)."""
    x = torch.randn(batch, channels, size, size, device=DEVICE)
    w = torch.randn(channels, channels, 3, 3, device=DEVICE)
    return (lambda: torch.nn.functional.conv2d(x, w, padding=1)), 2 * batch * channels * channels * 9 * size * size


GRAPH_EPOCHS = 50  # a full-graph epoch on Cora is one step of milliseconds: time many of them


def cora_or_none(root: str | os.PathLike | None = None) -> Splits | None:
    """Cora (Planetoid) for the graph methods' rows, from `root` (default BPFREE_DATA, else data/);
    None without an offline copy."""
    from benchmark.data import load_graph_splits
    from benchmark.errors import UserError

    try:
        return load_graph_splits("cora", root or os.environ.get("BPFREE_DATA", "data"), False, None, torch.device("cpu"))
    except UserError:  # not laid out: the image rows stand without it, and the graph rows say why they are missing
        return None


def throughput_cells(first_arch: dict[str, str]) -> list[tuple[str, str, str]]:
    """(row label, method, arch) for every method, on its first supported architecture, plus BP on
    the GCN when any method is a graph method: their fraction of peak is read against BP's on the
    same workload, not against BP's MLP."""
    cells = [(name, name, arch) for name, arch in sorted(first_arch.items())]
    if any(arch in archs.GRAPH_KINDS for arch in first_arch.values()) and first_arch.get("bp") != "gcn":
        cells.append(("bp (gcn)", "bp", "gcn"))
    return cells


def method_throughput(n_train: int, epochs: int = 1, only: list[str] | None = None, preset: str | None = None) -> None:
    """Every registered method's (or those in `only`) training throughput and FLOP/s fraction of the
    GEMM peak: image methods for `epochs` epochs of `n_train` MNIST images on their first
    architecture (or on the arch `preset`, for every method that trains its kind: the others are skipped),
    graph methods (and BP beside them, as their baseline) for GRAPH_EPOCHS full-graph epochs on Cora."""
    from benchmark import spec as methods

    peak = matmul_peak()
    where = f"{torch.get_num_threads()} threads" if DEVICE.type == "cpu" else torch.cuda.get_device_name(DEVICE)
    emit("methods", "fp32 matmul peak (large square GEMM)", peak / 1e9, "GFLOP/s", where)
    emit("methods", "fp32 convolution rate (large 3x3 conv, not the peak)", conv_rate() / 1e9, "GFLOP/s",
         f"{where}; CNN methods' fractions of the GEMM peak can exceed 1 where this is above it")
    images, source = mnist_or_synthetic(n_train)
    images = images.to(DEVICE)
    cora = cora_or_none()
    graph = cora.to(DEVICE) if cora is not None else None
    names = [name for name in methods.names() if only is None or name in only]
    if preset is not None:
        kind = arch_kind(preset)
        for name in [n for n in names if kind not in methods.get(n).supported_archs]:
            emit("methods", f"{name}: training throughput", math.nan, "samples/s", f"skipped: it does not train a {kind} ({preset})")
        names = [n for n in names if kind in methods.get(n).supported_archs]
    chosen = {name: preset or methods.get(name).supported_archs[0] for name in names}
    for label, name, arch in throughput_cells(chosen):
        unit = "train nodes/s" if arch in archs.GRAPH_KINDS else "samples/s"
        if arch in archs.GRAPH_KINDS:
            if graph is None:
                emit("methods", f"{label}: training throughput", math.nan, unit, "skipped: no Cora copy (BPFREE_DATA)")
                continue
            method = method_from_config(name, arch, graph, dataset="cora")
            data, n_epochs, note = graph, GRAPH_EPOCHS, f"{arch}, Cora full graph, {GRAPH_EPOCHS} epochs a phase, {DEVICE.type}"
        else:
            method = method_from_config(name, arch, images)
            data, n_epochs, note = images, epochs, f"{arch}, {n_train} {source} images, {DEVICE.type}"
        meters = Meters(MeasureConfig(energy="none", emissions=False), DEVICE)
        cfg = loop.TrainConfig(epochs=n_epochs * len(method.phases(1)), batch_size=128, eval_batch_size=2000,
                               patience=0, min_delta=0.0, restore_best=False)
        out = loop.train(method, data, cfg, meters, seed=0, evaluate_test=False)
        seconds, flops = meters.seconds["train"], meters.flops["train"]
        samples = out["metrics"]["train_samples"]
        memory = meters.summary(samples, [])["peak_memory"]
        emit("methods", f"{label}: training throughput", samples / seconds, unit, note)
        emit("methods", f"{label}: achieved FLOP/s", flops / seconds / 1e9, "GFLOP/s", note)
        emit("methods", f"{label}: fraction of matmul peak", flops / seconds / peak, "", note)
        emit("methods", f"{label}: peak memory", (memory["value"] or 0) / 2**20, "MiB", memory["source"])
        emit("methods", f"{label}: ATen ops per training step", ops_per_step(method, data), "ops",
             "one steady step of the last phase, batch 128; on CUDA most launch a kernel (views do not)")


def arch_kind(arch: str) -> str:
    """The kind (mlp, cnn, gcn, ...) of the configs/arch/ preset `arch`, its defaults composed."""
    from benchmark import config

    return config.compose([f"arch={arch}"]).arch.kind


def ops_per_step(method, data: Splits, batch_size: int = 128) -> int:
    """ATen operators one `train_step` dispatches (forward, backward, optimiser). On CUDA most of them
    launch a kernel (views and reshapes do not), and at small batches a GPU step is bound by those
    launches: this, more than FLOPs, is what a launch-bound step costs. It runs one more step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    idx = torch.arange(min(batch_size, len(data.train_y)), device=data.train_y.device)
    with CountOps() as counter:
        method.train_step(data.train_x[idx], data.train_y[idx], idx)
    return counter.count


def ours_epoch(name: str, arch: str, data: Splits, epochs: int, overrides=()) -> tuple[float, float]:
    method = method_from_config(name, arch, data, torch.device("cpu"), overrides)
    meters = Meters(MeasureConfig(energy="none", emissions=False, flops=False), torch.device("cpu"))
    cfg = loop.TrainConfig(epochs=epochs, batch_size=128, eval_batch_size=2000, patience=0, min_delta=0.0, restore_best=False)
    out = loop.train(method, data, cfg, meters, seed=0, evaluate_test=False)
    return meters.seconds["train"] / epochs, out["metrics"]["val_accuracy"]


REFERENCE_GAP = 0.05  # a reference more than 5 points under ours after the same epochs has not learned


def compare_with_reference(label: str, ref: tuple[float, float], ours: tuple[float, float], note: str) -> None:
    """The time ratio, only where the re-implemented reference learned: one that does not learn
    proves nothing about speed, so its ratio row is dropped and the reason printed instead."""
    (ref_s, ref_acc), (our_s, our_acc) = ref, ours
    emit("reference", f"{label}: reference step (s/epoch)", ref_s, "s", f"val acc {ref_acc:.4f}; {note}")
    emit("reference", f"{label}: ours (s/epoch)", our_s, "s", f"val acc {our_acc:.4f}; {note}")
    if ref_acc < our_acc - REFERENCE_GAP:
        emit("reference", f"{label}: ours / reference", math.nan, "ratio",
             f"dropped: the reference reached {ref_acc:.4f} against our {our_acc:.4f}, so it did not learn")
    else:
        emit("reference", f"{label}: ours / reference", our_s / ref_s, "ratio", "goal <= 1")


def section_reference(n_train: int, epochs: int) -> None:
    data, source = mnist_or_synthetic(n_train)
    note = f"{n_train} {source} images, {epochs} epochs, batch 128"
    # Ours does the reference's work at the reference's settings: it trains the linear read-out
    # beside the layers and predicts with it, by SGD with loeweX's rates, at a constant rate (its
    # defaults predict by goodness, with no read-out to train, by AdamW, and cool the rate over the
    # second half of the budget: less work, and other settings, so neither the time nor the
    # accuracy would compare like with like).
    ff = {**REFERENCE_FF, "optimizer": "sgd", "predict": "linear", "lr_cooldown": "false"}
    compare_with_reference("FF 2x1000 (loeweX-style DataLoader step)", reference_ff_epoch(data, [1000, 1000], epochs),
                           ours_epoch("ff", "mlp", data, epochs, [f"method.hp.{k}={v}" for k, v in ff.items()]),
                           note)  # mlp = 2x1000
    compare_with_reference("CaFo-Rand CE (blocks forwarded per batch)", reference_cafo_epoch(data, epochs),
                           ours_epoch("cafo_rand", "cnn", data, epochs), note)


# ------------------------------------------------------------------------------------------------
# Speed options: compile, bf16 autocast, channels_last


def options_epoch(method, data: Splits, **option):
    """One epoch of `method` with the given train.* speed option (meters off); warm-up included
    by the caller. The option is applied once, at the first call (compiling happens there)."""
    cfg = loop.TrainConfig(epochs=1, batch_size=128, eval_batch_size=2000, patience=0, min_delta=0.0,
                           restore_best=False, **option)

    def run():
        meters = Meters(MeasureConfig(energy="none", emissions=False, flops=False), DEVICE)
        loop.train(method, data, cfg, meters, seed=0, evaluate_test=False)

    return run


def section_options(n_train: int, repeats: int) -> None:
    full, source = mnist_or_synthetic(n_train)
    full = full.to(DEVICE)
    # The CNN cases train on a fifth of the images: a CPU epoch of the 3-block CNN is ~7 s per 1000.
    small = Splits(**{**vars(full), "train_x": full.train_x[: n_train // 5], "train_y": full.train_y[: n_train // 5]})
    cases = [("bp", "mlp"), ("bp", "cnn"), ("local", "cnn")]
    for name, arch in cases:
        data = full if arch == "mlp" else small
        options = {"off": {}, "compile": {"compile": True}, "bf16 autocast": {"autocast": "bf16"}}
        if arch == "cnn":
            options["channels_last"] = {"channels_last": True}
        candidates, first_epoch = {}, {}
        for label, option in options.items():
            run = options_epoch(method_from_config(name, arch, data), data, **option)
            try:
                first_epoch[label] = timed(run)  # warm-up: for compile, this is where compiling happens
            except Exception as err:  # noqa: BLE001 - e.g. no C compiler for inductor: say so, go on
                emit("options", f"{name}/{arch}: {label} failed", math.nan, "", f"{type(err).__name__}: {str(err).splitlines()[0][:80]}")
                continue
            candidates[label] = run
        times = {label: [] for label in candidates}
        for _ in range(repeats):
            for label, run in candidates.items():
                times[label].append(timed(run))
        med = {label: statistics.median(t) for label, t in times.items()}
        note = f"{name}/{arch}, {len(data.train_y)} {source} images, median of {repeats}, {DEVICE.type}"
        emit("options", f"{name}/{arch}: no option (s/epoch)", med["off"], "s", note)
        for label in candidates:
            if label == "off":
                continue
            emit("options", f"{name}/{arch}: {label} / off", med[label] / med["off"], "ratio", f"< 1 helps; {note}")
        if "compile" in first_epoch:
            emit("options", f"{name}/{arch}: compile, first epoch incl. compiling", first_epoch["compile"], "s", note)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str] | None:
    """Refuse a bad number, an unknown method or an unwritable --out in one line before minutes of
    measuring. Returns the methods --methods names (None: every registered one)."""
    floors = {"--repeats": (args.repeats, 1), "--n-train": (args.n_train, 1), "--epochs": (args.epochs, 1),
              "--overhead-epochs": (args.overhead_epochs, 2)}
    for flag, (value, floor) in floors.items():
        if value is not None and value < floor:
            parser.error(f"{flag} {value} must be at least {floor}")
    from benchmark.config import check_writable
    from benchmark.errors import UserError

    only = None if args.methods is None else [name.strip() for name in args.methods.split(",") if name.strip()]
    if only is not None:
        from benchmark import spec as methods

        unknown = sorted(set(only) - set(methods.names()))
        if unknown:
            parser.error(f"unknown method(s) {', '.join(unknown)} in --methods; choose from: {', '.join(methods.names())}")
    if args.arch is not None:
        from benchmark import config

        presets = [name for name in config.group_options("arch") if name != "native"]
        if args.arch not in presets:
            parser.error(f"unknown --arch {args.arch}; choose a configs/arch/ preset: {', '.join(presets)}")
    for python in args.python:
        if not os.access(python, os.X_OK):
            parser.error(f"--python {python}: not an executable file; give a Python interpreter's path")
    try:
        check_writable(Path(args.out).parent)
    except UserError:
        parser.error(f"--out {args.out}: its folder is not writable; give a path in a writable folder")
    return only


def resolved_device(parser: argparse.ArgumentParser, spec: str) -> torch.device:
    """--device as a run's `device=` is read (auto: CUDA if present), its errors as one line."""
    from benchmark.config import resolve_device
    from benchmark.errors import UserError

    try:
        return resolve_device(spec)
    except UserError as err:
        parser.error(f"--device: {err.args[0]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("overhead", "loop", "energy", "data", "methods", "reference", "options", "probe",
                                           "startup"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=10000, help="images for the methods and reference sections")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the reference comparisons")
    parser.add_argument("--overhead-epochs", type=int, default=None,
                        help="epochs per run in the overhead section, at least 2 (default 2 on a CPU, 4 on CUDA)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods for the methods section (default: every registered one)")
    parser.add_argument("--arch", default=None,
                        help="methods section: every method on this configs/arch/ preset (default: each method's first)")
    parser.add_argument("--python", default="",
                        help="startup section: further interpreters to time beside this one, comma-separated "
                             "(e.g. a venv with PyTorch's CPU-only build)")
    parser.add_argument("--out", default="results/perf.csv")
    args = parser.parse_args(argv)
    args.python = [sys.executable, *(path.strip() for path in args.python.split(",") if path.strip())]
    only = check_arguments(parser, args)
    global DEVICE
    DEVICE = resolved_device(parser, args.device)
    ROWS.clear()  # one call, one table (a second call in the same process starts afresh)
    print(f"{'section':10s} {'item':58s} {'value':>12s} {'unit':10s} note")
    sections = {
        "overhead": lambda: section_overhead(args.repeats, args.overhead_epochs or (4 if DEVICE.type == "cuda" else 2)),
        "loop": lambda: section_loop(args.repeats),
        "energy": lambda: section_energy(args.repeats),
        "data": lambda: section_data(args.repeats),
        "methods": lambda: method_throughput(args.n_train, only=only, preset=args.arch),
        "reference": lambda: section_reference(args.n_train, args.epochs),
        "options": lambda: section_options(args.n_train, args.repeats),
        "probe": lambda: section_probe(args.repeats),
        "startup": lambda: section_startup(args.repeats, args.python),
    }
    for name, run in sections.items():
        if args.only in (None, name):
            run()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["section", "item", "value", "unit", "note"])
        writer.writeheader()
        writer.writerows(ROWS)
    print(f"table written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
