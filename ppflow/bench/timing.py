"""What every benchmark shares: estimators, device sync, precision, per-block compile, time estimates, progress."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time

import torch

ESTIMATORS = {"median": statistics.median, "min": min}
DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CANONICAL = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # eager: dynamo only (fast; for --dry-run checks)


def canonical_dtype(name: str | None) -> str:
    """'bf16' -> 'bfloat16' etc.; None -> 'float32'; a one-line error names the choices."""
    name = name or "float32"
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose one of fp32, bf16, fp16 (or float32, bfloat16, float16)")
    return CANONICAL.get(name, name)


def autocast(device: torch.device, dtype: str | None):
    """torch.autocast in `dtype` (bf16/fp16) on `device`, or nothing for fp32 (what `ppflow train/sample` do)."""
    dt = DTYPES[canonical_dtype(dtype)]
    return torch.autocast(device.type, dtype=dt) if dt is not None else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_blocks(model: torch.nn.Module, backend: str | None) -> None:
    """torch.compile each transformer block in place (as `ppflow train --compile`); None: leave eager."""
    if backend is None:
        return
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend {backend!r} is not one of {COMPILE_BACKENDS}")
    for block in model.blocks:
        block.compile(backend=backend)


def matmul_gflops(device: torch.device, dtype: str | None = None, size: tuple[int, int, int] = (1024, 768, 3072),
                  seconds: float = 0.2) -> float:
    """Measured GFLOP/s of one (M, K) x (K, N) matrix product: a probe for a benchmark's time estimate."""
    dt = DTYPES[canonical_dtype(dtype)] or torch.float32
    m, k, n = size
    a, b = torch.randn(m, k, device=device, dtype=dt), torch.randn(k, n, device=device, dtype=dt)
    a @ b  # warm-up
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda":
            sync(device)
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


class Progress:
    """A tqdm bar on stderr (only at a terminal unless forced), or nothing."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None) -> None:
        from tqdm.auto import tqdm

        on = sys.stderr.isatty() if enabled is None else enabled
        self.bar = tqdm(total=total, desc=desc, unit="run", file=sys.stderr, leave=False) if on else None

    def update(self, label: str = "") -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def say(log, msg: str) -> None:
    """Send a line to `log` (a callable) or stderr when log is None."""
    (log or (lambda m: print(m, file=sys.stderr)))(msg)
