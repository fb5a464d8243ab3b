"""What every benchmark shares: the alternating timer, its settings, estimators, device sync, precision,
per-block compile, time estimates, progress and the speed-up / FLOPs-bound table."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .memory import format_bytes, memory_kind

ESTIMATORS = {"median": statistics.median, "min": min}
DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CANONICAL = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # eager: dynamo only (fast; for --dry-run checks)
EFFICIENCY_GUESS = 0.85  # a benchmark's FLOP/s relative to one big matmul, for the time estimate only


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


def stopwatch(device: torch.device, fn: Callable, *args, **kwargs) -> tuple[float, object]:
    """(seconds, fn(*args, **kwargs)), the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return time.perf_counter() - start, out


def executed_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs torch executes in `fn(*args, **kwargs)` without grad (FlopCounterMode: LoRA, hooks and cache skips
    included), what a measured speed-up is held against."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


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


def say_estimate(log, what: str, gflops: float, device: torch.device, dtype: str) -> None:
    """Say `what` with its planned TFLOPs and the time they take at a measured matmul rate."""
    rate = matmul_gflops(device, dtype) * EFFICIENCY_GUESS
    say(log, f"{what}, {gflops / 1e3:.1f} TFLOPs; estimated {format_duration(gflops / rate)} "
             f"(from a {rate / EFFICIENCY_GUESS:.0f} GFLOP/s matmul probe)")


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


@dataclass
class Timings:
    """Seconds of each subject's timed runs, and how many timed rounds were taken."""

    times: dict[str, list[float]]
    rounds: int = 0

    def summary(self, label: str, estimator: str = "median") -> dict:
        ts = self.times[label]
        return {"seconds": ESTIMATORS[estimator](ts), "median": statistics.median(ts), "min": min(ts), "times": ts}


def alternate(labels: Sequence[str], run: Callable[[str, int], float], repeats: int, warmup: int = 1, *,
              name: str = "bench", budget_s: float | None = None, began: float | None = None, log=None,
              progress: bool | None = False, eta: bool = False) -> Timings:
    """Time `run(label, r) -> seconds` of every subject in rounds r = 0, 1, ...; the order rotates every round.

    The first `warmup` rounds are untimed; then `repeats` timed ones, or fewer once `budget_s` seconds since
    `began` (time.monotonic(); default: now) are spent (at least one). `log` gets every run; `eta` says after
    the warm-up how long the timed rounds will take.
    """
    labels = list(labels)
    timings = Timings({k: [] for k in labels})
    began = time.monotonic() if began is None else began
    bar = Progress(len(labels) * (warmup + repeats), name, progress)
    for r in range(warmup + repeats):
        timed, k, last = r >= warmup, r % len(labels), {}
        for label in labels[k:] + labels[:k]:
            last[label] = seconds = run(label, r)
            bar.update(label)
            if timed:
                timings.times[label].append(seconds)
            if log is not None:
                log(f"{f'repeat {r - warmup + 1}/{repeats}' if timed else f'warm-up {r + 1}/{warmup}'} {label}: "
                    f"{seconds:.3f}s")
        timings.rounds += timed
        if eta and r + 1 == warmup:
            say(log, f"{name}: warm-up done; about {format_duration(sum(last.values()) * repeats)} left")
        if timed and budget_s is not None and time.monotonic() - began > budget_s:
            say(log, f"{name}: time budget {budget_s:g} s reached after {timings.rounds} timed round(s)")
            break
    bar.close()
    return timings


@dataclass
class BenchConfig:
    """What `bench sample` and `bench train` share: PPFlow models against a one-stage baseline."""

    models: tuple[str, ...] = ("PPF-B-2", "PPF-B-3")  # PPFlow models to time
    baseline: str = "SiT-B/2"  # the one-stage model they are compared with
    size: str | None = None  # replace the size in every name (e.g. 'tiny' for a quick run)
    latent_size: int = 32  # latent H = W (ImageNet 256 through the SD VAE: 32)
    in_channels: int = 4  # latent channels
    num_classes: int = 1000  # class-conditional, as the paper's models
    batch: int = 8  # samples per run or optimizer step (the same for every model)
    repeats: int = 2  # timed runs per model (estimator taken); 2 + 1 warm-up: a few minutes for B models on 2 cores
    warmup: int = 1  # untimed runs per model first (allocator, AdamW state, compile)
    estimator: str = "median"  # 'median' or 'min' of the timed runs ('min' resists a shared, busy CPU)
    dtype: str = "float32"  # autocast dtype: float32 (none) or bfloat16 / float16
    compile: str | None = None  # torch.compile each block with this backend ('inductor'); None: eager
    isolate: bool = True  # each model in its own child process (needed for a per-model peak RSS on a CPU)
    threads: int | None = None  # torch intra-op threads (None: as this process has)
    device: str = "cpu"
    budget_s: float | None = None  # stop taking repeats after this many seconds (at least one timed round)
    seed: int = 0

    def name(self, name: str) -> str:
        return re.sub(r"^(SiT|DiT|PPF)-[A-Za-z]+", rf"\1-{self.size}", name) if self.size else name

    @property
    def common(self) -> dict:
        """Model options shared by every contestant."""
        return {"in_channels": self.in_channels, "input_size": self.latent_size, "num_classes": self.num_classes}

    def names(self) -> list[str]:
        """The baseline's name, then the models', each once."""
        names = [self.name(self.baseline)] + [self.name(m) for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"--models and --baseline name the same model twice: {', '.join(names)}")
        return names

    def prepare(self) -> str:
        """Check the run settings, set the thread count; returns the canonical dtype."""
        if self.repeats < 1 or self.warmup < 0 or self.batch < 1:
            raise ValueError("repeats and batch must be >= 1, warmup >= 0")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {tuple(ESTIMATORS)}")
        dtype = canonical_dtype(self.dtype)
        if self.threads:
            torch.set_num_threads(self.threads)
        return dtype

    def settings(self, dtype: str, began: float) -> dict:
        """The `settings` entry of a result: this config, dtype, threads, torch, what memory means, seconds."""
        device = torch.device(self.device)
        return {**dataclasses.asdict(self), "dtype": dtype, "threads": self.threads or torch.get_num_threads(),
                "torch": torch.__version__, "memory": memory_kind(device) if self.isolate or device.type == "cuda"
                else "peak RSS of this process (not isolated)", "seconds_total": time.monotonic() - began}


def ratios(base: dict, run: dict) -> dict:
    """Speed-up, FLOPs bound, efficiency and memory of `run` against `base` (runs with seconds, gflops, peak)."""
    speedup, bound = base["seconds"] / run["seconds"], base["gflops"] / run["gflops"]
    return {"speedup": speedup, "bound": bound, "efficiency": speedup / bound, "seconds": run["seconds"],
            "baseline_seconds": base["seconds"], "peak_memory_bytes": run["peak_memory_bytes"],
            "baseline_peak_memory_bytes": base["peak_memory_bytes"],
            "memory_ratio": run["peak_memory_bytes"] / max(1, base["peak_memory_bytes"])}


def ratio_table(result: dict, column: str, cell: Callable[[dict], object], rows: list[tuple[str, dict]]) -> list[str]:
    """Plain-text rows of each run (times, GFLOPs, memory, `column`) and of each (label, ratios) in `rows`."""
    lines = [f"{'run':<22} {'median s':>9} {'min s':>9} {'GFLOPs':>9} {'peak mem':>10}  {column}"]
    for label, r in result["runs"].items():
        lines.append(f"{label:<22} {r['median']:>9.3f} {r['min']:>9.3f} {r['gflops']:>9.1f} "
                     f"{format_bytes(r.get('peak_memory_bytes')):>10}  {cell(r)}")
    lines.append(f"{'vs ' + result['baseline']:<22} {'speed-up':>9} {'bound':>9} {'efficiency':>10} {'memory':>8}")
    for label, m in rows:
        lines.append(f"{label:<22} {m['speedup']:>9.3f} {m['bound']:>9.3f} {m['efficiency']:>10.3f} "
                     f"{m['memory_ratio']:>7.2f}x")
    return lines
