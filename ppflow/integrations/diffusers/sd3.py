"""SD3 / SD3.5 (`SD3Transformer2DModel`): a conv patch embedding with learned-size sincos positions (cropped
from a `pos_embed_max_size` grid), `timestep` = sigma x 1000, unpatchify by `out_channels`.

Like Wan (wan.py), a coarse stage runs the model on a space-to-depth latent (C*n channels at 1/f the size): the
stage's patch embedding reads C*n channels, its positions are the fine grid's position embeddings averaged over
each coarse token's fh x fw fine tokens (the "pool" of the issue: a coarse token sits where its fine tokens
are), and its output projection emits C*n channels per pixel, which the model's own unpatchify lays out while
`out_channels` reads C*n for that forward; depth-to-space puts them back. A latent the coarse patches do not divide
is padded by repeating its edge and cropped back.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .family import Family, register
from .wan import depth_noise_skip, depth_out, depth_to_space, space_to_depth


def _s2d(x: torch.Tensor, f: tuple[int, int]) -> torch.Tensor:
    return space_to_depth(x.unsqueeze(2), (1, *f)).squeeze(2)  # (B, C*n, H/fh, W/fw)


def _d2s(x: torch.Tensor, f: tuple[int, int]) -> torch.Tensor:
    return depth_to_space(x.unsqueeze(2), (1, *f)).squeeze(2)  # (B, C, H, W)


class CoarsePatchEmbed(nn.Module):
    """The coarse stage's patch embedding: its own conv on the s2d latent, positions pooled from the fine grid."""

    def __init__(self, fine: nn.Module, factors: tuple[int, int]) -> None:
        super().__init__()
        self.__dict__["fine"] = fine  # the model's own PatchEmbed (for its position table), not a parameter here
        self.factors = factors
        n = factors[0] * factors[1]
        w = fine.proj.weight  # (D, C, p, p)
        self.proj = nn.Conv2d(w.shape[1] * n, w.shape[0], fine.proj.kernel_size, fine.proj.stride,
                              bias=fine.proj.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():  # the fine embedding of the block-averaged latent
            self.proj.weight.copy_(w.repeat_interleave(n, dim=1) / n)
            if fine.proj.bias is not None:
                self.proj.bias.copy_(fine.proj.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        fine, (fh, fw) = self.fine, self.factors
        p = fine.patch_size
        h, w = latent.shape[-2] // p, latent.shape[-1] // p  # coarse token grid
        x = self.proj(latent).flatten(2).transpose(1, 2)  # (B, h*w, D)
        if fine.layer_norm:
            x = fine.norm(x)
        if fine.pos_embed is None:
            return x
        H, W = h * fh, w * fw  # the fine token grid
        if fine.pos_embed_max_size:
            pos = fine.cropped_pos_embed(H * p, W * p)  # (1, H*W, D)
        else:
            from diffusers.models.embeddings import get_2d_sincos_pos_embed

            pos = get_2d_sincos_pos_embed(embed_dim=fine.pos_embed.shape[-1], grid_size=(H, W),
                                          base_size=fine.base_size, interpolation_scale=fine.interpolation_scale,
                                          device=latent.device, output_type="pt").float().unsqueeze(0)
        pos = pos.view(1, h, fh, w, fw, -1).mean((2, 4)).reshape(1, h * w, -1)  # (1, h*w, D): pooled
        return (x + pos.to(x.dtype)).to(latent.dtype)


@register
class SD3(Family):
    name = "sd3"
    classes = ("SD3Transformer2DModel",)
    embed = "pos_embed"
    out = "proj_out"
    temb = "time_text_embed"
    blocks = ("transformer_blocks.",)
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2")
    unbatched = ()
    separate_cfg = False  # StableDiffusion3Pipeline batches [negative, positive]
    timestep_scale = 1000.0
    coarse_outputs = ("v", "noise_skip")

    def base_patch(self, model: nn.Module) -> tuple[int, int]:
        p = int(model.config.patch_size)
        return (p, p)

    def width(self, model: nn.Module) -> int:
        return model.inner_dim

    def sigma(self, model: nn.Module, kw: dict) -> torch.Tensor:
        B = kw["hidden_states"].shape[0]
        return kw["timestep"].detach().float().reshape(-1).cpu().expand(B) / self.timestep_scale  # sigma x 1000

    def seq_len(self, model: nn.Module, kw: dict) -> int:
        H, W = kw["hidden_states"].shape[-2:]
        return (H * W) // math.prod(self.base_patch(model))

    def coarsen(self, model: nn.Module, kw: dict, factors: tuple[int, int]) -> tuple[dict, dict]:
        if kw.get("block_controlnet_hidden_states") is not None:
            raise ValueError("ControlNet residuals are per fine token: they can act only in the finest stage")
        x = kw["hidden_states"]  # (B, C, H, W)
        p = self.base_patch(model)[0]
        size = tuple(x.shape[-2:])
        pad = [-n % (p * f) for n, f in zip(size, factors, strict=True)]
        if any(pad):
            x = torch.nn.functional.pad(x, (0, pad[1], 0, pad[0]), mode="replicate")
        n = factors[0] * factors[1]
        x_in = _s2d(x, factors)  # (B, C*n, H/fh, W/fw)
        sigma = self.sigma(model, kw).to(x.device)
        return {**kw, "hidden_states": x_in}, {"factors": factors, "size": size, "n": n, "x_in": x_in, "sigma": sigma}

    def refine(self, model: nn.Module, out: torch.Tensor, ctx: dict, coarse_output: str) -> torch.Tensor:
        H, W = ctx["size"]
        if coarse_output == "noise_skip":
            out = depth_noise_skip(out, ctx["x_in"], ctx["sigma"], ctx["n"])
        return _d2s(out, ctx["factors"])[:, :, :H, :W]  # (B, C_out, H, W)

    @contextlib.contextmanager
    def coarse_context(self, model: nn.Module, ctx: dict):
        """The model's unpatchify reshapes by `out_channels`: C_out * n channels for the coarse forward."""
        own = model.out_channels
        model.out_channels = own * ctx["n"]
        try:
            yield
        finally:
            model.out_channels = own

    def make_embed(self, model: nn.Module, factors: tuple[int, int], init: str) -> nn.Module:
        return CoarsePatchEmbed(model.pos_embed, factors)

    def make_out(self, model: nn.Module, factors: tuple[int, int], init: str) -> nn.Module:
        return depth_out(model.proj_out, math.prod(factors), math.prod(self.base_patch(model)))
