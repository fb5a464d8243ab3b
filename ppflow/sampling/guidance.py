"""Classifier-free guidance with one scale per stage; the unconditional pass runs only where it matters.

v = v_uncond + s * (v_cond - v_uncond), with s the scale of the sample's stage. Where
s == 1 this is v_cond, so no unconditional forward is computed for those samples.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

Scales = float | Sequence[float]


# ---------------------------------------------------------------- checks shared by the CLI and the Python APIs
def check_scales(scales: Scales | str, label: str | None = None) -> float | list[float]:
    """One guidance scale or a list of them (a comma-separated string too, as `--cfg` gives it) as float(s);
    ValueError naming `label` (default: the value) when one is not a finite number (NaN guidance: NaN images)."""
    label = label or f"guidance scale {scales!r}"
    try:
        items = scales.split(",") if isinstance(scales, str) else list(scales)
    except TypeError:  # one number (int, float, numpy or 0-d tensor)
        items = [scales]
    try:
        vals = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{label} is not a number or a comma-separated list of numbers, e.g. '1,3'") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{label}: CFG scales must be finite numbers, e.g. 1 (no guidance) or 4")
    return vals[0] if len(vals) == 1 else vals


def check_count(value, name: str = "num_inference_steps", lo: int = 1) -> int:
    """An integer >= `lo` (steps, sizes); ValueError naming `name` for 2.5, '4', True, nan or 0."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number >= {lo}, got {value!r}") from None
    if n < lo:
        raise ValueError(f"{name} must be >= {lo}, got {n}")
    return n


def stage_scales(cfg_scales: Scales | None, num_stages: int) -> list[float]:
    """One CFG scale per stage from one scale (all stages) or a list (one per stage); each a finite number."""
    if cfg_scales is None:
        return [1.0] * num_stages
    scales = check_scales(cfg_scales)
    if isinstance(scales, float):
        return [scales] * num_stages
    if len(scales) != num_stages:
        raise ValueError(
            f"{len(scales)} CFG scales {scales} given for a model with {num_stages} stages; "
            f"give one scale for all stages or exactly {num_stages} (one per stage, noisiest first)"
        )
    return scales


@dataclass
class ForwardCounter:
    """Model forward passes per stage, counted in samples (rows), unconditional passes included."""

    rows: list[int] = field(default_factory=list)
    calls: int = 0

    def add(self, stage: torch.Tensor, num_stages: int) -> None:
        counts = torch.bincount(stage.detach().cpu(), minlength=num_stages).tolist()
        if len(self.rows) < len(counts):
            self.rows += [0] * (len(counts) - len(self.rows))
        self.rows = [a + b for a, b in zip(self.rows, counts)]
        self.calls += 1


def _stage_tensor(model, t: torch.Tensor, stage, n: int) -> torch.Tensor:
    if stage is None:
        return model.schedule.stage_of(t)
    return torch.as_tensor(stage, device=t.device, dtype=torch.long).expand(n)


def _scale_rows(scales: list[float], stage: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(scales, dtype=like.dtype, device=like.device)[stage].view(-1, *([1] * (like.dim() - 1)))


def guided_velocity(
    model,
    x: torch.Tensor,
    t: torch.Tensor | float,
    y: torch.Tensor | None,
    cfg_scales: Scales | None = 1.0,
    guidance_channels: int | None = None,
    stage: torch.Tensor | int | None = None,
    counter: ForwardCounter | None = None,
) -> torch.Tensor:
    """Guided velocity (N, C, H, W) for an un-doubled batch x (N, C, H, W), labels y (N,).

    `cfg_scales`: one scale or one per stage. `guidance_channels`: guide only channels
    0..k-1 and keep the rest conditional (k=3 reproduces DiT/SiT/official PPFlow); None
    guides all channels. `stage` overrides the stage chosen from t (int or (N,)).
    Samples whose stage scale is 1, or whose label is already the null label, get one
    conditional forward only; the others are batched with their unconditional copies.
    """
    N = x.shape[0]
    t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
    t = t.expand(N) if t.dim() == 0 else t  # (N,)
    num_stages = model.schedule.num_stages
    scales = stage_scales(cfg_scales, num_stages)
    st = _stage_tensor(model, t, stage, N)  # (N,)
    null = model.null_label
    if y is None or null is None or all(s == 1.0 for s in scales):
        if counter is not None:
            counter.add(st, num_stages)
        return model(x, t, y, stage=st)
    y = torch.as_tensor(y, device=x.device, dtype=torch.long).expand(N)
    need = (torch.tensor(scales, device=x.device)[st] != 1.0) & (y != null)  # (N,)
    idx = need.nonzero().squeeze(1)  # (K,) samples that need an unconditional pass
    K = idx.numel()
    if K == 0:
        if counter is not None:
            counter.add(st, num_stages)
        return model(x, t, y, stage=st)
    if K == N:
        xx, tt, ss = torch.cat([x, x]), torch.cat([t, t]), torch.cat([st, st])
    else:
        xx, tt, ss = torch.cat([x, x[idx]]), torch.cat([t, t[idx]]), torch.cat([st, st[idx]])
    yy = torch.cat([y, torch.full((K,), null, dtype=y.dtype, device=y.device)])
    if counter is not None:
        counter.add(ss, num_stages)
    out = model(xx, tt, yy, stage=ss)  # (N + K, C, H, W)
    cond, uncond = out[:N], out[N:]
    k = x.shape[1] if guidance_channels is None else guidance_channels
    if K == N:
        guided = uncond[:, :k] + _scale_rows(scales, st, cond) * (cond[:, :k] - uncond[:, :k])
        return guided if k == cond.shape[1] else torch.cat([guided, cond[:, k:]], 1)
    s = _scale_rows(scales, st[idx], cond)  # (K, 1, 1, 1)
    v = cond.clone()
    v[idx, :k] = uncond[:, :k] + s * (cond[idx, :k] - uncond[:, :k])
    return v


def doubled_cfg_velocity(
    model,
    x2: torch.Tensor,
    t: torch.Tensor | float,
    y2: torch.Tensor,
    cfg_scales: Scales | None = 1.0,
    guidance_channels: int | None = None,
    stage: torch.Tensor | int | None = None,
    counter: ForwardCounter | None = None,
) -> torch.Tensor:
    """The DiT/SiT/official CFG on a doubled batch x2 = (x, x_uncond), y2 = (y, null), (2N, C, H, W).

    Both halves receive the guided value on the guided channels; the unguided channels
    keep each half's own output, so the unconditional half follows its own trajectory
    there (and under SDE noise). Always two forwards per sample, whatever the scale.
    """
    M = x2.shape[0]
    if M % 2:
        raise ValueError(f"a doubled CFG batch needs an even size, got {M}")
    t = torch.as_tensor(t, device=x2.device, dtype=torch.float32)
    t = t.expand(M) if t.dim() == 0 else t  # (2N,)
    num_stages = model.schedule.num_stages
    scales = stage_scales(cfg_scales, num_stages)
    st = _stage_tensor(model, t, stage, M)  # (2N,)
    if counter is not None:
        counter.add(st, num_stages)
    out = model(x2, t, y2, stage=st)  # (2N, C, H, W)
    k = x2.shape[1] if guidance_channels is None else guidance_channels
    cond, uncond = out[:, :k].chunk(2)  # (N, k, H, W) each
    half = uncond + _scale_rows(scales, st[: M // 2], cond) * (cond - uncond)
    guided = torch.cat([half, half])  # (2N, k, H, W)
    return guided if k == out.shape[1] else torch.cat([guided, out[:, k:]], 1)
