"""Measurement backends against stand-ins where the hardware is absent."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from benchmark import meters
from benchmark.energy import NvmlEnergy, RaplCounter, import_pynvml
from benchmark.meters import MeasureConfig, Meters


def rapl_tree(root, packages: dict[int, tuple[int, int]]):
    """A fake /sys/class/powercap: {package: (energy_uj, max_energy_range_uj)}, plus a sub-domain."""
    for pkg, (energy, max_range) in packages.items():
        d = root / f"intel-rapl:{pkg}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(str(energy))
        (d / "max_energy_range_uj").write_text(str(max_range))
        sub = root / f"intel-rapl:{pkg}:0"  # a core sub-domain: inside the package, never summed
        sub.mkdir(exist_ok=True)
        (sub / "energy_uj").write_text("999999")
        (sub / "max_energy_range_uj").write_text(str(max_range))
    return root


def set_energy(root, pkg: int, energy: int):
    (root / f"intel-rapl:{pkg}" / "energy_uj").write_text(str(energy))


def test_rapl_sums_packages_and_handles_wrap_around(tmp_path):
    root = rapl_tree(tmp_path, {0: (1_000_000, 2_000_000), 1: (500, 2_000_000)})
    counter = RaplCounter(root)
    set_energy(root, 0, 1_500_000)
    set_energy(root, 1, 1_500)
    assert counter.read() == pytest.approx(0.501)  # 500,000 + 1,000 uJ
    set_energy(root, 0, 100_000)  # wrapped: 1,500,000 -> 2,000,000 -> 0 -> 100,000
    assert counter.read() == pytest.approx(0.501 + 0.6)


def test_rapl_absent_or_unreadable_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        RaplCounter(tmp_path)


def test_meters_use_rapl_when_present_and_label_it(tmp_path):
    root = rapl_tree(tmp_path, {0: (0, 10**12)})
    m = Meters(MeasureConfig(rapl_root=str(root), emissions=False), torch.device("cpu"))
    with m.window("train"):
        set_energy(root, 0, 3_000_000)
    with m.window("eval"):
        set_energy(root, 0, 4_000_000)
    out = m.summary(train_samples=100, epoch_seconds=[0.1])
    assert out["energy_train"]["value"] == pytest.approx(3.0)
    assert out["energy_eval"]["value"] == pytest.approx(1.0)
    assert out["energy_train"]["source"] == "rapl" and out["energy_train"]["estimated"] is False
    assert out["energy_train"]["unit"] == "J"


class FakeNVML:
    """Stand-in for pynvml: a device whose energy counter advances 1 J per read, 100 W draw."""

    class NVMLError(Exception):
        pass

    def __init__(self, counter=True, driver=True):
        self.counter, self.driver, self.mj = counter, driver, 0

    def nvmlInit(self):
        if not self.driver:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise self.NVMLError("Not Supported")
        self.mj += 1000
        return self.mj

    def nvmlDeviceGetPowerUsage(self, handle):
        return 100_000  # mW

    def nvmlDeviceGetName(self, handle):
        return b"Fake GPU"

    def nvmlSystemGetDriverVersion(self):
        return "999.1"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return type("Mem", (), {"used": 123})()


def test_nvml_energy_counter():
    nvml = FakeNVML()
    backend = NvmlEnergy(0, nvml=nvml)
    assert backend.source == "nvml_energy_counter"
    first = backend.read()
    assert backend.read() - first == pytest.approx(1.0)
    assert backend.info == {"gpu_model": "Fake GPU", "driver": "999.1", "scope": NvmlEnergy.scope}


def test_nvml_power_sampling_where_counter_unsupported():
    backend = NvmlEnergy(0, interval_s=0.01, nvml=FakeNVML(counter=False))
    assert backend.source == "nvml_power_sampling"
    backend.start_sampling()
    time.sleep(0.3)
    backend.stop_sampling()
    assert backend.read() == pytest.approx(100 * 0.3, rel=0.25)  # 100 W for about 0.3 s


def test_no_nvml_driver_falls_back_without_crashing():
    with pytest.raises(OSError, match="NVML unavailable"):
        NvmlEnergy(0, nvml=FakeNVML(driver=False))
    real = import_pynvml()
    if real is not None and not torch.cuda.is_available():
        with pytest.raises(OSError):
            NvmlEnergy(0, nvml=real)  # the real library, no driver on this machine


def test_energy_falls_back_to_codecarbon_estimate_labelled_as_estimate(tmp_path):
    m = Meters(MeasureConfig(rapl_root=str(tmp_path), emissions=True), torch.device("cpu"))
    with m.window("train"):
        sum(range(10**6))
    out = m.summary(train_samples=10, epoch_seconds=[0.1])
    assert out["energy_train"]["estimated"] is True
    assert out["energy_train"]["source"].startswith("codecarbon_estimate")
    assert out["emissions"]["unit"] == "kg CO2eq" and out["emissions"]["estimated"] is True
    assert out["emissions"]["value"] > 0


def test_flop_count_of_an_mlp_step_equals_the_analytic_count():
    from tests.conftest import compose

    job = compose("method=bp", "arch=mlp", "arch.widths=[100]", "dataset=digits", "measure.emissions=false")
    method = job.method_cls(dict(job.cfg.arch), (1, 8, 8), 10, job.hp, torch.device("cpu"))
    m = Meters(MeasureConfig(emissions=False, energy="none"), torch.device("cpu"))
    batch = 32
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    m.start_phase(lambda: None, "train")
    m.train_step(lambda: method.train_step(x, y, None), batch, method.modules.parameters())
    flops = m.flops["train"]
    forward = 2 * batch * (64 * 100 + 100 * 10)
    # backward: the head needs grad of its input and weight, the first layer only its weight grad
    backward = 2 * (2 * batch * 100 * 10) + 2 * batch * 64 * 100
    assert flops == forward + backward


def test_peak_memory_on_cpu_is_rss_growth_and_labelled():
    m = Meters(MeasureConfig(emissions=False, energy="none"), torch.device("cpu"))
    with m.window("train"):
        block = torch.ones(50 * 2**20 // 4)  # 50 MiB
        block.add_(1)
    out = m.summary(1, [0.1])
    del block
    assert out["peak_memory"]["unit"] == "B"
    assert "RSS" in out["peak_memory"]["source"]
    assert out["peak_memory"]["value"] >= 45 * 2**20


CODECARBON_PROBE = r"""
import json, os, socket, sys
attempts = []
real_connect = socket.socket.connect
def refuse(self, address):
    attempts.append(str(address))
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.create_connection = lambda *a, **k: refuse(None, a[0] if a else None)
import torch
from benchmark.meters import MeasureConfig, Meters
m = Meters(MeasureConfig(emissions=True, energy="codecarbon"), torch.device("cpu"))
with m.window("train"):
    sum(range(10**6))
out = m.summary(10, [0.1])
print(json.dumps({"attempts": attempts, "emissions": out["emissions"]["value"]}))
"""


def test_codecarbon_writes_no_file_and_opens_no_connection(tmp_path):
    before = set(tmp_path.rglob("*"))
    out = subprocess.run([sys.executable, "-c", CODECARBON_PROBE], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["emissions"] > 0
    assert set(tmp_path.rglob("*")) == before  # no emissions.csv, no .codecarbon.config, nothing


def test_cpu_timings_are_labelled_as_what_was_done():
    m = Meters(MeasureConfig(energy="none", emissions=False), torch.device("cpu"))
    with m.window("train"):
        pass
    out = m.summary(0, [])
    assert out["time_train"]["source"] == "time.perf_counter"  # nothing was synchronised on a CPU
    assert "CUDA" in meters.time_source(torch.device("cuda"))


def test_an_explicit_energy_backend_that_is_missing_is_an_error_auto_falls_back(tmp_path):
    from benchmark.errors import UserError

    with pytest.raises(UserError, match="measure.energy=rapl"):
        Meters(MeasureConfig(energy="rapl", emissions=False, rapl_root=str(tmp_path)), torch.device("cpu"))
    with pytest.raises(UserError, match="measure.energy=nvml"):
        Meters(MeasureConfig(energy="nvml", emissions=False), torch.device("cpu"))
    auto = Meters(MeasureConfig(energy="auto", emissions=False, rapl_root=str(tmp_path)), torch.device("cpu"))
    assert auto.energy is None and any("no RAPL" in note for note in auto.notes)  # said, not silent


def test_windows_add_up_time_and_flops_scale_with_samples(job_factory):
    """Fast checks of the books: two windows' time is their sum, and a 2-epoch run counts twice
    the training FLOPs of a 1-epoch run (FLOPs of one step, scaled by the samples run)."""
    m = Meters(MeasureConfig(energy="none", emissions=False), torch.device("cpu"))
    for _ in range(2):
        with m.window("train"):
            time.sleep(0.05)
    assert m.seconds["train"] >= 0.1
    from benchmark import runner

    flops = []
    for epochs in (1, 2):
        job = job_factory("method=bp", "arch=mlp", "arch.widths=[32]", "dataset=digits", f"train.epochs={epochs}",
                          "train.patience=0", "measure.energy=none")
        flops.append(runner.execute(job)["measurements"]["flops_train"]["value"])
    assert flops[1] == 2 * flops[0] > 0
    # at least twice the forward FLOPs (forward + backward) of 64-32-10 for each of 1200 training images
    assert flops[0] >= 1200 * 2 * 2 * (64 * 32 + 32 * 10)


def test_nvml_asked_for_on_a_cpu_run_is_refused_even_where_nvml_works(monkeypatch):
    """On a machine with a working NVIDIA driver, measure.energy=nvml for a CPU run must still be
    refused: NVML would measure the GPU, not the work. (A fake NVML that initialises stands in for
    the driver this machine lacks.)"""
    from benchmark import energy
    from benchmark.errors import UserError

    monkeypatch.setattr(energy, "import_pynvml", lambda: FakeNVML())
    with pytest.raises(UserError, match="this run is on cpu"):
        energy.check_energy_request(MeasureConfig(energy="nvml", emissions=False), torch.device("cpu"))


def test_a_training_step_with_backward_records_its_activation_memory():
    """The first step of a phase counts the bytes autograd saves for backward: at least the hidden
    layer's activations (batch x width x 4 bytes) for a two-layer MLP trained by backprop."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    m = Meters(MeasureConfig(emissions=False, energy="none", flops=False), torch.device("cpu"))
    m.start_phase(lambda: None, "train")
    m.train_step(step, 32, model.parameters())
    figure = m.summary(32, [0.1])["activation_memory"]
    assert figure["unit"] == "B" and figure["value"] >= 32 * 100 * 4


WARM_UP_PROBE = """
import json, threading, torch
import codecarbon
from benchmark import energy
from benchmark.meters import MeasureConfig, Meters
created = []
original = codecarbon.OfflineEmissionsTracker.__init__
def counting(self, *a, **k):
    created.append(threading.current_thread().name)
    original(self, *a, **k)
codecarbon.OfflineEmissionsTracker.__init__ = counting
energy.warm_up_codecarbon("USA")
energy.warm_up_codecarbon("USA")  # a second call while the first runs creates nothing new
m = Meters(MeasureConfig(energy="none", emissions=True), torch.device("cpu"))
with m.window("train"):
    sum(range(10**6))
print(json.dumps({"created": created, "same": m._tracker is energy.codecarbon_tracker("USA"),
                  "emissions": m.summary(10, [0.1])["emissions"]["value"]}))
"""


def test_codecarbon_warms_up_in_the_background_and_is_created_once(tmp_path):
    """`python -m benchmark` starts CodeCarbon's hardware probe in a thread while the run loads its
    data; the meters then get that one tracker (created once, off the main thread), which measures."""
    out = subprocess.run([sys.executable, "-c", WARM_UP_PROBE], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["created"] == ["codecarbon-warm-up"] and report["same"]
    assert report["emissions"] > 0


def test_the_speed_probe_brackets_single_and_final_runs_outside_their_figures(job_factory, monkeypatch):
    """The machine's speed is probed before a run's meters start and after they stop (so no time or
    energy figure holds it), recorded with its unit and source, and never for tuning trials."""
    from benchmark import runner

    events = []

    class Spy(runner.Meters):
        def __init__(self, *args, **kwargs):
            events.append("meters start")
            super().__init__(*args, **kwargs)

        def summary(self, *args, **kwargs):
            out = super().summary(*args, **kwargs)
            events.append("meters stop")
            return out

    real_probe = runner.speed_probe

    def probe(device, seconds):
        events.append("probe")
        return real_probe(device, seconds)

    monkeypatch.setattr(runner, "Meters", Spy)
    monkeypatch.setattr(runner, "speed_probe", probe)
    overrides = ("method=bp", "dataset=digits", "train.epochs=1", "measure.emissions=false")
    job = job_factory(*overrides, "measure.speed_probe_s=0.05")
    fig = runner.execute(job)["environment"]["speed_probe"]
    assert events == ["probe", "meters start", "meters stop", "probe"]
    assert fig["unit"] == "GFLOP/s" and fig["estimated"] is False and "matmul" in fig["source"]
    assert fig["before"] > 0 and fig["after"] > 0
    assert fig["value"] == pytest.approx((fig["before"] + fig["after"]) / 2)

    events.clear()
    trial = runner.execute(job, kind="trial", evaluate_test=False, write=False)
    assert "speed_probe" not in trial["environment"] and "probe" not in events
    off = runner.execute(job_factory(*overrides, "measure.speed_probe_s=0"), write=False)
    assert "speed_probe" not in off["environment"] and "probe" not in events


def test_the_speed_probe_counts_every_second_it_ran(monkeypatch):
    """The probe divides the products done by all the wall time they took, so time the machine
    gave to other work lowers it as it lowers training; here every product is made to take 10 ms
    more: a 256-matmul (33.6 MFLOP) each ~10 ms is then at most ~3.4 GFLOP/s."""
    real_matmul = torch.Tensor.__matmul__

    def slow(a, b):
        time.sleep(0.01)
        return real_matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", slow)
    rate = meters.speed_probe(torch.device("cpu"), 0.1)
    assert 0 < rate <= 2 * 256**3 / 0.01 / 1e9
