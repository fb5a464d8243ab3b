"""`ppflow flops`: analytic FLOPs table of a model and schedule."""

from __future__ import annotations

import json

from ..models import create_config, model_names
from ..models.flops import schedule_flops
from . import parse_scales


def add_arguments(p) -> None:
    p.add_argument("--model", default="PPF-XL-2", help=f"model name, e.g. {', '.join(model_names()[-4:])}")
    p.add_argument("--schedule", default=None, help="override the schedule, e.g. '0.5:4x4,0.75:2x4,1:2x2'")
    p.add_argument("--image-size", type=int, default=256, help="image size in pixels (square)")
    p.add_argument("--vae-factor", type=int, default=8, help="VAE downsampling factor (1 for pixel-space models)")
    p.add_argument("--latent-size", type=int, default=None, help="latent size; overrides image-size/vae-factor")
    p.add_argument("--in-channels", type=int, default=4, help="latent channels")
    p.add_argument("--cfg", default=None, help="CFG scale or one per stage, e.g. '1,3' (a scale != 1 doubles that stage)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--diffusers", nargs="?", const="all", default=None, metavar="NAMES",
                   help="FLOPs of the PPFlow diffusers hook on full-size released models, counted on the meta device "
                        "(no download, no memory; about 2 min): all, or comma-separated among "
                        "flux.1-dev, flux.2-dev, qwen-image, sd3.5-large, wan2.1-14b")
    from .flux import add_flops_arguments

    add_flops_arguments(p)


def _latent(args) -> int:
    for name in ("image_size", "vae_factor", "in_channels"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.latent_size is not None:
        if args.latent_size < 1:
            raise ValueError(f"--latent-size must be >= 1, got {args.latent_size}")
        return args.latent_size
    if args.image_size % args.vae_factor:
        raise ValueError(f"--image-size {args.image_size} is not a multiple of --vae-factor {args.vae_factor}")
    return args.image_size // args.vae_factor


def main(args) -> int:
    if args.diffusers:
        from ..integrations.diffusers.flops import FULL_SIZES, format_table, full_size_table

        names = tuple(FULL_SIZES) if args.diffusers == "all" else tuple(n.strip() for n in args.diffusers.split(","))
        unknown = [n for n in names if n not in FULL_SIZES]
        if unknown:
            raise ValueError(f"--diffusers: unknown model {unknown[0]!r}; choose among {', '.join(FULL_SIZES)}")
        rows = full_size_table(names)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    if args.flux:
        from .flux import flops_main

        return flops_main(args)
    latent = _latent(args)
    overrides = {"input_size": latent, "in_channels": args.in_channels}
    if args.schedule:
        overrides["schedule"] = args.schedule
    cfg = create_config(args.model, **overrides)
    r = schedule_flops(cfg, cfg_scales=parse_scales(args.cfg))  # a ScheduleError: ppflow.cli prints it
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{args.model}  schedule {r['schedule']}  latent {latent}x{latent}x{args.in_channels}")
    print(f"{'stage':>5} {'t range':>13} {'patch':>6} {'tokens':>7} {'GFLOPs(paper)':>14} {'GFLOPs(total)':>14} {'share':>6} {'fwd/step':>8}")
    for s in r["stages"]:
        a, b = s["t_range"]
        print(f"{s['stage']:>5} {f'({a:g}, {b:g}]':>13} {'x'.join(map(str, s['patch'])):>6} {s['tokens']:>7} "
              f"{s['paper_gflops']:>14.2f} {s['total_gflops']:>14.2f} {s['share']:>6.3f} {s['forwards_per_step']:>8}")
    print(f"baseline (one stage) per forward: {r['baseline_paper_gflops']:.2f} GFLOPs paper, "
          f"{r['baseline_total_gflops']:.2f} total")
    print(f"test FLOPs: {100 * r['paper_fraction']:.1f}% of the baseline (paper convention), "
          f"{100 * r['total_fraction']:.1f}% (all matrix products)")
    return 0
