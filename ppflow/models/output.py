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

Only stages whose patch is larger than the base patch are reparametrized (P is the identity on the base
stage), so a one-stage SiT/DiT model and the finest stage of every schedule stay plain `v`.
1 - t is clamped at `MIN_ONE_MINUS_T` so pinning a coarse stage near t = 1 (all_t training) stays finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OUTPUTS = ("v", "x", "noise_skip")
MIN_ONE_MINUS_T = 0.05


def block_mean(x: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """P x: the mean over (fh, fw) pixel blocks, broadcast back to every pixel, (N, C, H, W)."""
    fh, fw = factors
    pooled = F.avg_pool2d(x, (fh, fw))  # (N, C, H/fh, W/fw)
    return pooled.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)  # (N, C, H, W)


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
    raise ValueError(f"coarse_output {mode!r} is not one of {OUTPUTS}")
