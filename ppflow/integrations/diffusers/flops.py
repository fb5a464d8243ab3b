"""FLOPs of the PPFlow hook on full-size diffusers models, counted on the meta device (no weights, no memory).

A coarse stage runs the model itself on fewer tokens (FLUX: packed tokens grouped; Wan: a space-to-depth
latent), so its FLOPs are the plain model's at the coarse token grid: torch's FlopCounterMode counts one
forward of a meta-device model at each stage's grid (every matrix product and attention, text tokens
included; the coarse patch embedding and output projection are n times wider than the model's own, a few
MFLOPs at most, not counted). The sampling bound takes each stage's share of the steps from its span in
unshifted sigma, what the scheduler grid with the boundaries on it gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .family import family_of
from .stages import StagePlan


@dataclass(frozen=True)
class FullSize:
    """A released model's transformer config and the inputs its pipeline gives it."""

    name: str
    family: str
    config: dict
    text_tokens: int
    sizes: tuple[tuple[int, ...], ...]  # (height, width) in pixels, or (frames, height, width) for video
    schedules: tuple[str, ...]


FULL_SIZES = {
    "flux.1-dev": FullSize("FLUX.1-dev", "flux", dict(  # noqa: C408 (configs read as keyword arguments)
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56)), 512, ((512, 512), (1024, 1024), (1440, 1440)), ("ppf2", "ppf3")),
    "flux.2-dev": FullSize("FLUX.2-dev", "flux2", dict(  # noqa: C408
        patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
        num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256,
        axes_dims_rope=(32, 32, 32, 32)), 512, ((1024, 1024),), ("ppf2", "ppf3")),
    "qwen-image": FullSize("Qwen-Image", "qwen", dict(  # noqa: C408
        patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=3584, axes_dims_rope=(16, 56, 56)), 256, ((1024, 1024), (1328, 1328)), ("ppf2", "ppf3")),
    "sd3.5-large": FullSize("SD3.5-large", "sd3", dict(  # noqa: C408
        sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192, qk_norm="rms_norm"), 333, ((1024, 1024),), ("ppf2", "ppf3")),
    "wan2.1-14b": FullSize("Wan2.1-T2V-14B", "wan", dict(  # noqa: C408
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6), 512, ((81, 480, 832), (81, 720, 1280)),
        ("ppf2", "ppf2-video", "ppf3-video")),
}
CLASSES = {"flux": "FluxTransformer2DModel", "flux2": "Flux2Transformer2DModel", "qwen": "QwenImageTransformer2DModel",
           "sd3": "SD3Transformer2DModel", "wan": "WanTransformer3DModel"}


def meta_model(spec: FullSize) -> torch.nn.Module:
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, CLASSES[spec.family])(**spec.config).eval()


def _tokens(n: int, unit: int, f: int) -> int:
    """Coarse tokens along an axis of `n` latent pixels: `unit` pixels a fine token, f fine tokens a coarse one,
    padded up as the hook pads."""
    return -(-n // (unit * f))


def stage_inputs(spec: FullSize, size: tuple[int, ...], factors: tuple[int, ...], text_tokens: int,
                 make=torch.empty) -> dict:
    """Forward arguments (batch 1) of the plain model at the grid of a stage with `factors` (base tokens per token,
    per axis), each tensor made by `make(*shape)` (timestep included: set it after)."""
    T, cfg = text_tokens, spec.config
    if spec.family in ("flux", "flux2", "qwen"):  # 2x2-packed tokens of an 8x VAE latent: 16 px each
        h, w = _tokens(size[0] // 8, 2, factors[-2]), _tokens(size[1] // 8, 2, factors[-1])
        kw = {"hidden_states": make(1, h * w, cfg["in_channels"]), "timestep": make(1),
              "encoder_hidden_states": make(1, T, cfg["joint_attention_dim"])}
        if spec.family == "qwen":
            kw.update(img_shapes=[[(1, h, w)]], encoder_hidden_states_mask=None)
        else:
            axes = len(cfg["axes_dims_rope"])
            kw.update(img_ids=make(h * w, axes), txt_ids=make(T, axes), guidance=make(1))
            if spec.family == "flux":
                kw["pooled_projections"] = make(1, cfg["pooled_projection_dim"])
    elif spec.family == "sd3":
        h, w = _tokens(size[0] // 8, 2, factors[-2]) * 2, _tokens(size[1] // 8, 2, factors[-1]) * 2
        kw = {"hidden_states": make(1, cfg["in_channels"], h, w), "timestep": make(1),
              "encoder_hidden_states": make(1, T, cfg["joint_attention_dim"]),
              "pooled_projections": make(1, cfg["pooled_projection_dim"])}
    else:
        frames, height, width = size
        lat = ((frames - 1) // 4 + 1, height // 8, width // 8)  # Wan's VAE: 4x in time, 8x in space
        shape = (_tokens(lat[0], 1, factors[0]), _tokens(lat[1], 2, factors[1]) * 2,
                 _tokens(lat[2], 2, factors[2]) * 2)  # the plain model at the coarse grid
        kw = {"hidden_states": make(1, cfg["in_channels"], *shape), "timestep": make(1),
              "encoder_hidden_states": make(1, T, cfg["text_dim"])}
    return kw


def forward_flops(model: torch.nn.Module, spec: FullSize, size: tuple[int, ...], factors: tuple[int, ...],
                  text_tokens: int) -> int:
    """FLOPs of one forward (batch 1) at the grid of a stage with `factors` (base tokens per token, per axis)."""
    with torch.device("meta"):
        kw = stage_inputs(spec, size, factors, text_tokens)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kw, return_dict=False)
    return counter.get_total_flops()


def full_size_table(names=tuple(FULL_SIZES)) -> list[dict]:
    """Per model, size and schedule: per-stage TFLOPs per forward and the sampling bound, with text and without."""
    rows = []
    for key in names:
        spec = FULL_SIZES[key]
        model = meta_model(spec)
        base_patch = family_of(model).base_patch(model)
        for size in spec.sizes:
            for sched in spec.schedules:
                try:
                    plan = StagePlan.parse(sched, base_patch)
                    shares = [b - a for a, b in zip((0.0, *plan.ends), plan.ends, strict=False)]
                    row = {"model": spec.name, "family": spec.family, "size": "x".join(map(str, size)),
                           "schedule": sched}
                    for label, text in (("", spec.text_tokens), ("_text_free", 1)):
                        per = [forward_flops(model, spec, size, f, text) for f in plan.factors]
                        base = per[-1]
                        cost = sum(s * f for s, f in zip(shares, per, strict=True))
                        row[f"stage_flops{label}"] = per
                        row[f"flops_fraction{label}"] = cost / base
                        row[f"flops_bound{label}"] = base / cost
                except ValueError as e:
                    row = {"model": spec.name, "family": spec.family, "size": "x".join(map(str, size)),
                           "schedule": sched, "error": str(e)}
                rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    out = ["| model | size | schedule | TFLOPs per forward, per stage | FLOPs bound (text counted) | bound (text free) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['size']} | {r['schedule']} | not divisible: {r['error']} | - | - |")
            continue
        tflops = " / ".join(f"{v / 1e12:.3g}" for v in r["stage_flops"])
        out.append(f"| {r['model']} | {r['size']} | {r['schedule']} | {tflops} "
                   f"| {r['flops_bound']:.2f} | {r['flops_bound_text_free']:.2f} |")
    return "\n".join(out)
