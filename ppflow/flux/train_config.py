"""Configuration of `ppflow flux train`: FLUX sections on `ppflow train`'s RunConfig (optim, ema, run options).

Every function of ppflow.train.config takes this class (`config_from_args(args, FluxTrainConfig)`, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..flow.time_sampling import DENSITIES
from ..models.packing import COARSE_OUTPUTS, INITS
from ..sampling.sigmas import BOUNDARY_SPACES
from ..train.run_config import EmaSection, RunConfig, _opt

MODES = ("lora", "full")
TIME_MODES = ("stratified", "iid")


@dataclass
class FluxModelSection:
    """The FLUX transformer to fine-tune and the PPFlow schedule it gets."""

    base: str | None = _opt(None, "FluxTransformer2DModel folder or hub id (a FLUX pipeline with "
                                  "model.subfolder transformer)")
    subfolder: str | None = _opt(None, "subfolder of model.base holding the transformer (e.g. transformer)")
    ppflux: str | None = _opt(None, "start from a PPFlux folder (PPFluxTransformer.save_pretrained) on model.base")
    schedule: str = _opt("ppf2", "PPFlow schedule in t = 1 - sigma, latent-pixel patches; a one-stage schedule "
                                 "such as '1:2x2' is the FLUX-ft baseline")
    init: str = _opt("pooled", "coarse projections' init: pooled (official SiT recipe) | tiled (token mean)",
                     choices=INITS)
    dtype: str = _opt("float32", "dtype the base is loaded in: float32 | bfloat16 (FLUX.1-dev LoRA on one 80 GB "
                                 "GPU); trainable weights are kept in float32", choices=("float32", "bfloat16"))
    boundaries: str = _opt("unshifted", "stage boundaries: unshifted (mapped through the resolution shift, as "
                                        "PPFluxPipeline does) | sigma (the network's sigma as is)",
                           choices=BOUNDARY_SPACES)
    coarse_output: str = _opt("v", "what coarse stages output: v (paper) | noise_skip (the within-block part of "
                                   "x / sigma is added analytically; measured better in ppflow flux demo)",
                              choices=COARSE_OUTPUTS)


@dataclass
class FluxDataSection:
    """Cached latents + text embeddings (`ppflow flux cache`), or an image-caption folder to cache first."""

    cache: str | None = _opt(None, "cache file written by 'ppflow flux cache' (used when present)")
    path: str | None = _opt(None, "image-caption folder (same-named .txt captions or metadata.jsonl); cached "
                                  "into data.cache first when that file is absent (needs data.pipeline)")
    pipeline: str | None = _opt(None, "FLUX pipeline folder or hub id whose VAE and text encoders build the cache")
    resolution: int = _opt(512, "image side in pixels: resize the short side, then center crop", min=16)
    max_sequence_length: int = _opt(512, "T5 tokens per caption (FLUX.1-dev 512, schnell 256)")


@dataclass
class FluxObjectiveSection:
    """FLUX flow matching in sigma: x = sigma * noise + (1 - sigma) * x0, target noise - x0."""

    time_sampling: str = _opt("stratified", "stratified (each stage draws in its own sigma interval, PPFlow) | "
                                            "iid (stage from the sigma drawn)", choices=TIME_MODES)
    density: str = _opt("uniform", "density of the unshifted t = 1 - sigma: uniform | logit-normal",
                        choices=DENSITIES)
    logit_mean: float = _opt(0.0, "logit-normal mean")
    logit_std: float = _opt(1.0, "logit-normal standard deviation")
    shares: str | list[float] | None = field(default=None, metadata={
        "help": "batch share per stage: span (default, the stage's unshifted sigma span) | weights such as 0.5,0.5"})
    shift: bool = _opt(True, "apply FLUX's resolution shift (mu from the fine token count) to the drawn sigma")
    guidance: float = _opt(3.5, "guidance embedding input of a guidance-distilled base (FLUX.1-dev), as "
                                "diffusers' FLUX fine-tuning passes it; ignored without guidance_embeds")


@dataclass
class FluxTrainSection:
    """What trains: LoRA on the base (plus the PPFlow extras, always full) or everything."""

    mode: str = _opt("lora", "lora (peft LoRA on the base attention/MLP; base weights frozen) | full", choices=MODES)
    lora_rank: int = _opt(16, "LoRA rank", min=1)
    lora_alpha: float = _opt(16.0, "LoRA alpha (scale alpha / rank)")
    lora_targets: list[str] = field(default_factory=lambda: [
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj",
        "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"],
        metadata={"help": "module names LoRA adapts (FLUX attention and MLP layers)"})
    extras_lr_scale: float = _opt(1.0, "learning-rate multiplier of the PPFlow projections and stage embedding "
                                        "(new layers; the base keeps optim.lr)")
    eight_bit_adam: bool = _opt(False, "bitsandbytes AdamW8bit (CUDA, needs bitsandbytes)")


@dataclass
class FluxTrainConfig(RunConfig):
    """Everything a FLUX fine-tune needs; saved resolved in the run folder and in every checkpoint."""

    ema: EmaSection = field(default_factory=lambda: EmaSection(decay=0.999))
    out: str | None = _opt(None, "run folder (default: runs/flux-<time>)")
    batch_size: int = _opt(4, "global batch size (all processes and accumulation steps together)", min=1)
    max_steps: int = _opt(1000, "stop after this many optimizer steps", min=1)
    save_every: int = _opt(500, "steps between checkpoints (checkpoints/last.pt and ema/)")
    parallel: str = _opt("auto", "auto (FSDP2 under torchrun) | none | fsdp (fully_shard per FLUX block)")
    model: FluxModelSection = field(default_factory=FluxModelSection)
    data: FluxDataSection = field(default_factory=FluxDataSection)
    flow: FluxObjectiveSection = field(default_factory=FluxObjectiveSection)
    train: FluxTrainSection = field(default_factory=FluxTrainSection)

    def checks(self) -> list[tuple[bool, str]]:
        from .transformer import PPFluxConfig

        t, f, m = self.train, self.flow, self.model
        try:
            PPFluxConfig(schedule=m.schedule)
            schedule_problem = None
        except ValueError as e:
            schedule_problem = f"model.schedule: {e}"
        return [
            (t.extras_lr_scale > 0 and math.isfinite(t.extras_lr_scale),
             f"train.extras_lr_scale must be a positive number, got {t.extras_lr_scale}"),
            (math.isfinite(f.guidance), f"flow.guidance must be a finite number, got {f.guidance}"),
            *super().checks(),
            (self.parallel in ("auto", "none", "fsdp"), (f"parallel {self.parallel!r} is not one of auto, none, fsdp "
                                                        "(DDP: use fsdp, which shards per FLUX block)")),
            (m.base is not None or m.ppflux is not None,
             "model.base is not set: pass --model.base FLUX_TRANSFORMER (folder or hub id)"),
            (self.data.cache is not None or self.data.path is not None,
             "no data: pass --data.cache CACHE (from 'ppflow flux cache') or --data.path FOLDER with --data.cache"),
            (schedule_problem is None, schedule_problem),
        ]

