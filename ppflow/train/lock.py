"""One writer per run folder: an exclusive `flock` on RUN_DIR/.lock, held while the run lives.

The lock belongs to the open file, so the OS drops it when the holder exits or is killed:
a lock file left behind by a dead run never blocks the next one. The file holds the
holder's "pid host" for the error message; it is never deleted (deleting a lock file
that another process has open would let two runs hold "the" lock at once).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

LOCK = ".lock"


class RunLockedError(ValueError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """A held lock on a run folder; `release()` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _holder(fd: int) -> str:
    """'pid N' (plus ' on host H' when it is another machine) from the lock file, or 'pid unknown'."""
    for _ in range(20):  # the holder writes its pid right after locking: give it a moment
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        if text:
            pid, host = text[0], text[1] if len(text) > 1 else ""
            return f"pid {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")
        time.sleep(0.05)
    return "pid unknown"


def lock_run(run_dir: str | os.PathLike) -> RunLock:
    """Take RUN_DIR/.lock exclusively (without waiting) and write our pid into it.

    Raises RunLockedError naming the holder's pid when another live process has it. On a file
    system without flock support the run goes ahead unlocked, with a warning.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    if fcntl is None:  # pragma: no cover
        return RunLock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLockedError(
            f"{run_dir} is in use by another ppflow train ({holder}, lock {path}); wait for it to finish or stop "
            "it, or choose another --out"
        ) from None
    except OSError as e:  # e.g. ENOLCK on some network file systems
        os.close(fd)
        warnings.warn(f"cannot lock {path} ({e}); a second run on {run_dir} will not be refused", stacklevel=2)
        return RunLock(path, None)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return RunLock(path, fd)
