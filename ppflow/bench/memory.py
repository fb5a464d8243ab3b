"""Peak memory of a benchmark run: CUDA max allocated on a GPU, the process's peak RSS on a CPU.

On a CPU the allocator's caches and earlier work stay resident, so a model's peak is only meaningful
in a process of its own: the benchmarks run each model in a child process (`ppflow.bench.workers`)
and read its peak resident set (Linux `VmHWM`, which `reset_peak` clears) from inside it.
"""

from __future__ import annotations

import ctypes
import re
import resource
import sys

import torch


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_bytes() -> int:
    """Resident set size now (0 where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return 1024 * kb if kb is not None else 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started or since `reset_peak`."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: getrusage (bytes on macOS, kB elsewhere); cannot be reset
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else 1024 * peak
    return 1024 * kb


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak(device: torch.device) -> bool:
    """Start a new peak: CUDA peak stats, or the process's RSS high-water mark (Linux clear_refs); False if not."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    _malloc_trim()  # hand memory freed by earlier runs back first, so it does not count in the next peak
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device) -> int:
    """CUDA max allocated on a GPU, peak RSS of this process otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def memory_kind(device: torch.device) -> str:
    return "cuda max allocated" if device.type == "cuda" else "peak RSS of a child process"


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
