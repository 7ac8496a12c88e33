"""Measurement of every run: energy, emissions, time, memory, FLOPs, throughput.

The training loop knows a small interface and nothing behind it: `window("train" | "eval")`
around a stretch of work, `start_phase`, `train_step` and `eval_batch` around the method's calls
(the meters count FLOPs and activation memory on the first call and scale by what ran),
`elapsed()` for the epoch records, `summary()` at the end. Energy backends live in
benchmark/energy.py, memory bookkeeping in benchmark/memory.py; what is used is chosen from what
the machine has (and can be overridden in config `measure.*`):

- wall time: always; the GPU is synchronised at both edges of every window.
- energy: the NVML total-energy counter (Volta and newer), else NVML power sampled in a thread and
  integrated; on the CPU, RAPL package counters under /sys/class/powercap, else CodeCarbon's
  estimate. Windows shorter than the NVML counter's update period (~100 ms) read zero; there the
  figure is instant power x duration, and labelled as an estimate.
- emissions: CodeCarbon's OfflineEmissionsTracker (never the online one: offline it silently
  assumes a country), one per process, logs silenced, no CSV.
- peak memory: torch's allocator peak on CUDA (what the method needs, not the CUDA context) and
  NVML's device memory separately; on the CPU the process's peak RSS growth over the run.
- FLOPs: the first training step of each phase and the first evaluation batch of each phase run
  under torch's FlopCounterMode; every later step and batch adds FLOPs-per-sample x its samples.
- machine speed: a short fp32 matmul probe before and after each single or final run (never a
  tuning trial), outside every other figure. One machine label (CPU model, threads) has run the
  same code at half the speed on another day; the report compares the probes of a method's runs
  and BP's before it sets their time or energy side by side (benchmark/report/numbers.py).
- activation memory: the first training step of each phase also counts
  the bytes autograd holds for backward (saved-tensor hooks; peak of what is alive at once,
  parameters left out). It is device independent, so a block-local method's saving against BP
  shows on the CPU too, where process RSS is dominated by the dataset.

Every figure is recorded as {"value", "unit", "source", "estimated"}: an estimate is never shown
as a measurement.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from benchmark.energy import NvmlEnergy, RaplCounter, check_energy_request, codecarbon_tracker
from benchmark.errors import UserError
from benchmark.memory import SavedTensorPeak, read_status_kib, release_freed_heap, reset_peak_rss

log = logging.getLogger(__name__)


def figure(value, unit: str, source: str, estimated: bool, **extra) -> dict:
    return {"value": value, "unit": unit, "source": source, "estimated": estimated, **extra}


def time_source(device: torch.device) -> str:
    """What the wall-clock figures are: on CUDA the device is synchronised at each window edge,
    so queued kernels count where they ran; on the CPU there is nothing to synchronise."""
    if device.type == "cuda":
        return "time.perf_counter, CUDA synchronised at each window edge"
    return "time.perf_counter"


# Square matmul side: about 0.4 ms a product on one of this project's CPU cores; on a GPU, 2048
# keeps a product well under a millisecond (estimated from the H200's measured GEMM peak, not timed)
PROBE_SIZE = {"cpu": 256, "cuda": 2048}


def probe_side(device: torch.device) -> int:
    return PROBE_SIZE.get(device.type, PROBE_SIZE["cpu"])


def speed_probe(device: torch.device, seconds: float) -> float:
    """GFLOP/s of repeated fp32 square matmuls on `device` over `seconds` of wall time, with the
    process's threads. All the wall time counts, not each product's best time: when the OS or the
    hypervisor gives the core to other work, training slows and so does this (`python -m
    benchmark.perf --only probe` sets it beside a BP epoch's slowdown). Probes scatter about 10 %
    between processes on a quiet machine; under contention a short one reads low (one thread beside
    two busy processes on 2 cores, a fair share of 0.67x: medians of 12 read 40, 50 and 55 GFLOP/s
    at 0.1, 0.25 and 0.5 s, against about 90 quiet), hence the 0.25 s default: 0.5 s added to a
    run, outside its figures."""
    n = probe_side(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):  # warm-up: the first products pay for allocation and kernel choice
        a @ b
    sync(device)
    products, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        sync(device)
        products += 1
    return 2 * n**3 * products / (time.perf_counter() - start) / 1e9


def speed_figure(before: float, after: float, device: torch.device, seconds: float) -> dict:
    """The record's `speed_probe`: the mean of the probes before and after the run."""
    n = probe_side(device)
    return figure((before + after) / 2, "GFLOP/s",
                  f"fp32 {n}x{n} matmul probe on {device.type}, {seconds:g} s before and after the run, outside its "
                  "time and energy; the run's threads", False, before=before, after=after)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class MeasureConfig:
    """What to measure (config `measure.*`); the metadata is each field's valid range."""

    energy: str = field(default="auto", metadata={"choices": ("auto", "nvml", "rapl", "codecarbon", "none")})
    emissions: bool = field(default=True, metadata={})
    country_iso_code: str = field(default="USA", metadata={})
    nvml_interval_s: float = field(default=0.1, metadata={"gt": 0})
    rapl_root: str = field(default="/sys/class/powercap", metadata={})
    cooldown_s: float = field(default=0.0, metadata={"ge": 0})
    speed_probe_s: float = field(default=0.25, metadata={"ge": 0})  # 0: no probe
    flops: bool = field(default=True, metadata={})


class Meters:
    """All measurement of one run. Use `window(name)` around work, `summary()` at the end."""

    def __init__(self, cfg: MeasureConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.seconds = {"train": 0.0, "eval": 0.0, "diagnostics": 0.0}
        self.joules = {"train": 0.0, "eval": 0.0, "diagnostics": 0.0}
        self._excluded = [0.0, 0.0]  # diagnostics' seconds and joules so far, taken out of windows
        self.short_window_estimate = False
        self.notes: list[str] = []  # how `auto` chose its energy backend (recorded with the figure)
        self.energy = self._pick_energy_backend()
        self.flops = {"train": 0.0, "eval": 0.0}
        self.activation_bytes: int | None = None  # peak saved-for-backward bytes of one step
        self._phase = ""  # prediction can change between phases: its FLOPs are counted per phase
        self._step_flops_per_sample: float | None = None
        self._eval_flops_per_sample: dict[str, float] = {}
        self._tracker = codecarbon_tracker(cfg.country_iso_code) if cfg.emissions else None
        self._carbon_parts: list[dict] = []  # CodeCarbon tasks already ended (checkpoints)
        # A run resumed from a checkpoint: what its earlier processes measured (resume_from).
        self._earlier = {"wall_s": 0.0, "diagnostics_s": 0.0, "peak_memory": None, "segments": 1}
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
        self._rss0_kib = read_status_kib("VmRSS")
        self._hwm_reset = reset_peak_rss()

    # -- the window ----------------------------------------------------------------------------
    @contextmanager
    def window(self, name: str):
        """Time and energy of one stretch of work, added to `name`'s totals."""
        excluded_s, excluded_j = self._excluded
        spent = [0.0, 0.0]
        try:
            with self._measured() as spent:
                yield
        finally:
            self.seconds[name] += spent[0] - (self._excluded[0] - excluded_s)
            self.joules[name] += spent[1] - (self._excluded[1] - excluded_j)

    @contextmanager
    def excluded(self):
        """Work that is not the method's (diagnostics), inside or outside a window: its time and
        energy are kept under "diagnostics" and taken out of the enclosing window's."""
        spent = [0.0, 0.0]
        try:
            with self._measured() as spent:
                yield
        finally:
            self.seconds["diagnostics"] += spent[0]
            self.joules["diagnostics"] += spent[1]
            self._excluded[0] += spent[0]
            self._excluded[1] += spent[1]

    @contextmanager
    def _measured(self):
        """[seconds, joules] of the block, filled in when it ends (the GPU synchronised at both edges)."""
        spent = [0.0, 0.0]
        sync(self.device)
        e0 = self.energy.read() if self.energy else 0.0
        t0 = time.perf_counter()
        try:
            yield spent
        finally:
            sync(self.device)
            spent[0] = dt = time.perf_counter() - t0
            if self.energy:
                de = self.energy.read() - e0
                if de == 0.0 and isinstance(self.energy, NvmlEnergy) and dt < NvmlEnergy.COUNTER_PERIOD_S:
                    de = self.energy.power_w() * dt
                    self.short_window_estimate = True
                spent[1] = de

    def elapsed(self) -> dict:
        """Totals so far, for the epoch records: seconds (train + eval), training seconds, joules."""
        return {"seconds": self.seconds["train"] + self.seconds["eval"], "train_seconds": self.seconds["train"],
                "joules": self.joules["train"] + self.joules["eval"]}

    # -- the method's calls: FLOPs counted once per phase, scaled by what ran ---------------------
    def start_phase(self, setup: Callable, name: str) -> None:
        """Run a phase's set-up (e.g. caching features); its FLOPs count as training. The phase's
        first training step is counted afresh (a phase may train other modules)."""
        _, flops = self._count_flops(setup)
        self.flops["train"] += flops
        self._phase = name
        self._step_flops_per_sample = None

    def train_step(self, step: Callable, n: int, parameters):
        """Run one training step on `n` samples; returns its result (the loss)."""
        if self._step_flops_per_sample is None:
            peak = SavedTensorPeak(parameters)
            with peak.watching():
                out, flops = self._count_flops(step)
            self.activation_bytes = max(self.activation_bytes or 0, peak.peak)
            self._step_flops_per_sample = flops / n
        else:
            out = step()
        self.flops["train"] += self._step_flops_per_sample * n
        return out

    def eval_batch(self, predict: Callable, n: int):
        """Run one prediction on `n` samples; returns the class scores."""
        per_sample = self._eval_flops_per_sample.get(self._phase)
        if per_sample is None:
            out, flops = self._count_flops(predict)
            per_sample = self._eval_flops_per_sample[self._phase] = flops / n
        else:
            out = predict()
        self.flops["eval"] += per_sample * n
        return out

    def _count_flops(self, fn: Callable):
        """Run `fn` once under FlopCounterMode: (fn's result, its FLOPs). (result, 0) when off."""
        if not self.cfg.flops:
            return fn(), 0
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            out = fn()
        return out, counter.get_total_flops()

    # -- checkpoints: a run resumed in another process carries its earlier totals ---------------
    def snapshot(self) -> dict:
        """The totals so far, for a checkpoint (benchmark/checkpoint.py). CodeCarbon's task is
        ended and restarted, so its estimate up to here survives the process."""
        sync(self.device)
        self._flush_tracker()
        memory = self._memory_figures().get("peak_memory")
        peaks = [v for v in (self._earlier["peak_memory"], memory and memory["value"]) if v is not None]
        return {
            "seconds": dict(self.seconds), "joules": dict(self.joules), "flops": dict(self.flops),
            "activation_bytes": self.activation_bytes, "short_window_estimate": self.short_window_estimate,
            "wall_s": self._wall_s(), "diagnostics_s": self.seconds["diagnostics"],
            "peak_memory": max(peaks) if peaks else None, "carbon_parts": list(self._carbon_parts),
            "segments": self._earlier["segments"],
        }

    def resume_from(self, snap: dict) -> None:
        """Go on from a checkpoint's totals: time, energy and FLOPs add up, peaks take the larger.
        Work an earlier process did after its last checkpoint is redone here and counted once."""
        for name in ("seconds", "joules", "flops"):
            for k, v in snap[name].items():
                getattr(self, name)[k] = getattr(self, name).get(k, 0.0) + v
        if snap["activation_bytes"] is not None:
            self.activation_bytes = max(self.activation_bytes or 0, snap["activation_bytes"])
        self.short_window_estimate |= snap["short_window_estimate"]
        self._carbon_parts = list(snap["carbon_parts"]) + self._carbon_parts
        self._earlier = {"wall_s": snap["wall_s"], "diagnostics_s": snap["diagnostics_s"],
                         "peak_memory": snap["peak_memory"], "segments": snap["segments"] + 1}

    def resume_phase(self, name: str) -> None:
        """The phase a checkpoint was taken in (its set-up ran in the earlier process)."""
        self._phase = name
        self._step_flops_per_sample = None

    def _wall_s(self) -> float:
        """Seconds of the run so far, diagnostics left out, earlier processes' included."""
        here = time.perf_counter() - self._t0 - (self.seconds["diagnostics"] - self._earlier["diagnostics_s"])
        return here + self._earlier["wall_s"]

    # -- the record ----------------------------------------------------------------------------
    def summary(self, train_samples: int, epoch_seconds: list[float]) -> dict:
        sync(self.device)
        total_s = self._wall_s()
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
            out["flops_train"] = figure(int(self.flops["train"]), "FLOP", src, False)
            out["flops_eval"] = figure(int(self.flops["eval"]), "FLOP", src, False)
        if self.seconds["diagnostics"]:
            out["time_diagnostics"] = figure(
                self.seconds["diagnostics"], "s", clock, False,
                note="diagnostics during training (alignment with BP), kept out of every other time and energy figure",
            )
        out.update(self._memory_figures())
        segments = self._earlier["segments"]
        if segments > 1:
            if "peak_memory" in out and self._earlier["peak_memory"] is not None:
                out["peak_memory"]["value"] = max(out["peak_memory"]["value"], self._earlier["peak_memory"])
                out["peak_memory"]["note"] = f"largest over the run's {segments} processes (resumed from checkpoints)"
            out["time_total"]["note"] = (f"sum over the run's {segments} processes (resumed from checkpoints); work "
                                         "redone after a process stopped is counted once")
        if self.activation_bytes is not None:
            out["activation_memory"] = figure(
                self.activation_bytes, "B", "autograd saved-tensor hooks: peak bytes held for backward in one training step",
                False, note="largest over the phases' first steps; parameters excluded; 0 = no backward pass",
            )
        emissions = self._stop_tracker()
        out.update(self._energy_figures(emissions, total_s))
        out.update(emissions.get("figures", {}))
        if "emissions" in out and self.seconds["diagnostics"]:
            out["emissions"]["note"] = f"includes {self.seconds['diagnostics']:.1f} s of diagnostics (CodeCarbon sees the whole process)"
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
        hwm, rss0 = read_status_kib("VmHWM"), self._rss0_kib
        if hwm is None or rss0 is None:
            return {}
        source = "process peak RSS growth (VmHWM - VmRSS at start)"
        if not self._hwm_reset:
            source += "; VmHWM could not be reset, so an earlier peak in this process may be included"
        return {"peak_memory": figure(max(hwm - rss0, 0) * 1024, "B", source, False)}

    def _flush_tracker(self) -> None:
        """End CodeCarbon's task now and keep its figures; a new task goes on measuring."""
        if self._tracker is None:
            return
        try:
            self._carbon_parts.append(_carbon_part(self._tracker.stop_task()))
            self._tracker.start_task("run")
        except Exception as err:
            log.warning("CodeCarbon task flush failed: %s", err)

    def _stop_tracker(self) -> dict:
        if self._tracker is None:
            return {}
        parts = list(self._carbon_parts)
        try:
            parts.append(_carbon_part(self._tracker.stop_task()))
        except Exception as err:
            log.warning("CodeCarbon stop failed: %s", err)
            if not parts:
                return {}
        kwh_to_j = 3.6e6
        src = "codecarbon_offline_estimate"
        total = {k: sum(p[k] for p in parts) for k in ("energy_consumed", "emissions", "cpu_energy", "gpu_energy", "ram_energy")}
        last = parts[-1]
        extra = {"note": f"sum of {len(parts)} CodeCarbon tasks (the run was checkpointed)"} if len(parts) > 1 else {}
        return {
            "energy_j": total["energy_consumed"] * kwh_to_j,
            "figures": {
                "emissions": figure(
                    total["emissions"], "kg CO2eq", src, True,
                    country=last["country_iso_code"], tracking_mode=last["tracking_mode"],
                    cpu_energy_j=total["cpu_energy"] * kwh_to_j, gpu_energy_j=total["gpu_energy"] * kwh_to_j,
                    ram_energy_j=total["ram_energy"] * kwh_to_j, cpu_model=last["cpu_model"], gpu_model=last["gpu_model"],
                    **extra,
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
            per_s = emissions["energy_j"] / (total_s + self.seconds["diagnostics"])  # CodeCarbon saw them all
            src = "codecarbon_estimate (run total split by time)"
            extra = {"scope": "CPU+RAM model estimate"}
            if self.notes:
                extra["fallback"] = "; ".join(self.notes)
            return {f"energy_{k}": figure(per_s * self.seconds[k], "J", src, True, **extra) for k in ("train", "eval")}
        return {}


def _carbon_part(data) -> dict:
    """The fields of one CodeCarbon task's EmissionsData the record uses, as a plain dict."""
    keys = ("energy_consumed", "emissions", "cpu_energy", "gpu_energy", "ram_energy", "country_iso_code",
            "tracking_mode", "cpu_model", "gpu_model")
    return {k: getattr(data, k) for k in keys}
