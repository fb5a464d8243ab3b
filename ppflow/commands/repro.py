"""`ppflow repro`: the paper's main table at Fashion-MNIST scale (about 35 minutes on 2 CPU cores)."""

from __future__ import annotations

import shlex

from ..cli import at_least
from ..errors import CommandError
from . import command_line


def add_arguments(p) -> None:
    p.add_argument("--preset", default="fmnist", choices=["fmnist", "smoke", "switch", "adapt", "search"],
                   help="fmnist: the experiment of docs/results.md; switch: the stage-machinery experiment of docs/quality.md (same-patch control, stage margin, pooled stage init; ~60 min on 2 cores); adapt: a 5600-step SiT adapted to PPF-2 with +10%%/+25%% of its training compute, shared backbone vs coarse-only + stage swap (docs/adaptation.md; ~90 min); search: hand-set PPF-2/PPF-3 vs the schedules `ppflow schedule search` found for the same test-FLOPs budget, with and without its verify step (docs/schedules.md; ~80 min); smoke: a seconds-long pipeline check")
    p.add_argument("--out", default=None, help="output folder (default runs/repro-<preset>)")
    p.add_argument("--steps", type=at_least(1), default=None, help="training steps of the from-scratch models "
                                                           "(adapted ones get 10%% of it)")
    p.add_argument("--num-eval", type=at_least(1), default=None, help="samples per model for FID and accuracy")
    p.add_argument("--no-inception", action="store_true", help="skip the Inception FID (classifier FID only)")
    p.add_argument("--data-path", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--docs", default=None, metavar="MD", help="also write the report here, e.g. docs/results.md")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch threads")
    p.add_argument("--seed", type=int, default=None, help="seed of every model's training and of the sampling noise "
                                                          "(default 0); a second seed measures the spread")
    p.add_argument("--searched", action="append", default=None, metavar="NAME=SCHEDULE",
                   help="--preset search: the searched schedule for PPF-2 or PPF-3's budget, e.g. "
                        "PPF-2=0.45:8x8,1:4x4 (default: the ones docs/schedules.md reports)")
    p.add_argument("--probe-only", action="append", default=None, metavar="NAME=SCHEDULE",
                   help="--preset search: the schedule the probes alone (`schedule search --verify 0`) chose for "
                        "PPF-2 or PPF-3's budget, a third row per budget (default: the ones docs/schedules.md reports)")


def main(args) -> int:
    from ..experiments.repro import SEARCHED, repro_config, run_repro

    kw = {k: v for k, v in {"steps": args.steps, "num_eval": args.num_eval, "data_path": args.data_path,
                            "threads": args.threads, "seed": args.seed}.items() if v is not None}
    if args.no_inception:
        kw["inception"] = False
    schedules = ""  # the --searched / --probe-only part of the saved command line
    for flag, key in (("--searched", "searched"), ("--probe-only", "probe_only")):
        items = getattr(args, key)
        if not items:
            continue
        if args.preset != "search":
            raise CommandError(f"{flag} is for --preset search")
        pairs = [item.partition("=") for item in items]
        bad = [item for item, (a, eq, b) in zip(items, pairs) if not eq or a not in SEARCHED or not b]
        if bad:
            raise CommandError(f"{flag} takes PPF-2=SCHEDULE or PPF-3=SCHEDULE, got {bad[0]!r}")
        kw[key] = {a: b for a, _, b in pairs}
        schedules += "".join(f" {flag} {shlex.quote(item)}" for item in items)
    kw["command"] = command_line("repro", args, ("preset", "out", "steps", "num_eval", "data_path", "docs", "threads", "seed"),
                                 ("no_inception",))
    kw["command"] += schedules
    cfg = repro_config(args.preset, args.out, **kw)
    try:
        run_repro(cfg, args.docs)  # a missing Fashion-MNIST folder: a FileNotFoundError that ppflow.cli prints
    except KeyboardInterrupt:
        return 130
    return 0
