"""One module per `ppflow` subcommand (see ppflow/cli.py)."""

from __future__ import annotations

import shlex


def command_line(name: str, args, options: tuple[str, ...], flags: tuple[str, ...] = ()) -> str:
    """`ppflow NAME` with the given options/flags of `args` that were set, for reports to reproduce a run."""
    words = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f)]
    for opt in options:
        if getattr(args, opt) is not None:
            words += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return f"ppflow {name} " + " ".join(shlex.quote(w) for w in words)
