"""`ppflow repro`: the paper's main table at Fashion-MNIST scale (about 35 minutes on 2 CPU cores)."""

from __future__ import annotations

import sys

from . import command_line


def add_arguments(p) -> None:
    p.add_argument("--preset", default="fmnist", choices=["fmnist", "smoke", "switch", "adapt"],
                   help="fmnist: the experiment of docs/results.md; switch: the stage-machinery experiment of docs/quality.md (same-patch control, stage margin, pooled stage init; ~60 min on 2 cores); adapt: a 5600-step SiT adapted to PPF-2 with +10%%/+25%% of its training compute, shared backbone vs coarse-only + stage swap (docs/adaptation.md; ~50 min); smoke: a seconds-long pipeline check")
    p.add_argument("--out", default=None, help="output folder (default runs/repro-<preset>)")
    p.add_argument("--steps", type=int, default=None, help="training steps of the from-scratch models "
                                                           "(adapted ones get 10%% of it)")
    p.add_argument("--num-eval", type=int, default=None, help="samples per model for FID and accuracy")
    p.add_argument("--no-inception", action="store_true", help="skip the Inception FID (classifier FID only)")
    p.add_argument("--data-path", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--docs", default=None, metavar="MD", help="also write the report here, e.g. docs/results.md")
    p.add_argument("--threads", type=int, default=None, help="torch threads")


def main(args) -> int:
    from ..experiments.repro import repro_config, run_repro

    kw = {k: v for k, v in {"steps": args.steps, "num_eval": args.num_eval, "data_path": args.data_path,
                            "threads": args.threads}.items() if v is not None}
    if args.no_inception:
        kw["inception"] = False
    kw["command"] = command_line("repro", args, ("preset", "out", "steps", "num_eval", "data_path", "docs", "threads"),
                                 ("no_inception",))
    cfg = repro_config(args.preset, args.out, **kw)
    try:
        run_repro(cfg, args.docs)
    except FileNotFoundError as e:
        print(f"ppflow repro: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
