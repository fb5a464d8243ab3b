"""`ppflow` command line: one subcommand per module in `ppflow.commands`.

Every bad input ends in one line on stderr and a non-zero exit, never a traceback: argparse checks the
option types (`at_least`, `positive`, `finite` below name the option), commands raise `CommandError` (or let
a ValueError / OSError such as a missing file or a full disk through), and `main` prints it as
`ppflow CMD: error: MESSAGE` (exit 2, as argparse's usage errors) and Ctrl-C as `ppflow CMD: interrupted` (exit 130).
Set PPFLOW_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

from .io import one_line

# name -> (module under ppflow.commands, one-line help). Modules are imported lazily so
# `ppflow --help` stays fast; each defines `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a PPFlow model or its SiT baseline (single process or under torchrun)"),
    "extract-latents": ("extract_latents", "encode an image folder with a VAE into a latent cache"),
    "sample": ("sample", "sample images from a checkpoint (PNG grid or ADM npz; shards under torchrun)"),
    "bench": ("bench", "speed and memory of PPFlow against the one-stage baseline (sample, train, gpu, flux)"),
    "eval": ("eval", "FID / sFID / IS / precision / recall of samples against a reference"),
    "profile": ("profile", "held-out loss per noise level t of one or more models (where a PPFlow model loses)"),
    "schedule": ("schedule", "schedule search: the best pyramid schedule for a sampling-FLOPs budget, from data"),
    "flops": ("flops", "analytic FLOPs of a model and schedule, per stage and in total (--flux: FLUX.1)"),
    "info": ("info", "describe a checkpoint: format, size, schedule, parameters, FLOPs fraction"),
    "convert": ("convert", "convert a DiT / SiT / official PPFlow checkpoint to a ppflow folder"),
    "adapt": ("adapt", "turn a one-stage SiT/DiT model into a PPFlow model (average/copy init)"),
    "download": ("download", "fetch a known release (DiT, SiT, official PPF-XL) into the cache, hash-checked"),
    "push": ("push", "upload a model or a training run's EMA folder to the Hugging Face Hub with a model card"),
    "flux": ("flux", "FLUX.1 into PPFlux: fine-tune (train, LoRA or full), cache latents + text, a CPU demo"),
    "video-demo": ("video", "spatio-temporal PPFlow on a tiny Wan video model: train, convert with an adapter, compare"),
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


# ---------------------------------------------------------------- option types (argparse names the option)
def at_least(lo: int):
    """argparse type: an integer >= lo."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def finite(text: str) -> float:
    """argparse type: a finite number."""
    return _number(text)


def positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    name = f"ppflow {command}" if command in COMMANDS else "ppflow"
    try:
        parser = build_parser(load_all=False, only=command if command in COMMANDS else None)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse printed usage and the error (or --help): return its exit status
            return e.code if isinstance(e.code, int) else int(e.code is not None)
        if args.command is None:
            parser.print_help()
            return 0
        name = " ".join(filter(None, ("ppflow", args.command, getattr(args, "subcommand", None))))
        return int(_module(COMMANDS[args.command][0]).main(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C while starting (imports) or in a command that does not handle it
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # CommandError, and bad input of the user's making: one line, no traceback
        if os.environ.get("PPFLOW_TRACEBACK"):
            raise
        print(f"{name}: error: {one_line(e, limit=None)}", file=sys.stderr)  # whole: a disk-full line ends with the fix
        return 2


if __name__ == "__main__":
    sys.exit(main())
