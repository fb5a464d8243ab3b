"""One module per `ppflow` subcommand (see ppflow/cli.py), and what several of them share."""

from __future__ import annotations

import shlex

from ..errors import CommandError
from ..sampling.guidance import check_scales


def command_line(name: str, args, options: tuple[str, ...], flags: tuple[str, ...] = ()) -> str:
    """`ppflow NAME` with the given options/flags of `args` that were set, for reports to reproduce a run."""
    words = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f)]
    for opt in options:
        if getattr(args, opt) is not None:
            words += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return f"ppflow {name} " + " ".join(shlex.quote(w) for w in words)


def parse_scales(text: str | None) -> float | list[float] | None:
    """`--cfg`: one guidance scale ('4') or one per stage, noisiest first ('1,3'); None stays None. The check is
    the Python APIs' (ppflow.sampling.check_scales)."""
    if text is None:
        return None
    try:
        return check_scales(text, f"--cfg {text!r}")
    except ValueError as e:
        raise CommandError(str(e)) from None
