"""Benchmark subjects in child processes: each model alone in its process, driven in turns by the parent.

`Worker("module:factory", kwargs)` starts a spawned process that builds `factory(**kwargs)` and then
answers `worker.call("method", *args)` one at a time, so only one child computes at any moment and
the alternation of a benchmark is kept. A child's peak memory is then that one model's. `InProcess`
has the same interface without a process (tests, or where isolation does not matter).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import subprocess
import sys
from multiprocessing.connection import Connection

from ..io import one_line


class WorkerError(RuntimeError):
    """A child process failed; the message is its one-line error."""


def _build(target: str, kwargs: dict):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def error_line(e: BaseException) -> str:
    """'TypeName: first line of the message' (the type name alone for an empty message)."""
    return f"{type(e).__name__}: {one_line(e)}" if str(e).strip() else type(e).__name__


def _serve(conn, target: str, kwargs: dict) -> None:
    try:
        obj = _build(target, kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", error_line(e)))
        return
    conn.send(("ok", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if msg is None:
            return
        method, args = msg
        try:
            conn.send(("ok", getattr(obj, method)(*args)))
        except BaseException as e:  # noqa: BLE001
            conn.send(("error", error_line(e)))


def _child_main(fd: int) -> None:
    """Entry point of a child: read (target, kwargs) from the inherited connection, then serve."""
    conn = Connection(fd)
    target, kwargs = conn.recv()
    _serve(conn, target, kwargs)


class Worker:
    """`factory(**kwargs)` in a fresh Python child process; `call` runs one of its methods there.

    The child is `python -c` with a socket inherited from this process (not multiprocessing's spawn,
    which re-runs the parent's __main__ and fails under `python -` or notebooks).
    """

    def __init__(self, target: str, kwargs: dict, label: str = "") -> None:
        self.label = label or target
        self.conn, child = mp.Pipe()
        fd = child.fileno()
        code = "import sys; from ppflow.bench.workers import _child_main; _child_main(int(sys.argv[1]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(fd)], pass_fds=(fd,), stdin=subprocess.DEVNULL)
        child.close()
        self.conn.send((target, kwargs))

    def ready(self) -> Worker:
        """Wait until the child has built its subject (children started together build in parallel)."""
        self._answer()
        return self

    def _answer(self):
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerError(f"{self.label}: the benchmark process ended unexpectedly (exit code "
                              f"{self.proc.wait()}; out of memory?)") from None
        if status == "error":
            raise WorkerError(f"{self.label}: {value}")
        return value

    def call(self, method: str, *args):
        self.conn.send((method, args))
        return self._answer()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


class InProcess:
    """The same interface as `Worker`, in this process."""

    def __init__(self, target: str, kwargs: dict, label: str = "") -> None:
        self.label = label or target
        try:
            self.obj = _build(target, kwargs)
        except (RuntimeError, ValueError) as e:
            raise WorkerError(f"{self.label}: {error_line(e)}") from e

    def ready(self) -> InProcess:
        return self

    def call(self, method: str, *args):
        return getattr(self.obj, method)(*args)

    def close(self) -> None:
        self.obj = None


@contextlib.contextmanager
def started(subjects: dict[str, tuple[str, dict]], isolate: bool):
    """{label: worker} for `{label: (target, kwargs)}`, all built (in parallel when isolated); closed at the end."""
    workers = {}
    try:
        for label, (target, kwargs) in subjects.items():
            workers[label] = (Worker if isolate else InProcess)(target, kwargs, label)
        for w in workers.values():
            w.ready()
        yield workers
    finally:
        for w in workers.values():
            w.close()
