"""`PPFluxPipeline`: a drop-in `FluxPipeline` whose transformer is a `PPFluxTransformer`.

FluxPipeline's own `__call__` runs; the PPFlow hook does the rest: the scheduler instance keeps every stage
boundary on its grid (a custom `sigmas` list has the straddled step split), so each step runs at one patch size;
`guidance_scale` may be given per stage, `true_cfg_scale` per stage as `[1, s]` (no unconditional pass in the
coarse stages); after a call `stage_stats` holds the steps, forwards and FLOPs per stage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import FluxPipeline

from ..integrations.diffusers import scheduler
from ..sampling.guidance import check_count, check_scales
from ..sampling.sigmas import FluxShift
from .flops import FluxArch, counts_flops
from .transformer import CONFIG_NAME, PPFluxTransformer, read_ppflux_config, resolve_base


@dataclass
class StageStats:
    """What the last call ran, per stage."""

    stages: list[int]  # stage of each step
    sigmas: list[float]  # shifted sigma the network received at each step
    steps: list[int]  # denoising steps per stage
    forwards: list[int]  # transformer forwards per stage, counted in samples (true-CFG passes included)
    flops: dict = field(default_factory=dict)  # ppflow.flux.flops.counts_flops of those forwards

    @property
    def bound(self) -> float:
        """Speed-up bound over FLUX making the same forwards (all matrix products, text included)."""
        return self.flops["baseline_total"] / self.flops["total"]


def per_stage(value, num_stages: int, name: str) -> list[float]:
    """A scale or one per stage -> one finite float per stage (the CLI's check, ppflow.sampling.check_scales)."""
    values = check_scales(value, f"{name}={value!r}")
    values = [values] * num_stages if isinstance(values, float) else values
    if len(values) != num_stages:
        raise ValueError(f"{name}: {len(values)} values given for {num_stages} stages; give one or one per stage")
    return values


class PPFluxPipeline(FluxPipeline):
    """FluxPipeline with pyramidal patchification; build with `from_pretrained` or from components."""

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        if not isinstance(transformer, PPFluxTransformer):
            raise TypeError(f"PPFluxPipeline needs a PPFluxTransformer, got {type(transformer).__name__}; "
                            "wrap it with PPFluxTransformer.from_flux(transformer, schedule)")
        super().__init__(scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                         image_encoder, feature_extractor)
        self.stage_stats: StageStats | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, ppflow: str | os.PathLike | None = None, *,
                        schedule: str = "ppf2", init: str = "pooled", verify: bool = True, **kwargs):
        """Load FLUX (hub id or folder) and the PPFlow extras of `ppflow` on top, or wrap it with `from_flux`.

        A PPFlux folder (from `PPFluxTransformer.save_pretrained`) as the first argument loads the base
        pipeline it names. `verify=False` skips the SHA-256 check of the PPFlux weights. Other keywords
        (torch_dtype, revision, ...) go to `FluxPipeline.from_pretrained`.
        """
        path = str(pretrained_model_name_or_path)
        if ppflow is None and os.path.isfile(os.path.join(path, CONFIG_NAME)):
            cfg = read_ppflux_config(path)
            if not cfg.base_model:
                raise ValueError(f"{path} names no base model: pass the FLUX pipeline first and ppflow={path!r}")
            ppflow, path = path, resolve_base(cfg.base_model, path)
        base = FluxPipeline.from_pretrained(path, **kwargs)
        if ppflow is not None:
            transformer = PPFluxTransformer.from_pretrained(ppflow, base=base.transformer, verify=verify)
        else:
            transformer = PPFluxTransformer.from_flux(base.transformer, schedule=schedule, init=init,
                                                      shift=FluxShift.from_scheduler(base.scheduler))
        pipe = cls(**{**base.components, "transformer": transformer})
        pipe.register_to_config(_name_or_path=path)  # the base pipeline, for save_pretrained's reference
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, base_model: str | None = None, **_) -> None:
        """Save only the PPFlow extras and a reference to the base FLUX pipeline (never a copy of FLUX).

        `base_model`: hub id or folder of the FLUX pipeline (default: where `from_pretrained` loaded it from).
        `PPFluxPipeline.from_pretrained(save_directory)` loads both back.
        """
        base_model = base_model or self.config.get("_name_or_path") or None
        if not base_model:
            raise ValueError("this pipeline was not loaded with from_pretrained: pass base_model=<FLUX hub id or folder>")
        self.transformer.save_pretrained(save_directory, base_model=str(base_model), base_subfolder="transformer")

    @torch.no_grad()
    def __call__(self, *args, guidance_scale: float | Sequence[float] = 3.5,
                 true_cfg_scale: float | Sequence[float] = 1.0, **kwargs):
        """FluxPipeline.__call__ (its own loop, run through the PPFlow hook); `guidance_scale` may give one value
        per stage, `true_cfg_scale` one per stage where the coarse stages are <= 1 (no unconditional pass there)
        or all equal."""
        tr = self.transformer
        ad, S = tr._adapter, tr.schedule.num_stages
        g_scales = per_stage(guidance_scale, S, "guidance_scale")
        cfg_scales = per_stage(true_cfg_scale, S, "true_cfg_scale")
        fine_cfg, coarse = cfg_scales[-1], cfg_scales[:-1]
        stage_cfg = all(c <= 1 for c in coarse) and fine_cfg > 1
        if not stage_cfg and len(set(cfg_scales)) > 1 and not all(c <= 1 for c in cfg_scales):
            raise ValueError(f"true_cfg_scale={true_cfg_scale!r}: give one scale, or <= 1 for the coarse stages (no "
                             "unconditional pass there) and one scale for the finest")
        if kwargs.get("sigmas") is None:
            kwargs["num_inference_steps"] = check_count(kwargs.get("num_inference_steps", 28), "num_inference_steps")
        for name in ("height", "width", "num_images_per_prompt"):
            if kwargs.get(name) is not None:
                check_count(kwargs[name], name)
        height = kwargs.get("height") or self.default_sample_size * self.vae_scale_factor
        width = kwargs.get("width") or self.default_sample_size * self.vae_scale_factor
        grid = (height // (self.vae_scale_factor * 2), width // (self.vae_scale_factor * 2))  # packed token grid
        for s, (fh, fw) in enumerate(tr.factors(k) for k in range(S)):
            if grid[0] % fh or grid[1] % fw:
                step = 2 * self.vae_scale_factor
                raise ValueError(f"{height}x{width} px is not a multiple of stage {s}'s {fh * step}x{fw * step} px "
                                 f"patches ({tr.schedule.stages[s].patch[0]}x{tr.schedule.stages[s].patch[1]} "
                                 "latent pixels); choose a height and width that are")
        if getattr(self.scheduler.config, "use_flow_sigmas", False):
            raise ValueError("schedulers with use_flow_sigmas pick their own sigmas; PPFluxPipeline needs the grid")
        ad.reset_counts()
        saved = ad.coarse_cfg, ad.stage_guidance
        ad.coarse_cfg = not stage_cfg
        ad.stage_guidance = g_scales if len(set(g_scales)) > 1 else None
        scheduler.patch(self.scheduler, ad)  # the stage boundaries on FluxPipeline's own grid, for this call only
        try:
            out = super().__call__(*args, guidance_scale=g_scales[-1], true_cfg_scale=max(cfg_scales), **kwargs)
        finally:
            scheduler.unpatch(self.scheduler)
            ad.coarse_cfg, ad.stage_guidance = saved
        L = grid[0] * grid[1]
        sigmas = [float(v) for v in self.scheduler.sigmas[:-1]]
        stages = tr.stage_of(torch.tensor(sigmas), L).tolist()
        forwards = [ad.counts.get(k, 0) for k in range(S)]
        embeds = kwargs.get("prompt_embeds")
        tokens = embeds.shape[1] if embeds is not None else kwargs.get("max_sequence_length", 512)
        self.stage_stats = StageStats(stages=stages, sigmas=sigmas, steps=[stages.count(k) for k in range(S)],
                                      forwards=forwards,
                                      flops=counts_flops(FluxArch.from_config(tr.config), tr.schedule, grid, tokens,
                                                         forwards))
        return out
