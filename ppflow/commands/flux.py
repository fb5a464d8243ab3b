"""FLUX parts of `ppflow flops --flux` and `ppflow bench flux` (registered by ppflow/commands/flops.py and bench.py)."""

from __future__ import annotations

import json
import sys

from ..cli import at_least, positive

PAPER_NOTE = (
    "paper: measured two-stage speed-ups on FLUX.1-dev. At 512 px the text-free bound equals the paper's 1.61x;\n"
    "counting the 512 T5 tokens every block also processes, half the steps coarse bounds the speed-up lower\n"
    "(text tokens are not reduced by coarse patches). At 1024 / 2048 px the paper's 1.76x / 1.86x exceed both\n"
    "bounds of a half-coarse schedule, so they need a larger coarse share ('share needed': fraction of steps in\n"
    "the coarse stage for the bound to reach the paper's figure); the paper's per-resolution split is not assumed here.")


def add_flops_arguments(p) -> None:
    """`--flux NAME` and its options on the `ppflow flops` parser."""
    p.add_argument("--flux", choices=("dev", "schnell", "tiny"), default=None,
                   help="FLUX transformer FLOPs per stage instead of a SiT/PPF model (default schedule ppf2)")
    p.add_argument("--resolution", default="512,1024,2048", help="--flux: image sides in pixels, comma-separated")
    p.add_argument("--text-tokens", type=at_least(0), default=None,
                   help="--flux: T5 tokens per prompt (default: dev 512, schnell 256)")


def _resolutions(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--resolution {text!r} is not a comma-separated list of pixel sizes, e.g. 512,1024") from None
    if not values or min(values) < 16:
        raise ValueError(f"--resolution {text!r}: give sizes of at least 16 pixels")
    return values


def flops_main(args) -> int:
    from ..flux.flops import ARCHS, PAPER_SPEEDUPS, TEXT_TOKENS, resolution_table
    from ..models.schedule import PyramidSchedule

    try:
        sched = PyramidSchedule.from_string(args.schedule or "ppf2", base_patch=(2, 2))
        text = TEXT_TOKENS[args.flux] if args.text_tokens is None else args.text_tokens
        rows = resolution_table(ARCHS[args.flux], sched, _resolutions(args.resolution), text)
    except ValueError as e:
        print(f"ppflow flops: error: {e}", file=sys.stderr)
        return 2
    arch = ARCHS[args.flux]
    if args.json:
        print(json.dumps({"model": f"FLUX.1-{args.flux}", "schedule": sched.to_string(), "rows": rows,
                          "paper_speedups": PAPER_SPEEDUPS}, indent=2))
        return 0
    print(f"FLUX.1-{args.flux} ({arch.num_layers} double + {arch.num_single_layers} single blocks, dim {arch.dim}), "
          f"schedule {sched.to_string()} (t = 1 - unshifted sigma), {text} text tokens; GFLOPs per forward")
    print(f"{'px':>5} {'stage':>5} {'patch':>5} {'img tok':>7} {'GFLOPs':>9} {'text-free':>9} {'share':>5}")
    for r in rows:
        for s in r["stages"]:
            print(f"{r['resolution']:>5} {s['stage']:>5} {'x'.join(map(str, s['patch'])):>5} {s['image_tokens']:>7} "
                  f"{s['total_gflops']:>9.1f} {s['text_free_gflops']:>9.1f} {s['share']:>5.2f}")
    print(f"\n{'px':>5} | {'coarse/fine':>11} {'test FLOPs':>10} {'bound':>6} | text-free: {'coarse/fine':>11} "
          f"{'test FLOPs':>10} {'bound':>6} | {'paper':>5} {'share needed':>12} {'(text-free)':>11}")
    for r in rows:
        paper = f"{r['paper_speedup']:.2f}" if r["paper_speedup"] else "-"
        need = f"{r['paper_share_needed']:.2f}" if r["paper_share_needed"] is not None else "-"
        need0 = f"{r['paper_share_needed_text_free']:.2f}" if r["paper_share_needed_text_free"] is not None else "-"
        print(f"{r['resolution']:>5} | {r['coarse_fine_ratio']:>11.3f} {100 * r['fraction']:>9.1f}% "
              f"{r['bound']:>5.2f}x | {'':>10} {r['coarse_fine_ratio_text_free']:>11.3f} "
              f"{100 * r['fraction_text_free']:>9.1f}% {r['bound_text_free']:>5.2f}x | {paper:>5} {need:>12} {need0:>11}")
    print("\n" + PAPER_NOTE)
    return 0


def bench_main(args) -> int:
    """`ppflow bench flux`: options shared with `bench sample` (steps, repeats, warmup, estimator, ...)."""
    from ..flux.bench import SIZES, FluxBenchConfig, bench_flux, format_report

    size = args.size or "tiny"
    if size not in SIZES:
        print(f"ppflow bench: --size {size!r} for flux: choose one of {', '.join(SIZES)}", file=sys.stderr)
        return 2
    cfg = FluxBenchConfig(
        size=size, schedule=args.schedule or "ppf2", resolution=args.resolution, text_tokens=args.text_tokens,
        batch=args.batch or 1, steps=args.steps, repeats=args.repeats, warmup=args.warmup, estimator=args.estimator,
        # tiny models run fastest on one thread, and it does not oversubscribe a shared CPU
        threads=args.threads or (1 if size == "tiny" and args.device == "cpu" else None),
        device=args.device, dtype=args.dtype, compile=args.compile, cache=args.cache, seed=args.seed)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    try:
        from ..train.parallel import resolve_device

        resolve_device(args.device)
        result = bench_flux(cfg, log=log)
    except ValueError as e:
        print(f"ppflow bench: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def add_bench_arguments(p) -> None:
    """Options of `ppflow bench flux` that `bench sample` does not have."""
    p.description = (p.description or "") + (
        " 'bench flux': base FLUX against a PPFlux transformer, the same Euler loop over PPFluxPipeline's sigmas on "
        "the same random inputs, with the FLOPs bound; --size tiny (CPU) or dev (FLUX.1-dev shape, bf16, GPU).")
    g = p.add_argument_group("flux (ppflow bench flux --size tiny|dev)")
    g.add_argument("--schedule", default=None, help="flux: PPFlow schedule (default ppf2)")
    g.add_argument("--resolution", type=at_least(16), default=None, help="flux: image side in px (tiny 512, dev 1024)")
    g.add_argument("--text-tokens", type=at_least(1), default=None, help="flux: T5 tokens (tiny 64, dev 512)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="flux: weights and activations (tiny float32, dev bfloat16)")
    g.add_argument("--compile", action="store_true", help="flux: torch.compile both models (one graph per stage)")
    g.add_argument("--cache", type=positive, default=None, metavar="THRESHOLD",
                   help="flux: also time both with diffusers' FirstBlockCache at this threshold (random weights: "
                        "how much it skips is arbitrary; it shows the two running together)")
