"""Measurement of every run: energy, emissions, time, memory, FLOPs, throughput.

The training loop knows one interface: `Meters.window("train" | "eval")`, a context manager
around a stretch of work. What is behind it is chosen from what the machine has (and can be
overridden in config `measure.*`):

- wall time: always; the GPU is synchronised at both edges of every window.
- energy: the NVML total-energy counter (Volta and newer), else NVML power sampled in a thread and
  integrated; on the CPU, RAPL package counters under /sys/class/powercap, else CodeCarbon's
  estimate. Windows shorter than the NVML counter's update period (~100 ms) read zero; there the
  figure is instant power x duration, and labelled as an estimate.
- emissions: CodeCarbon's OfflineEmissionsTracker (never the online one: offline it silently
  assumes a country), one per process, logs silenced, no CSV.
- peak memory: torch's allocator peak on CUDA (what the method needs, not the CUDA context) and
  NVML's device memory separately; on the CPU the process's peak RSS growth over the run.
- FLOPs: `measure_flops` wraps one training step / one evaluation batch in torch's FlopCounterMode;
  the loop scales by the steps and samples actually run.
- activation memory: `measure_step` also counts, during the first training step of each phase,
  the bytes autograd holds for backward (saved-tensor hooks; peak of what is alive at once,
  parameters left out). It is device independent, so a block-local method's saving against BP
  shows on the CPU too, where process RSS is dominated by the dataset.

Every figure is recorded as {"value", "unit", "source", "estimated"}: an estimate is never shown
as a measurement.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from benchmark.errors import UserError

log = logging.getLogger(__name__)


class SavedTensorPeak:
    """Peak bytes of tensors autograd keeps for backward, alive at the same time.

    A pack hook wraps each saved tensor in a small holder and counts its bytes; when the graph
    that owns the holder is freed (after its backward pass, or when dropped), a finalizer
    subtracts them. Parameters (a matmul saves its weight) are not activations and are skipped.
    A tensor saved by two nodes is counted twice, as autograd may keep it twice in views.
    """

    class _Held:
        __slots__ = ("tensor", "__weakref__")

        def __init__(self, tensor):
            self.tensor = tensor

    def __init__(self, parameters):
        self.param_ptrs = {p.data_ptr() for p in parameters}
        self.live = self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def pack(self, tensor: torch.Tensor):
        if tensor.data_ptr() in self.param_ptrs:
            return tensor
        held = self._Held(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(held, self._release, nbytes)
        return held

    @staticmethod
    def unpack(held):
        return held.tensor if isinstance(held, SavedTensorPeak._Held) else held

    @contextmanager
    def watching(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


def figure(value, unit: str, source: str, estimated: bool, **extra) -> dict:
    return {"value": value, "unit": unit, "source": source, "estimated": estimated, **extra}


def time_source(device: torch.device) -> str:
    """What the wall-clock figures are: on CUDA the device is synchronised at each window edge,
    so queued kernels count where they ran; on the CPU there is nothing to synchronise."""
    if device.type == "cuda":
        return "time.perf_counter, CUDA synchronised at each window edge"
    return "time.perf_counter"


def check_energy_request(cfg: "MeasureConfig", device: torch.device) -> None:
    """An explicit energy backend that this machine cannot give is a one-line error before any
    training; only `auto` falls back (to the next backend, then to CodeCarbon's estimate), and the
    record names the source it used."""
    wanted = cfg.energy
    if wanted == "nvml":
        if device.type != "cuda":
            raise UserError(f"measure.energy=nvml but this run is on {device.type}: NVML measures NVIDIA GPUs",
                            "use measure.energy=auto (or rapl / codecarbon) for CPU runs")
        nvml = import_pynvml()
        try:
            if nvml is None:
                raise OSError("the nvidia-ml-py package is not installed")
            nvml.nvmlInit()
        except Exception as err:  # noqa: BLE001 - pynvml raises its own NVMLError types
            raise UserError(f"measure.energy=nvml but NVML is unavailable here ({err})",
                            "use measure.energy=auto to fall back to an estimate, or fix the NVIDIA driver") from None
    elif wanted == "rapl":
        if device.type != "cpu":
            raise UserError(f"measure.energy=rapl but this run is on {device.type}: RAPL measures the CPU package",
                            "use measure.energy=nvml or auto for GPU runs")
        try:
            RaplCounter(cfg.rapl_root)
        except (OSError, ValueError) as err:
            raise UserError(f"measure.energy=rapl but RAPL is not readable here ({err})",
                            "use measure.energy=auto to fall back to CodeCarbon's estimate, or make the counters readable") from None
    elif wanted == "codecarbon" and not cfg.emissions:
        raise UserError("measure.energy=codecarbon needs CodeCarbon, but measure.emissions=false",
                        "set measure.emissions=true, or measure.energy=auto / none")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# Energy backends. Each has `read() -> joules so far` (monotonic within a run) or a window API.


class RaplCounter:
    """Sum of the package-level RAPL counters (intel-rapl:N/energy_uj), wrap-around handled.

    Also reads AMD's RAPL (exposed by the same powercap driver on recent kernels). Only package
    domains are summed: their sub-domains (core, uncore, dram on some CPUs) are inside them.
    """

    source = "rapl"
    scope = "CPU package(s), whole machine"

    def __init__(self, root: str | os.PathLike = "/sys/class/powercap"):
        self.domains = [
            d for d in sorted(Path(root).glob("intel-rapl:*")) if re.fullmatch(r"intel-rapl:\d+", d.name)
        ]
        if not self.domains:
            raise OSError(f"no RAPL package domain under {root}")
        self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]
        self.last = [self._raw(d) for d in self.domains]  # raises PermissionError when unreadable
        self.total_uj = 0

    @staticmethod
    def _raw(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def read(self) -> float:
        """Joules since construction. Must be called at least once per counter wrap period
        (minutes at full load), which every window boundary does."""
        for i, domain in enumerate(self.domains):
            now = self._raw(domain)
            delta = now - self.last[i]
            if delta < 0:  # the counter wrapped at max_energy_range_uj
                delta += self.ranges[i]
            self.total_uj += delta
            self.last[i] = now
        return self.total_uj / 1e6


def import_pynvml():
    """`pynvml` from the nvidia-ml-py package, or None where it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlEnergy:
    """Energy of one GPU from NVML: the total-energy counter (mJ) where supported, else power
    sampled every `interval_s` in a background thread and integrated (trapezoid rule)."""

    scope = "whole GPU device (all processes on it)"
    COUNTER_PERIOD_S = 0.1  # the counter updates about every 100 ms

    def __init__(self, device_index: int, interval_s: float = 0.1, nvml=None):
        self.nvml = nvml or import_pynvml()
        if self.nvml is None:
            raise OSError("nvidia-ml-py (module pynvml) is not installed")
        try:
            self.nvml.nvmlInit()
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(device_index)
        except self.nvml.NVMLError as err:  # no driver, no library, no device
            raise OSError(f"NVML unavailable: {err}") from None
        self.interval_s = interval_s
        self.info = self._device_info()
        try:
            self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.source = "nvml_energy_counter"
        except self.nvml.NVMLError:
            self.source = "nvml_power_sampling"
        self._sampled_j = 0.0
        self._thread = None
        self._stop = threading.Event()

    def _device_info(self) -> dict:
        def text(v):
            return v.decode() if isinstance(v, bytes) else v

        return {
            "gpu_model": text(self.nvml.nvmlDeviceGetName(self.handle)),
            "driver": text(self.nvml.nvmlSystemGetDriverVersion()),
            "scope": self.scope,
        }

    def power_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def memory_used_bytes(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def counter_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    # sampling thread (only where the counter is not supported)
    def start_sampling(self) -> None:
        if self.source != "nvml_power_sampling" or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="nvml-power")
        self._thread.start()

    def _sample(self) -> None:
        last_t, last_p = time.perf_counter(), self.power_w()
        while not self._stop.wait(self.interval_s):
            t, p = time.perf_counter(), self.power_w()
            self._sampled_j += 0.5 * (p + last_p) * (t - last_t)
            last_t, last_p = t, p

    def stop_sampling(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def read(self) -> float:
        return self.counter_j() if self.source == "nvml_energy_counter" else self._sampled_j


# ------------------------------------------------------------------------------------------------
# CodeCarbon: one offline tracker per process, started once, a task per run.

_TRACKER = None


def codecarbon_tracker(country: str):
    """The process's OfflineEmissionsTracker, created on first use. None if CodeCarbon fails."""
    global _TRACKER
    if _TRACKER is None:
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)  # after import: it sets its own level
            _TRACKER = OfflineEmissionsTracker(
                country_iso_code=country,
                save_to_file=False,  # no CSV anywhere: the figures go into the run's record
                log_level="error",
                allow_multiple_runs=True,  # tuning runs several trials per process, one after another
                measure_power_secs=15,
                tracking_mode="machine",
            )
            _TRACKER.start()
        except Exception as err:  # CodeCarbon must never take a run down
            log.warning("CodeCarbon unavailable: %s", err)
            _TRACKER = False
    return _TRACKER or None


# ------------------------------------------------------------------------------------------------
# Peak memory


def _read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def release_freed_heap() -> None:
    """Give memory that earlier runs freed back to the OS (glibc keeps it otherwise), so that the
    next run's RSS growth counts what it allocates rather than what it reuses."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS. Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------


@dataclass
class MeasureConfig:
    energy: str = "auto"  # auto | nvml | rapl | codecarbon | none
    emissions: bool = True
    country_iso_code: str = "USA"
    nvml_interval_s: float = 0.1
    rapl_root: str = "/sys/class/powercap"
    cooldown_s: float = 0.0
    flops: bool = True


class Meters:
    """All measurement of one run. Use `window(name)` around work, `summary()` at the end."""

    def __init__(self, cfg: MeasureConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.seconds = {"train": 0.0, "eval": 0.0}
        self.joules = {"train": 0.0, "eval": 0.0}
        self.short_window_estimate = False
        self.notes: list[str] = []  # how `auto` chose its energy backend (recorded with the figure)
        self.energy = self._pick_energy_backend()
        self.flops = {"train": 0, "eval": 0}
        self.activation_bytes: int | None = None  # peak saved-for-backward bytes of one step
        self.eval_flops_per_sample: dict[str, float] = {}
        self._tracker = codecarbon_tracker(cfg.country_iso_code) if cfg.emissions else None
        if cfg.cooldown_s > 0:
            time.sleep(cfg.cooldown_s)  # heat from an earlier trial raises the next one's readings
        self._start_memory()
        if self._tracker is not None:
            self._tracker.start_task("run")
        self._t0 = time.perf_counter()

    # -- backends ------------------------------------------------------------------------------
    def _pick_energy_backend(self):
        wanted = self.cfg.energy
        if wanted in ("auto", "nvml") and self.device.type == "cuda":
            try:
                backend = NvmlEnergy(self.device.index or 0, self.cfg.nvml_interval_s)
                backend.start_sampling()
                return backend
            except OSError as err:
                if wanted == "nvml":
                    raise UserError(f"measure.energy=nvml but NVML failed ({err})", "use measure.energy=auto") from None
                self.notes.append(f"auto energy: no NVML ({err}); next backend")
        if wanted in ("auto", "rapl") and self.device.type == "cpu":
            try:
                return RaplCounter(self.cfg.rapl_root)
            except (OSError, ValueError) as err:
                if wanted == "rapl":
                    raise UserError(f"measure.energy=rapl but RAPL is not readable here ({err})", "use measure.energy=auto") from None
                self.notes.append(f"auto energy: no RAPL ({err}); CodeCarbon's estimate instead")
        if wanted in ("nvml", "rapl"):  # asked for by name, on a device it does not measure
            check_energy_request(self.cfg, self.device)
        return None  # energy then comes from CodeCarbon's estimate, or is absent

    def _start_memory(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        release_freed_heap()
        self._rss0_kib = _read_status_kib("VmRSS")
        self._hwm_reset = reset_peak_rss()

    # -- the window ----------------------------------------------------------------------------
    @contextmanager
    def window(self, name: str):
        """Time and energy of one stretch of work, added to `name`'s totals."""
        sync(self.device)
        e0 = self.energy.read() if self.energy else 0.0
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            dt = time.perf_counter() - t0
            self.seconds[name] += dt
            if self.energy:
                de = self.energy.read() - e0
                if de == 0.0 and isinstance(self.energy, NvmlEnergy) and dt < NvmlEnergy.COUNTER_PERIOD_S:
                    de = self.energy.power_w() * dt
                    self.short_window_estimate = True
                self.joules[name] += de

    def measure_flops(self, fn: Callable):
        """Run `fn` once under FlopCounterMode: (fn's result, its FLOPs). (result, 0) when off."""
        if not self.cfg.flops:
            return fn(), 0
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            out = fn()
        return out, counter.get_total_flops()

    def measure_step(self, fn: Callable, parameters):
        """One training step under FlopCounterMode and the saved-tensor count: (result, FLOPs)."""
        peak = SavedTensorPeak(parameters)
        with peak.watching():
            out, flops = self.measure_flops(fn)
        self.activation_bytes = max(self.activation_bytes or 0, peak.peak)
        return out, flops

    def add_flops(self, name: str, flops: float) -> None:
        self.flops[name] += int(flops)

    # -- the record ----------------------------------------------------------------------------
    def summary(self, train_samples: int, epoch_seconds: list[float]) -> dict:
        sync(self.device)
        total_s = time.perf_counter() - self._t0
        clock = time_source(self.device)
        out = {
            "time_total": figure(total_s, "s", clock, False),
            "time_train": figure(self.seconds["train"], "s", clock, False),
            "time_eval": figure(self.seconds["eval"], "s", clock, False),
            "time_per_epoch": figure(epoch_seconds, "s", clock, False),
            "throughput_train": figure(
                train_samples / self.seconds["train"] if self.seconds["train"] else None,
                "samples/s", "training samples / training time", False,
            ),
        }
        if self.cfg.flops:
            src = "torch.utils.flop_counter.FlopCounterMode, one step x steps run"
            out["flops_train"] = figure(self.flops["train"], "FLOP", src, False)
            out["flops_eval"] = figure(self.flops["eval"], "FLOP", src, False)
        out.update(self._memory_figures())
        if self.activation_bytes is not None:
            out["activation_memory"] = figure(
                self.activation_bytes, "B", "autograd saved-tensor hooks: peak bytes held for backward in one training step",
                False, note="largest over the phases' first steps; parameters excluded; 0 = no backward pass",
            )
        emissions = self._stop_tracker()
        out.update(self._energy_figures(emissions, total_s))
        out.update(emissions.get("figures", {}))
        return out

    def _memory_figures(self) -> dict:
        if self.device.type == "cuda":
            figs = {
                "peak_memory": figure(
                    torch.cuda.max_memory_allocated(self.device), "B", "torch.cuda.max_memory_allocated", False,
                    note="tensors the method allocated; the CUDA context is not included",
                )
            }
            if isinstance(self.energy, NvmlEnergy):
                figs["device_memory_used"] = figure(
                    self.energy.memory_used_bytes(), "B", "nvml_device_memory_used", False,
                    note="whole device at the end of the run, CUDA context and other processes included",
                )
            return figs
        hwm, rss0 = _read_status_kib("VmHWM"), self._rss0_kib
        if hwm is None or rss0 is None:
            return {}
        source = "process peak RSS growth (VmHWM - VmRSS at start)"
        if not self._hwm_reset:
            source += "; VmHWM could not be reset, so an earlier peak in this process may be included"
        return {"peak_memory": figure(max(hwm - rss0, 0) * 1024, "B", source, False)}

    def _stop_tracker(self) -> dict:
        if self._tracker is None:
            return {}
        try:
            data = self._tracker.stop_task()
        except Exception as err:
            log.warning("CodeCarbon stop failed: %s", err)
            return {}
        kwh_to_j = 3.6e6
        src = "codecarbon_offline_estimate"
        return {
            "energy_j": data.energy_consumed * kwh_to_j,
            "figures": {
                "emissions": figure(
                    data.emissions, "kg CO2eq", src, True,
                    country=data.country_iso_code, tracking_mode=data.tracking_mode,
                    cpu_energy_j=data.cpu_energy * kwh_to_j, gpu_energy_j=data.gpu_energy * kwh_to_j,
                    ram_energy_j=data.ram_energy * kwh_to_j, cpu_model=data.cpu_model, gpu_model=data.gpu_model,
                ),
            },
        }

    def _energy_figures(self, emissions: dict, total_s: float) -> dict:
        if self.cfg.energy == "none":
            return {}
        if self.energy is not None:
            if isinstance(self.energy, NvmlEnergy):
                self.energy.stop_sampling()
            source = self.energy.source
            estimated = source == "nvml_power_sampling" or self.short_window_estimate
            extra = dict(getattr(self.energy, "info", {}) or {"scope": self.energy.scope})
            if self.short_window_estimate:
                extra["note"] = "windows shorter than the counter period used instant power x duration"
            return {
                f"energy_{k}": figure(self.joules[k], "J", source, estimated, **extra) for k in ("train", "eval")
            }
        if "energy_j" in emissions and total_s > 0:
            # CodeCarbon gives one figure for the whole run; split it by time spent in each phase.
            per_s = emissions["energy_j"] / total_s
            src = "codecarbon_estimate (run total split by time)"
            extra = {"scope": "CPU+RAM model estimate"}
            if self.notes:
                extra["fallback"] = "; ".join(self.notes)
            return {f"energy_{k}": figure(per_s * self.seconds[k], "J", src, True, **extra) for k in ("train", "eval")}
        return {}
