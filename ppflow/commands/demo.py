"""`ppflow demo`: PPFlow vs SiT on Fashion-MNIST, end to end, with a report."""

from __future__ import annotations

import argparse

from . import command_line


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, help="report folder (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="under-a-minute smoke run: tiny models, a 512-image subset, a few steps (pipeline check)")
    p.add_argument("--data-path", default=None,
                   help="folder with the Fashion-MNIST *-ubyte.gz files (default: /usr/share/datasets/fashion-mnist, "
                        "from the Debian package dataset-fashion-mnist)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of the SiT baseline (default 1400; quick: 12); PPF models train for the same "
                        "compute under --protocol equal-compute")
    p.add_argument("--protocol", choices=("equal-compute", "equal-steps"), default=None,
                   help="equal-compute (default, the paper's: PPF steps = baseline steps x baseline/PPF training "
                        "FLOPs per step) or equal-steps")
    p.add_argument("--num-eval", type=int, default=None, help="samples per model for FID and accuracy")
    p.add_argument("--inception", action="store_true", help="also compute Inception FID (slow on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    from ..experiments.demo import DemoConfig, run_demo

    kw = {k: v for k, v in {"data_path": args.data_path, "steps": args.steps, "num_eval": args.num_eval,
                            "threads": args.threads, "seed": args.seed, "protocol": args.protocol}.items()
          if v is not None}
    if args.inception:
        kw["inception"] = True
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    kw["command"] = command_line("demo", argparse.Namespace(**{**vars(args), "out": out}),
                                 ("out", "data_path", "steps", "protocol", "num_eval", "threads", "seed"),
                                 ("quick", "inception"))
    cfg = DemoConfig.quick(out=out, **kw) if args.quick else DemoConfig(out=out, **kw)
    try:
        run_demo(cfg)  # a missing Fashion-MNIST folder: a FileNotFoundError that ppflow.cli prints
    except KeyboardInterrupt:
        return 130
    return 0

