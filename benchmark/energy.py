"""Energy backends: what a run's joules are read from, and whether an explicit request can be met.

Owns: RAPL package counters (`RaplCounter`, CPU), NVML's total-energy counter or sampled power
(`NvmlEnergy`, NVIDIA GPUs), the process's one CodeCarbon offline tracker (an estimate, never a
measurement), and `check_energy_request` (an explicit backend this machine cannot give is a
one-line error before any training). Each backend reads joules since it started (`read()`);
`benchmark.meters` turns readings into the run's figures.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import torch

from benchmark.errors import UserError

log = logging.getLogger(__name__)


def check_energy_request(cfg, device: torch.device) -> None:
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
    def start_sampling(self, also_with_counter: bool = False) -> None:
        """Sample power in a thread where there is no counter (or, for a side-by-side comparison
        with the counter, also where there is one)."""
        if (self.source != "nvml_power_sampling" and not also_with_counter) or self._thread is not None:
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

    def sampled_j(self) -> float:
        return self._sampled_j


# ------------------------------------------------------------------------------------------------
# CodeCarbon: one offline tracker per process, started once, a task per run.

_TRACKER = None
_TRACKER_LOCK = threading.Lock()


def warm_up_codecarbon(country: str) -> None:
    """Create the process's tracker in a background thread. CodeCarbon probes the hardware when it
    starts (about 1.5 s here, mostly waiting on system queries), which then overlaps the run's data
    loading and model building instead of adding to them; codecarbon_tracker() waits for it."""
    if _TRACKER is None and not _TRACKER_LOCK.locked():
        threading.Thread(target=codecarbon_tracker, args=(country,), name="codecarbon-warm-up", daemon=True).start()


def codecarbon_tracker(country: str):
    """The process's OfflineEmissionsTracker, created on first use. None if CodeCarbon fails."""
    with _TRACKER_LOCK:  # the warm-up thread may be creating it: wait for that one
        return _create_tracker(country)


def _create_tracker(country: str):
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
