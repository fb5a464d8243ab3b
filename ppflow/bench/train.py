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

import time
from dataclasses import dataclass

import torch

from ..flow.time_sampling import allocate, stage_shares
from ..models import create_config, create_model
from ..models.flops import train_flops
from .attention import ATTENTION_MODES, use_attention
from .memory import peak_bytes, reset_peak, rss_bytes
from .timing import DTYPES, BenchConfig, alternate, canonical_dtype, compile_blocks, ratio_table, ratios, say_estimate
from .workers import started


@dataclass
class TrainBenchConfig(BenchConfig):
    """What to time; the defaults finish in a few minutes on 2 CPU cores (`--thorough`: THOROUGH)."""

    batch: int = 16  # samples per optimizer step (the same for every model)
    time_sampling: str = "stratified"  # PPFlow's stage-stratified batch (every stage in every step)
    attention: str = "sdpa"  # 'sdpa' (per stage group) or 'dense-mask' (official: one row, block-diagonal mask)


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


def planned_tflops(cfg: TrainBenchConfig, names: list[str]) -> float:
    """Training FLOPs (tera) of every step the run will take, for the estimate."""
    total = 0.0
    for n in names:
        c = create_config(n, **cfg.common)
        counts = allocate(cfg.batch, stage_shares(c.get_schedule())) if cfg.time_sampling != "iid" else [cfg.batch]
        counts = counts + [0] * (c.get_schedule().num_stages - len(counts))
        total += train_flops(c, counts)["total"] * (cfg.warmup + cfg.repeats)
    return total / 1e12


def run_train_variants(cfg: TrainBenchConfig, variants: list[TrainVariant], log=None, progress: bool | None = None,
                       estimate: bool = True) -> dict:
    """Time `variants` in turns under `cfg`'s settings; runs keyed by label (ratios: see `bench_training`)."""
    dtype = cfg.prepare()
    for v in variants:
        if v.attention not in ATTENTION_MODES:
            raise ValueError(f"--attention {v.attention!r}: choose one of {', '.join(ATTENTION_MODES)}")
    device = torch.device(cfg.device)
    configs = {v.label: create_config(v.name, **cfg.common) for v in variants}  # bad names fail here, in one line
    began = time.monotonic()
    if estimate:
        say_estimate(log, f"bench train: {len(variants)} models x ({cfg.warmup} warm-up + {cfg.repeats} timed) steps "
                          f"of batch {cfg.batch}", planned_tflops(cfg, [v.name for v in variants]) * 1e3, device, dtype)
    kwargs = {"common": cfg.common, "batch": cfg.batch, "seed": cfg.seed, "time_sampling": cfg.time_sampling,
              "dtype": dtype, "threads": cfg.threads or torch.get_num_threads(), "device": cfg.device}
    subjects = {v.label: ("ppflow.bench.train:TrainSubject",
                          {"name": v.name, "attention": v.attention, "compile": v.compile, **kwargs})
                for v in variants}
    flops = {v.label: 0.0 for v in variants}
    counts: dict[str, list[list[int]]] = {v.label: [] for v in variants}
    with started(subjects, cfg.isolate) as workers:

        def run(label: str, r: int) -> float:
            seconds, c = workers[label].call("step", r)  # step r: the same data for every model
            if r >= cfg.warmup:
                counts[label].append(c)
                flops[label] += train_flops(configs[label], c)["total"]
            return seconds

        timings = alternate(list(subjects), run, cfg.repeats, cfg.warmup, name="bench train", budget_s=cfg.budget_s,
                            began=began, log=log, progress=progress, eta=estimate)
        memory = {label: w.call("memory") for label, w in workers.items()}
    runs = {v.label: {"model": v.name, "attention": v.attention, "compile": v.compile,
                      **timings.summary(v.label, cfg.estimator), "stage_counts": counts[v.label],
                      "gflops": flops[v.label] / timings.rounds / 1e9, **memory[v.label]} for v in variants}
    return {"settings": {**cfg.settings(dtype, began), "timed_rounds": timings.rounds}, "runs": runs}


def bench_training(cfg: TrainBenchConfig, log=None, progress: bool | None = None) -> dict:
    """Time optimizer steps of cfg.models against cfg.baseline; adds `baseline` and `ratios` keyed by model name."""
    names = cfg.names()
    variants = [TrainVariant(n, n, cfg.attention, cfg.compile) for n in names]
    result = run_train_variants(cfg, variants, log, progress)
    base = result["runs"][names[0]]
    result["baseline"] = names[0]
    result["ratios"] = {n: ratios(base, result["runs"][n]) for n in names[1:]}
    return result


def format_train_report(result: dict) -> str:
    """Plain-text table of a `bench_training` result."""
    s = result["settings"]
    return "\n".join([
        (f"training benchmark: batch {s['batch']} ({s['time_sampling']}), latent {s['latent_size']}x{s['latent_size']}"
         f"x{s['in_channels']}, {s['dtype']}, attention {s['attention']}{', compiled' if s['compile'] else ''}, "
         f"{s['timed_rounds']} timed steps ({s['estimator']}) after {s['warmup']} warm-up, {s['threads']} threads, "
         f"{s['device']}, torch {s['torch']}; memory: {s['memory']}"),
        *ratio_table(result, "samples per stage", lambda r: r["stage_counts"][0], list(result["ratios"].items()))])
