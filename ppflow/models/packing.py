"""Coarse stages on FLUX's packing: group fh x fw packed tokens into one, and the average/copy inits.

FLUX packs a (B, C, H, W) latent into (B, H/2 * W/2, 4C) tokens, channel = c*4 + dy*2 + dx, row-major over
the (h, w) = (H/2, W/2) token grid. A stage with a (2fh) x (2fw) latent patch groups fh x fw packed tokens:
channel = k * 4C + (c*4 + dy*2 + dx) with sub-token k = a*fw + b (sub-token major). Its RoPE ids are the
centres of the fine tokens it covers (fractional, float32).
"""

from __future__ import annotations

import torch

INITS = ("pooled", "tiled")
COARSE_OUTPUTS = ("v", "noise_skip")
MIN_SIGMA = 0.05  # noise_skip divides by sigma; coarse stages sit at high sigma, the clamp only guards pinning


def group_tokens(x: torch.Tensor, grid: tuple[int, int], factors: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) packed tokens -> (B, h/fh * w/fw, fh*fw*C) coarse tokens."""
    (h, w), (fh, fw) = grid, factors
    if fh == fw == 1:
        return x
    B, _, C = x.shape
    x = x.view(B, h // fh, fh, w // fw, fw, C)  # (B, I, a, J, b, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, (h // fh) * (w // fw), fh * fw * C)  # (B, I*J, (a b C))


def ungroup_tokens(x: torch.Tensor, grid: tuple[int, int], factors: tuple[int, int]) -> torch.Tensor:
    """Inverse of `group_tokens`: (B, h/fh * w/fw, fh*fw*C) -> (B, h*w, C)."""
    (h, w), (fh, fw) = grid, factors
    if fh == fw == 1:
        return x
    B, _, K = x.shape
    C = K // (fh * fw)
    x = x.view(B, h // fh, w // fw, fh, fw, C)  # (B, I, J, a, b, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, h * w, C)  # (B, (I a J b), C)


def group_ids(ids: torch.Tensor, grid: tuple[int, int], factors: tuple[int, int]) -> torch.Tensor:
    """(h*w, 3) fine RoPE ids -> (h/fh * w/fw, 3) float32 ids at the centre of each group."""
    if factors == (1, 1):
        return ids
    return group_tokens(ids.float()[None], grid, factors).view(-1, factors[0] * factors[1], ids.shape[-1]).mean(1)


def infer_grid(img_ids: torch.Tensor, num_tokens: int) -> tuple[int, int]:
    """The packed token grid (h, w) from FLUX's image ids (0, i, j); one host sync."""
    lo_hi = torch.stack([img_ids[:, 1].amin(), img_ids[:, 1].amax(), img_ids[:, 2].amin(), img_ids[:, 2].amax()])
    r0, r1, c0, c1 = (round(float(v)) for v in lo_hi.tolist())
    h, w = r1 - r0 + 1, c1 - c0 + 1
    if h * w != num_tokens:
        raise ValueError(f"img_ids span a {h}x{w} grid but hidden_states has {num_tokens} image tokens; "
                         "pass grid=(rows, cols) of the packed tokens")
    return h, w


def _pooled_index(factors: tuple[int, int], channels: int) -> torch.Tensor:
    """For each coarse channel (a, b, c, dy, dx): the fine channel of the pooled 2x2 patch it averages into."""
    fh, fw = factors
    C = channels // 4
    a, b, c, dy, dx = torch.meshgrid(torch.arange(fh), torch.arange(fw), torch.arange(C), torch.arange(2),
                                     torch.arange(2), indexing="ij")
    py, px = (2 * a + dy) // fh, (2 * b + dx) // fw  # latent row/col inside the coarse patch, pooled by (fh, fw)
    return (c * 4 + py * 2 + px).reshape(-1)  # (fh*fw*channels,)


def block_mean(x: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """P x on coarse tokens (B, N, fh*fw*C4): each latent pixel replaced by the mean of its (fh, fw) block."""
    n = factors[0] * factors[1]
    idx = _pooled_index(factors, x.shape[-1] // n).to(x.device)  # (fh*fw*C4,) pooled channel of each channel
    pooled = x.new_zeros(*x.shape[:-1], x.shape[-1] // n).index_add_(-1, idx, x) / n  # (B, N, C4)
    return pooled.index_select(-1, idx)  # (B, N, fh*fw*C4)


def noise_skip(out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """FLUX-convention `noise_skip` (target noise - x0): v = f + (x - P x) / sigma, on coarse tokens (B, N, K).

    x = sigma * noise + (1 - sigma) * x0; for data constant on (fh, fw) blocks (I - P) x = sigma (I - P) noise,
    so the within-block part of the target is given analytically and the network handles what a base token
    would (SiT's `noise_skip` in ppflow.models.output, with t = 1 - sigma and the target's sign flipped).
    """
    inv = 1.0 / sigma.to(out.dtype).clamp_min(MIN_SIGMA).view(-1, 1, 1)  # (B, 1, 1)
    return out + (x - block_mean(x, factors)).to(out.dtype) * inv  # (B, N, K)


@torch.no_grad()
def init_patchify(coarse: torch.nn.Linear, fine: torch.nn.Linear, factors: tuple[int, int], init: str) -> None:
    """Average init of a coarse x_embedder from FLUX's (channels -> D).

    `tiled`: W.repeat / n, the mean of the covered fine token embeddings. `pooled`: the official SiT recipe
    (repeat_interleave of the kernel / n) on FLUX's packing, i.e. the fine embedding of the latent patch
    average-pooled by (fh, fw).
    """
    n = factors[0] * factors[1]
    if init == "tiled":
        coarse.weight.copy_(fine.weight.repeat(1, n) / n)
    elif init == "pooled":
        coarse.weight.copy_(fine.weight[:, _pooled_index(factors, fine.in_features)] / n)
    else:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    if fine.bias is not None:
        coarse.bias.copy_(fine.bias)


@torch.no_grad()
def init_unpatchify(coarse: torch.nn.Linear, fine: torch.nn.Linear, factors: tuple[int, int], init: str) -> None:
    """Copy init of a coarse proj_out from FLUX's (D -> channels).

    `tiled`: every covered fine token gets the fine output. `pooled`: the fine 2x2 output nearest-upsampled by
    (fh, fw), as the official SiT code does.
    """
    n = factors[0] * factors[1]
    if init == "tiled":
        coarse.weight.copy_(fine.weight.repeat(n, 1))
        if fine.bias is not None:
            coarse.bias.copy_(fine.bias.repeat(n))
    elif init == "pooled":
        idx = _pooled_index(factors, fine.out_features)
        coarse.weight.copy_(fine.weight[idx])
        if fine.bias is not None:
            coarse.bias.copy_(fine.bias[idx])
    else:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
