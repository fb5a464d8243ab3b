"""What a run logs: per-stage loss windows, metrics.csv rows and TensorBoard scalars."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

from ..io import save_error, write_atomic


class Window:
    """Running sums between two log rows (per-sample losses by stage, grad norms, steps)."""

    def __init__(self, num_stages: int) -> None:
        self.stage_sum = [0.0] * num_stages
        self.stage_n = [0] * num_stages
        self.grad_sum = 0.0
        self.steps = 0

    def add(self, sums: list[float], counts: list[int]) -> None:
        self.stage_sum = [a + b for a, b in zip(self.stage_sum, sums)]
        self.stage_n = [a + b for a, b in zip(self.stage_n, counts)]

    def pack(self) -> list[float]:
        return [*self.stage_sum, *map(float, self.stage_n)]

    def unpack(self, values: list[float]) -> None:
        k = len(self.stage_sum)
        self.stage_sum, self.stage_n = list(values[:k]), [round(v) for v in values[k:]]

    def state(self) -> dict:
        return {"stage_sum": list(self.stage_sum), "stage_n": list(self.stage_n), "grad_sum": self.grad_sum,
                "steps": self.steps}

    def load(self, state: dict) -> None:
        self.stage_sum, self.stage_n = list(state["stage_sum"]), list(state["stage_n"])
        self.grad_sum, self.steps = state["grad_sum"], state["steps"]


class MetricsFile:
    """metrics.csv: one row per logged step; rows after a resumed step are dropped first.

    A stop (Ctrl-C, SIGTERM) writes a row for the steps since the last one even off the --log-every grid, and
    keeps that window in the checkpoint; a run resumed from it drops that row (`drop_last_partial`) and logs
    the full window at the next grid step, so its rows equal those of a run that was never stopped.
    """

    def __init__(self, path: Path, num_stages: int, start_step: int, copy_from: Path | None = None,
                 drop_last_partial: bool = False) -> None:
        self.path = path
        self.fields = ["step", "loss", *[f"loss_stage{k}" for k in range(num_stages)], "grad_norm", "lr",
                       "steps_per_sec", "samples_per_sec", "elapsed_s"]
        rows = []
        src = copy_from if copy_from is not None and copy_from.exists() else path
        if src.exists():
            with open(src, newline="") as f:
                rows = [r for r in csv.DictReader(f) if _row_step(r) is not None and _row_step(r) <= start_step]
        if drop_last_partial and rows and _row_step(rows[-1]) == start_step:
            rows.pop()
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

        write_atomic(path, write, 200 * (len(rows) + 1), "metrics file")

    def write(self, row: dict) -> None:
        """Append one row; a failed write (a full disk) truncates the file back to its previous rows."""
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            raise save_error(e, self.path, 200, "metrics row") from e


def _row_step(row: dict) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):  # a row cut short (e.g. by a crash mid-write)
        return None


def open_tensorboard(run_dir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step else None)


class RunLog:
    """metrics.csv (+ TensorBoard) of rank 0; `row()` writes the window reduced over every rank."""

    def __init__(self, run_dir: Path, num_stages: int, start_step: int, tensorboard: bool,
                 copy_from: Path | None = None, drop_last_partial: bool = False) -> None:
        self.num_stages = num_stages
        self.metrics = MetricsFile(run_dir / "metrics.csv", num_stages, start_step, copy_from, drop_last_partial)
        self.tb = open_tensorboard(run_dir, start_step) if tensorboard else None

    def row(self, step: int, sums: list[float], ns: list[float], grad_norm: float, lr: float, steps_per_sec: float,
            batch_size: int, elapsed: float) -> None:
        """One row; an OSError (a full disk) leaves the file with its earlier rows."""
        loss = sum(sums) / max(1.0, sum(ns))
        row = {"step": step, "loss": repr(loss), "grad_norm": repr(grad_norm), "lr": repr(lr),
               "steps_per_sec": f"{steps_per_sec:.4f}", "samples_per_sec": f"{steps_per_sec * batch_size:.2f}",
               "elapsed_s": f"{elapsed:.2f}"}
        for s in range(self.num_stages):
            row[f"loss_stage{s}"] = repr(sums[s] / ns[s]) if ns[s] else ""
        self.metrics.write(row)
        if self.tb is not None:
            for key in ("loss", "grad_norm", "lr", "steps_per_sec"):
                self.tb.add_scalar(f"train/{key}", float(row[key]), step)
            for s in range(self.num_stages):
                if ns[s]:
                    self.tb.add_scalar(f"train/loss_stage{s}", sums[s] / ns[s], step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
