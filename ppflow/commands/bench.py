"""`ppflow bench sample|train|gpu|flux`: speed and memory of PPFlow against the one-stage baseline, next to the FLOPs bound."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bench.sample import THOROUGH as SAMPLE_THOROUGH
from ..bench.sample import SamplingBenchConfig
from ..bench.timing import canonical_dtype
from ..cli import at_least, finite, positive
from ..errors import CommandError
from ..sampling import METHODS

BENCHMARKS = ("sample", "train", "gpu", "flux", "diffusers")  # flux: commands/flux.py; gpu: bench/gpu.py
FLUX_DEFAULTS = {"steps": 10, "repeats": 5, "warmup": 1}


def _dtype(text: str) -> str:
    try:
        return canonical_dtype(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def add_arguments(p) -> None:
    d = SamplingBenchConfig()
    p.description = ("Time PPFlow models against their one-stage SiT baseline (random weights, the same inputs), "
                     "alternating the models and taking medians, each model in a child process of its own. "
                     "'sample': full sampling runs (--cfg: also stage CFG, scale 1 in the first stage, against "
                     "CFG everywhere). 'train': optimizer steps (forward + backward + AdamW) on packed mixed-stage "
                     "batches. Both print per model the measured speed-up, the FLOPs bound, efficiency = "
                     "speed-up / bound, and peak memory (CUDA max allocated, or the child's peak RSS on a CPU); "
                     "the defaults finish in a few minutes on 2 CPU cores and print an estimate first, "
                     "--thorough runs the documented settings. 'gpu': the prepared GPU suite (PPF-XL sampling, "
                     "a training step per-stage SDPA vs a dense mask, FLUX, compile on/off; one JSON + markdown "
                     "under --out; --dry-run: tiny sizes on the CPU). 'diffusers': the PPFlow diffusers hook alone "
                     "and with a cache hook (--caches) on random FLUX and Wan transformers inside FluxPipeline / "
                     "WanPipeline: speed-up and executed-FLOPs bound against the plain pipeline (bench.json and "
                     "bench.md under --out).")
    p.add_argument("benchmark", choices=BENCHMARKS, help="what to benchmark")
    p.add_argument("--models", default=",".join(d.models), help="PPFlow models, comma-separated")
    p.add_argument("--baseline", default=d.baseline, help="one-stage baseline model")
    p.add_argument("--size", default=None, help="use this size in every name instead (e.g. tiny, S) for a quick run")
    p.add_argument("--latent-size", type=at_least(1), default=d.latent_size, help="latent height = width")
    p.add_argument("--in-channels", type=at_least(1), default=d.in_channels, help="latent channels")
    p.add_argument("--batch", type=at_least(1), default=None,
                   help=f"samples per run or step (default: sample {d.batch}, train 16, flux 1)")
    p.add_argument("--method", choices=METHODS, default=d.method, help="sampler")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help=f"sample: grid steps (default {d.steps}, --thorough {SAMPLE_THOROUGH['steps']}; flux 10)")
    p.add_argument("--repeats", type=at_least(1), default=None,
                   help="timed runs or steps per model, median (default: sample 2, train 2, --thorough 5 / 7; flux 5)")
    p.add_argument("--warmup", type=at_least(0), default=None, help="untimed runs per model first (default 1)")
    p.add_argument("--thorough", action="store_true",
                   help="the longer settings (sample: 10 steps x 5 repeats, with --cfg; train: 7 steps after 2 warm-up)")
    p.add_argument("--cfg-scale", type=finite, default=d.cfg_scale, help="guidance scale of the CFG comparison")
    p.add_argument("--cfg", action="store_true",
                   help="sample: also compare stage CFG with CFG everywhere (triples the time; on with --thorough)")
    p.add_argument("--no-cfg", action="store_true", help="sample: no CFG comparison, even with --thorough")
    p.add_argument("--estimator", choices=("median", "min"), default=d.estimator,
                   help="statistic of the timed runs; 'min' resists other jobs on a shared CPU")
    p.add_argument("--dtype", type=_dtype, default=None,
                   help="autocast dtype fp32 | bf16 | fp16 (sample/train default fp32; flux: tiny fp32, dev bf16)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block (flux: both models, one graph per stage)")
    p.add_argument("--attention", choices=("sdpa", "dense-mask"), default="sdpa",
                   help="train: per-stage-group SDPA (ppflow) or one packed row with a block-diagonal mask "
                        "(the official code)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every model in this process (starts faster; peak memory is then not per model)")
    p.add_argument("--budget", type=positive, default=None,
                   help="seconds: stop taking repeats after this long (sample/train); gpu: seconds per part")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu; gpu: cuda)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights, noise and labels")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--verbose", action="store_true", help="print every timed run to stderr")
    g = p.add_argument_group("gpu (ppflow bench gpu)")
    g.add_argument("--out", default=None, help="gpu: folder for bench-gpu.json and bench-gpu.md (default "
                                               "runs/bench-gpu); diffusers: for bench.json and bench.md (default "
                                               "runs/bench-diffusers)")
    g.add_argument("--families", default="flux,wan", help="diffusers: model families, comma-separated")
    g.add_argument("--caches", default="taylorseer", help="diffusers: cache hooks stacked with PPFlow, comma-"
                   "separated, each NAME or NAME:KEY=VALUE,... (taylorseer, first_block; e.g. "
                   "'taylorseer:interval=3,warmup=2,scope=blocks'; 'none': no cache rows)")
    g.add_argument("--dry-run", action="store_true", help="gpu: tiny sizes on the CPU, every part in about a minute")
    g.add_argument("--parts", default="a,b,c,d,e", help="gpu: parts to run, comma-separated (a sampling, b attention, "
                                                       "c FLUX, d compile, e diffusers hook on Wan2.1-14B / "
                                                       "Qwen-Image)")
    from .flux import add_bench_arguments

    add_bench_arguments(p)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise ValueError("--models is empty: give PPFlow model names, e.g. PPF-B-2,PPF-B-3")
    return names


def _common(args) -> dict:
    return {"models": _names(args.models), "baseline": args.baseline, "size": args.size,
            "latent_size": args.latent_size, "in_channels": args.in_channels, "estimator": args.estimator,
            "dtype": args.dtype or "float32", "compile": "inductor" if args.compile else None,
            "isolate": not args.no_isolate, "threads": args.threads, "device": args.device or "cpu",
            "budget_s": args.budget, "seed": args.seed}


def _pick(args, name: str, default, thorough: dict):
    value = getattr(args, name)
    if value is not None:
        return value
    return thorough.get(name, default) if args.thorough else default


def sample_config(args) -> SamplingBenchConfig:
    d = SamplingBenchConfig()
    return SamplingBenchConfig(
        **_common(args), batch=args.batch or d.batch, method=args.method,
        steps=_pick(args, "steps", d.steps, SAMPLE_THOROUGH), repeats=_pick(args, "repeats", d.repeats, SAMPLE_THOROUGH),
        warmup=_pick(args, "warmup", d.warmup, SAMPLE_THOROUGH), cfg=(args.cfg or args.thorough) and not args.no_cfg,
        cfg_scale=args.cfg_scale)


def train_config(args):
    from ..bench.train import THOROUGH, TrainBenchConfig

    d = TrainBenchConfig()
    return TrainBenchConfig(**_common(args), batch=args.batch or d.batch, attention=args.attention,
                            repeats=_pick(args, "repeats", d.repeats, THOROUGH),
                            warmup=_pick(args, "warmup", d.warmup, THOROUGH))


def main(args) -> int:
    if args.benchmark == "flux":
        from .flux import bench_main

        for k, v in FLUX_DEFAULTS.items():
            setattr(args, k, getattr(args, k) if getattr(args, k) is not None else v)
        args.device = args.device or "cpu"
        return bench_main(args)
    if args.benchmark == "gpu":
        from .bench_gpu import gpu_main

        args.out = args.out or "runs/bench-gpu"
        return gpu_main(args)
    if args.benchmark == "diffusers":
        return _diffusers(args)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    try:
        from ..train.parallel import resolve_device

        resolve_device(args.device or "cpu")  # --device cuda without CUDA: one line naming the option
        if args.benchmark == "train":
            from ..bench.train import bench_training, format_train_report

            result = bench_training(train_config(args), log=log)
            text = format_train_report(result)
        else:
            from ..bench.sample import bench_sampling, format_report

            result = bench_sampling(sample_config(args), log=log, estimate=True)
            text = format_report(result)
    except RuntimeError as e:  # a child process's error (WorkerError), out of memory; a ValueError reaches ppflow.cli
        raise CommandError(str(e) or type(e).__name__) from e
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def _diffusers(args) -> int:
    from ..bench.diffusers import DiffusersBenchConfig, bench_diffusers, format_table, split_caches
    from ..io import write_text_atomic

    try:
        caches = split_caches(",".join(p for p in args.caches.split(",") if p.strip() != "none"))
    except ValueError as e:
        raise CommandError(f"--caches: {e}") from None
    cfg = DiffusersBenchConfig(families=_names(args.families), caches=caches, steps=args.steps or 20,
                               repeats=args.repeats or 3, warmup=1 if args.warmup is None else args.warmup,
                               seed=args.seed, threads=args.threads)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    result = bench_diffusers(cfg, log=log)
    table = format_table(result)
    out = Path(args.out or "runs/bench-diffusers")
    out.mkdir(parents=True, exist_ok=True)
    command = "ppflow bench diffusers " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "diffusers"] else [])
    write_text_atomic(out / "bench.json", json.dumps({**result, "command": command.strip()}, indent=2), "bench JSON")
    write_text_atomic(out / "bench.md", f"`{command.strip()}` ({result['threads']} torch threads, torch "
                      f"{result['torch']})\n\n{table}\n", "bench table")
    print(json.dumps(result, indent=2) if args.json else table)
    return 0
