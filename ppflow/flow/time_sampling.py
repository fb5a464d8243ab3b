"""Training times and stages for a batch: stage-stratified (PPFlow), i.i.d., or every stage on all t.

Pure functions of a `torch.Generator`, so a training step's draws are reproducible.

- 'stratified' (default, PPFlow): the batch is split among the stages (share proportional to the
  stage's time span unless configured) and each sample's t is drawn inside its stage's closed
  interval [t_start, t_end]; each stage's patch projections only ever see their own segment.
- 'iid': t drawn from the density on [0, 1]; the stage follows from t (`schedule.stage_of`).
  A `margin` m > 0 widens each stage's interval to [t_start - m, t_end + m] (clipped to [0, 1]), so a
  stage's projections also train a little past the switch they serve up to.
- 'all_t': the Lumina-Video / FlexiDiT ablation: stages are allotted as in 'stratified' but t is
  drawn on all of [0, 1], so every patch size is trained at every noise level.

Densities: 'uniform' or 'logit-normal' (SD3's logit-normal, restricted to the stage's interval
when stratified).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.schedule import PyramidSchedule

MODES = ("stratified", "iid", "all_t")
DENSITIES = ("uniform", "logit-normal")
SHARE_RULES = ("span", "density")
_GRID = 2**24  # closed-interval uniform draws live on this grid (float32 resolution)


@dataclass
class TimeSample:
    """Times (N,) float32 and the stage (N,) long each sample trains."""

    t: torch.Tensor
    stage: torch.Tensor

    def counts(self, num_stages: int) -> list[int]:
        return torch.bincount(self.stage, minlength=num_stages).tolist()


def check_density(density: str, logit_std: float = 1.0) -> None:
    if density not in DENSITIES:
        raise ValueError(f"time density {density!r} is not one of {DENSITIES}")
    if density == "logit-normal" and not logit_std > 0:
        raise ValueError(f"logit-normal std must be positive, got {logit_std}")


def density_cdf(t: float, density: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0) -> float:
    """P(T <= t) under the time density on [0, 1]."""
    check_density(density, logit_std)
    if t <= 0:
        return 0.0
    if t >= 1:
        return 1.0
    if density == "uniform":
        return float(t)
    z = (math.log(t / (1 - t)) - logit_mean) / logit_std
    return 0.5 * math.erfc(-z / math.sqrt(2))


def stage_shares(
    schedule: PyramidSchedule,
    shares: str | Sequence[float] | None = None,
    density: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> list[float]:
    """Fraction of the batch per stage: 'span' (time span, default), 'density' (probability mass), or weights."""
    n = schedule.num_stages
    if shares is None or shares == "span":
        raw = [s.span for s in schedule.stages]
    elif shares == "density":
        raw = [density_cdf(s.t_end, density, logit_mean, logit_std) - density_cdf(s.t_start, density, logit_mean,
                                                                                   logit_std) for s in schedule.stages]
    elif isinstance(shares, str):
        raise ValueError(f"stage shares {shares!r} must be one of {SHARE_RULES} or a list of {n} weights")
    else:
        raw = [float(v) for v in shares]
        if len(raw) != n:
            raise ValueError(f"got {len(raw)} stage shares for a {n}-stage schedule ({schedule}); give {n} weights")
        if any(not math.isfinite(v) or v < 0 for v in raw):
            raise ValueError(f"stage shares {raw} must be finite and non-negative")
    total = sum(raw)
    if not total > 0:
        raise ValueError(f"stage shares {raw} sum to zero; give at least one positive weight")
    return [v / total for v in raw]


def allocate(batch: int, shares: Sequence[float], generator: torch.Generator | None = None) -> list[int]:
    """Split `batch` samples among stages: floor(batch*share) each, the rest by systematic sampling.

    Every sample is allotted (the counts sum to `batch`) and each stage's expected count is exactly
    batch*share, so uneven batches are not biased towards any stage.
    """
    exact = [batch * s for s in shares]
    counts = [math.floor(e) for e in exact]
    left = batch - sum(counts)
    if left:
        rem = torch.tensor([e - c for e, c in zip(exact, counts)], dtype=torch.float64)
        rem = rem * (left / rem.sum())  # guard against rounding: sums to `left`, each < 1
        u = torch.rand((), generator=generator, dtype=torch.float64)
        points = u + torch.arange(left, dtype=torch.float64)  # one point per leftover sample
        edges = torch.cumsum(rem, 0)
        picks = torch.searchsorted(edges, points, right=True).clamp_(max=len(shares) - 1)
        for i in picks.tolist():
            counts[i] += 1
    return counts


def _closed_uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n draws on the closed interval [0, 1] (float64)."""
    return torch.randint(0, _GRID + 1, (n,), generator=generator, dtype=torch.float64) / _GRID


def sample_interval(
    n: int,
    low: float,
    high: float,
    generator: torch.Generator | None = None,
    density: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """n times in [low, high] (float32) from the density restricted to that interval (inverse CDF)."""
    check_density(density, logit_std)
    u = _closed_uniform(n, generator)  # (n,)
    if density == "uniform":
        t = low + (high - low) * u
    else:
        lo = density_cdf(low, density, logit_mean, logit_std)
        hi = density_cdf(high, density, logit_mean, logit_std)
        p = lo + (hi - lo) * u
        t = torch.sigmoid(logit_mean + logit_std * torch.special.ndtri(p))
    return t.clamp_(low, high).float()


def sample_times(
    schedule: PyramidSchedule,
    batch: int,
    generator: torch.Generator | None = None,
    mode: str = "stratified",
    shares: str | Sequence[float] | None = None,
    density: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    margin: float = 0.0,
) -> TimeSample:
    """Times and stages for `batch` samples; stratified samples come grouped by stage, noisiest first."""
    if mode not in MODES:
        raise ValueError(f"time sampling mode {mode!r} is not one of {MODES}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"stage margin must be in [0, 1), got {margin}")
    dens = {"density": density, "logit_mean": logit_mean, "logit_std": logit_std}
    if mode == "iid":
        t = sample_interval(batch, 0.0, 1.0, generator, **dens)
        return TimeSample(t, schedule.stage_of(t))
    counts = allocate(batch, stage_shares(schedule, shares, **dens), generator)
    stage = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # (N,)
    if mode == "all_t":
        return TimeSample(sample_interval(batch, 0.0, 1.0, generator, **dens), stage)
    parts = [sample_interval(n, max(0.0, s.t_start - margin), min(1.0, s.t_end + margin), generator, **dens)
             for n, s in zip(counts, schedule.stages)]
    return TimeSample(torch.cat(parts), stage)
