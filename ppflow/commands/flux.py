"""`ppflow flux train|cache|demo`, and the FLUX parts of `ppflow flops --flux` and `ppflow bench flux`
(registered by ppflow/commands/flops.py and bench.py)."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import at_least, positive
from ..errors import CommandError
from ..models.packing import COARSE_OUTPUTS

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
        raise CommandError(f"--resolution {text!r} is not a comma-separated list of pixel sizes, e.g. 512,1024") \
            from None
    if not values or min(values) < 16:
        raise CommandError(f"--resolution {text!r}: give sizes of at least 16 pixels")
    return values


def flops_main(args) -> int:
    from ..flux.flops import ARCHS, PAPER_SPEEDUPS, TEXT_TOKENS, resolution_table
    from ..models.schedule import PyramidSchedule

    sched = PyramidSchedule.from_string(args.schedule or "ppf2", base_patch=(2, 2))
    text = TEXT_TOKENS[args.flux] if args.text_tokens is None else args.text_tokens
    rows = resolution_table(ARCHS[args.flux], sched, _resolutions(args.resolution), text)
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
        raise CommandError(f"--size {size!r} for flux: choose one of {', '.join(SIZES)}")
    cfg = FluxBenchConfig(
        size=size, schedule=args.schedule or "ppf2", resolution=args.resolution, text_tokens=args.text_tokens,
        batch=args.batch or 1, steps=args.steps, repeats=args.repeats, warmup=args.warmup, estimator=args.estimator,
        # tiny models run fastest on one thread, and it does not oversubscribe a shared CPU
        threads=args.threads or (1 if size == "tiny" and args.device == "cpu" else None),
        device=args.device, dtype=args.dtype, compile=args.compile, cache=args.cache, seed=args.seed)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    from ..train.parallel import resolve_device

    resolve_device(args.device)
    result = bench_flux(cfg, log=log)
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
    # --dtype and --compile are options of every benchmark (ppflow/commands/bench.py)
    g.add_argument("--cache", type=positive, default=None, metavar="THRESHOLD",
                   help="flux: also time both with diffusers' FirstBlockCache at this threshold (random weights: "
                        "how much it skips is arbitrary; it shows the two running together)")


# ---------------------------------------------------------------------- ppflow flux train | cache | demo
FLUX_EPILOG = """\
examples:
  ppflow flux cache --data.path my_images --data.pipeline black-forest-labs/FLUX.1-dev --data.cache cache.safetensors
  ppflow flux train --model.base black-forest-labs/FLUX.1-dev --model.subfolder transformer \\
      --data.cache cache.safetensors --train.mode lora --batch-size 4 --max-steps 2000 --out runs/ppflux
  ppflow flux train ... --model.schedule 1:2x2      # the FLUX-ft baseline: same command, one stage
  ppflow flux train --resume runs/ppflux --max-steps 4000
  ppflow flux demo --quick                          # tiny FLUX from scratch on Fashion-MNIST, then PPFlux vs FLUX-ft
"""

ADAPT_EPILOG = """\
examples:
  ppflow flux adapt --adapter.pipeline black-forest-labs/FLUX.1-dev --adapter.prompts prompts.txt \\
      --adapter.record-steps 14,28,50 --adapter.guidance 3.5 --adapter.rank 16 --optim.lr 3e-3 \\
      --batch-size 4 --max-steps 6400 --out runs/flux-adapter
  ppflow flux adapt --resume runs/flux-adapter --max-steps 8000   # more steps; the recorded calls are reused
  # then, in your code: ppflow.integrations.diffusers.apply(pipe, "runs/flux-adapter/ema")
On the tiny FLUX of `ppflow flux demo`, 512 x 8 prompts and 6400 steps at rank 16 reached FID 1.047x the base's
at 1.63x its speed (docs/flux.md); --adapter.calls FILE trains on calls recorded elsewhere (record_calls)."""


class _HelpFormat(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, examples kept as written."""


def add_arguments(p) -> None:
    from ..flux.train_config import FluxTrainConfig
    from ..integrations.diffusers.distill_config import DistillConfig
    from .train import add_run_arguments

    p.epilog, p.formatter_class = FLUX_EPILOG, argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="subcommand", metavar="{train,adapt,cache,demo,stack}", required=True)
    t = sub.add_parser("train", help="fine-tune a FLUX transformer into PPFlux (LoRA or full) on cached data",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_arguments(t, FluxTrainConfig)
    a = sub.add_parser("adapt", help="distil a PPFlow speed adapter for your diffusers pipeline from prompts alone",
                       formatter_class=_HelpFormat, epilog=ADAPT_EPILOG,
                       description="A speed adapter for a frozen diffusers transformer (FLUX.1, FLUX.2, Qwen-Image, "
                                   "SD3.5, Wan): coarse-stage projections, stage embedding and a LoRA active only in "
                                   "coarse steps, distilled from the model's own outputs. No images: your pipeline "
                                   "samples --adapter.prompts and its coarse-stage calls are recorded once into "
                                   "RUN/teacher-calls.safetensors (reused on --resume); the fine stage stays your "
                                   "model bit for bit. RUN/ema is the adapter folder: "
                                   "ppflow.integrations.diffusers.apply(pipe, 'RUN/ema').")
    add_run_arguments(a, DistillConfig)
    c = sub.add_parser("cache", help="encode an image-caption folder once: FLUX latents + T5/CLIP embeddings",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--data.path", dest="path", required=True, help="image-caption folder (.txt captions or "
                                                                   "metadata.jsonl)")
    c.add_argument("--data.pipeline", dest="pipeline", required=True, help="FLUX pipeline folder or hub id")
    c.add_argument("--data.cache", dest="cache", required=True, help="cache file to write (.safetensors)")
    c.add_argument("--data.resolution", dest="resolution", type=at_least(16), default=512, help="image side in px")
    c.add_argument("--data.max-sequence-length", dest="max_sequence_length", type=at_least(1), default=512,
                   help="T5 tokens per caption")
    c.add_argument("--batch-size", type=at_least(1), default=8)
    c.add_argument("--device", default="auto")
    d = sub.add_parser("demo", help="tiny FLUX from scratch on Fashion-MNIST, adapted to PPFlux vs FLUX-ft, report",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--quick", action="store_true", help="under-a-minute smoke run (tiny budget, no classifier FID)")
    d.add_argument("--out", default=None, help="report folder (default runs/flux-demo[-quick])")
    d.add_argument("--threads", type=at_least(1), default=1, help="torch threads")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--base-steps", type=at_least(1), default=None, help="steps of the from-scratch base (default 900)")
    d.add_argument("--finetune-steps", type=at_least(1), default=None,
                   help="steps of each fine-tune, PPFlux and FLUX-ft (default 270)")
    d.add_argument("--eval-per-class", type=at_least(1), default=None, help="samples per prompt (default 50)")
    d.add_argument("--coarse-output", choices=COARSE_OUTPUTS, default=None,
                   help="PPFlux coarse stages' output (default: the demo's, see docs/flux.md)")
    st = sub.add_parser("stack", help="a flux demo run's adapter stacked with diffusers cache hooks, vs the base itself",
                        description="Stack the PPFlow hook (the demo run's distilled adapter) with diffusers' cache "
                                    "hooks on its trained FLUX toy and compare every combination with the base: "
                                    "speed-up, executed-FLOPs bound, prompt accuracy, classifier FID, paired "
                                    "agreement. Trains nothing (minutes on one core).")
    st.add_argument("--run", required=True, help="a finished `ppflow flux demo` output folder")
    st.add_argument("--out", default=None, help="report folder (default RUN/stack)")
    st.add_argument("--caches", default="taylorseer,first_block",
                    help="cache hooks, comma-separated; each NAME or NAME:KEY=VALUE,KEY=VALUE (taylorseer: interval, "
                         "warmup, order, stop, scope=attn|blocks|lite; first_block: threshold), e.g. "
                         "taylorseer:interval=3,warmup=2,scope=blocks,first_block:threshold=0.2")
    st.add_argument("--repeats", type=at_least(1), default=3, help="timed rounds (median)")
    st.add_argument("--threads", type=at_least(1), default=1)


def main(args) -> int:
    if args.subcommand == "stack":
        from ..bench.diffusers import split_caches
        from ..experiments.stacking import run_stacking

        try:
            caches = split_caches(args.caches)
        except ValueError as e:
            raise CommandError(f"--caches: {e}") from None
        run_stacking(args.run, args.out, caches, args.threads, args.repeats)
        return 0
    if args.subcommand == "train":
        return _train(args)
    if args.subcommand == "adapt":
        return _adapt(args)
    if args.subcommand == "cache":
        return _cache(args)
    from ..experiments.flux_demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    for key in ("base_steps", "finetune_steps", "eval_per_class", "coarse_output"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    run_demo(out=args.out or ("runs/flux-demo-quick" if args.quick else None), threads=args.threads,
             seed=args.seed, config=cfg)
    return 0


def _train(args) -> int:
    from ..flux.train import train_flux
    from ..flux.train_config import FluxTrainConfig
    from .train import run_training

    return run_training("ppflow flux train", args, train_flux, FluxTrainConfig)


def _adapt(args) -> int:
    from ..integrations.diffusers.distill import DistillConfig, distill
    from .train import run_training

    def report(result) -> None:
        print(f"adapter: {result.ema_dir} (apply it: ppflow.integrations.diffusers.apply(pipe, "
              f"{str(result.ema_dir)!r}))")

    return run_training("ppflow flux adapt", args, distill, DistillConfig, report=report)


def _cache(args) -> int:
    from ..flux.captions import cache_folder, check_images, load_encoders, scan_folder
    from ..io import check_writable
    from ..train.parallel import resolve_device

    check_writable(args.cache, "cache")  # a bad --data.cache or bad data fails before the encoders load
    check_images(scan_folder(args.path))
    pipe = load_encoders(args.pipeline, resolve_device(args.device))
    cache = cache_folder(args.path, pipe, args.resolution, args.max_sequence_length, args.batch_size, out=args.cache)
    path = args.cache
    print(f"cached {len(cache)} images: latents {tuple(cache.latents.shape[1:])}, T5 {tuple(cache.prompt_embeds.shape[1:])}"
          f", CLIP {tuple(cache.pooled.shape[1:])} -> {path}")
    return 0
