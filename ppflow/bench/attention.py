"""The official code's attention for a mixed-stage batch, for comparison: one packed row, a dense mask.

ppflow attends per group of equal-length samples (`models.layers.Attention`: no mask, so SDPA may
pick flash attention). The official PPFlow training code instead packs every token of the batch into
one sequence and masks attention to a block-diagonal (T, T) pattern, which rules flash out and costs
T^2 scores. `use_dense_mask(model)` swaps a model's attention to that form (same result, up to rounding).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import Packing

ATTENTION_MODES = ("sdpa", "dense-mask")


def block_diagonal_mask(packing: Packing, device: torch.device) -> torch.Tensor:
    """(T, T) bool: token i may attend to token j iff both belong to the same sample."""
    sample = packing.token_sample(device)  # (T,)
    return sample[:, None] == sample[None, :]


def dense_mask_attention(attn: nn.Module, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """`Attention.forward` over one packed row (1, H, T, D/H) with a block-diagonal mask."""
    T, D = x.shape
    H = attn.num_heads
    q, k, v = attn.qkv(x).view(1, T, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)  # each (1, H, T, D/H)
    mask = block_diagonal_mask(packing, x.device)  # (T, T)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (1, H, T, D/H)
    return attn.proj(o.transpose(1, 2).reshape(T, D))  # (T, D)


def use_attention(model: nn.Module, mode: str) -> nn.Module:
    """Set every block's attention to `mode` ('sdpa': ppflow's per-group SDPA, 'dense-mask': the official form)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention {mode!r} is not one of {ATTENTION_MODES}")
    for block in model.blocks:
        if mode == "dense-mask":
            block.attn.forward = functools.partial(dense_mask_attention, block.attn)
        elif "forward" in vars(block.attn):
            del block.attn.forward  # back to the class's per-group SDPA
    return model
