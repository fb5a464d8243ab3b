"""Time grids for fixed-step samplers: pure functions of (steps, boundaries, t0, t1).

Time runs from t0 (noise, usually 0) to t1 (data, usually 1). The `stages` grids
place a grid point on every stage boundary inside (t0, t1), so each step lies in
one stage and runs at one patch size; the `official` grid is a plain linspace,
as in the SiT / official PPFlow samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GRIDS = ("stages", "official")


def allocate_steps(steps: int, spans: Sequence[float]) -> list[int]:
    """Split `steps` over segments proportionally to their spans (largest remainder, >= 1 each)."""
    k = len(spans)
    if steps < k:
        raise ValueError(
            f"{steps} steps cannot cover {k} stages with one step each; use at least {k} steps"
        )
    total = float(sum(spans))
    # every segment gets one step, the rest is shared by span
    extra = steps - k
    ideal = [extra * s / total for s in spans]
    counts = [1 + math.floor(v) for v in ideal]
    left = steps - sum(counts)
    order = sorted(range(k), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def knots(boundaries: Sequence[float], t0: float = 0.0, t1: float = 1.0) -> list[float]:
    """[t0, the boundaries strictly inside (t0, t1), t1]: the segment ends of a piecewise grid."""
    if not t1 > t0:
        raise ValueError(f"the time interval must run forward, got t0={t0} >= t1={t1}")
    return [float(t0)] + [float(b) for b in sorted(boundaries) if t0 < b < t1] + [float(t1)]


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Time shift (SD3 convention on the noise level 1-t): shift > 1 spends more of a grid at high noise."""
    t = torch.as_tensor(t, dtype=torch.float64)
    sigma = 1.0 - t
    return 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)


def unshift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor:
    """Inverse of `shift_time`."""
    t = torch.as_tensor(t, dtype=torch.float64)
    sigma = 1.0 - t
    return 1.0 - sigma / (shift - (shift - 1.0) * sigma)


def uniform_grid(steps: int, boundaries: Sequence[float] = (), t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """`steps`+1 float64 times from t0 to t1, uniform inside each stage, containing every boundary.

    Steps are shared between stages by time span; when the boundaries fall on a uniform
    grid of `steps` steps (e.g. 0.5 with an even count) this is that grid.
    """
    return shifted_grid(steps, 1.0, boundaries, t0, t1)


def shifted_grid(steps: int, shift: float, boundaries: Sequence[float] = (), t0: float = 0.0,
                 t1: float = 1.0) -> torch.Tensor:
    """Uniform grid in shifted time (see `shift_time`) that still contains every boundary exactly."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    ends = knots(boundaries, t0, t1)
    u = unshift_time(torch.tensor(ends, dtype=torch.float64), shift)  # segment ends in shifted time
    counts = allocate_steps(steps, (u[1:] - u[:-1]).tolist())
    pieces = []
    for i, n in enumerate(counts):
        inner = shift_time(torch.linspace(float(u[i]), float(u[i + 1]), n + 1, dtype=torch.float64)[1:-1], shift)
        pieces.append(torch.cat([torch.tensor([ends[i]], dtype=torch.float64), inner]))
    pieces.append(torch.tensor([ends[-1]], dtype=torch.float64))
    return torch.cat(pieces)  # (steps + 1,)


def official_grid(steps: int, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """Plain float32 linspace of `steps`+1 times, as SiT builds it (its `num_sampling_steps` N is steps = N - 1)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float32).double()


def time_grid(kind: str, steps: int, boundaries: Sequence[float] = (), t0: float = 0.0, t1: float = 1.0,
              shift: float = 1.0) -> torch.Tensor:
    """Dispatch: 'stages' (shifted_grid with the boundaries) or 'official' (linspace, no shift)."""
    if kind == "stages":
        return shifted_grid(steps, shift, boundaries, t0, t1)
    if kind == "official":
        if shift != 1.0:
            raise ValueError("grid='official' is a plain linspace; a time shift needs grid='stages'")
        return official_grid(steps, t0, t1)
    raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}")


def interval_stages(grid: torch.Tensor, boundaries: Sequence[float]) -> list[int]:
    """Stage of each step (grid[i], grid[i+1]], found from the step's midpoint."""
    mid = (grid[1:] + grid[:-1]) / 2
    bounds = torch.tensor(sorted(boundaries), dtype=torch.float64)
    return torch.searchsorted(bounds, mid.to(torch.float64).contiguous(), right=False).tolist()
