"""Memory figures: what a training step holds for backward, and what the process peaks at.

Owns: `SavedTensorPeak` (bytes autograd saves for backward, device independent), the CPU process's
peak-RSS bookkeeping (VmHWM reset and read from /proc), and handing freed heap back to the OS
between runs. CUDA's allocator peak is read by `benchmark.meters` directly from torch.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from pathlib import Path

import torch


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


def read_status_kib(field: str) -> int | None:
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
