"""FLUX's time convention and where PPFlow's stage boundaries sit in it.

FLUX integrates in sigma: x = sigma * noise + (1 - sigma) * x0, sigma = 1 is noise, and the network gets
`timestep = sigma` (x1000 inside). Its scheduler shifts a uniform sigma grid by a resolution-dependent
`mu` (`calculate_shift`, linear in the fine image-token count): sigma' = e^mu / (e^mu + 1/sigma - 1).

A ppflow schedule is written in t = 1 - sigma (`0.5:4x4,1:2x2`: the noisier half is coarse). The stage of a
forward is chosen from the sigma the network receives (after the shift), by one rule shared by sampling and
training (`stage_of_sigma`). With `boundaries="unshifted"` (the default) a schedule boundary t_b is an
*unshifted* sigma 1 - t_b, mapped through the shift of the image's resolution, so the same share of a
FluxPipeline grid is coarse at every resolution; `boundaries="sigma"` uses 1 - t_b as the network's sigma.
A sigma equal to a boundary belongs to the finer stage: an Euler step that starts on the boundary runs
entirely below it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from ..models.schedule import PyramidSchedule
from .grids import allocate_steps

BOUNDARY_SPACES = ("unshifted", "sigma")


@dataclass(frozen=True)
class FluxShift:
    """FLUX's time shift: resolution-dependent (FLUX.1-dev) or one fixed `shift` (FLUX.1-schnell: 1, none)."""

    base_image_seq_len: int = 256  # fine image tokens at which mu = base_shift (256 tokens = 256 px)
    max_image_seq_len: int = 4096  # fine image tokens at which mu = max_shift (4096 tokens = 1024 px)
    base_shift: float = 0.5
    max_shift: float = 1.15
    dynamic: bool = True  # the scheduler's use_dynamic_shifting (FLUX.1-dev: true, schnell: false)
    shift: float = 1.0  # the fixed shift when not dynamic (e^mu = shift: the same formula)

    def mu(self, image_seq_len: int) -> float:
        """`calculate_shift` of diffusers' FluxPipeline (extrapolated linearly beyond the two points)."""
        if not self.dynamic:
            return math.log(self.shift)
        m = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * m + self.base_shift - m * self.base_image_seq_len

    @classmethod
    def from_scheduler(cls, scheduler) -> FluxShift:
        """The shift a FlowMatchEulerDiscreteScheduler applies; other sigma transforms are refused."""
        c = scheduler.config
        for flag in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                     "invert_sigmas", "stochastic_sampling"):
            if c.get(flag):
                raise ValueError(f"scheduler option {flag}={c.get(flag)} moves the sigmas off the stage grid; "
                                 "PPFluxPipeline supports FLUX's FlowMatchEulerDiscreteScheduler settings")
        if c.get("use_dynamic_shifting") and c.get("time_shift_type", "exponential") != "exponential":
            raise ValueError(f"time_shift_type={c.get('time_shift_type')!r} is not FLUX's exponential shift")
        return cls(c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                   c.get("max_shift", 1.15), bool(c.get("use_dynamic_shifting", False)), float(c.get("shift", 1.0)))


def time_shift(mu: float, sigma: float) -> float:
    """Exponential time shift of FlowMatchEulerDiscreteScheduler (sigma 0 and 1 are fixed points)."""
    if sigma <= 0.0 or sigma >= 1.0:
        return float(sigma)
    return math.exp(mu) / (math.exp(mu) + 1.0 / sigma - 1.0)


def inverse_time_shift(mu: float, sigma: float) -> float:
    """The unshifted sigma that `time_shift(mu, .)` maps to `sigma`."""
    if sigma <= 0.0 or sigma >= 1.0:
        return float(sigma)
    return 1.0 / (1.0 + math.exp(mu) * (1.0 / sigma - 1.0))


def unshifted_boundaries(schedule: PyramidSchedule) -> tuple[float, ...]:
    """Stage boundaries as unshifted sigmas, noisiest stage first (descending)."""
    return tuple(1.0 - t for t in schedule.boundaries)


def sigma_boundaries(schedule: PyramidSchedule, image_seq_len: int, space: str = "unshifted",
                     shift: FluxShift = FluxShift()) -> tuple[float, ...]:
    """Boundaries in the sigma the network receives for an image of `image_seq_len` fine tokens (descending)."""
    if space not in BOUNDARY_SPACES:
        raise ValueError(f"unknown boundary space {space!r}; choose one of {BOUNDARY_SPACES}")
    raw = unshifted_boundaries(schedule)
    if space == "sigma":
        return raw
    mu = shift.mu(image_seq_len)
    return tuple(time_shift(mu, s) for s in raw)


BOUNDARY_TOLERANCE = 1e-6  # a float32 sigma on a boundary (rounded by the scheduler) still counts as on it


def stage_of_sigma(sigma: torch.Tensor | float, boundaries: Sequence[float]) -> torch.Tensor:
    """Stage per sample: the number of boundaries at or above sigma (a boundary belongs to the finer stage)."""
    sigma = torch.as_tensor(sigma).reshape(-1).to(torch.float64)
    bounds = torch.tensor(sorted(boundaries), dtype=torch.float64, device=sigma.device)  # ascending
    # stage = #{b : sigma <= b + tol}; with ascending bounds that is len - #{b + tol < sigma}
    return len(bounds) - torch.searchsorted(bounds + BOUNDARY_TOLERANCE, sigma.contiguous(), right=False)


def stage_grid(steps: int, boundaries: Sequence[float]) -> np.ndarray:
    """FluxPipeline's unshifted sigmas (`linspace(1, 1/steps, steps)`) with every boundary as a grid point.

    Steps are shared between the segments of [0, 1] by length (at least one each), uniform inside each; a
    boundary already on the default grid (0.5 with an even step count) gives exactly the default grid.
    """
    if steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
    inside = sorted((float(b) for b in boundaries if 0.0 < b < 1.0), reverse=True)
    if not inside:
        return np.linspace(1.0, 1 / steps, steps)
    knots = [1.0] + inside + [0.0]
    counts = allocate_steps(steps, [knots[i] - knots[i + 1] for i in range(len(knots) - 1)])
    pieces = [np.linspace(knots[i], knots[i + 1], n + 1)[:-1] for i, n in enumerate(counts)]
    grid = np.concatenate(pieces)  # (steps,), descending; the scheduler appends the final 0
    default = np.linspace(1.0, 1 / steps, steps)
    return default if np.allclose(grid, default, rtol=0, atol=1e-12) else grid


def insert_boundaries(sigmas: Sequence[float], boundaries: Sequence[float]) -> list[float]:
    """User sigmas (unshifted, descending) with each boundary inside their range added as a grid point.

    A step that straddles a boundary is split in two, so every step runs at one patch size.
    """
    out = [float(s) for s in sigmas]
    if not out or any(b >= a for a, b in pairwise(out)):
        raise ValueError(f"sigmas must be a non-empty, strictly decreasing list (noise first), got {out}")
    for b in boundaries:  # the last step runs from sigmas[-1] to 0, so (0, sigmas[0]) is covered
        if 0.0 < b < out[0] and all(abs(b - s) > 1e-9 for s in out):
            out.append(float(b))
    return sorted(out, reverse=True)


def snap_boundaries(sigmas: Sequence[float], boundaries: Sequence[float]) -> list[float]:
    """A scheduler's own grid (unshifted, descending) with, per boundary, the nearer of its two neighbours moved
    onto it (never the first or the last point): every step runs at one patch size and the step count stays. A
    boundary with no movable neighbour is inserted as a grid point."""
    out = [float(s) for s in sigmas]
    fixed = {0, len(out) - 1}
    for b in sorted(boundaries, reverse=True):
        if not 0.0 < b < out[0] or any(abs(b - s) <= 1e-9 for s in out):
            continue
        below = next((i for i, s in enumerate(out) if s < b), len(out))  # out[below - 1] > b > out[below]
        near = [i for i in (below - 1, below) if i < len(out) and i not in fixed]
        if near:
            i = min(near, key=lambda i: abs(out[i] - b))
            out[i] = float(b)
            fixed.add(i)
        else:
            out = insert_boundaries(out, [b])
            fixed = {i + (i >= below) for i in fixed} | {below}
    return out


def step_stages(sigmas: Sequence[float], boundaries: Sequence[float]) -> list[int]:
    """Stage of each step from its starting (unshifted) sigma and the unshifted boundaries."""
    return stage_of_sigma(torch.tensor([float(s) for s in sigmas], dtype=torch.float64), boundaries).tolist()
