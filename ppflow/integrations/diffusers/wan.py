"""Wan 2.x (`WanTransformer3DModel`): 3D conv patches on (B, C, F, H, W) latents, 3D RoPE from the latent shape.

A coarse stage with factors (ft, fh, fw) is the same model run on a space-to-depth latent: each
ft x fh x fw block of latent pixels becomes one pixel with n = ft*fh*fw times the channels (channel c*n + k),
so Wan's own patchify, RoPE (on the coarse grid) and unpatchify (`reshape(..., -1)`) work unchanged; the
stage's patch embedding reads C*n channels and its output projection emits C_out*n, which depth-to-space
puts back. Init: the patch embedding of the block-averaged latent (pooled), the output copied to every
pixel of its block. A latent the stage's patches do not divide (Wan's 81 frames: 21 latent frames; 720p: 90
rows) is padded by repeating its last frame / edge pixels for the coarse forward, and the output cropped back.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ...models.packing import MIN_SIGMA
from .family import Family, register


def space_to_depth(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, C*n, F/ft, H/fh, W/fw), channel c*n + (kt*fh + kh)*fw + kw."""
    B, C, F, H, W = x.shape
    ft, fh, fw = factors
    x = x.view(B, C, F // ft, ft, H // fh, fh, W // fw, fw)  # (B, C, F', kt, H', kh, W', kw)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, kt, kh, kw, F', H', W')
    return x.reshape(B, C * ft * fh * fw, F // ft, H // fh, W // fw)


def depth_to_space(x: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `space_to_depth`."""
    B, K, F, H, W = x.shape
    ft, fh, fw = factors
    C = K // (ft * fh * fw)
    x = x.view(B, C, ft, fh, fw, F, H, W).permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, F', kt, H', kh, W', kw)
    return x.reshape(B, C, F * ft, H * fh, W * fw)


@register
class Wan(Family):
    name = "wan"
    classes = ("WanTransformer3DModel",)
    embed = "patch_embedding"
    out = "proj_out"
    temb = "condition_embedder.time_embedder"
    blocks = ("blocks.",)
    lora_targets = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                    "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")
    coarse_outputs = ("v", "noise_skip")
    positions = ("centre", "grid")
    timestep_scale = 1000.0

    def base_patch(self, model: nn.Module) -> tuple[int, int, int]:
        return tuple(int(v) for v in model.config.patch_size)

    def width(self, model: nn.Module) -> int:
        return model.condition_embedder.time_embedder.linear_2.out_features

    def sigma(self, model: nn.Module, kw: dict) -> torch.Tensor:
        t = kw["timestep"].detach().float().cpu()
        B = kw["hidden_states"].shape[0]
        t = t.reshape(B, -1)[:, 0] if t.ndim == 2 else t.reshape(-1).expand(B)  # (B,) per-token: the first
        return t / self.timestep_scale  # Wan gets the scheduler's timestep, sigma * 1000

    def seq_len(self, model: nn.Module, kw: dict) -> int:
        _, _, F, H, W = kw["hidden_states"].shape
        return (F * H * W) // math.prod(self.base_patch(model))

    def coarsen(self, model: nn.Module, kw: dict, factors: tuple[int, int, int]) -> tuple[dict, dict]:
        x = kw["hidden_states"]  # (B, C, F, H, W)
        if kw["timestep"].ndim == 2:
            raise ValueError("per-token timesteps (Wan 2.2 TI2V) are not supported in coarse stages; use a "
                             "one-stage schedule for image-to-video")
        p = self.base_patch(model)
        need = tuple(f * q for f, q in zip(factors, p, strict=True))
        size = tuple(x.shape[2:])  # (F, H, W)
        pad = [-n % m for n, m in zip(size, need, strict=True)]
        if any(pad):  # 81 frames -> 21 latent frames, 720p -> 90 rows: repeat the last frame / edge pixels
            x = torch.nn.functional.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")  # (B, C, F', H', W')
        x_in = space_to_depth(x, factors)  # (B, C*n, F', H', W')
        sigma = self.sigma(model, kw).to(x.device)
        return {**kw, "hidden_states": x_in}, {"factors": factors, "size": size, "x_in": x_in, "sigma": sigma}

    def refine(self, model: nn.Module, out: torch.Tensor, ctx: dict, coarse_output: str) -> torch.Tensor:
        F, H, W = ctx["size"]
        if coarse_output == "noise_skip":
            out = depth_noise_skip(out, ctx["x_in"], ctx["sigma"], math.prod(ctx["factors"]))
        return depth_to_space(out, ctx["factors"])[:, :, :F, :H, :W]  # (B, C_out, F, H, W)

    @contextlib.contextmanager
    def coarse_context(self, model: nn.Module, ctx: dict):
        """With `positions='centre'` Wan's RoPE places each coarse token at the centre of the fine tokens it covers
        (FLUX's coarse ids do the same): its tables are swapped for the coarse forward, so the RoPE module's own
        forward and any hook on it (context parallelism splits its output) run unchanged. 'grid' keeps the coarse
        grid's own positions 0, 1, 2, ..."""
        if ctx.get("positions", "centre") == "grid":
            yield
            return
        rope = model.rope
        saved = rope.freqs_cos, rope.freqs_sin
        cached = rope.__dict__.setdefault("_ppflow_centred", {})  # made once per stage, device and dtype
        key = (tuple(ctx["factors"]), saved[0].device, saved[0].dtype)
        if key not in cached:
            cached[key] = centred_tables(rope, ctx["factors"])
        rope.freqs_cos, rope.freqs_sin = cached[key]
        try:
            yield
        finally:
            rope.freqs_cos, rope.freqs_sin = saved

    def make_embed(self, model: nn.Module, factors: tuple[int, int, int], init: str) -> nn.Module:
        fine = model.patch_embedding
        n = math.prod(factors)
        w = fine.weight
        layer = nn.Conv3d(fine.in_channels * n, fine.out_channels, fine.kernel_size, fine.stride,
                          device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w.repeat_interleave(n, dim=1) / n)  # the fine conv of the block-averaged latent
            layer.bias.copy_(fine.bias)
        return layer

    def make_out(self, model: nn.Module, factors: tuple[int, int, int], init: str) -> nn.Module:
        return depth_out(model.proj_out, math.prod(factors), math.prod(self.base_patch(model)))


def centred_tables(rope: nn.Module, factors: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's RoPE tables (max_seq_len, D) for a coarse stage: row j of an axis with factor f holds position
    j*f + (f - 1)/2, the centre of the fine tokens j*f .. j*f + f - 1 that coarse token j covers. An axis with f = 1
    keeps the model's own rows; the others rotate at the table's own frequencies (read from its row 1)."""
    dims = (rope.t_dim, rope.h_dim, rope.w_dim)
    cos, sin = list(rope.freqs_cos.split(dims, dim=1)), list(rope.freqs_sin.split(dims, dim=1))
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        c, s = cos[axis], sin[axis]  # (max_seq_len, d)
        w = torch.atan2(s[1, ::2].double(), c[1, ::2].double())  # (d/2,) the pair frequencies
        pos = torch.arange(len(c), dtype=torch.float64, device=c.device) * f + (f - 1) / 2
        angle = torch.outer(pos, w)  # (max_seq_len, d/2)
        cos[axis], sin[axis] = (fn(angle).repeat_interleave(2, dim=1).to(c.dtype) for fn in (torch.cos, torch.sin))
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


def depth_noise_skip(out: torch.Tensor, x_in: torch.Tensor, sigma: torch.Tensor, n: int) -> torch.Tensor:
    """`noise_skip` on a space-to-depth coarse stage (channels c*n + k): v = f + (x - P x) / sigma, P the mean over
    the n pixels of a block. For data constant on blocks the within-block part of x is sigma times that of the
    noise, so the within-block part of the target noise - x0 is given exactly and the network handles the block
    means, what a coarse token can carry (ppflow.models.packing.noise_skip in this layout)."""
    if out.shape[1] != x_in.shape[1]:
        raise ValueError(f"noise_skip needs as many output as input channels ({out.shape[1]} vs {x_in.shape[1]}); "
                         "use coarse_output='v' for this model")
    B, K = x_in.shape[:2]
    blocks = x_in.view(B, K // n, n, *x_in.shape[2:])  # (B, C, n, ...)
    detail = (blocks - blocks.mean(2, keepdim=True)).view_as(x_in)  # (B, C*n, ...)
    inv = 1.0 / sigma.to(out.dtype).clamp_min(MIN_SIGMA).view(-1, *[1] * (out.ndim - 1))
    return out + detail.to(out.dtype) * inv


def depth_out(fine: nn.Linear, n: int, pixels: int) -> nn.Linear:
    """The output projection of a space-to-depth coarse stage: per patch pixel C*n channels (c*n + k) where the
    fine one has C; copy init: rows (p, c*n + k) = fine row (p, c), every pixel of a block gets the output."""
    C, w = fine.out_features // pixels, fine.weight
    layer = nn.Linear(fine.in_features, fine.out_features * n, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        layer.weight.copy_(w.view(pixels, C, -1).repeat_interleave(n, dim=1).reshape(pixels * C * n, -1))
        layer.bias.copy_(fine.bias.view(pixels, C).repeat_interleave(n, dim=1).reshape(-1))
    return layer
