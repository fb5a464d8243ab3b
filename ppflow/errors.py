"""`CommandError`: a problem a `ppflow` command reports as one line, `ppflow CMD: error: MESSAGE` (ppflow/cli.py)."""

from __future__ import annotations


class CommandError(ValueError):
    """Bad input the user can fix; the message names the problem and the fix."""
