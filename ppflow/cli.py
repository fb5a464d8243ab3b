"""`ppflow` command line: one subcommand per module in `ppflow.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under ppflow.commands, one-line help). Modules are imported lazily so
# `ppflow --help` stays fast; each defines `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a PPFlow model or its SiT baseline (single process or under torchrun)"),
    "extract-latents": ("extract_latents", "encode an image folder with a VAE into a latent cache"),
    "sample": ("sample", "sample images from a checkpoint (PNG grid or ADM npz; shards under torchrun)"),
    "bench": ("bench", "benchmark sampling speed of PPFlow against the one-stage baseline"),
    "eval": ("eval", "FID / sFID / IS / precision / recall of samples against a reference"),
    "profile": ("profile", "held-out loss per noise level t of one or more models (where a PPFlow model loses)"),
    "schedule": ("schedule", "schedule search: the best pyramid schedule for a sampling-FLOPs budget, from data"),
    "flops": ("flops", "analytic FLOPs of a model and schedule, per stage and in total"),
    "info": ("info", "describe a checkpoint: format, size, schedule, parameters, FLOPs fraction"),
    "convert": ("convert", "convert a DiT / SiT / official PPFlow checkpoint to a ppflow folder"),
    "adapt": ("adapt", "turn a one-stage SiT/DiT model into a PPFlow model (average/copy init)"),
    "demo": ("demo", "end-to-end demo on Fashion-MNIST: train PPF and SiT, sample, compare, report"),
    "repro": ("repro", "small-scale reproduction of the paper's main table"),
}


def build_parser(load_all: bool = True, only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppflow",
        description="Pyramidal Patchification Flow: cheaper DiT/SiT image generation by using "
        "large patches at high noise and fine patches at low noise.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if load_all or name == only:
            _module(module).add_arguments(p)
    return parser


def _module(name: str):
    return importlib.import_module(f"ppflow.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load_all=False, only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(_module(COMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
