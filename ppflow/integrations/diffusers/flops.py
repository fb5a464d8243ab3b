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
    "wan2.1-14b": FullSize("Wan2.1-T2V-14B", "wan", dict(  # noqa: C408 (configs read as keyword arguments)
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6), 512, ((81, 480, 832), (81, 720, 1280)),
        ("ppf2", "ppf2-video", "ppf3-video")),
}


def meta_model(spec: FullSize) -> torch.nn.Module:
    import diffusers

    cls = {"flux": diffusers.FluxTransformer2DModel, "wan": diffusers.WanTransformer3DModel}[spec.family]
    with torch.device("meta"):
        return cls(**spec.config).eval()


def forward_flops(model: torch.nn.Module, spec: FullSize, size: tuple[int, ...], factors: tuple[int, ...],
                  text_tokens: int) -> int:
    """FLOPs of one forward (batch 1) at the grid of a stage with `factors` (base tokens per token, per axis)."""
    with torch.device("meta"):
        if spec.family == "flux":
            h, w = size[0] // 16 // factors[-2], size[1] // 16 // factors[-1]  # packed tokens: 16 px each
            kw = {"hidden_states": torch.empty(1, h * w, 64), "img_ids": torch.empty(h * w, 3),
                      "encoder_hidden_states": torch.empty(1, text_tokens, 4096), "txt_ids": torch.empty(text_tokens, 3),
                      "pooled_projections": torch.empty(1, 768), "timestep": torch.empty(1), "guidance": torch.empty(1)}
        else:
            frames, height, width = size
            lat = ((frames - 1) // 4 + 1, height // 8, width // 8)  # Wan's VAE: 4x in time, 8x in space
            need = (factors[0], 2 * factors[1], 2 * factors[2])  # Wan's (1, 2, 2) patches times the factors
            shape = tuple(-(-n // m) * m // f for n, m, f in zip(lat, need, factors, strict=True))  # padded as run
            kw = {"hidden_states": torch.empty(1, 16, *shape), "timestep": torch.empty(1),
                      "encoder_hidden_states": torch.empty(1, text_tokens, 4096)}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**kw, return_dict=False)
    return counter.get_total_flops()


def full_size_table(names=tuple(FULL_SIZES)) -> list[dict]:
    """Per model, size and schedule: per-stage TFLOPs per forward and the sampling bound, with text and without."""
    rows = []
    for key in names:
        spec = FULL_SIZES[key]
        model = meta_model(spec)
        base_patch = (2, 2) if spec.family == "flux" else (1, 2, 2)
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
