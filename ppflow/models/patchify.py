"""Patchify / unpatchify at any patch size, plus the per-stage projections.

Layouts (chosen so DiT/SiT/official weights load by pure re-indexing):
- patch vector of a (ph, pw) patch: index (c * ph + r) * pw + s for channel c,
  in-patch row r, column s (the flattening of a stride-p conv kernel (D, C, ph, pw));
- unpatchify vector: index (r * pw + s) * O + o (DiT's final-layer layout).
Tokens are flattened row-major over the patch grid.
"""

from __future__ import annotations

import torch
from torch import nn


def patchify(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/ph * W/pw, C*ph*pw)."""
    N, C, H, W = x.shape
    x = x.reshape(N, C, H // ph, ph, W // pw, pw)  # (N, C, h, ph, w, pw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(N, (H // ph) * (W // pw), C * ph * pw)


def unpatchify(tokens: torch.Tensor, ph: int, pw: int, height: int, width: int) -> torch.Tensor:
    """(N, L, ph*pw*O) -> (N, O, H, W)."""
    N, _, K = tokens.shape
    h, w, O = height // ph, width // pw, K // (ph * pw)
    x = tokens.reshape(N, h, w, ph, pw, O)  # (N, h, w, ph, pw, O)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(N, O, height, width)


class PatchEmbed(nn.Module):
    """Linear projection of (ph, pw) patches to width D."""

    def __init__(self, in_channels: int, patch: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Linear(in_channels * patch[0] * patch[1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(x, *self.patch))  # (N, L, D)


class Unpatchify(nn.Module):
    """Linear projection of tokens back to (ph, pw, O) patches."""

    def __init__(self, dim: int, patch: tuple[int, int], out_channels: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.out_channels = out_channels
        self.linear = nn.Linear(dim, patch[0] * patch[1] * out_channels)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return unpatchify(self.linear(tokens), *self.patch, height, width)  # (N, O, H, W)


def average_init(weight: torch.Tensor, patch: tuple[int, int], factors: tuple[int, int], channels: int) -> torch.Tensor:
    """Base PatchEmbed weight (D, C*p*q) -> stage weight (D, C*(p*fh)*(q*fw)), average init."""
    (p, q), (fh, fw) = patch, factors
    D = weight.shape[0]
    w = weight.reshape(D, channels, p, q).repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)  # (D, C, ph, pw)
    return (w / (fh * fw)).reshape(D, -1)


def copy_init(rows: torch.Tensor, patch: tuple[int, int], factors: tuple[int, int], out_channels: int) -> torch.Tensor:
    """Base Unpatchify weight (p*q*O, D) or bias (p*q*O,) -> stage one, each pixel's rows repeated."""
    (p, q), (fh, fw) = patch, factors
    tail = rows.shape[1:]
    r = rows.reshape(p, 1, q, 1, out_channels, *tail).expand(p, fh, q, fw, out_channels, *tail)  # (a, i, b, j, o)
    return r.reshape(p * fh * q * fw * out_channels, *tail).clone()  # never a view of the source (factor 1)
