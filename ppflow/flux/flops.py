"""Analytic FLOPs of FLUX transformer forwards per PPFlow stage, and the bound on the sampling speed-up.

Same convention as `ppflow.models.flops`: a multiply-add is 2 FLOPs, every matrix product is counted,
element-wise work (norms, activations, RoPE, gates) is not. Both block kinds cost 24*N*D^2 + 4*N^2*D for a
joint sequence of N = image + text tokens: double-stream (MMDiT) blocks run q/k/v, out-projection and a
4x MLP on each stream; single-stream blocks run q/k/v, a 4x MLP in parallel and one (D + 4D) -> D
projection. `total` counts text tokens, `text_free` only the image tokens in the blocks (N = L), the
convention under which the paper's 512 px figure comes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..models.schedule import PyramidSchedule

# The paper's measured two-stage speed-ups on FLUX.1-dev, by image side in pixels.
PAPER_SPEEDUPS = {512: 1.61, 1024: 1.76, 2048: 1.86}


@dataclass(frozen=True)
class FluxArch:
    """The shape of a FLUX transformer (FluxTransformer2DModel's config fields)."""

    in_channels: int = 64  # packed channels: 16 latent channels x 2x2
    num_layers: int = 19  # double-stream blocks
    num_single_layers: int = 38  # single-stream blocks
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    joint_attention_dim: int = 4096  # T5 width
    pooled_projection_dim: int = 768  # CLIP pooled width
    guidance_embeds: bool = True  # dev: guidance-distilled
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)  # RoPE dims per id axis (sum = head dim; no FLOPs)

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_config(cls, config) -> FluxArch:
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        values = {k: get(k, None) for k in cls.__dataclass_fields__}
        if values["axes_dims_rope"] is not None:
            values["axes_dims_rope"] = tuple(values["axes_dims_rope"])
        return cls(**{k: v for k, v in values.items() if v is not None})


ARCHS = {
    "dev": FluxArch(),
    "schnell": FluxArch(guidance_embeds=False),
    # CPU benchmark size: 2 double + 4 single blocks, 4 heads of 64 (dim 256)
    "tiny": FluxArch(num_layers=2, num_single_layers=4, num_attention_heads=4, attention_head_dim=64,
                     joint_attention_dim=256, pooled_projection_dim=128, axes_dims_rope=(8, 28, 28)),
}
TEXT_TOKENS = {"dev": 512, "schnell": 256, "tiny": 64}  # T5 max_sequence_length of each model


@dataclass(frozen=True)
class FluxForwardFlops:
    """FLOPs of one single-sample forward in one stage."""

    stage: int
    image_tokens: int
    text_tokens: int
    terms: dict[str, int] = field(default_factory=dict)
    text_free: int = 0  # block FLOPs with only the image tokens in the sequence

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def _blocks(n: int, D: int, depth: int) -> tuple[int, int]:
    """(linear, attention) FLOPs of `depth` FLUX blocks on a joint sequence of n tokens."""
    return depth * 24 * n * D * D, depth * 4 * n * n * D


def forward_flops(arch: FluxArch, factors: tuple[int, int], grid: tuple[int, int], text_tokens: int,
                  stage: int = 0) -> FluxForwardFlops:
    """One forward of one sample whose packed token grid is `grid`, grouped by `factors` (1x1 = FLUX)."""
    (h, w), (fh, fw) = grid, factors
    if h % fh or w % fw:
        raise ValueError(f"packed grid {h}x{w} is not divisible by the {fh}x{fw} grouping")
    n = fh * fw
    L, T, D, C = (h // fh) * (w // fw), text_tokens, arch.dim, arch.in_channels
    depth = arch.num_layers + arch.num_single_layers
    lin, att = _blocks(L + T, D, depth)
    lin0, att0 = _blocks(L, D, depth)
    emb = 2 * (256 * D + D * D)  # one timestep MLP: 256 -> D -> D
    terms = {
        "x_embedder": 2 * L * n * C * D,  # = 2*h*w*C*D at any grouping
        "context_embedder": 2 * T * arch.joint_attention_dim * D,
        "time_text_embed": emb * (2 if arch.guidance_embeds else 1) + 2 * (arch.pooled_projection_dim * D + D * D),
        "blocks_linear": lin,
        "blocks_attention": att,
        # adaLN per sample, not per token: 2 x (D -> 6D) per double block, D -> 3D per single, D -> 2D at the end
        "modulation": 2 * D * D * (12 * arch.num_layers + 3 * arch.num_single_layers + 2),
        "proj_out": 2 * L * D * n * C,
    }
    return FluxForwardFlops(stage, L, T, terms, lin0 + att0)


def packed_grid(height: int, width: int | None = None, vae_factor: int = 8) -> tuple[int, int]:
    """Packed token grid of an image: pixels / (VAE factor x 2x2 packing)."""
    width = height if width is None else width
    if height % (2 * vae_factor) or width % (2 * vae_factor):
        raise ValueError(f"image {height}x{width} is not a multiple of {2 * vae_factor} pixels (VAE x packing)")
    return height // (2 * vae_factor), width // (2 * vae_factor)


def stage_flops(arch: FluxArch, schedule: PyramidSchedule, grid: tuple[int, int], text_tokens: int):
    """One FluxForwardFlops per stage of `schedule` (finest 2x2 = the base FLUX forward)."""
    return [forward_flops(arch, schedule.factors(s), grid, text_tokens, s) for s in range(schedule.num_stages)]


def counts_flops(arch: FluxArch, schedule: PyramidSchedule, grid: tuple[int, int], text_tokens: int,
                 counts: Sequence[float]) -> dict:
    """FLOPs of `counts[s]` single-sample forwards in each stage, and of as many base forwards."""
    per = stage_flops(arch, schedule, grid, text_tokens)
    base = forward_flops(arch, (1, 1), grid, text_tokens)
    n = sum(counts)
    return {
        "total": sum(c * f.total for c, f in zip(counts, per)),
        "text_free": sum(c * f.text_free for c, f in zip(counts, per)),
        "baseline_total": n * base.total,
        "baseline_text_free": n * base.text_free,
    }


def resolution_table(arch: FluxArch, schedule: PyramidSchedule, resolutions: Sequence[int], text_tokens: int,
                     shares: Sequence[float] | None = None) -> list[dict]:
    """Per resolution: per-stage GFLOPs, the test-FLOPs fraction and speed-up bound (both conventions).

    `shares`: fraction of the denoising steps in each stage (default: the stages' spans in unshifted sigma,
    what PPFluxPipeline's grid gives with `boundaries='unshifted'`).
    """
    shares = [s.span for s in schedule.stages] if shares is None else list(shares)
    if len(shares) != schedule.num_stages:
        raise ValueError(f"{len(shares)} stage shares given for {schedule.num_stages} stages")
    rows = []
    for res in resolutions:
        grid = packed_grid(res)
        schedule.check_latent(2 * grid[0], 2 * grid[1])
        per = stage_flops(arch, schedule, grid, text_tokens)
        c = counts_flops(arch, schedule, grid, text_tokens, shares)
        frac, frac0 = c["total"] / c["baseline_total"], c["text_free"] / c["baseline_text_free"]
        coarse = per[0]
        ratio = coarse.total / per[-1].total if schedule.num_stages > 1 else 1.0
        ratio0 = coarse.text_free / per[-1].text_free if schedule.num_stages > 1 else 1.0
        paper = PAPER_SPEEDUPS.get(res)
        rows.append({
            "resolution": res, "image_tokens": grid[0] * grid[1], "text_tokens": text_tokens,
            "stages": [{"stage": f.stage, "patch": list(schedule.stages[f.stage].patch), "image_tokens": f.image_tokens,
                        "total_gflops": f.total / 1e9, "text_free_gflops": f.text_free / 1e9, "share": shares[f.stage]}
                       for f in per],
            "coarse_fine_ratio": ratio, "coarse_fine_ratio_text_free": ratio0,
            "fraction": frac, "fraction_text_free": frac0, "bound": 1 / frac, "bound_text_free": 1 / frac0,
            "paper_speedup": paper,
            # share of steps in the coarsest stage that a 2-stage bound equal to the paper's figure would need
            "paper_share_needed": None if paper is None or schedule.num_stages < 2 else (1 - 1 / paper) / (1 - ratio),
            "paper_share_needed_text_free": (None if paper is None or schedule.num_stages < 2
                                             else (1 - 1 / paper) / (1 - ratio0)),
        })
    return rows
