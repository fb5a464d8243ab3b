"""Data-free distillation data: the teacher's own ODE trajectories over the coarse time range, cached once.

Trajectory k starts from seeded noise with label k % num_classes and follows the teacher's (optionally guided)
velocity with Euler steps from t = 0 to the end of the coarse range; its states at the step times are stored.
Between two stored states the Euler trajectory is a straight line, so `state_at` gives the exact teacher state at
any t of the range. The cache is written after every chunk (atomically) and a restarted generation continues
from the last chunk written, with the same noise: a resumed cache equals an uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..io import HASH_KEY, content_sha256, read_weights, save_safetensors_atomic
from ..sampling.guidance import guided_velocity
from ..sampling.solvers import euler
from .batches import derive_seed

CHUNK = 64  # trajectories generated (and saved) at a time


class TeacherStates:
    """Trajectories (N, steps + 1, C, H, W) at times `grid` (steps + 1,) with labels (N,): training data for
    `ppflow.train.distill` (`get_batch` returns whole trajectories; the task picks the times)."""

    def __init__(self, states: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor) -> None:
        self.states, self.labels, self.grid = states, labels, grid

    def __len__(self) -> int:
        return len(self.states)

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None):
        return self.states[indices], self.labels[indices]

    def state_at(self, traj: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """States of trajectories `traj` (n, K+1, C, H, W) at times t (n,) inside the grid: linear between steps."""
        g = self.grid.to(t.device, t.dtype)
        i = torch.searchsorted(g, t, right=True).clamp(1, len(g) - 1) - 1  # (n,) step holding t
        w = ((t - g[i]) / (g[i + 1] - g[i])).view(-1, 1, 1, 1)  # (n, 1, 1, 1)
        rows = torch.arange(len(t), device=t.device)
        return traj[rows, i] * (1 - w) + traj[rows, i + 1] * w  # (n, C, H, W)


def teacher_states(teacher, teacher_id: str, path: str | os.PathLike | None, count: int, steps: int, t_end: float,
                   cfg_scale: float, seed: int, shape: tuple[int, int, int], num_classes: int, stage: int,
                   log: Callable[[str], None] = print, limit: int | None = None) -> TeacherStates:
    """The cache at `path` (continued if a generation was cut), generated with `teacher` (x, t, y, stage=stage)
    where missing; `teacher_id` (its weights' hash) is recorded and checked; `limit` stops after that many
    trajectories (tests cut a generation with it)."""
    grid = torch.linspace(0.0, t_end, steps + 1, dtype=torch.float64)
    key = {"teacher": teacher_id, "count": str(count), "steps": str(steps),
           "t_end": repr(t_end), "cfg": repr(cfg_scale), "seed": str(seed), "shape": repr(tuple(shape))}
    states = torch.empty(0, steps + 1, *shape)
    labels = torch.empty(0, dtype=torch.long)
    if path is not None and Path(path).is_file():
        saved = read_weights(path)
        meta = _metadata(path)
        if any(meta.get(k) != v for k, v in key.items()):
            diff = [k for k, v in key.items() if meta.get(k) != v]
            raise ValueError(f"the teacher-state cache {path} was made with other settings ({', '.join(diff)}); "
                             "delete it or give another adapter.cache")
        states, labels = saved["states"], saved["labels"]
    done = len(states)
    if done < count:
        log(f"teacher trajectories: {done}/{count} cached, generating the rest ({steps} Euler steps over "
            f"t in [0, {t_end}], CFG {cfg_scale})" + (f" into {path}" if path else ""))
    device = next(teacher.parameters()).device
    stop = count if limit is None else min(count, limit)
    while done < stop:
        n = min(CHUNK, stop - done)
        g = torch.Generator().manual_seed(derive_seed(seed, "teacher-states", done))
        x = torch.randn(n, *shape, generator=g).to(device)  # (n, C, H, W)
        y = (torch.arange(done, done + n) % num_classes).to(device) if num_classes else None
        traj = [x.cpu()]
        with torch.no_grad():
            euler(lambda x, t, s, y=y: guided_velocity(teacher, x, t, y, cfg_scale, stage=stage), x, grid,
                  [stage] * steps, callback=lambda i, t, x, traj=traj: traj.append(x.cpu()))
        states = torch.cat([states, torch.stack(traj, 1)])  # (done + n, steps + 1, C, H, W)
        labels = torch.cat([labels, y.cpu() if y is not None else torch.zeros(n, dtype=torch.long)])
        done += n
        if path is not None:
            saved = {"states": states, "labels": labels}
            save_safetensors_atomic(saved, path, {**key, HASH_KEY: content_sha256(saved)}, "teacher-state cache")
    return TeacherStates(states, labels, grid.float())


def _metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
