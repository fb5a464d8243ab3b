"""Sampling speed of PPFlow models against their one-stage baseline, next to the FLOPs bound.

All models run full sampling loops on the same noise in one process, alternating
(the order rotates every repeat), and the medians are compared. For each model:
speed-up = baseline time / model time, bound = baseline FLOPs / model FLOPs for the
forwards the runs actually made, efficiency = speed-up / bound (1 = all FLOPs saved
turn into time saved).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from dataclasses import dataclass

import torch

from ..models import create_model
from ..sampling import sample_model


@dataclass
class SamplingBenchConfig:
    """What to time; the defaults are the issue's setting (B models, 32x32x4 latents, batch 8)."""

    models: tuple[str, ...] = ("PPF-B-2", "PPF-B-3")  # PPFlow models to time
    baseline: str = "SiT-B/2"  # the one-stage model they are compared with
    size: str | None = None  # replace the size in every name (e.g. 'tiny' for a quick run)
    latent_size: int = 32  # latent H = W (ImageNet 256 through the SD VAE: 32)
    in_channels: int = 4  # latent channels
    num_classes: int = 1000  # class-conditional, as the paper's models
    batch: int = 8  # samples per run
    method: str = "euler"  # sampler (same for every model)
    steps: int = 10  # grid steps (same for every model)
    repeats: int = 5  # timed runs per model (median taken)
    warmup: int = 1  # untimed runs per model first
    cfg: bool = True  # also time CFG: stage CFG (scale 1 in the first stage) vs CFG everywhere
    cfg_scale: float = 3.0  # guidance scale where CFG is on
    estimator: str = "median"  # 'median' or 'min' of the timed runs ('min' resists a shared, busy CPU)
    threads: int | None = None  # torch intra-op threads (None: leave as is)
    device: str = "cpu"
    seed: int = 0

    def name(self, name: str) -> str:
        return re.sub(r"^(SiT|DiT|PPF)-[A-Za-z]+", rf"\1-{self.size}", name) if self.size else name


ESTIMATORS = {"median": statistics.median, "min": min}


@dataclass
class Variant:
    label: str  # e.g. 'PPF-B-2' or 'PPF-B-2 cfg'
    model: torch.nn.Module
    scales: list[float]
    times: list[float] = dataclasses.field(default_factory=list)
    forwards: list[int] | None = None
    flops: float = 0.0
    estimator: str = "median"

    @property
    def seconds(self) -> float:
        return ESTIMATORS[self.estimator](self.times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_sampling(cfg: SamplingBenchConfig, log=None) -> dict:
    """Time the models' sampling runs; returns settings, per-variant times and per-model ratios."""
    if cfg.repeats < 1:
        raise ValueError("repeats must be >= 1")
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; choose one of {tuple(ESTIMATORS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    common = {"in_channels": cfg.in_channels, "input_size": cfg.latent_size, "num_classes": cfg.num_classes}
    names = [cfg.name(cfg.baseline)] + [cfg.name(m) for m in cfg.models]
    models = {n: create_model(n, **common).to(device).eval() for n in names}
    variants = [Variant(n, m, [1.0] * m.schedule.num_stages, estimator=cfg.estimator) for n, m in models.items()]
    if cfg.cfg:
        s = cfg.cfg_scale
        for n, m in models.items():
            k = m.schedule.num_stages
            scales = [s] * k if k == 1 else [1.0] + [s] * (k - 1)  # baseline: CFG everywhere
            variants.append(Variant(f"{n} cfg", m, scales, estimator=cfg.estimator))
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(cfg.batch, cfg.in_channels, cfg.latent_size, cfg.latent_size, generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g).to(device)

    def run(v: Variant) -> float:
        _sync(device)
        start = time.perf_counter()
        out = sample_model(v.model, noise, y, cfg_scales=v.scales, method=cfg.method, steps=cfg.steps,
                           full_output=True)
        _sync(device)
        elapsed = time.perf_counter() - start
        v.forwards, v.flops = out.forwards, out.flops["total"]
        return elapsed

    with torch.no_grad():
        for _ in range(cfg.warmup):
            for v in variants:
                run(v)
        for r in range(cfg.repeats):
            order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: no fixed position
            for v in order:
                v.times.append(run(v))
                if log is not None:
                    log(f"repeat {r + 1}/{cfg.repeats} {v.label}: {v.times[-1]:.3f}s")
    by = {v.label: v for v in variants}
    base = names[0]
    result = {
        "settings": {**dataclasses.asdict(cfg), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "baseline": base,
        "runs": {v.label: {"seconds": v.seconds, "median": statistics.median(v.times), "min": min(v.times),
                           "times": v.times, "forwards": v.forwards, "gflops": v.flops / 1e9, "cfg_scales": v.scales}
                 for v in variants},
        "models": {},
    }
    for n in names[1:]:
        entry = _ratios(by[base], by[n])
        if cfg.cfg:
            entry["cfg"] = _ratios(by[f"{base} cfg"], by[f"{n} cfg"])
        result["models"][n] = entry
    return result


def _ratios(base: Variant, model: Variant) -> dict:
    speedup = base.seconds / model.seconds
    bound = base.flops / model.flops
    return {"speedup": speedup, "bound": bound, "efficiency": speedup / bound, "seconds": model.seconds,
            "baseline_seconds": base.seconds, "cfg_scales": model.scales}


def format_report(result: dict) -> str:
    """Plain-text table of a `bench_sampling` result."""
    s = result["settings"]
    lines = [
        (f"sampling benchmark: {s['method']} {s['steps']} steps, batch {s['batch']}, latent {s['latent_size']}x"
        f"{s['latent_size']}x{s['in_channels']}, {s['repeats']} repeats ({s['estimator']}), {s['threads']} threads, "
        f"{s['device']}, torch {s['torch']}"),
        f"{'run':<22} {'median s':>9} {'min s':>9} {'GFLOPs':>9}  forwards per stage (samples)",
    ]
    for label, r in result["runs"].items():
        lines.append(f"{label:<22} {r['median']:>9.3f} {r['min']:>9.3f} {r['gflops']:>9.1f}  {r['forwards']}")
    lines.append(f"{'vs ' + result['baseline']:<22} {'speed-up':>9} {'bound':>9} {'efficiency':>10}")
    for name, m in result["models"].items():
        lines.append(f"{name:<22} {m['speedup']:>9.3f} {m['bound']:>9.3f} {m['efficiency']:>10.3f}")
        if "cfg" in m:
            c = m["cfg"]
            label = f"{name} cfg {','.join(f'{v:g}' for v in c['cfg_scales'])}"
            lines.append(f"{label:<22} {c['speedup']:>9.3f} {c['bound']:>9.3f} {c['efficiency']:>10.3f}")
    return "\n".join(lines)
