"""FLUX's flow-matching objective with PPFlow stages: sigmas drawn per stage under the inference stage rule.

FLUX trains in sigma: x = sigma * noise + (1 - sigma) * x0 and the network predicts v = noise - x0 from
`timestep = sigma`. A draw starts as an unshifted t = 1 - sigma' (uniform or logit-normal), is shifted by
FLUX's resolution shift (mu from the fine token count), and its stage is `stage_of_sigma` of the shifted
sigma against the model's `sigma_boundaries(L)` -- the rule PPFluxPipeline samples with. 'stratified' gives
each stage its share of the batch and draws its sigmas inside that stage's interval, so the coarse
projections only ever see the sigmas at which sampling will use them, at every resolution.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..flow.time_sampling import allocate, sample_interval
from ..sampling.sigmas import inverse_time_shift, stage_of_sigma


@dataclass
class SigmaSample:
    """Network sigmas (N,) float32 and the stage (N,) long of each sample; stratified draws come grouped."""

    sigma: torch.Tensor
    stage: torch.Tensor


def shift_sigmas(mu: float, s: torch.Tensor) -> torch.Tensor:
    """`time_shift` on a tensor (float64 inside): e^mu / (e^mu + 1/s - 1); 0 and 1 stay fixed."""
    s = s.double()
    inner = (s > 0) & (s < 1)
    safe = torch.where(inner, s, torch.full_like(s, 0.5))
    out = math.exp(mu) / (math.exp(mu) + 1.0 / safe - 1.0)
    return torch.where(inner, out, s)


def stage_intervals(boundaries: Sequence[float], mu: float) -> list[tuple[float, float]]:
    """Each stage's interval of unshifted t = 1 - sigma' (noisiest stage first), from network-sigma boundaries."""
    cuts = [1.0 - inverse_time_shift(mu, b) for b in boundaries]  # ascending t
    knots = [0.0, *cuts, 1.0]
    return list(itertools.pairwise(knots))


def train_sigmas(model, batch: int, image_seq_len: int, generator: torch.Generator | None = None,
                 mode: str = "stratified", density: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, shares: str | Sequence[float] | None = None,
                 shift: bool = True) -> SigmaSample:
    """Sigmas and stages of a batch of images with `image_seq_len` fine (packed) tokens for a PPFluxTransformer."""
    cfg = model.ppflow_config
    mu = cfg.shift.mu(image_seq_len) if shift else 0.0
    bounds = model.sigma_boundaries(image_seq_len)  # the network's sigma, descending
    dens = {"density": density, "logit_mean": logit_mean, "logit_std": logit_std}
    if mode == "iid":
        t = sample_interval(batch, 0.0, 1.0, generator, **dens)
    elif mode == "stratified":
        spans = stage_intervals(bounds, mu)
        if shares is None or shares == "span":
            weights = [hi - lo for lo, hi in spans]
        elif isinstance(shares, str):
            raise ValueError(f"flow.shares {shares!r}: use span or one weight per stage such as 0.5,0.5")
        else:
            weights = [float(v) for v in shares]
            if len(weights) != len(spans) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"flow.shares {list(shares)}: give {len(spans)} non-negative weights, not all zero")
        total = sum(weights)
        counts = allocate(batch, [w / total for w in weights], generator)
        t = torch.cat([sample_interval(n, lo, hi, generator, **dens) for n, (lo, hi) in zip(counts, spans)])
    else:
        raise ValueError(f"flow.time_sampling {mode!r} is not one of ('stratified', 'iid')")
    sigma = shift_sigmas(mu, 1.0 - t.double())  # (N,) the network's sigma
    stage = stage_of_sigma(sigma, bounds)  # the inference rule decides (a draw on a boundary is the finer stage's)
    return SigmaSample(sigma.float(), stage.long())


def flux_loss(model, x0: torch.Tensor, noise: torch.Tensor, draw: SigmaSample, cond: dict,
              grid: tuple[int, int]) -> tuple[torch.Tensor, list[float], list[int]]:
    """Mean flow-matching loss of packed latents x0 (B, L, C); one forward per stage present.

    Returns (loss, per-stage sums of per-sample losses, per-stage counts); `cond` holds encoder_hidden_states,
    pooled_projections (B, ...), img_ids, txt_ids and guidance (B,) or None.
    """
    S = model.schedule.num_stages
    sigma = draw.sigma.to(x0.device, x0.dtype)[:, None, None]  # (B, 1, 1)
    xt = sigma * noise + (1.0 - sigma) * x0  # (B, L, C)
    target = noise - x0  # (B, L, C)
    per_sample = x0.new_zeros(x0.shape[0])
    sums, counts = [0.0] * S, [0] * S
    for s in torch.unique(draw.stage).tolist():
        idx = (draw.stage == s).nonzero().squeeze(1).to(x0.device)  # (n,)
        sub = {k: (v.index_select(0, idx) if torch.is_tensor(v) and k in ("encoder_hidden_states",
                                                                          "pooled_projections", "guidance") else v)
               for k, v in cond.items()}
        pred = model(hidden_states=xt.index_select(0, idx), timestep=draw.sigma.to(x0.device)[idx], stage=s,
                     grid=grid, return_dict=False, **sub)[0]  # (n, L, C)
        err = (pred.float() - target.index_select(0, idx).float()).square().mean(dim=(1, 2))  # (n,)
        per_sample = per_sample.index_add(0, idx, err.to(per_sample.dtype))
        sums[s], counts[s] = float(err.detach().sum()), len(idx)
    return per_sample.mean(), sums, counts
