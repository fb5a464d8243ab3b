"""The linear (rectified-flow / SiT) probability path between noise and data.

Convention: t=0 is pure noise x0, t=1 is data x1; x_t = t*x1 + (1-t)*x0 and the
velocity that carries x_t along the path is the constant x1 - x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PathSample:
    """A point on the path for a batch: where it is (x_t, t) and where it should move (target)."""

    x0: torch.Tensor  # noise (N, C, H, W)
    x1: torch.Tensor  # data (N, C, H, W)
    t: torch.Tensor  # time (N,)
    x_t: torch.Tensor  # t*x1 + (1-t)*x0 (N, C, H, W)
    target: torch.Tensor  # velocity x1 - x0 (N, C, H, W)


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (N, 1, 1, 1)


def linear_path(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> PathSample:
    """x_t and the velocity target for data x1, noise x0 and times t (N,)."""
    if x0.shape != x1.shape:
        raise ValueError(f"noise shape {tuple(x0.shape)} differs from data shape {tuple(x1.shape)}")
    if t.shape != (x1.shape[0],):
        raise ValueError(f"t must have shape ({x1.shape[0]},), got {tuple(t.shape)}")
    tt = _expand(t, x1)  # (N, 1, 1, 1)
    x_t = tt * x1 + (1 - tt) * x0  # (N, C, H, W)
    return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, target=x1 - x0)


def velocity_to_data(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The data estimate x1 = x_t + (1-t)*v implied by a velocity v at x_t."""
    return x_t + (1 - _expand(t, x_t)) * v
