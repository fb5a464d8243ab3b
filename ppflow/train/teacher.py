"""Data-free distillation data: the teacher's own ODE trajectories over the coarse time range, cached once.

Trajectory k starts from seeded noise with label k % num_classes and follows the teacher's velocity, CFG-guided at
`cfg_scale` (the distribution a sampler with that scale visits), with Euler steps from t = 0 to the end of the
coarse range. The cache keeps each step's state and the teacher's conditional and unconditional velocities there
(the guided step needs both anyway; at the last state, one more pair), so training targets at the step times, the
range's end included, cost no teacher forward: the
conditional velocity for a labelled sample, the unconditional one for a dropped label, or any guided mix. It is
written after every chunk (atomically); a cut generation continues from the last chunk, with the same noise.
With `finish_steps`, each trajectory is continued with that many Euler steps (same CFG) from the coarse range's end
to t = 1 and its endpoint -- a teacher sample -- is kept too: synthetic data for a flow-matching loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..io import HASH_KEY, content_sha256, read_weights, save_safetensors_atomic
from ..sampling.solvers import euler
from .batches import derive_seed

CHUNK = 64  # trajectories generated (and saved) at a time


class TeacherStates:
    """Euler trajectories of the teacher: states (N, K+1, C, H, W) at times `grid` (K+1,), its conditional and
    unconditional velocities (N, K+1, C, H, W) there, labels (N,). `get_batch` returns the three
    stacked along dim 1 (training data of ppflow.train.distill); `split` takes them apart again."""

    def __init__(self, states: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, labels: torch.Tensor,
                 grid: torch.Tensor, samples: torch.Tensor | None = None) -> None:
        self.states, self.cond, self.uncond, self.labels, self.grid = states, cond, uncond, labels, grid
        self.samples = samples  # (N, C, H, W) the trajectories' endpoints at t = 1 (finish_steps), or None
        self.steps = len(grid) - 1
        parts = [states, cond, uncond] + ([samples[:, None]] if samples is not None else [])
        self._packed = torch.cat(parts, 1)  # (N, 3(K+1) [+ 1], C, H, W)

    def __len__(self) -> int:
        return len(self.states)

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None):
        return self._packed[indices], self.labels[indices]

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states, cond, uncond) of a batch `get_batch` returned."""
        k = self.steps + 1
        return packed[:, :k], packed[:, k:2 * k], packed[:, 2 * k:3 * k]

    def samples_of(self, packed: torch.Tensor) -> torch.Tensor:
        """The teacher samples (n, C, H, W) of a batch `get_batch` returned (a cache made with finish_steps)."""
        if self.samples is None:
            raise ValueError("this teacher-state cache holds no samples: make it with finish_steps > 0")
        return packed[:, 3 * (self.steps + 1)]

    def state_at(self, states: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """States (n, C, H, W) of trajectories `states` (n, K+1, C, H, W) at times t (n,) inside the grid: between
        two steps the Euler trajectory is the straight line joining them."""
        g = self.grid.to(t.device, t.dtype)
        i = torch.searchsorted(g, t, right=True).clamp(1, len(g) - 1) - 1  # (n,) step holding t
        w = ((t - g[i]) / (g[i + 1] - g[i])).view(-1, 1, 1, 1)  # (n, 1, 1, 1)
        rows = torch.arange(len(t), device=t.device)
        return states[rows, i] * (1 - w) + states[rows, i + 1] * w  # (n, C, H, W)


@torch.no_grad()
def teacher_step(teacher, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, scale: float,
                 stage: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(guided, conditional, unconditional) teacher velocities at x (n, C, H, W); one batched forward."""
    n = len(x)
    null = teacher.null_label
    if y is None or null is None:
        v = teacher(x, t, y, stage=stage)
        return v, v, v
    out = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]), stage=stage)
    cond, uncond = out[:n], out[n:]
    return uncond + scale * (cond - uncond), cond, uncond


def teacher_states(teacher, teacher_id: str, path: str | os.PathLike | None, count: int, steps: int, t_end: float,
                   cfg_scale: float, seed: int, shape: tuple[int, int, int], num_classes: int, stage: int,
                   log: Callable[[str], None] = print, limit: int | None = None,
                   finish_steps: int = 0) -> TeacherStates:
    """The cache at `path` (continued if a generation was cut), generated with `teacher` (x, t, y, stage=stage)
    where missing; `teacher_id` (its weights' hash) is recorded and checked; `limit` stops after that many
    trajectories (tests cut a generation with it); `finish_steps` > 0 also keeps each trajectory's endpoint at
    t = 1, reached with that many more Euler steps (the first reuses the velocity at t_end: finish_steps - 1 more
    teacher evaluations)."""
    grid = torch.linspace(0.0, t_end, steps + 1, dtype=torch.float64)
    key = {"teacher": teacher_id, "count": str(count), "steps": str(steps), "t_end": repr(t_end),
           "cfg": repr(cfg_scale), "seed": str(seed), "shape": repr(tuple(shape))}
    if finish_steps:
        key["finish"] = str(finish_steps)
    parts = {k: torch.empty(0, steps + 1, *shape) for k in ("states", "cond", "uncond")}
    parts["labels"] = torch.empty(0, dtype=torch.long)
    if finish_steps:
        parts["samples"] = torch.empty(0, *shape)
    if path is not None and Path(path).is_file():
        meta = _metadata(path)
        diff = [k for k in {*key, *("finish",)} if meta.get(k) != key.get(k)]
        if diff:
            raise ValueError(f"the teacher-state cache {path} was made with other settings ({', '.join(diff)}); "
                             "delete it or give another adapter.cache")
        parts = read_weights(path)
    done = len(parts["states"])
    if done < count:
        log(f"teacher trajectories: {done}/{count} cached, generating the rest ({steps} Euler steps over "
            f"t in [0, {t_end}], CFG {cfg_scale})" + (f" into {path}" if path else ""))
    device = next(teacher.parameters()).device
    stop = count if limit is None else min(count, limit)
    while done < stop:
        n = min(CHUNK, stop - done)
        gen = torch.Generator().manual_seed(derive_seed(seed, "teacher-states", done))
        x = torch.randn(n, *shape, generator=gen).to(device)  # (n, C, H, W)
        y = (torch.arange(done, done + n) % num_classes).to(device) if num_classes else None
        states, conds, unconds = [x.cpu()], [], []

        def velocity(x, t, s, y=y, conds=conds, unconds=unconds):
            v, cond, uncond = teacher_step(teacher, x, t.float(), y, cfg_scale, stage)
            conds.append(cond.cpu())
            unconds.append(uncond.cpu())
            return v

        x = euler(velocity, x, grid, [stage] * steps, callback=lambda i, t, x, states=states: states.append(x.cpu()))
        v = velocity(x, torch.full((n,), t_end, device=device), stage)  # the velocities at the range's end
        new = {"states": torch.stack(states, 1), "cond": torch.stack(conds, 1), "uncond": torch.stack(unconds, 1),
               "labels": y.cpu() if y is not None else torch.zeros(n, dtype=torch.long)}
        if finish_steps:  # on to t = 1: the trajectory's endpoint, a teacher sample
            fine_grid = torch.linspace(t_end, 1.0, finish_steps + 1, dtype=torch.float64)
            for i in range(finish_steps):
                if i:
                    v = teacher_step(teacher, x, torch.full((n,), float(fine_grid[i]), device=device), y, cfg_scale,
                                     stage)[0]
                x = x + float(fine_grid[i + 1] - fine_grid[i]) * v
            new["samples"] = x.cpu()
        parts = {k: torch.cat([parts[k], new[k]]) for k in parts}
        done += n
        if path is not None:
            save_safetensors_atomic(parts, path, {**key, HASH_KEY: content_sha256(parts)}, "teacher-state cache")
    return TeacherStates(parts["states"], parts["cond"], parts["uncond"], parts["labels"], grid.float(),
                         parts.get("samples"))


def _metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
