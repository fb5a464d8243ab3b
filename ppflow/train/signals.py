"""Stop signals of a training run: SIGINT / SIGTERM become a stop request that every rank honours at one step."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived while `train()` was starting up: it stopped before its first step.

    A KeyboardInterrupt, so callers that stop on Ctrl-C stop on it too; `signum` is the signal.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """SIGINT and SIGTERM turned into a stop request for the duration of one `train()` call.

    `install()` saves the current handlers and `restore()` puts them back (train() calls it on every exit
    path, so a later signal reaches whatever handled it before: a SIGTERM after train() returned still
    terminates the process). The first signal is recorded; the handler of that signal then reverts to
    the default, so sending it again aborts at once. Outside the main thread nothing is installed.
    """

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.signum: int | None = None
        self.phase = "start-up"  # or "training"
        self.log = log
        self._old: dict[int, object] = {}

    def install(self) -> bool:
        """Take over SIGINT/SIGTERM (False when already installed or not in the main thread)."""
        if self._old:
            return False
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals keep their handlers
            self.restore()
            return False
        return True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"
        if self.phase == "training":
            self.log(f"received {signal_name(signum)}: saving a checkpoint after this step ({again} to abort)")
        else:
            self.log(f"received {signal_name(signum)} during start-up: stopping before the first step ({again} "
                     "to abort)")

    def check(self, run_dir: Path | str | None = None) -> None:
        """Raise TrainingInterrupted if a signal arrived during start-up."""
        if self.signum is not None:
            where = f" on {run_dir}" if run_dir is not None else ""
            raise TrainingInterrupted(f"stopped by {signal_name(self.signum)} during start-up{where}, before the "
                                      "first step: nothing was trained and no checkpoint was written by this call",
                                      self.signum)
