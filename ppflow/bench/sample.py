"""Sampling speed and memory of PPFlow models against their one-stage baseline, next to the FLOPs bound.

All models run full sampling loops on the same noise, each in a child process of its own
(`bench.workers`), in turns (the order rotates every repeat), and the medians are compared.
For each model: speed-up = baseline time / model time, bound = baseline FLOPs / model FLOPs for the
forwards the runs actually made, efficiency = speed-up / bound (1 = all FLOPs saved turn into time
saved), and the peak memory of its runs (RSS on a CPU, CUDA max allocated on a GPU).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from dataclasses import dataclass

import torch

from ..models import create_config, create_model
from ..sampling import sample_model
from ..models.flops import cfg_multipliers, evaluation_flops
from .memory import format_bytes, memory_kind, peak_bytes, reset_peak
from .timing import (
    ESTIMATORS,
    Progress,
    autocast,
    canonical_dtype,
    compile_blocks,
    format_duration,
    matmul_gflops,
    say,
    sync,
)
from .workers import start

SAMPLE_EFFICIENCY_GUESS = 0.85  # sampling FLOP/s relative to one big matmul, for the time estimate only


@dataclass
class SamplingBenchConfig:
    """What to time; the defaults finish in a few minutes on 2 CPU cores (`--thorough`: THOROUGH)."""

    models: tuple[str, ...] = ("PPF-B-2", "PPF-B-3")  # PPFlow models to time
    baseline: str = "SiT-B/2"  # the one-stage model they are compared with
    size: str | None = None  # replace the size in every name (e.g. 'tiny' for a quick run)
    latent_size: int = 32  # latent H = W (ImageNet 256 through the SD VAE: 32)
    in_channels: int = 4  # latent channels
    num_classes: int = 1000  # class-conditional, as the paper's models
    batch: int = 8  # samples per run
    method: str = "euler"  # sampler (same for every model)
    steps: int = 4  # grid steps (same for every model); 4 splits as the stages' spans for ppf2 and ppf3
    repeats: int = 2  # timed runs per model (median taken); 2 + 1 warm-up: ~3 min for the B models on 2 cores
    warmup: int = 1  # untimed runs per model first
    cfg: bool = True  # also time CFG: stage CFG (scale 1 in the first stage) vs CFG everywhere
    cfg_scale: float = 3.0  # guidance scale where CFG is on
    estimator: str = "median"  # 'median' or 'min' of the timed runs ('min' resists a shared, busy CPU)
    dtype: str = "float32"  # autocast dtype: float32 (none) or bfloat16 / float16
    compile: str | None = None  # torch.compile each block with this backend ('inductor'); None: eager
    isolate: bool = True  # each model in its own child process (needed for a per-model peak RSS on a CPU)
    threads: int | None = None  # torch intra-op threads (None: leave as is)
    device: str = "cpu"
    budget_s: float | None = None  # stop taking repeats after this many seconds (at least one)
    seed: int = 0

    def name(self, name: str) -> str:
        return re.sub(r"^(SiT|DiT|PPF)-[A-Za-z]+", rf"\1-{self.size}", name) if self.size else name


THOROUGH = {"steps": 10, "repeats": 5}  # the documented setting (`--thorough`)


class SamplingSubject:
    """One model in a (child) process: `run(scales)` times one sampling run with those stage CFG scales."""

    def __init__(self, name: str, common: dict, batch: int, method: str, steps: int, dtype: str,
                 compile: str | None, threads: int | None, device: str, seed: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.model = create_model(name, **common).to(self.device).eval()
        compile_blocks(self.model, compile)
        self.method, self.steps, self.dtype = method, steps, dtype
        c = self.model.config
        g = torch.Generator().manual_seed(seed)  # the same noise and labels in every process
        self.noise = torch.randn(batch, c.in_channels, *c.input_size, generator=g).to(self.device)
        self.y = torch.randint(0, max(1, c.num_classes), (batch,), generator=g).to(self.device)

    def run(self, scales: list[float]) -> dict:
        reset_peak(self.device)
        sync(self.device)
        start_t = time.perf_counter()
        with torch.no_grad(), autocast(self.device, self.dtype):
            out = sample_model(self.model, self.noise, self.y, cfg_scales=scales, method=self.method,
                               steps=self.steps, full_output=True)
        sync(self.device)
        return {"seconds": time.perf_counter() - start_t, "forwards": out.forwards, "flops": out.flops["total"],
                "peak_memory_bytes": peak_bytes(self.device)}


@dataclass
class Variant:
    label: str  # e.g. 'PPF-B-2' or 'PPF-B-2 cfg'
    name: str  # model name (its process)
    scales: list[float]
    times: list[float] = dataclasses.field(default_factory=list)
    forwards: list[int] | None = None
    flops: float = 0.0
    peak: int = 0


def _estimate(cfg: SamplingBenchConfig, variants: list[Variant], common: dict) -> float:
    """Planned FLOPs (in GFLOPs) of every run, from each variant's expected forwards."""
    total = 0.0
    for v in variants:
        c = create_config(v.name, **common)
        spans = [s.span for s in c.get_schedule().stages]
        mult = cfg_multipliers(len(spans), v.scales)
        counts = [cfg.batch * cfg.steps * sp * m for sp, m in zip(spans, mult)]
        total += evaluation_flops(c, counts)[1] * (cfg.warmup + cfg.repeats)
    return total / 1e9


def bench_sampling(cfg: SamplingBenchConfig, log=None, progress: bool | None = None, estimate: bool = False) -> dict:
    """Time the models' sampling runs; returns settings, per-variant times and per-model ratios."""
    if cfg.repeats < 1:
        raise ValueError("repeats must be >= 1")
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; choose one of {tuple(ESTIMATORS)}")
    dtype = canonical_dtype(cfg.dtype)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    common = {"in_channels": cfg.in_channels, "input_size": cfg.latent_size, "num_classes": cfg.num_classes}
    names = [cfg.name(cfg.baseline)] + [cfg.name(m) for m in cfg.models]
    if len(set(names)) != len(names):
        raise ValueError(f"--models and --baseline name the same model twice: {', '.join(names)}")
    stages = {n: create_config(n, **common).get_schedule().num_stages for n in names}  # bad names: one line here
    for n, k in stages.items():
        if cfg.steps < k:
            raise ValueError(f"{n} has {k} stages: give at least {k} steps (--steps)")
    variants = [Variant(n, n, [1.0] * k) for n, k in stages.items()]
    if cfg.cfg:
        s = cfg.cfg_scale
        for n, k in stages.items():
            scales = [s] * k if k == 1 else [1.0] + [s] * (k - 1)  # baseline: CFG everywhere
            variants.append(Variant(f"{n} cfg", n, scales))
    began = time.monotonic()
    if estimate:
        gflops = _estimate(cfg, variants, common)
        rate = matmul_gflops(device, dtype) * SAMPLE_EFFICIENCY_GUESS
        say(log, f"bench sample: {len(variants)} runs x ({cfg.warmup} warm-up + {cfg.repeats} timed) of {cfg.steps} "
                 f"steps, batch {cfg.batch}, {gflops / 1e3:.1f} TFLOPs; estimated {format_duration(gflops / rate)} "
                 f"(from a {rate / SAMPLE_EFFICIENCY_GUESS:.0f} GFLOP/s matmul probe)")
    workers = {}
    try:
        for n in names:
            kwargs = {"name": n, "common": common, "batch": cfg.batch, "method": cfg.method, "steps": cfg.steps,
                      "dtype": dtype, "compile": cfg.compile, "threads": cfg.threads or torch.get_num_threads(),
                      "device": cfg.device, "seed": cfg.seed}
            workers[n] = start("ppflow.bench.sample:SamplingSubject", kwargs, n, cfg.isolate)
        for w in workers.values():
            w.ready()
        bar = Progress(len(variants) * (cfg.warmup + cfg.repeats), "bench sample", progress)

        def run(v: Variant) -> float:
            out = workers[v.name].call("run", v.scales)
            v.forwards, v.flops, v.peak = out["forwards"], out["flops"], max(v.peak, out["peak_memory_bytes"])
            bar.update(v.label)
            return out["seconds"]

        for w in range(cfg.warmup):
            for v in variants:
                seconds = run(v)
                if log is not None:
                    log(f"warm-up {w + 1}/{cfg.warmup} {v.label}: {seconds:.3f}s")
        for r in range(cfg.repeats):
            order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: no fixed position
            for v in order:
                v.times.append(run(v))
                if log is not None:
                    log(f"repeat {r + 1}/{cfg.repeats} {v.label}: {v.times[-1]:.3f}s")
            if cfg.budget_s is not None and time.monotonic() - began > cfg.budget_s:
                say(log, f"bench sample: time budget {cfg.budget_s:g} s reached after {r + 1} repeat(s)")
                break
        bar.close()
    finally:
        for w in workers.values():
            w.close()
    est = ESTIMATORS[cfg.estimator]
    by = {v.label: v for v in variants}
    base = names[0]
    result = {
        "settings": {**dataclasses.asdict(cfg), "dtype": dtype, "threads": cfg.threads or torch.get_num_threads(),
                     "torch": torch.__version__, "seconds_total": time.monotonic() - began,
                     "memory": memory_kind(device) if cfg.isolate or device.type == "cuda"
                     else "peak RSS of this process (not isolated)"},
        "baseline": base,
        "runs": {v.label: {"seconds": est(v.times), "median": statistics.median(v.times), "min": min(v.times),
                           "times": v.times, "forwards": v.forwards, "gflops": v.flops / 1e9, "cfg_scales": v.scales,
                           "peak_memory_bytes": v.peak}
                 for v in variants},
        "models": {},
    }
    for n in names[1:]:
        entry = _ratios(by[base], by[n], est)
        if cfg.cfg:
            entry["cfg"] = _ratios(by[f"{base} cfg"], by[f"{n} cfg"], est)
        result["models"][n] = entry
    result["ratios"] = result["models"]  # the key `bench train` uses
    return result


def _ratios(base: Variant, model: Variant, est) -> dict:
    speedup = est(base.times) / est(model.times)
    bound = base.flops / model.flops
    return {"speedup": speedup, "bound": bound, "efficiency": speedup / bound, "seconds": est(model.times),
            "baseline_seconds": est(base.times), "cfg_scales": model.scales, "peak_memory_bytes": model.peak,
            "baseline_peak_memory_bytes": base.peak, "memory_ratio": model.peak / max(1, base.peak)}


def format_report(result: dict) -> str:
    """Plain-text table of a `bench_sampling` result."""
    s = result["settings"]
    lines = [
        (f"sampling benchmark: {s['method']} {s['steps']} steps, batch {s['batch']}, latent {s['latent_size']}x"
         f"{s['latent_size']}x{s['in_channels']}, {s['dtype']}{', compiled' if s.get('compile') else ''}, "
         f"{s['repeats']} repeats ({s['estimator']}), {s['threads']} threads, {s['device']}, torch {s['torch']}; "
         f"memory: {s.get('memory', '-')}"),
        f"{'run':<22} {'median s':>9} {'min s':>9} {'GFLOPs':>9} {'peak mem':>10}  forwards per stage (samples)",
    ]
    for label, r in result["runs"].items():
        lines.append(f"{label:<22} {r['median']:>9.3f} {r['min']:>9.3f} {r['gflops']:>9.1f} "
                     f"{format_bytes(r.get('peak_memory_bytes')):>10}  {r['forwards']}")
    lines.append(f"{'vs ' + result['baseline']:<22} {'speed-up':>9} {'bound':>9} {'efficiency':>10} {'memory':>8}")
    for name, m in result["models"].items():
        lines.append(f"{name:<22} {m['speedup']:>9.3f} {m['bound']:>9.3f} {m['efficiency']:>10.3f} "
                     f"{m['memory_ratio']:>7.2f}x")
        if "cfg" in m:
            c = m["cfg"]
            label = f"{name} cfg {','.join(f'{v:g}' for v in c['cfg_scales'])}"
            lines.append(f"{label:<22} {c['speedup']:>9.3f} {c['bound']:>9.3f} {c['efficiency']:>10.3f} "
                         f"{c['memory_ratio']:>7.2f}x")
    return "\n".join(lines)
