"""Analytic FLOPs of PPFlow / SiT forwards, per stage and under a sampler's time grid.

Convention: a multiply-add is 2 FLOPs (DiT's 118.6 "GFLOPs" for DiT-XL/2 count
multiply-adds, i.e. ~237 GFLOPs here). `total` counts every matrix product of a
forward (what `torch.utils.flop_counter.FlopCounterMode` counts); element-wise work
(norms, activations, modulation, residual adds) is left out, as in DiT/fvcore.
`paper` keeps only the token-dependent block terms, as the PPFlow paper counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from .backbone import ModelConfig


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward of one sample in one stage."""

    stage: int
    patch: tuple[int, int]
    tokens: int
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def paper(self) -> int:
        return self.terms["blocks_linear"] + self.terms["blocks_attention"]

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def forward_flops(config: ModelConfig, stage: int, height: int | None = None, width: int | None = None) -> ForwardFlops:
    """FLOPs of one forward (batch 1) of `config` in `stage` on a (height, width) latent."""
    H, W = (height, width) if height is not None else config.input_size
    W = W if W is not None else H
    sched = config.get_schedule()
    sched.check_latent(H, W)
    ph, pw = sched.stages[stage].patch
    L = (H // ph) * (W // pw)  # tokens in this stage
    D, C, O = config.hidden_size, config.in_channels, config.out_channels
    depth, hidden = config.depth, int(D * config.mlp_ratio)
    terms = {
        # patchify: L tokens x (C*ph*pw -> D); equals 2*H*W*C*D for every patch size
        "patchify": 2 * L * (C * ph * pw) * D,
        # timestep MLP: 256 -> D -> D, once per sample (label/level embeddings are lookups: 0)
        "t_embedder": 2 * 256 * D + 2 * D * D,
        # per block: qkv (3D), attention out-proj (D), MLP D -> hidden -> D; 24*L*D^2 for mlp_ratio 4
        "blocks_linear": depth * 2 * L * D * (3 * D + D + 2 * hidden),
        # per block: scores QK^T (2*L^2*D) + weighted sum AV (2*L^2*D)
        "blocks_attention": depth * 4 * L * L * D,
        # per block adaLN: D -> 6D, once per sample, not per token
        "blocks_adaln": depth * 2 * D * 6 * D,
        # final adaLN: D -> 2D per sample
        "final_adaln": 2 * D * 2 * D,
        # unpatchify: L tokens x (D -> ph*pw*O); equals 2*H*W*O*D for every patch size
        "unpatchify": 2 * L * D * (ph * pw * O),
    }
    return ForwardFlops(stage, (ph, pw), L, terms)


def baseline_config(config: ModelConfig) -> ModelConfig:
    """The one-stage SiT/DiT model of the same size at the schedule's base patch."""
    bh, bw = config.get_schedule().base_patch
    return dataclasses.replace(config, schedule=f"1:{bh}x{bw}", level_embedding=False, name="")


def cfg_multipliers(num_stages: int, cfg_scales: float | Sequence[float] | None) -> list[int]:
    """Forward passes per step and stage: 2 where a CFG scale != 1 (unconditional pass), else 1."""
    if cfg_scales is None:
        return [1] * num_stages
    scales = [float(cfg_scales)] * num_stages if isinstance(cfg_scales, (int, float)) else list(cfg_scales)
    if len(scales) != num_stages:
        raise ValueError(f"{len(scales)} CFG scales given for {num_stages} stages; give one or one per stage")
    return [1 if s == 1.0 else 2 for s in scales]


def schedule_flops(
    config: ModelConfig,
    height: int | None = None,
    width: int | None = None,
    shares: Sequence[float] | None = None,
    cfg_scales: float | Sequence[float] | None = None,
    baseline_cfg_scale: float | None = None,
) -> dict:
    """Sampling cost of a schedule relative to its one-stage baseline.

    `shares`: fraction of forward evaluations in each stage (default: the stages' time
    spans, i.e. uniform ODE steps, as the paper counts). `cfg_scales` doubles a stage's
    cost where its scale is not 1; the baseline uses `baseline_cfg_scale` everywhere
    (default: CFG on if any stage uses it).
    """
    H, W = (height, width) if height is not None else config.input_size
    W = W if W is not None else H
    sched = config.get_schedule()
    shares = [s.span for s in sched.stages] if shares is None else list(shares)
    if len(shares) != sched.num_stages:
        raise ValueError(f"{len(shares)} stage shares given for {sched.num_stages} stages")
    mult = cfg_multipliers(sched.num_stages, cfg_scales)
    if baseline_cfg_scale is None:
        base_mult = 2 if any(m == 2 for m in mult) else 1
    else:
        base_mult = 1 if baseline_cfg_scale == 1.0 else 2
    base = forward_flops(baseline_config(config), 0, H, W)
    rows, paper, total = [], 0.0, 0.0
    for s in range(sched.num_stages):
        f = forward_flops(config, s, H, W)
        rows.append({
            "stage": s,
            "t_range": [sched.stages[s].t_start, sched.stages[s].t_end],
            "patch": list(f.patch),
            "tokens": f.tokens,
            "paper_gflops": f.paper / 1e9,
            "total_gflops": f.total / 1e9,
            "share": shares[s],
            "forwards_per_step": mult[s],
        })
        paper += shares[s] * mult[s] * f.paper
        total += shares[s] * mult[s] * f.total
    norm = sum(shares) * base_mult
    return {
        "model": config.name,
        "schedule": sched.to_string(),
        "latent": [H, W],
        "stages": rows,
        "baseline_paper_gflops": base.paper / 1e9,
        "baseline_total_gflops": base.total / 1e9,
        "paper_fraction": paper / (norm * base.paper),
        "total_fraction": total / (norm * base.total),
    }


def evaluation_flops(config: ModelConfig, stage_counts: Sequence[float], height: int | None = None,
                     width: int | None = None) -> tuple[float, float]:
    """(paper, total) FLOPs of `stage_counts[s]` single-sample forwards in each stage."""
    fl = [forward_flops(config, s, height, width) for s in range(len(stage_counts))]
    return (sum(n * f.paper for n, f in zip(stage_counts, fl)), sum(n * f.total for n, f in zip(stage_counts, fl)))


def train_flops(config: ModelConfig, stage_counts: Sequence[int], height: int | None = None,
                width: int | None = None) -> dict:
    """Training FLOPs of one iteration (forward + backward ~ 3x forward) for a stage-stratified batch."""
    paper, total = evaluation_flops(config, stage_counts, height, width)
    base = forward_flops(baseline_config(config), 0, height, width)
    n = sum(stage_counts)
    return {
        "paper": 3 * paper,
        "total": 3 * total,
        "paper_fraction": paper / (n * base.paper),
        "total_fraction": total / (n * base.total),
    }
