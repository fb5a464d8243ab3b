"""What a coarse stage's unpatchify emits, turned into a velocity: `v`, `x` or `noise_skip`.

Exact reparametrizations of the same velocity field (SiT convention, v = (E[x1 | x_t] - x_t) / (1 - t)):

- `v` (the paper): the network output is the velocity.
- `x`: the network predicts the clean sample x1_hat; v = (x1_hat - x_t) / (1 - t) (the x-prediction of
  Li & He, "Back to Basics: Let Denoising Generative Models Denoise", arXiv 2511.13720).
- `noise_skip`: v = f - (I - P) x_t / (1 - t), where P pools x_t over the (fh, fw) pixel blocks that the
  stage's patch merges relative to the base patch and broadcasts back. The within-block part of x_t, which
  a coarse token resolves no better than a base token, is subtracted analytically; the network handles
  only what a base-patch token would. With the average/copy adaptation init the coarse stage then starts at
  (up(x1_hat(down x_t)) - x_t) / (1 - t): the source model's denoiser at half resolution, exact in the noise.

- `snr`: `noise_skip`, and the coarse stage also runs at the noise level its tokens really have. Pooling
  r^2 = fh*fw pixels keeps the signal and divides the noise's std by r, so the pooled x_t at time t is a base-
  resolution sample at the larger time s = r t / (1 + (r - 1) t), scaled by 1 / k, k = r / (1 + (r - 1) t). The
  stage's patchify sees k x_t, its time embedding sees s, and its output f is read as the pooled image's
  velocity in the s frame: v = ((r - 1) P x_t + f) / (1 + (r - 1) t) - (I - P) x_t / (1 - t). Exact: if f is the
  exact s-frame velocity of the pooled data, v is the exact t-frame velocity of block-constant data. With the
  average/copy adaptation init the coarse stage starts as the source model applied to the pooled image at the
  noise level that image actually has (plain `noise_skip` shows it the pooled image at t, whose noise is r times
  too small for what t means to the source).

Only stages whose patch is larger than the base patch are reparametrized (P is the identity on the base
stage), so a one-stage SiT/DiT model and the finest stage of every schedule stay plain `v`.
1 - t is clamped at `MIN_ONE_MINUS_T` so pinning a coarse stage near t = 1 (all_t training) stays finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OUTPUTS = ("v", "x", "noise_skip", "snr")
MIN_ONE_MINUS_T = 0.05


def block_mean(x: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """P x: the mean over (fh, fw) pixel blocks, broadcast back to every pixel, (N, C, H, W)."""
    fh, fw = factors
    pooled = F.avg_pool2d(x, (fh, fw))  # (N, C, H/fh, W/fw)
    return pooled.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)  # (N, C, H, W)


def pooling_ratio(factors: tuple[int, int]) -> float:
    """r = sqrt(fh * fw): how much pooling a stage's blocks divides the std of i.i.d. noise by."""
    return float(factors[0] * factors[1]) ** 0.5


def snr_time(t: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """s = r t / (1 + (r - 1) t): the time whose noise level the r-pooled x_t has (identity for r = 1)."""
    return r * t / (1.0 + (r - 1.0) * t)


def snr_scale(t: torch.Tensor, r: torch.Tensor | float) -> torch.Tensor:
    """k = r / (1 + (r - 1) t): the input scale that turns the r-pooled x_t into a sample at snr_time(t, r)."""
    return r / (1.0 + (r - 1.0) * t)


def to_velocity(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, factors: tuple[int, int], mode: str
                ) -> torch.Tensor:
    """Velocity (N, C, H, W) from a stage's raw output `out` (N, C, H, W) at x_t (N, C, H, W), t (N,)."""
    if mode == "v" or tuple(factors) == (1, 1):
        return out
    inv = 1.0 / (1.0 - t.to(out.dtype)).clamp_min(MIN_ONE_MINUS_T).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
    if mode == "x":
        return (out - x_t) * inv
    if mode == "noise_skip":
        return out - (x_t - block_mean(x_t, factors)) * inv
    if mode == "snr":
        r = pooling_ratio(factors)
        mean = block_mean(x_t, factors)  # (N, C, H, W)
        d = (1.0 + (r - 1.0) * t.to(out.dtype)).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
        return ((r - 1.0) * mean + out) / d - (x_t - mean) * inv
    raise ValueError(f"coarse_output {mode!r} is not one of {OUTPUTS}")
