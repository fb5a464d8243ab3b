"""The PPFlow adapter of a diffusers transformer: what the hook adds, as one small module and folder.

Per coarse stage a patch embedding and an output projection (average/copy init from the model's own), a
stage embedding (zero at init) and optionally a stage-gated LoRA on the blocks' linear layers. None of it is
registered inside the transformer: the model's state dict, `save_pretrained` and LoRA keys stay diffusers'.
An adapter folder holds `ppflow_adapter.safetensors` (with its SHA-256) and `ppflow_adapter.json` naming
the family, schedule and a fingerprint of the base it was made for.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ...io import HASH_KEY, content_sha256, read_weights, replace_folder, save_safetensors_atomic, write_text_atomic
from ...sampling.sigmas import FluxShift
from .family import Family
from .stages import BOUNDARY_RULES, StagePlan

WEIGHTS = "ppflow_adapter.safetensors"
CONFIG = "ppflow_adapter.json"
FORMAT = "ppflow-diffusers-adapter"
INITS = ("pooled", "tiled")


class Active:
    """The coarse stage the running forward is in (None outside coarse forwards), and the stage whose embedding
    row the time embedding gets (the coarse stage; with `fine_embed` the fine stage too)."""

    def __init__(self) -> None:
        self.stage: int | None = None
        self.embed: int | None = None


@dataclass
class HookConfig:
    """What a PPFlow adapter adds to a diffusers transformer and which base it belongs to."""

    family: str = ""  # ppflow.integrations.diffusers family name (flux, wan)
    schedule: str = "ppf2"  # stage plan (stages.py); the finest stage is the model's own patch
    init: str = ""  # coarse projections: 'pooled' (official recipe) or 'tiled'; '': the family's default
    boundaries: str = "unshifted"  # 'unshifted': boundaries follow the resolution's time shift; 'sigma': as given
    shift: FluxShift = field(default_factory=FluxShift)  # the pipeline's time shift (the 'unshifted' rule uses it)
    coarse_output: str = "v"  # what coarse stages emit: 'v' or (FLUX) 'noise_skip'
    rank: int = 0  # stage-gated LoRA rank (0: none)
    alpha: float = 0.0  # LoRA scale alpha / rank (0: alpha = rank)
    targets: list[str] = field(default_factory=list)  # LoRA target suffixes (empty: the family's defaults)
    base: str = ""  # where the base came from (hub id or folder), for the record
    base_fingerprint: str = ""  # fingerprint of the base's weights: another base is refused
    fingerprint_rule: str = "dtype-free"  # how it was taken (`fingerprint`); folders without the key: 'exact'
    method: str = "init"  # how the adapter was made (init, lora-distill, ...)
    guided: float | None = None  # CFG scale distilled into the coarse stages, if any
    fine_embed: bool = False  # the fine stage adds its stage-embedding row too (PPFlux's shared fine-tune)
    positions: str = ""  # coarse tokens' RoPE positions: 'centre' of the fine tokens they cover, or 'grid' (the
    #   coarse grid's own 0, 1, 2, ...: Wan adapters saved before the option); '': the family's default

    def __post_init__(self) -> None:
        if isinstance(self.shift, dict):
            self.shift = FluxShift(**self.shift)
        if self.init and self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INITS}")
        if self.boundaries not in BOUNDARY_RULES:
            raise ValueError(f"unknown boundaries {self.boundaries!r}; choose one of {BOUNDARY_RULES}")
        if self.rank < 0:
            raise ValueError(f"LoRA rank must be >= 0 (0: no LoRA), got {self.rank}")

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> HookConfig:
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if d.get("family") == "wan" and "positions" not in d:  # saved before 'centre' existed: trained on 'grid'
            d["positions"] = "grid"
        if d.get("base_fingerprint") and "fingerprint_rule" not in d:  # saved before the dtype-free rule
            d["fingerprint_rule"] = "exact"
        return cls(**d)


class StageLoRA(nn.Module):
    """`scale * B A x`; B starts at zero so a new adapter leaves the coarse stage as its init."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        w = _weight(layer)
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, w.shape[1], device=w.device, dtype=w.dtype))
        self.B = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.A.dtype) @ self.A.T) @ self.B.T * self.scale  # (..., out)


class StageAdapter(nn.Module):
    """Coarse projections, stage embedding and stage-gated LoRA of one transformer; run by the PPFlow hook."""

    def __init__(self, model: nn.Module, family: Family, config: HookConfig) -> None:
        super().__init__()
        self.family, self.config = family, config
        self.plan = StagePlan.parse(config.schedule, family.base_patch(model))
        if config.coarse_output not in family.coarse_outputs:
            raise ValueError(f"coarse_output {config.coarse_output!r} is not available for {family.name}; choose "
                             f"one of {family.coarse_outputs}")
        if not config.init:
            config.init = family.inits[0]
        if config.init not in family.inits:
            raise ValueError(f"init {config.init!r} is not available for {family.name}; choose one of {family.inits}")
        if not config.positions:
            config.positions = family.positions[0]
        if config.positions not in family.positions:
            raise ValueError(f"positions {config.positions!r} is not available for {family.name}; choose one of "
                             f"{family.positions}")
        self.active = Active()
        self.embed, self.out = nn.ModuleDict(), nn.ModuleDict()
        for s in range(self.plan.num_stages - 1):
            family.check(model, self.plan.factors[s])
            self.embed[str(s)] = family.make_embed(model, self.plan.factors[s], config.init)
            self.out[str(s)] = family.make_out(model, self.plan.factors[s], config.init)
        p = next(model.parameters())
        self.stage_embed = nn.Parameter(torch.zeros(self.plan.num_stages, family.width(model), device=p.device,
                                                    dtype=p.dtype))
        self.lora = nn.ModuleDict()
        self._paths: dict[str, str] = {}
        if config.rank and self.plan.coarse:
            targets = tuple(config.targets) or family.lora_targets
            found = [name for name, m in model.named_modules() if name.startswith(family.blocks)
                     and name.endswith(targets) and _weight(m, None) is not None and "lora_" not in name
                     and not name.endswith(".base_layer")]
            if not found:
                raise ValueError(f"no linear layer in the blocks ends with any of {list(targets)}; "
                                 f"{family.name} layers are named like {family.lora_targets[:3]}")
            for name in found:
                key = name.replace(".", "__")
                self.lora[key] = StageLoRA(model.get_submodule(name), config.rank, config.alpha or config.rank)
                self._paths[key] = name
        self.counts: dict[int, int] = {}  # samples run per stage since the last `reset_counts`
        self.skipped = 0  # unconditional coarse-stage samples answered without a forward (coarse_cfg False)
        self.coarse_cfg = True  # false: stage-level CFG, no unconditional pass in coarse stages (api.apply)
        self.grid_mu: float | None = None  # the time shift of the running pipeline call's grid (scheduler.py)
        self.pin_stage: int | None = None  # a stage every forward runs in (PPFluxTransformer's `stage=`)
        self.pin_grid: tuple[int, int] | None = None  # the token grid when the caller knows it (FLUX `grid=`)
        self.stage_guidance: list[float] | None = None  # distilled guidance per stage (PPFluxPipeline's lists)
        self.__dict__["_table_owner"] = self  # who registers stage_embed (PPFluxTransformer: itself)
        self.passive, self.engaged = False, False  # passive: the hook acts only while engaged (PPFlux's forward)

    # ------------------------------------------------------------------ running
    def table(self) -> torch.Tensor:
        """The stage-embedding table (num_stages, D), read through the module that registers it."""
        return self.__dict__["_table_owner"].stage_embed

    def stages_of(self, model: nn.Module, kw: dict) -> list[int]:
        if self.pin_stage is not None:
            return [self.pin_stage]
        if not self.plan.coarse:
            return [0]
        sigma = self.family.sigma(model, kw)
        return self.plan.stage_of(sigma, self.config.boundaries, self.config.shift, self.family.seq_len(model, kw),
                                  mu=self.grid_mu)

    def place(self, like: torch.Tensor) -> None:
        """Follow the model's device (CPU offload moves the model, not this module)."""
        p = self.stage_embed
        if p.device != like.device:
            self.to(like.device)

    def count(self, stage: int, samples: int) -> None:
        self.counts[stage] = self.counts.get(stage, 0) + samples

    def reset_counts(self) -> None:
        self.counts, self.skipped = {}, 0

    def lora_layers(self):
        """(path in the model, LoRA module) of every stage-gated LoRA."""
        return [(self._paths[k], m) for k, m in self.lora.items()]

    # ------------------------------------------------------------------ sizes
    def size(self, model: nn.Module) -> tuple[int, float]:
        """(adapter parameters, their share of the model's parameters)."""
        extra = sum(p.numel() for p in self.parameters())
        return extra, extra / sum(p.numel() for p in model.parameters())

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike, state: dict | None = None) -> Path:
        """Write the adapter folder (weights with their SHA-256, config) atomically; `state`: other weights of
        the same names (e.g. the EMA's)."""
        state = {k: v.detach().contiguous().cpu() for k, v in (state or self.state_dict()).items()}

        def write(tmp: Path) -> None:
            save_safetensors_atomic(state, tmp / WEIGHTS, {"format": FORMAT, HASH_KEY: content_sha256(state)})
            write_text_atomic(tmp / CONFIG, json.dumps(self.config.to_dict(), indent=2), "PPFlow adapter config")

        return replace_folder(folder, write, keep=lambda name: name not in (WEIGHTS, CONFIG))

    def load_weights(self, folder: str | os.PathLike, verify: bool = True) -> None:
        weights = read_weights(Path(folder) / WEIGHTS, verify)
        own = self.state_dict()
        if set(weights) != set(own):
            missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
            raise ValueError(f"{folder}: the adapter's tensors do not fit this model and schedule (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}): it was made for another base or schedule")
        bad = [k for k in own if own[k].shape != weights[k].shape]
        if bad:
            raise ValueError(f"{folder}: adapter tensors {bad[:3]} have other shapes: it belongs to another base size")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def is_adapter_folder(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and (Path(path) / CONFIG).is_file()


def read_config(folder: str | os.PathLike) -> HookConfig:
    path = Path(folder) / CONFIG
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read as a PPFlow adapter config: {e}") from None
    if d.get("format") != FORMAT:
        raise ValueError(f"{path} is not a PPFlow diffusers adapter (format {d.get('format')!r})")
    return HookConfig.from_dict(d)


FINGERPRINT_RULES = ("dtype-free", "exact")
SMALL = 1e-4  # |values| below this count as 0 in the dtype-free rule (fp16 keeps them only as subnormals)


def fingerprint(model: nn.Module, rule: str = "dtype-free", samples: int = 4096) -> str:
    """SHA-256 over every base tensor's name, shape and an evenly strided sample of its values.

    Cheap at any size and unchanged by a LoRA the user loads with peft (its tensors and `base_layer.` names are
    skipped), so an adapter recognises the base it was trained on. 'dtype-free': the values rounded to bf16 (and
    tiny ones to 0), so the same checkpoint loaded in fp32, bf16 or fp16 gives one fingerprint; 'exact': the values
    as loaded (adapter folders saved before the rule existed).
    """
    if rule not in FINGERPRINT_RULES:
        raise ValueError(f"unknown fingerprint rule {rule!r}; choose one of {FINGERPRINT_RULES}")
    picked = {}
    for name, t in model.state_dict().items():
        if "lora_" in name:
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        v = flat[::step][:samples].to("cpu", torch.float32)
        if rule == "dtype-free" and v.is_floating_point():
            v = torch.where(v.abs() < SMALL, torch.zeros_like(v), v).to(torch.bfloat16).float()
        picked[name.replace(".base_layer.", ".")] = v
    return content_sha256(picked)


def _weight(layer: nn.Module, default=...):
    base = getattr(layer, "base_layer", layer)
    if isinstance(base, nn.Linear):
        return base.weight
    if default is ...:
        raise TypeError(f"{type(layer).__name__} is not a linear layer")
    return default
