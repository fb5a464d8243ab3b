"""One module per `ppflow` subcommand (see ppflow/cli.py), and what several of them share."""

from __future__ import annotations

import math
import shlex

from ..errors import CommandError


def command_line(name: str, args, options: tuple[str, ...], flags: tuple[str, ...] = ()) -> str:
    """`ppflow NAME` with the given options/flags of `args` that were set, for reports to reproduce a run."""
    words = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f)]
    for opt in options:
        if getattr(args, opt) is not None:
            words += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return f"ppflow {name} " + " ".join(shlex.quote(w) for w in words)


def parse_scales(text: str | None) -> float | list[float] | None:
    """`--cfg`: one guidance scale ('4') or one per stage, noisiest first ('1,3'); None stays None."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise CommandError(f"--cfg {text!r} is not a number or a comma-separated list of numbers, e.g. '1,3'") \
            from None
    if not all(math.isfinite(v) for v in vals):  # nan / inf guidance gives all-zero or garbage images
        raise CommandError(f"--cfg {text!r}: CFG scales must be finite numbers, e.g. 1 (no guidance) or 4")
    return vals[0] if len(vals) == 1 else vals
