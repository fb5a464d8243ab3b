"""`ppflow bench sample`: sampling speed of PPFlow against the one-stage baseline, next to the FLOPs bound."""

from __future__ import annotations

import json
import sys

from ..cli import at_least, finite
from ..metrics.bench import SamplingBenchConfig, bench_sampling, format_report
from ..sampling import METHODS

BENCHMARKS = ("sample", "flux")  # flux: ppflow/commands/flux.py


def add_arguments(p) -> None:
    d = SamplingBenchConfig()
    p.description = ("Time full sampling runs of PPFlow models against their one-stage SiT baseline (random "
                     "weights, same noise, method and steps), alternating the models and taking medians. "
                     "Prints per model the measured speed-up, the FLOPs bound for the forwards actually run, "
                     "and efficiency = speed-up / bound; then the same with stage CFG (scale 1 in the first "
                     "stage) against CFG everywhere.")
    p.add_argument("benchmark", choices=BENCHMARKS, help="what to benchmark")
    p.add_argument("--models", default=",".join(d.models), help="PPFlow models, comma-separated")
    p.add_argument("--baseline", default=d.baseline, help="one-stage baseline model")
    p.add_argument("--size", default=None, help="use this size in every name instead (e.g. tiny, S) for a quick run")
    p.add_argument("--latent-size", type=at_least(1), default=d.latent_size, help="latent height = width")
    p.add_argument("--in-channels", type=at_least(1), default=d.in_channels, help="latent channels")
    p.add_argument("--batch", type=at_least(1), default=None, help=f"samples per run (default {d.batch}; flux 1)")
    p.add_argument("--method", choices=METHODS, default=d.method, help="sampler")
    p.add_argument("--steps", type=at_least(1), default=d.steps, help="grid steps")
    p.add_argument("--repeats", type=at_least(1), default=d.repeats, help="timed runs per model (median)")
    p.add_argument("--warmup", type=at_least(0), default=d.warmup, help="untimed runs per model first")
    p.add_argument("--cfg-scale", type=finite, default=d.cfg_scale, help="guidance scale of the CFG comparison")
    p.add_argument("--no-cfg", action="store_true", help="skip the CFG comparison")
    p.add_argument("--estimator", choices=("median", "min"), default=d.estimator,
                   help="statistic of the timed runs; 'min' resists other jobs on a shared CPU")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights, noise and labels")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--verbose", action="store_true", help="print every timed run to stderr")
    from .flux import add_bench_arguments

    add_bench_arguments(p)


def main(args) -> int:
    if args.benchmark == "flux":
        from .flux import bench_main

        return bench_main(args)
    cfg = SamplingBenchConfig(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()), baseline=args.baseline,
        size=args.size, latent_size=args.latent_size, in_channels=args.in_channels,
        batch=args.batch if args.batch is not None else SamplingBenchConfig.batch,
        method=args.method, steps=args.steps, repeats=args.repeats, warmup=args.warmup, cfg=not args.no_cfg,
        cfg_scale=args.cfg_scale, estimator=args.estimator, threads=args.threads, device=args.device, seed=args.seed,
    )
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    try:
        from ..train.parallel import resolve_device

        resolve_device(args.device)  # --device cuda without CUDA: one line naming the option
        if not cfg.models:
            raise ValueError("--models is empty: give PPFlow model names, e.g. PPF-B-2,PPF-B-3")
        result = bench_sampling(cfg, log=log)
    except ValueError as e:
        print(f"ppflow bench: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
