"""FLUX.1 (`FluxTransformer2DModel`): pre-packed 2x2 tokens, RoPE from `img_ids`, `timestep` = sigma.

A coarse stage groups fh x fw packed tokens into one (ppflow.models.packing), embeds them with its own linear
layer, gives them RoPE ids at the centre of the fine tokens they cover, and its output projection emits the
fh x fw packed tokens again. The fine stage is FLUX untouched (any `img_ids`, ControlNet, IP-Adapter).
"""

from __future__ import annotations

import torch
from torch import nn

from ...models.packing import (
    group_ids,
    group_tokens,
    infer_grid,
    init_patchify,
    init_unpatchify,
    noise_skip,
    ungroup_tokens,
)
from .family import Family, register


@register
class Flux(Family):
    name = "flux"
    classes = ("FluxTransformer2DModel",)
    embed = "x_embedder"
    out = "proj_out"
    temb = "time_text_embed"
    blocks = ("transformer_blocks.", "single_transformer_blocks.")
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                    "proj_mlp", "proj_out")
    unbatched = ("img_ids", "txt_ids")
    coarse_outputs = ("v", "noise_skip")
    inits = ("pooled", "tiled")

    def base_patch(self, model: nn.Module) -> tuple[int, int]:
        if getattr(model.config, "patch_size", 1) != 1:
            raise ValueError("only FLUX transformers with patch_size 1 (the pipeline packs 2x2) are supported")
        return (2, 2)

    def width(self, model: nn.Module) -> int:
        return model.inner_dim

    def sigma(self, model: nn.Module, kw: dict) -> torch.Tensor:
        t = kw["timestep"]
        return t.detach().float().reshape(-1).cpu().expand(kw["hidden_states"].shape[0])  # (B,) FLUX gets sigma

    def seq_len(self, model: nn.Module, kw: dict) -> int:
        return kw["hidden_states"].shape[1]

    def coarsen(self, model: nn.Module, kw: dict, factors: tuple[int, int], grid: tuple[int, int] | None = None
                ) -> tuple[dict, dict]:
        if kw.get("controlnet_block_samples") is not None or kw.get("controlnet_single_block_samples") is not None:
            raise ValueError("ControlNet residuals are per fine token: they can act only in the finest stage "
                             "(give the ControlNet a conditioning scale of 0 for coarse steps, or use a one-stage "
                             "schedule)")
        x = kw["hidden_states"]  # (B, L, C) packed tokens
        ids = kw["img_ids"][0] if kw["img_ids"].ndim == 3 else kw["img_ids"]  # (L, 3)
        grid = tuple(grid) if grid is not None else infer_grid(ids, x.shape[1])  # given: PPFlux's `grid=`
        if grid[0] % factors[0] or grid[1] % factors[1]:
            raise ValueError(f"packed token grid {grid[0]}x{grid[1]} is not divisible by the coarse stage's "
                             f"{factors[0]}x{factors[1]} grouping; choose a height/width that is a multiple of "
                             f"{16 * factors[0]}x{16 * factors[1]} pixels")
        x_in = group_tokens(x, grid, factors)  # (B, L/n, n*C)
        txt = kw["txt_ids"][0] if kw["txt_ids"].ndim == 3 else kw["txt_ids"]
        coarse_ids = group_ids(ids, grid, factors)  # (L/n, 3) centres of the covered fine tokens
        kw = {**kw, "hidden_states": x_in, "img_ids": coarse_ids, "txt_ids": txt.to(coarse_ids.dtype)}
        return kw, {"grid": grid, "factors": factors, "x_in": x_in, "sigma": kw["timestep"]}

    def refine(self, model: nn.Module, out: torch.Tensor, ctx: dict, coarse_output: str) -> torch.Tensor:
        if coarse_output == "noise_skip":
            sigma = ctx["sigma"].reshape(-1).expand(out.shape[0])
            out = noise_skip(out, ctx["x_in"], sigma, ctx["factors"])  # (B, L/n, n*C)
        return ungroup_tokens(out, ctx["grid"], ctx["factors"])  # (B, L, C)

    def make_embed(self, model: nn.Module, factors: tuple[int, int], init: str) -> nn.Module:
        fine = model.get_submodule(self.embed)
        n = factors[0] * factors[1]
        layer = nn.Linear(n * fine.in_features, fine.out_features, bias=fine.bias is not None, device=fine.weight.device,
                          dtype=fine.weight.dtype)
        init_patchify(layer, fine, factors, init)
        return layer

    def make_out(self, model: nn.Module, factors: tuple[int, int], init: str) -> nn.Module:
        fine = model.proj_out
        n = factors[0] * factors[1]
        layer = nn.Linear(fine.in_features, n * fine.out_features, bias=fine.bias is not None,
                          device=fine.weight.device, dtype=fine.weight.dtype)
        init_unpatchify(layer, fine, factors, init)
        return layer
