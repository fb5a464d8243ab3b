"""Data-free distillation data: the teacher's own ODE trajectories over the coarse time range, cached once.

Trajectory k starts from seeded noise with label k % num_classes and follows the teacher's velocity, CFG-guided at
`cfg_scale` (the distribution a sampler with that scale visits), with Euler steps from t = 0 to the end of the
coarse range. The cache keeps each step's state and the teacher's conditional and unconditional velocities there
(the guided step needs both anyway; at the last state, one more pair), so training targets at the step times, the
range's end included, cost no teacher forward: the
conditional velocity for a labelled sample, the unconditional one for a dropped label, or any guided mix. It is
written after every chunk (atomically); a cut generation continues from the last chunk, with the same noise.
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
                 grid: torch.Tensor) -> None:
        self.states, self.cond, self.uncond, self.labels, self.grid = states, cond, uncond, labels, grid
        self.steps = len(grid) - 1
        self._packed = torch.cat([states, cond, uncond], 1)  # (N, 3K+1, C, H, W)

    def __len__(self) -> int:
        return len(self.states)

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None):
        return self._packed[indices], self.labels[indices]

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(states, cond, uncond) of a batch `get_batch` returned."""
        return packed.chunk(3, dim=1)

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
                   log: Callable[[str], None] = print, limit: int | None = None) -> TeacherStates:
    """The cache at `path` (continued if a generation was cut), generated with `teacher` (x, t, y, stage=stage)
    where missing; `teacher_id` (its weights' hash) is recorded and checked; `limit` stops after that many
    trajectories (tests cut a generation with it)."""
    grid = torch.linspace(0.0, t_end, steps + 1, dtype=torch.float64)
    key = {"teacher": teacher_id, "count": str(count), "steps": str(steps), "t_end": repr(t_end),
           "cfg": repr(cfg_scale), "seed": str(seed), "shape": repr(tuple(shape))}
    parts = {k: torch.empty(0, steps + 1, *shape) for k in ("states", "cond", "uncond")}
    parts["labels"] = torch.empty(0, dtype=torch.long)
    if path is not None and Path(path).is_file():
        meta = _metadata(path)
        diff = [k for k, v in key.items() if meta.get(k) != v]
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
        velocity(x, torch.full((n,), t_end, device=device), stage)  # the velocities at the range's end
        new = {"states": torch.stack(states, 1), "cond": torch.stack(conds, 1), "uncond": torch.stack(unconds, 1),
               "labels": y.cpu() if y is not None else torch.zeros(n, dtype=torch.long)}
        parts = {k: torch.cat([parts[k], new[k]]) for k in parts}
        done += n
        if path is not None:
            save_safetensors_atomic(parts, path, {**key, HASH_KEY: content_sha256(parts)}, "teacher-state cache")
    return TeacherStates(parts["states"], parts["cond"], parts["uncond"], parts["labels"], grid.float())


def _metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
