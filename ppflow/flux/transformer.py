"""`PPFluxTransformer`: pyramidal patchification around an untouched diffusers `FluxTransformer2DModel`.

Composition, not a subclass: the base model is a submodule (`.base`) whose blocks, norms, embedders and RoPE
are called as they are; PPFlow adds per-stage patchify / unpatchify projections for the coarse stages and a
zero-initialised stage embedding added to the time/text conditioning, so the finest stage is exactly FLUX.
`forward` has `FluxTransformer2DModel.forward`'s signature and output: packed tokens at FLUX's packing in
and out, the coarse grouping happens inside.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from ..hub.hub import is_hub_id
from ..integrations.diffusers.adapter import HookConfig, StageAdapter
from ..integrations.diffusers.api import ATTR
from ..integrations.diffusers.family import family_of
from ..integrations.diffusers.hook import attach, detach
from ..io import read_weights, replace_folder, save_weights, write_text_atomic
from ..models.packing import (
    COARSE_OUTPUTS,
    INITS,
    init_patchify,
    init_unpatchify,
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
    """A FLUX transformer that sees coarse patches at high noise; call it like `FluxTransformer2DModel`.

    A thin name over the PPFlow diffusers hook (ppflow.integrations.diffusers): the base keeps its class and
    forward, the hook runs coarse stages on grouped tokens. What PPFlux adds -- the coarse projections
    (`patch_embed`, `proj`) and the stage embedding, whose fine-stage row is added too (the shared fine-tune trains
    it) -- is registered here, so state dicts, FSDP2 and EMA see it.
    """

    def __init__(self, base: nn.Module, config: PPFluxConfig | None = None):
        super().__init__()
        self.base = base
        self.ppflow_config = config = config or PPFluxConfig()
        self.schedule = config.get_schedule()
        hook_config = HookConfig(family="flux", schedule=config.schedule, init=config.init,
                                 boundaries=config.boundaries, shift=config.shift, coarse_output=config.coarse_output,
                                 fine_embed=True)
        adapter = StageAdapter(base, family_of(base, "flux"), hook_config)
        self.patch_embed, self.proj, self.stage_embed = adapter.embed, adapter.out, adapter.stage_embed
        adapter.__dict__["_table_owner"] = self
        adapter.passive = True  # the base called directly stays plain FLUX
        self.__dict__["_adapter"] = adapter  # not a submodule: its tensors are registered above
        self._attach()

    def _attach(self) -> None:
        """Put this wrapper's hooks on the base (another PPFlux or `apply` on the same base takes them off)."""
        if self.base.__dict__.get(ATTR) is self._adapter:
            return
        if self.base.__dict__.pop(ATTR, None) is not None:
            detach(self.base)
        self.base.__dict__[ATTR] = self._adapter
        attach(self.base, self._adapter)

    def __deepcopy__(self, memo):
        """diffusers' hooks do not survive a deep copy (the copy's forward would run the original): copy the
        unhooked model, then hook both."""
        mine = self.base.__dict__.pop(ATTR, None)
        detach(self.base)
        try:
            new = type(self).__new__(type(self))
            memo[id(self)] = new
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        finally:
            if mine is not None:
                self.base.__dict__[ATTR] = mine
                attach(self.base, mine)
        new._attach()
        return new

    # ------------------------------------------------------------------ building
    @classmethod
    def from_flux(cls, transformer: nn.Module, schedule: str = "ppf2", init: str = "pooled", **options):
        """Wrap a FLUX transformer (kept as is); coarse projections get the average/copy init `init`."""
        if getattr(transformer.config, "patch_size", 1) != 1:
            raise ValueError("only FLUX transformers with patch_size 1 (2x2 packing outside) are supported")
        return cls(transformer, PPFluxConfig(schedule=schedule, init=init, **options))

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
        """Public attributes PPFlux does not define come from the base (load_lora_adapter, cache_context, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if name.startswith("_") or base is None:
                raise
            return getattr(base, name)

    def _reset_stateful_cache(self, recurse: bool = True) -> None:
        """diffusers' end-of-call reset of stateful hooks (caches, the PPFlow hook's grid) on the base."""
        self.base._reset_stateful_cache(recurse)

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

    # -------------------------------------------------------------------- stages
    def sigma_boundaries(self, image_seq_len: int) -> tuple[float, ...]:
        """Stage boundaries in the network's sigma for images of `image_seq_len` fine tokens (descending)."""
        c = self.ppflow_config
        return sigma_boundaries(self.schedule, image_seq_len, c.boundaries, c.shift)

    def stage_of(self, timestep: torch.Tensor | float, image_seq_len: int) -> torch.Tensor:
        """Stage per sample from the sigma the network receives (FLUX's `timestep`, in [0, 1])."""
        return stage_of_sigma(timestep, self.sigma_boundaries(image_seq_len))

    # ------------------------------------------------------------------- forward
    def forward(self, *args, stage: int | None = None, grid: tuple[int, int] | None = None, **kwargs):
        """`FluxTransformer2DModel.forward`; `stage=` pins the stage, `grid=(h, w)` the packed token grid."""
        ad = self._adapter
        self._attach()  # no-op unless another wrapper of the same base ran since
        if stage is not None and not 0 <= stage < self.schedule.num_stages:
            raise ValueError(f"stage {stage} out of range for a {self.schedule.num_stages}-stage schedule")
        ad.pin_stage, ad.pin_grid, ad.engaged = stage, (tuple(grid) if grid is not None else None), True
        try:
            return self.base(*args, **kwargs)
        finally:
            ad.pin_stage, ad.pin_grid, ad.engaged = None, None, False

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

