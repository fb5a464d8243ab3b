"""`ppflow bench gpu`: the prepared GPU suite (ppflow/bench/gpu.py), one JSON + markdown under --out."""

from __future__ import annotations

import sys


def gpu_main(args) -> int:
    from ..bench.gpu import BUDGETS, GpuBenchConfig, run_gpu_suite
    from ..train.parallel import resolve_device

    device = args.device or ("cpu" if args.dry_run else "cuda")
    try:
        resolve_device(device)
        if not args.dry_run and not device.startswith("cuda"):
            raise ValueError(f"bench gpu runs on CUDA (--device {device}); use --dry-run for a CPU check at tiny sizes")
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        budgets = {p: args.budget for p in BUDGETS} if args.budget else dict(BUDGETS)
        cfg = GpuBenchConfig(out=args.out, dry_run=args.dry_run, device=device, dtype=args.dtype or "bfloat16",
                             parts=parts, budgets=budgets, seed=args.seed,
                             isolate=not (args.no_isolate or args.dry_run))  # dry run: one process, < 1 min
        log = (lambda msg: print(msg, file=sys.stderr))
        result = run_gpu_suite(cfg, log=log)
    except ValueError as e:
        print(f"ppflow bench: {e}", file=sys.stderr)
        return 2
    for name, part in result["parts"].items():
        status = part.get("skipped") or part.get("error") or "done"
        print(f"{name}: {status} ({part['seconds_total']:.0f} s)")
    print(f"wrote {cfg.out}/bench-gpu.json and {cfg.out}/bench-gpu.md")
    return 0
