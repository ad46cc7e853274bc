"""Stage timers with peak memory, used by jobs and benchmarks.

Peak resident memory comes from ``VmHWM`` in ``/proc/self/status`` (Linux); it is reset at the
start of each stage through ``/proc/self/clear_refs`` when the kernel allows it, so each stage
reports its own peak. On CUDA the peak allocated device memory is recorded too.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Stages:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.peak_cuda_mb: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        cuda = _cuda()
        if cuda:
            cuda.reset_peak_memory_stats()
        reset = _reset_peak()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 3)
            hwm = _status_kb("VmHWM")
            if hwm is not None:
                self.peak_rss_mb[name] = round(hwm / 1024, 1)
                if not reset:
                    self.peak_rss_mb[name + " (cumulative: reset unsupported)"] = self.peak_rss_mb.pop(name)
            if cuda:
                self.peak_cuda_mb[name] = round(cuda.max_memory_allocated() / 2**20, 1)

    def add(self, name: str, seconds: float) -> None:
        """Record a sub-stage's time (no memory reading: resetting the peak inside a stage would lose the
        stage's own peak)."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    def to_dict(self) -> dict:
        out = {"seconds": {**self.seconds, "total": self.total()}, "peak_rss_mb": self.peak_rss_mb}
        if self.peak_cuda_mb:
            out["peak_cuda_mb"] = self.peak_cuda_mb
        return out


def _cuda():
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda
    return None
