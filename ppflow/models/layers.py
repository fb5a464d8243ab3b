"""Transformer building blocks (DiT-style), written against plain PyTorch.

Tokens travel *packed*: a flat (T, D) tensor holding the tokens of every
sample back to back, described by a `Packing`. Token-wise work (linear layers,
norms) runs on all tokens at once; adaLN modulation is per sample; attention
runs per group of equal-length sequences, so no token ever attends to another
sample and no mask is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Packing:
    """Layout of packed tokens: consecutive groups of `n` samples with `length` tokens each."""

    groups: tuple[tuple[int, int], ...]  # ((n_samples, seq_len), ...)
    _token_sample: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_samples(self) -> int:
        return sum(n for n, _ in self.groups)

    @property
    def num_tokens(self) -> int:
        return sum(n * length for n, length in self.groups)

    def segments(self):
        """Yield (token_start, n, length) per group."""
        start = 0
        for n, length in self.groups:
            yield start, n, length
            start += n * length

    def token_sample(self, device: torch.device) -> torch.Tensor:
        """Sample index of every token, (T,)."""
        if device not in self._token_sample:
            lengths = torch.tensor([length for n, length in self.groups for _ in range(n)], device=device)
            self._token_sample[device] = torch.arange(self.num_samples, device=device).repeat_interleave(lengths)
        return self._token_sample[device]

    def per_token(self, v: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-sample tensor (N, K) to a per-token one (T, K)."""
        return v.index_select(0, self.token_sample(v.device))

    def modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x * (1 + scale) + shift with per-sample shift/scale (N, D) on packed x (T, D)."""
        if len(self.groups) == 1:
            n, length = self.groups[0]
            return (x.view(n, length, -1) * (1 + scale[:, None]) + shift[:, None]).view(x.shape)
        return x * (1 + self.per_token(scale)) + self.per_token(shift)

    def gate(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """gate * x with a per-sample gate (N, D) on packed x (T, D)."""
        if len(self.groups) == 1:
            n, length = self.groups[0]
            return (x.view(n, length, -1) * gate[:, None]).view(x.shape)
        return x * self.per_token(gate)


class Attention(nn.Module):
    """Multi-head self-attention on packed tokens; attention stays inside each sample."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        D = x.shape[1]
        H = self.num_heads
        qkv = self.qkv(x)  # (T, 3D)
        outs = []
        for start, n, length in packing.segments():
            part = qkv[start : start + n * length].view(n, length, 3, H, D // H)
            q, k, v = part.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, H, L, D/H)
            o = F.scaled_dot_product_attention(q, k, v)  # (n, H, L, D/H)
            outs.append(o.transpose(1, 2).reshape(n * length, D))  # (n*L, D)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)  # (T, D)
        return self.proj(out)


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, packing: Packing) -> torch.Tensor:
        # x (T, D) packed tokens, c (N, D) per-sample conditioning
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = packing.modulate(self.norm1(x), shift_msa, scale_msa)  # (T, D)
        x = x + packing.gate(self.attn(h, packing), gate_msa)  # (T, D)
        h = packing.modulate(self.norm2(x), shift_mlp, scale_mlp)  # (T, D)
        return x + packing.gate(self.mlp(h), gate_mlp)  # (T, D)


class TimestepEmbedder(nn.Module):
    """Scalar time -> sinusoidal features (cos half, then sin) -> MLP."""

    def __init__(self, dim: int, frequency_size: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (N, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
        if self.frequency_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t).to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class label -> vector; row `num_classes` is the null class used for CFG."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop(self, y: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace labels by the null class with probability `prob` (label dropout for CFG training)."""
        if prob <= 0:
            return y
        drop = torch.rand(y.shape, generator=generator, device=y.device) < prob
        return torch.where(drop, torch.full_like(y, self.null_label), y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)  # (N, D)


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin(pos*w_k)] then [cos(pos*w_k)], w_k = 10000^(-k/(dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width {dim} must be even")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Fixed 2-D table for a row-major grid: first dim/2 channels encode the column, then the row."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width {dim} must be a multiple of 4")
    r, c = torch.meshgrid(rows.double(), cols.double(), indexing="ij")  # (h, w)
    emb = torch.cat([sincos_1d(dim // 2, c.reshape(-1)), sincos_1d(dim // 2, r.reshape(-1))], dim=1)
    return emb.float()  # (h*w, dim)
