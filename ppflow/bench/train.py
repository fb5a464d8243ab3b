"""Training speed and memory of PPFlow models against their one-stage baseline, next to the FLOPs bound.

Every model trains on real packed mixed-stage batches (stage-stratified times, one packed forward,
backward, AdamW: `ppflow.train.bench.TrainStep`), each in a child process of its own; the parent has
them take optimizer steps in turns (the order rotates every round) and compares medians. Step i sees
the same latents, noise and labels in every model. Per model: speed-up = baseline / model seconds
per step, bound = baseline / model training FLOPs of the steps taken (3x the forward's matrix
products, `models.flops.train_flops`; the AdamW update is not counted), efficiency = speed-up /
bound, and the child's peak memory (peak RSS on a CPU, CUDA max allocated on a GPU).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from ..flow.time_sampling import allocate, stage_shares
from ..models import create_config, create_model
from ..models.flops import train_flops
from .memory import format_bytes, memory_kind, peak_bytes, reset_peak, rss_bytes
from .attention import ATTENTION_MODES, use_attention
from .timing import DTYPES, ESTIMATORS, Progress, canonical_dtype, compile_blocks, format_duration, matmul_gflops, say
from .workers import start

TRAIN_EFFICIENCY_GUESS = 0.85  # training step FLOP/s relative to one big matmul, for the time estimate only


@dataclass
class TrainBenchConfig:
    """What to time; the defaults finish in a few minutes on 2 CPU cores (`--thorough`: THOROUGH)."""

    models: tuple[str, ...] = ("PPF-B-2", "PPF-B-3")  # PPFlow models to time
    baseline: str = "SiT-B/2"  # the one-stage model they are compared with
    size: str | None = None  # replace the size in every name (e.g. 'tiny' for a quick run)
    latent_size: int = 32  # latent H = W (ImageNet 256 through the SD VAE: 32)
    in_channels: int = 4  # latent channels
    num_classes: int = 1000  # class-conditional, as the paper's models
    batch: int = 16  # samples per optimizer step (the same for every model)
    repeats: int = 2  # timed steps per model (median taken); 2 + 1 warm-up: ~4 min for the B models on 2 cores
    warmup: int = 1  # untimed steps per model first (AdamW state, allocator, compile)
    estimator: str = "median"  # 'median' or 'min' of the timed steps
    time_sampling: str = "stratified"  # PPFlow's stage-stratified batch (every stage in every step)
    attention: str = "sdpa"  # 'sdpa' (per stage group) or 'dense-mask' (official: one row, block-diagonal mask)
    dtype: str = "float32"  # autocast dtype: float32 (none) or bfloat16 / float16
    compile: str | None = None  # torch.compile each block with this backend ('inductor'); None: eager
    isolate: bool = True  # each model in its own child process (needed for a per-model peak RSS on a CPU)
    threads: int | None = None  # torch intra-op threads (None: as this process has)
    device: str = "cpu"
    budget_s: float | None = None  # stop taking rounds after this many seconds (at least one timed round)
    seed: int = 0

    def name(self, name: str) -> str:
        from .sample import SamplingBenchConfig

        return SamplingBenchConfig(size=self.size).name(name)


THOROUGH = {"repeats": 7, "warmup": 2}  # the documented setting (`--thorough`)


@dataclass
class TrainVariant:
    """One timed subject: a model by name, how its attention and blocks run."""

    label: str
    name: str
    attention: str = "sdpa"
    compile: str | None = None


class TrainSubject:
    """A model and its optimizer in a (child) process: `step(i)` times optimizer step i."""

    def __init__(self, name: str, common: dict, batch: int, seed: int, time_sampling: str, dtype: str,
                 attention: str, compile: str | None, threads: int | None, device: str) -> None:
        from ..train.bench import TrainStep

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.start_bytes = rss_bytes() if self.device.type == "cpu" else 0
        reset_peak(self.device)
        torch.manual_seed(seed)
        model = use_attention(create_model(name, **common).to(self.device), attention)
        compile_blocks(model, compile)
        self.parameters = model.num_parameters()
        self.trainer = TrainStep(model, batch, seed, time_sampling, autocast_dtype=DTYPES[canonical_dtype(dtype)])

    def step(self, i: int) -> tuple[float, list[int]]:
        seconds = self.trainer.run(i)
        return seconds, self.trainer.last_counts

    def memory(self) -> dict:
        return {"peak_memory_bytes": peak_bytes(self.device), "start_memory_bytes": self.start_bytes,
                "parameters": self.parameters}


def planned_tflops(cfg: TrainBenchConfig, names: list[str], common: dict) -> float:
    """Training FLOPs (tera) of every step the run will take, for the estimate."""
    total = 0.0
    for n in names:
        c = create_config(n, **common)
        counts = allocate(cfg.batch, stage_shares(c.get_schedule())) if cfg.time_sampling != "iid" else [cfg.batch]
        counts = counts + [0] * (c.get_schedule().num_stages - len(counts))
        total += train_flops(c, counts)["total"] * (cfg.warmup + cfg.repeats)
    return total / 1e12


def run_train_variants(cfg: TrainBenchConfig, variants: list[TrainVariant], log=None, progress: bool | None = None,
                       estimate: bool = True) -> dict:
    """Time `variants` in turns under `cfg`'s settings; runs keyed by label (ratios: see `bench_training`)."""
    if cfg.repeats < 1 or cfg.warmup < 0 or cfg.batch < 1:
        raise ValueError("repeats and batch must be >= 1, warmup >= 0")
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; choose one of {tuple(ESTIMATORS)}")
    for v in variants:
        if v.attention not in ATTENTION_MODES:
            raise ValueError(f"--attention {v.attention!r}: choose one of {', '.join(ATTENTION_MODES)}")
    dtype = canonical_dtype(cfg.dtype)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    common = {"in_channels": cfg.in_channels, "input_size": cfg.latent_size, "num_classes": cfg.num_classes}
    configs = {v.label: create_config(v.name, **common) for v in variants}  # bad names fail here, in one line
    began = time.monotonic()
    if estimate:
        tflops = planned_tflops(cfg, [v.name for v in variants], common)
        rate = matmul_gflops(device, dtype) * TRAIN_EFFICIENCY_GUESS
        say(log, f"bench train: {len(variants)} models x ({cfg.warmup} warm-up + {cfg.repeats} timed) steps of batch "
                 f"{cfg.batch}, {tflops:.1f} TFLOPs; estimated {format_duration(tflops * 1e3 / rate)} "
                 f"(from a {rate / TRAIN_EFFICIENCY_GUESS:.0f} GFLOP/s matmul probe)")
    workers = []
    try:
        for v in variants:
            kwargs = {"name": v.name, "common": common, "batch": cfg.batch, "seed": cfg.seed,
                      "time_sampling": cfg.time_sampling, "dtype": dtype, "attention": v.attention,
                      "compile": v.compile, "threads": cfg.threads or torch.get_num_threads(), "device": cfg.device}
            workers.append(start("ppflow.bench.train:TrainSubject", kwargs, v.label, cfg.isolate))
        for w in workers:
            w.ready()
        times = {v.label: [] for v in variants}
        flops = {v.label: 0.0 for v in variants}
        counts: dict[str, list[list[int]]] = {v.label: [] for v in variants}
        bar = Progress(len(variants) * (cfg.warmup + cfg.repeats), "bench train", progress)
        rounds, last_round = 0, {}
        for r in range(cfg.warmup + cfg.repeats):
            timed = r >= cfg.warmup
            k = r % len(variants)
            for v, w in list(zip(variants, workers))[k:] + list(zip(variants, workers))[:k]:  # rotate the order
                seconds, c = w.call("step", r)
                last_round[v.label] = seconds
                bar.update(v.label)
                if timed:
                    times[v.label].append(seconds)
                    counts[v.label].append(c)
                    flops[v.label] += train_flops(configs[v.label], c)["total"]
                if log is not None:
                    log(f"{'step' if timed else 'warm-up'} {r + 1}: {v.label} {seconds:.3f}s")
            rounds += timed
            if r + 1 == cfg.warmup and estimate and cfg.warmup:
                per_round = sum(last_round.values())
                say(log, f"bench train: warm-up done; about {format_duration(per_round * cfg.repeats)} left")
            if timed and cfg.budget_s is not None and time.monotonic() - began > cfg.budget_s:
                say(log, f"bench train: time budget {cfg.budget_s:g} s reached after {rounds} timed round(s)")
                break
        bar.close()
        memory = {v.label: w.call("memory") for v, w in zip(variants, workers)}
    finally:
        for w in workers:
            w.close()
    est = ESTIMATORS[cfg.estimator]
    runs = {}
    for v in variants:
        ts = times[v.label]
        runs[v.label] = {"model": v.name, "attention": v.attention, "compile": v.compile, "seconds": est(ts),
                         "median": statistics.median(ts), "min": min(ts), "times": ts, "stage_counts": counts[v.label],
                         "gflops": flops[v.label] / len(ts) / 1e9, **memory[v.label]}
    return {"settings": {**dataclasses.asdict(cfg), "dtype": dtype, "threads": cfg.threads or torch.get_num_threads(),
                         "torch": torch.__version__, "memory": memory_kind(device) if cfg.isolate or
                         device.type == "cuda" else "peak RSS of this process (not isolated)",
                         "timed_rounds": rounds, "seconds_total": time.monotonic() - began},
            "runs": runs}


def ratios(base: dict, run: dict) -> dict:
    speedup, bound = base["seconds"] / run["seconds"], base["gflops"] / run["gflops"]
    return {"speedup": speedup, "bound": bound, "efficiency": speedup / bound, "seconds": run["seconds"],
            "baseline_seconds": base["seconds"], "peak_memory_bytes": run["peak_memory_bytes"],
            "baseline_peak_memory_bytes": base["peak_memory_bytes"],
            "memory_ratio": run["peak_memory_bytes"] / max(1, base["peak_memory_bytes"])}


def bench_training(cfg: TrainBenchConfig, log=None, progress: bool | None = None) -> dict:
    """Time optimizer steps of cfg.models against cfg.baseline; adds `baseline` and `ratios` keyed by model name."""
    names = [cfg.name(cfg.baseline)] + [cfg.name(m) for m in cfg.models]
    if len(set(names)) != len(names):
        raise ValueError(f"--models and --baseline name the same model twice: {', '.join(names)}")
    variants = [TrainVariant(n, n, cfg.attention, cfg.compile) for n in names]
    result = run_train_variants(cfg, variants, log, progress)
    base = result["runs"][names[0]]
    result["baseline"] = names[0]
    result["ratios"] = {n: ratios(base, result["runs"][n]) for n in names[1:]}
    return result


def format_train_report(result: dict) -> str:
    """Plain-text table of a `bench_training` result."""
    s = result["settings"]
    lines = [
        (f"training benchmark: batch {s['batch']} ({s['time_sampling']}), latent {s['latent_size']}x{s['latent_size']}"
         f"x{s['in_channels']}, {s['dtype']}, attention {s['attention']}{', compiled' if s['compile'] else ''}, "
         f"{s['timed_rounds']} timed steps ({s['estimator']}) after {s['warmup']} warm-up, {s['threads']} threads, "
         f"{s['device']}, torch {s['torch']}; memory: {s['memory']}"),
        f"{'run':<22} {'median s':>9} {'min s':>9} {'GFLOPs':>9} {'peak mem':>10}  samples per stage",
    ]
    for label, r in result["runs"].items():
        lines.append(f"{label:<22} {r['median']:>9.3f} {r['min']:>9.3f} {r['gflops']:>9.1f} "
                     f"{format_bytes(r['peak_memory_bytes']):>10}  {r['stage_counts'][0]}")
    lines.append(f"{'vs ' + result['baseline']:<22} {'speed-up':>9} {'bound':>9} {'efficiency':>10} {'memory':>8}")
    for name, m in result["ratios"].items():
        lines.append(f"{name:<22} {m['speedup']:>9.3f} {m['bound']:>9.3f} {m['efficiency']:>10.3f} "
                     f"{m['memory_ratio']:>7.2f}x")
    return "\n".join(lines)
