"""Sampling speed and memory of PPFlow models against their one-stage baseline, next to the FLOPs bound.

All models run full sampling loops on the same noise, each in a child process of its own
(`bench.workers`), in turns (the order rotates every repeat), and the medians are compared.
For each model: speed-up = baseline time / model time, bound = baseline FLOPs / model FLOPs for the
forwards the runs actually made, efficiency = speed-up / bound (1 = all FLOPs saved turn into time
saved), and the peak memory of its runs (RSS on a CPU, CUDA max allocated on a GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..models import create_config, create_model
from ..models.flops import cfg_multipliers, evaluation_flops
from ..sampling import sample_model
from .memory import peak_bytes, reset_peak
from .timing import BenchConfig, alternate, autocast, compile_blocks, ratio_table, ratios, say_estimate, stopwatch
from .workers import started


@dataclass
class SamplingBenchConfig(BenchConfig):
    """What to time; the defaults finish in a few minutes on 2 CPU cores (`--thorough`: THOROUGH)."""

    method: str = "euler"  # sampler (same for every model)
    steps: int = 4  # grid steps (same for every model); 4 splits as the stages' spans for ppf2 and ppf3
    cfg: bool = True  # also time CFG: stage CFG (scale 1 in the first stage) vs CFG everywhere
    cfg_scale: float = 3.0  # guidance scale where CFG is on


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

    @torch.no_grad()
    def run(self, scales: list[float]) -> dict:
        reset_peak(self.device)
        with autocast(self.device, self.dtype):
            seconds, out = stopwatch(self.device, sample_model, self.model, self.noise, self.y, cfg_scales=scales,
                                     method=self.method, steps=self.steps, full_output=True)
        return {"seconds": seconds, "forwards": out.forwards, "flops": out.flops["total"],
                "peak_memory_bytes": peak_bytes(self.device)}


@dataclass
class Variant:
    label: str  # e.g. 'PPF-B-2' or 'PPF-B-2 cfg'
    name: str  # model name (its process)
    scales: list[float]
    forwards: list[int] | None = None
    flops: float = 0.0
    peak: int = 0


def _estimate(cfg: SamplingBenchConfig, variants: list[Variant]) -> float:
    """Planned FLOPs (in GFLOPs) of every run, from each variant's expected forwards."""
    total = 0.0
    for v in variants:
        c = create_config(v.name, **cfg.common)
        spans = [s.span for s in c.get_schedule().stages]
        mult = cfg_multipliers(len(spans), v.scales)
        counts = [cfg.batch * cfg.steps * sp * m for sp, m in zip(spans, mult)]
        total += evaluation_flops(c, counts)[1] * (cfg.warmup + cfg.repeats)
    return total / 1e9


def bench_sampling(cfg: SamplingBenchConfig, log=None, progress: bool | None = None, estimate: bool = False) -> dict:
    """Time the models' sampling runs; returns settings, per-variant times and per-model ratios."""
    dtype = cfg.prepare()
    device = torch.device(cfg.device)
    names = cfg.names()
    stages = {n: create_config(n, **cfg.common).get_schedule().num_stages for n in names}  # bad names: one line
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
        say_estimate(log, f"bench sample: {len(variants)} runs x ({cfg.warmup} warm-up + {cfg.repeats} timed) of "
                          f"{cfg.steps} steps, batch {cfg.batch}", _estimate(cfg, variants), device, dtype)
    kwargs = {"common": cfg.common, "batch": cfg.batch, "method": cfg.method, "steps": cfg.steps, "dtype": dtype,
              "compile": cfg.compile, "threads": cfg.threads or torch.get_num_threads(), "device": cfg.device,
              "seed": cfg.seed}
    by = {v.label: v for v in variants}
    with started({n: ("ppflow.bench.sample:SamplingSubject", {"name": n, **kwargs}) for n in names},
                 cfg.isolate) as workers:

        def run(label: str, r: int) -> float:
            v = by[label]
            out = workers[v.name].call("run", v.scales)
            v.forwards, v.flops, v.peak = out["forwards"], out["flops"], max(v.peak, out["peak_memory_bytes"])
            return out["seconds"]

        timings = alternate(list(by), run, cfg.repeats, cfg.warmup, name="bench sample", budget_s=cfg.budget_s,
                            began=began, log=log, progress=progress)
    runs = {v.label: {**timings.summary(v.label, cfg.estimator), "forwards": v.forwards, "gflops": v.flops / 1e9,
                      "cfg_scales": v.scales, "peak_memory_bytes": v.peak} for v in variants}
    base = names[0]
    result = {"settings": cfg.settings(dtype, began), "baseline": base, "runs": runs, "models": {}}
    for n in names[1:]:
        entry = {**ratios(runs[base], runs[n]), "cfg_scales": by[n].scales}
        if cfg.cfg:
            entry["cfg"] = {**ratios(runs[f"{base} cfg"], runs[f"{n} cfg"]), "cfg_scales": by[f"{n} cfg"].scales}
        result["models"][n] = entry
    result["ratios"] = result["models"]  # the key `bench train` uses
    return result


def format_report(result: dict) -> str:
    """Plain-text table of a `bench_sampling` result."""
    s = result["settings"]
    rows = []
    for name, m in result["models"].items():
        rows.append((name, m))
        if "cfg" in m:
            rows.append((f"{name} cfg {','.join(f'{v:g}' for v in m['cfg']['cfg_scales'])}", m["cfg"]))
    return "\n".join([
        (f"sampling benchmark: {s['method']} {s['steps']} steps, batch {s['batch']}, latent {s['latent_size']}x"
         f"{s['latent_size']}x{s['in_channels']}, {s['dtype']}{', compiled' if s.get('compile') else ''}, "
         f"{s['repeats']} repeats ({s['estimator']}), {s['threads']} threads, {s['device']}, torch {s['torch']}; "
         f"memory: {s.get('memory', '-')}"),
        *ratio_table(result, "forwards per stage (samples)", lambda r: r["forwards"], rows)])
