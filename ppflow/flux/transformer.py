"""`PPFluxTransformer`: pyramidal patchification around an untouched diffusers `FluxTransformer2DModel`.

Composition, not a subclass: the base model is a submodule (`.base`) whose blocks, norms, embedders and RoPE
are called as they are; PPFlow adds per-stage patchify / unpatchify projections for the coarse stages and a
zero-initialised stage embedding added to the time/text conditioning, so the finest stage is exactly FLUX.
`forward` has `FluxTransformer2DModel.forward`'s signature and output: packed tokens at FLUX's packing in
and out, the coarse grouping happens inside.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.utils.peft_utils import apply_lora_scale
from torch import nn

from ..hub.hub import is_hub_id
from ..io import read_weights, replace_folder, save_weights, write_text_atomic
from ..models.packing import (
    COARSE_OUTPUTS,
    INITS,
    group_ids,
    group_tokens,
    infer_grid,
    init_patchify,
    init_unpatchify,
    noise_skip,
    ungroup_tokens,
)
from ..models.schedule import PyramidSchedule
from ..sampling.sigmas import BOUNDARY_SPACES, FluxShift, sigma_boundaries, stage_of_sigma

CONFIG_NAME = "ppflux_config.json"
WEIGHTS_NAME = "ppflux.safetensors"
LORA_NAME = "ppflux_lora.safetensors"
BASE_PATCH = (2, 2)  # FLUX packs 2x2 latent pixels into one token


@dataclass
class PPFluxConfig:
    """What PPFlow adds to a FLUX transformer; saved next to a reference to the base model."""

    schedule: str = "ppf2"  # ppflow schedule in t = 1 - sigma, patches in latent pixels (finest 2x2 = FLUX)
    init: str = "pooled"  # coarse projections: 'pooled' (official SiT recipe) or 'tiled' (token mean)
    boundaries: str = "unshifted"  # 'unshifted': boundaries mapped through the resolution's shift; 'sigma': as is
    shift: FluxShift = field(default_factory=FluxShift)  # FLUX scheduler's shift line, used by the 'unshifted' rule
    base_model: str | None = None  # hub id or folder of the base transformer (or of its pipeline)
    base_subfolder: str | None = None  # e.g. 'transformer' when base_model is a pipeline
    lora: dict | None = None  # peft LoraConfig of the base when it was fine-tuned with LoRA
    coarse_output: str = "v"  # coarse stages: 'v' (paper) | 'noise_skip' (within-block noise analytic, packing.py)

    def __post_init__(self) -> None:
        if isinstance(self.shift, dict):
            self.shift = FluxShift(**self.shift)
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INITS}")
        if self.boundaries not in BOUNDARY_SPACES:
            raise ValueError(f"unknown boundaries {self.boundaries!r}; choose one of {BOUNDARY_SPACES}")
        if self.coarse_output not in COARSE_OUTPUTS:
            raise ValueError(f"unknown coarse_output {self.coarse_output!r}; choose one of {COARSE_OUTPUTS}")
        self.get_schedule()  # validates

    def get_schedule(self) -> PyramidSchedule:
        sched = PyramidSchedule.from_string(self.schedule, base_patch=BASE_PATCH)
        return sched

    def to_dict(self) -> dict:
        return {"_class_name": "PPFluxTransformer", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> PPFluxConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class PPFluxTransformer(nn.Module):
    """A FLUX transformer that sees coarse patches at high noise; call it like `FluxTransformer2DModel`."""

    def __init__(self, base: nn.Module, config: PPFluxConfig | None = None):
        super().__init__()
        self.base = base
        self.ppflow_config = config = config or PPFluxConfig()
        self.schedule = config.get_schedule()
        p = next(base.parameters())
        C, D = base.x_embedder.in_features, base.inner_dim
        self.patch_embed, self.proj = nn.ModuleDict(), nn.ModuleDict()
        for s in range(self.schedule.num_stages):
            n = self.factors(s)[0] * self.factors(s)[1]
            if n > 1:
                self.patch_embed[str(s)] = nn.Linear(n * C, D, device=p.device, dtype=p.dtype)
                self.proj[str(s)] = nn.Linear(D, n * base.proj_out.out_features, device=p.device, dtype=p.dtype)
        self.stage_embed = nn.Parameter(torch.zeros(self.schedule.num_stages, D, device=p.device, dtype=p.dtype))
        self._cache_name: tuple[str, dict] | None = None  # diffusers cache context of the running call

    # ------------------------------------------------------------------ building
    @classmethod
    def from_flux(cls, transformer: nn.Module, schedule: str = "ppf2", init: str = "pooled", **options):
        """Wrap a FLUX transformer (kept as is); coarse projections get the average/copy init `init`."""
        if getattr(transformer.config, "patch_size", 1) != 1:
            raise ValueError("only FLUX transformers with patch_size 1 (2x2 packing outside) are supported")
        model = cls(transformer, PPFluxConfig(schedule=schedule, init=init, **options))
        model.reset_extras()
        return model

    def reset_extras(self) -> None:
        """Average/copy init of every coarse projection from the base's; zero stage embedding."""
        for s, layer in self.patch_embed.items():
            init_patchify(layer, self.base.x_embedder, self.factors(int(s)), self.ppflow_config.init)
            init_unpatchify(self.proj[s], self.base.proj_out, self.factors(int(s)), self.ppflow_config.init)
        with torch.no_grad():
            self.stage_embed.zero_()

    def factors(self, stage: int) -> tuple[int, int]:
        """Packed tokens per coarse token of a stage, (rows, cols)."""
        return self.schedule.factors(stage)

    # ------------------------------------------------------ diffusers compatibility
    def __getattr__(self, name: str):
        """Public attributes PPFlux does not define come from the base (load_lora_adapter, set_adapters, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if name.startswith("_") or base is None:
                raise
            return getattr(base, name)

    @property
    def config(self):
        """The base model's config (FluxPipeline reads in_channels and guidance_embeds from it)."""
        return self.base.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs):
        """diffusers' cache context of the base model; each stage gets its own cache state (`name/stageS`)."""
        ctx = getattr(self.base, "cache_context", None)
        self._cache_name = (name, kwargs)
        try:
            with ctx(name, **kwargs) if ctx is not None else contextlib.nullcontext():
                yield
        finally:
            self._cache_name = None

    def enable_cache(self, config) -> None:
        """Enable a diffusers cache (e.g. FirstBlockCacheConfig) on the base model's blocks."""
        self.base.enable_cache(config)

    def disable_cache(self) -> None:
        self.base.disable_cache()

    # -------------------------------------------------------------------- stages
    def sigma_boundaries(self, image_seq_len: int) -> tuple[float, ...]:
        """Stage boundaries in the network's sigma for images of `image_seq_len` fine tokens (descending)."""
        c = self.ppflow_config
        return sigma_boundaries(self.schedule, image_seq_len, c.boundaries, c.shift)

    def stage_of(self, timestep: torch.Tensor | float, image_seq_len: int) -> torch.Tensor:
        """Stage per sample from the sigma the network receives (FLUX's `timestep`, in [0, 1])."""
        return stage_of_sigma(timestep, self.sigma_boundaries(image_seq_len))

    # ------------------------------------------------------------------- forward
    @apply_lora_scale("joint_attention_kwargs")
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor = None,
                pooled_projections: torch.Tensor = None, timestep: torch.Tensor = None, img_ids: torch.Tensor = None,
                txt_ids: torch.Tensor = None, guidance: torch.Tensor = None, joint_attention_kwargs: dict | None = None,
                controlnet_block_samples=None, controlnet_single_block_samples=None, return_dict: bool = True,
                controlnet_blocks_repeat: bool = False, *, stage: int | None = None,
                grid: tuple[int, int] | None = None):
        """`FluxTransformer2DModel.forward`; `stage=` pins the stage, `grid=(h, w)` the packed token grid."""
        B, L, _ = hidden_states.shape  # packed image tokens (B, L, 64)
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        grid = tuple(grid) if grid is not None else infer_grid(img_ids, L)
        args = (encoder_hidden_states, pooled_projections, timestep, guidance)
        if stage is None:
            stages = self.stage_of(timestep.detach().float().cpu(), L).tolist()
            stages = stages * B if len(stages) == 1 else stages
            if len(set(stages)) > 1:  # mixed stages in one batch: one sub-batch per stage, in order
                out = torch.empty_like(hidden_states, dtype=self.base.proj_out.weight.dtype)
                for s in sorted(set(stages)):
                    idx = torch.tensor([i for i, v in enumerate(stages) if v == s], device=hidden_states.device)
                    sub = [a.index_select(0, idx) if torch.is_tensor(a) and a.ndim > 0 and a.shape[0] == B else a
                           for a in args]
                    out[idx] = self._forward_stage(s, hidden_states[idx], *sub, img_ids, txt_ids, grid,
                                                   joint_attention_kwargs, None, None, False)
                return Transformer2DModelOutput(sample=out) if return_dict else (out,)
            stage = stages[0]
        out = self._forward_stage(int(stage), hidden_states, *args, img_ids, txt_ids, grid, joint_attention_kwargs,
                                  controlnet_block_samples, controlnet_single_block_samples, controlnet_blocks_repeat)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _forward_stage(self, stage, hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance,
                       img_ids, txt_ids, grid, joint_attention_kwargs, controlnet_block_samples,
                       controlnet_single_block_samples, controlnet_blocks_repeat) -> torch.Tensor:
        base, key, factors = self.base, str(stage), self.factors(stage)
        if not 0 <= stage < self.schedule.num_stages:
            raise ValueError(f"stage {stage} out of range for a {self.schedule.num_stages}-stage schedule")
        if grid[0] % factors[0] or grid[1] % factors[1]:
            raise ValueError(f"packed token grid {grid[0]}x{grid[1]} is not divisible by stage {stage}'s "
                             f"{factors[0]}x{factors[1]} grouping; choose a height/width that is a multiple of "
                             f"{16 * factors[0]}x{16 * factors[1]} pixels")
        coarse = key in self.patch_embed
        if coarse and (controlnet_block_samples is not None or controlnet_single_block_samples is not None):
            raise ValueError("ControlNet residuals are per fine token: use them only in the finest stage")
        self._stage_cache_context(stage)
        embed, proj = (self.patch_embed[key], self.proj[key]) if coarse else (base.x_embedder, base.proj_out)
        x_in = group_tokens(hidden_states, grid, factors)  # (B, L/n, n*64)
        x = embed(x_in)  # (B, L/n, D)
        sigma = timestep.reshape(-1).expand(x.shape[0])  # (B,) the network's sigma
        timestep = timestep.to(x.dtype) * 1000  # (B,)
        guidance = guidance.to(x.dtype) * 1000 if guidance is not None else None  # (B,)
        temb = (base.time_text_embed(timestep, pooled_projections) if guidance is None
                else base.time_text_embed(timestep, guidance, pooled_projections))  # (B, D)
        temb = temb + self.stage_embed[stage].to(temb.dtype)  # (B, D); zero at init
        context = base.context_embedder(encoder_hidden_states)  # (B, T, D)
        ids = group_ids(img_ids, grid, factors)  # (L/n, 3) centres of the covered fine tokens
        ids = torch.cat((txt_ids.to(ids.dtype), ids), dim=0) if coarse else torch.cat((txt_ids, ids), dim=0)
        rotary = base.pos_embed(ids)  # (cos, sin), each (T + L/n, head_dim)
        kwargs = joint_attention_kwargs
        if kwargs is not None and "ip_adapter_image_embeds" in kwargs:
            kwargs = dict(kwargs)
            kwargs["ip_hidden_states"] = base.encoder_hid_proj(kwargs.pop("ip_adapter_image_embeds"))
        ckpt = torch.is_grad_enabled() and base.gradient_checkpointing
        for i, block in enumerate(base.transformer_blocks):
            if ckpt:
                context, x = base._gradient_checkpointing_func(block, x, context, temb, rotary, kwargs)
            else:
                context, x = block(hidden_states=x, encoder_hidden_states=context, temb=temb,
                                   image_rotary_emb=rotary, joint_attention_kwargs=kwargs)  # (B, T, D), (B, L/n, D)
            if controlnet_block_samples is not None:
                x = x + _controlnet(controlnet_block_samples, i, len(base.transformer_blocks), controlnet_blocks_repeat)
        for i, block in enumerate(base.single_transformer_blocks):
            if ckpt:
                context, x = base._gradient_checkpointing_func(block, x, context, temb, rotary, kwargs)
            else:
                context, x = block(hidden_states=x, encoder_hidden_states=context, temb=temb,
                                   image_rotary_emb=rotary, joint_attention_kwargs=kwargs)  # (B, L/n, D)
            if controlnet_single_block_samples is not None:
                x = x + _controlnet(controlnet_single_block_samples, i, len(base.single_transformer_blocks), False)
        x = base.norm_out(x, temb)  # (B, L/n, D)
        x = proj(x)  # (B, L/n, n*64)
        if coarse and self.ppflow_config.coarse_output == "noise_skip":
            x = noise_skip(x, x_in, sigma, factors)  # (B, L/n, n*64)
        return ungroup_tokens(x, grid, factors)  # (B, L, 64)

    def _stage_cache_context(self, stage: int) -> None:
        """A diffusers cache holds residuals of one token count: give each stage its own cache state."""
        if getattr(self.base, "_cache_config", None) is None or self._cache_name is None:
            return
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        name, kwargs = self._cache_name
        _set_cache_context(self.base, CacheContext(f"{name}/stage{stage}", **kwargs))

    # --------------------------------------------------------------- save / load
    def extras_state_dict(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        """What PPFlow adds (projections of coarse stages, stage embedding); the base is not included."""
        return {k: v for k, v in self.state_dict(keep_vars=keep_vars).items() if not k.startswith("base.")}

    def save_pretrained(self, folder: str | os.PathLike, base_model: str | None = None,
                        base_subfolder: str | None = None) -> None:
        """Write the extras, the config and a reference to the base (hub id or folder); LoRA weights if any.

        The folder is written beside `folder` and swapped in (other entries of an existing folder are kept), and
        every weights file carries the SHA-256 of its tensors. A relative base folder is stored relative to
        `folder`, so the two can move together.
        """
        from .lora import lora_state

        cfg = replace(self.ppflow_config)  # the model's config changes only once the folder is written
        if base_model is not None:
            cfg.base_model, cfg.base_subfolder = base_reference(base_model, folder), base_subfolder
        elif cfg.base_model is None:
            cfg.base_model = getattr(self.base.config, "_name_or_path", None) or None
        lora_config, lora_weights = lora_state(self.base)
        cfg.lora = lora_config
        extras = self.extras_state_dict()

        def write(tmp: Path) -> None:
            save_weights(extras, tmp / WEIGHTS_NAME, {"format": "pt"}, "PPFlux weights")
            if lora_weights:
                save_weights(lora_weights, tmp / LORA_NAME, {"format": "pt"}, "LoRA weights")
            write_text_atomic(tmp / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2), "PPFlux config")

        replace_folder(folder, write, keep=lambda name: name not in OWN_FILES)
        self.ppflow_config = cfg

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, base: nn.Module | None = None, *, verify: bool = True,
                        **base_kwargs):
        """Load the extras of `folder` onto `base` (a loaded FluxTransformer2DModel) or the base it names.

        Weights files are checked against their stored SHA-256 unless `verify=False`.
        """
        from .lora import load_lora

        cfg = read_ppflux_config(folder)
        if base is None:
            if not cfg.base_model:
                raise ValueError(f"{Path(folder) / CONFIG_NAME} names no base model: pass base=<FluxTransformer2DModel>")
            from diffusers import FluxTransformer2DModel

            sub = {"subfolder": cfg.base_subfolder} if cfg.base_subfolder else {}
            base = FluxTransformer2DModel.from_pretrained(resolve_base(cfg.base_model, folder), **sub, **base_kwargs)
        if cfg.lora:
            load_lora(base, cfg.lora, read_weights(Path(folder) / LORA_NAME, verify))
        model = cls(base, cfg)
        weights = read_weights(Path(folder) / WEIGHTS_NAME, verify)
        p = next(base.parameters())
        expected = set(model.extras_state_dict())
        if set(weights) != expected:
            raise ValueError(f"{folder}: extras {sorted(weights)} do not match the schedule's {sorted(expected)}")
        model.load_state_dict({k: v.to(p.dtype) for k, v in weights.items()}, strict=False)
        return model


OWN_FILES = (CONFIG_NAME, WEIGHTS_NAME, LORA_NAME)  # what save_pretrained writes (the rest of a folder is kept)


def read_ppflux_config(folder: str | os.PathLike) -> PPFluxConfig:
    """The PPFluxConfig of a PPFlux folder; errors name the file."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not a PPFlux folder (see save_pretrained)")
    try:
        return PPFluxConfig.from_dict(json.loads(path.read_bytes().decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is damaged: {e}") from None


def _is_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../")) or name in (".", "..")


def base_reference(base_model: str | os.PathLike, folder: str | os.PathLike) -> str:
    """How a PPFlux folder stores its base: a hub id or an absolute path as given; a relative folder relative to
    `folder` ('./x' or '../x'), so a folder loads from any working directory."""
    name = str(base_model)
    if os.path.isabs(name) or not (os.path.exists(name) or _is_local(name)):
        return name  # a hub id (or an absolute folder)
    rel = os.path.relpath(os.path.abspath(name), os.path.abspath(folder))
    return rel if rel.startswith("..") else f"./{rel}"


def resolve_base(reference: str, folder: str | os.PathLike) -> str:
    """The base a PPFlux folder names: a local folder resolved against `folder`, else a hub id.

    A local base that does not exist is a FileNotFoundError naming the path (not a hub connection error).
    """
    local = os.path.normpath(os.path.join(os.path.abspath(folder), reference))
    if os.path.exists(local):
        return local
    if _is_local(reference) or not is_hub_id(reference):
        raise FileNotFoundError(f"the base folder {local} of the PPFlux folder {folder} is missing (its "
                                f"{CONFIG_NAME} names base_model {reference!r}); restore it, or pass the base "
                                "model explicitly (base=... / the FLUX pipeline first)")
    return reference


def _controlnet(samples, index: int, depth: int, repeat: bool) -> torch.Tensor:
    """The ControlNet residual of block `index`, as FluxTransformer2DModel picks it."""
    if repeat:
        return samples[index % len(samples)]
    interval = -(-depth // len(samples))
    return samples[index // interval]
