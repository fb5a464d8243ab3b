"""facebookresearch/DiT checkpoints (e.g. `DiT-XL-2-256x256.pt`): EMA state dict of a one-stage model.

DiT is a discrete-time epsilon-prediction diffusion model (integer t in 0..999, 0 = data),
so a loaded DiT is *not* a flow model: its first C outputs are epsilon, not a velocity.
ppflow keeps its time embedder meaningful by feeding it 999 * (1 - t) for flow time t
(`ModelConfig.time_map='dit'`, the default here; `time_map='identity'` feeds t as is).
That makes it a starting point for flow-matching fine-tuning (see docs/interop.md).

The DiT key layout is shared with SiT (`ppflow.convert.sit`); this module holds it.
"""

from __future__ import annotations

import torch

from ..models.backbone import PPFlowTransformer
from ..models.schedule import PyramidSchedule
from .keymap import (
    CheckpointError,
    Converted,
    Dims,
    Entry,
    backbone_entries,
    build_config,
    conv_patch_entries,
    grid_of,
    infer_dims,
    size_name,
    to_foreign,
    to_ours,
    unpatchify_entries,
)

NAME = "dit"
PATCH_KEY = "x_embedder.proj.weight"
FINAL_KEY = "final_layer.linear.weight"
POS_KEY = "pos_embed"


def detect(state: dict) -> bool:
    """A one-stage DiT/SiT state dict (DiT and SiT share these keys)."""
    return PATCH_KEY in state and FINAL_KEY in state and "x_embedder.proj1.weight" not in state


def entries(d: Dims) -> list[Entry]:
    """Explicit key map of the shared DiT/SiT layout."""
    return (conv_patch_entries("x_embedder.proj", 0, d, (1, 1)) + backbone_entries(d)
            + unpatchify_entries("final_layer.linear", 0, d, (1, 1)))


def convert_layout(state: dict, overrides: dict, source: str, fmt: str, family: str, time_map: str) -> Converted:
    """DiT/SiT state dict -> ppflow keys and a one-stage config (`family` names it, `time_map` is the default)."""
    d = infer_dims(state, PATCH_KEY, FINAL_KEY, source)
    p, q = d.patch
    fields = {"schedule": f"1:{p}x{q}", "level_embedding": False, "time_map": time_map}
    pos = state.get(POS_KEY)
    grid = None
    if pos is not None:
        grid = grid_of(pos.shape[-2], d.patch, source, POS_KEY)
        fields["input_size"] = grid
    if "schedule" in overrides:
        sched = PyramidSchedule.from_config(overrides["schedule"])
        if sched.num_stages != 1 or sched.stages[0].patch != (p, q):
            raise CheckpointError(
                f"{source} is a one-stage {family} model with {p}x{q} patches; schedule={overrides['schedule']!r} "
                "does not fit it. To turn it into a PPFlow model use ppflow.adapt(...) / `ppflow adapt`."
            )
    cfg = build_config(d, fields, overrides, source)
    if "name" not in overrides:
        size = size_name(cfg.depth, cfg.hidden_size, cfg.num_heads)
        cfg.name = f"{family}-{size}/{p}" if size and p == q else ""
    ours = to_ours(entries(d), state, {POS_KEY}, source, fmt)
    tables = {} if pos is None else {POS_KEY: (0, pos.reshape(pos.shape[-2], pos.shape[-1]))}
    notes = [] if pos is not None else [f"no {POS_KEY!r} in the file: positional tables not checked"]
    return Converted(fmt, cfg, ours, tables, grid or cfg.input_size, notes)


def to_ppflow(state: dict, overrides: dict, source: str) -> Converted:
    return convert_layout(state, overrides, source, NAME, "DiT", "dit")


def export_layout(model: PPFlowTransformer, family: str) -> dict[str, torch.Tensor]:
    """Our one-stage model -> the DiT/SiT state dict (with its positional table at config.input_size)."""
    cfg, sched = model.config, model.schedule
    if sched.num_stages != 1 or model.level_embedder is not None:
        raise CheckpointError(
            f"only one-stage models without a level embedding export to {family}; this one has schedule "
            f"{sched.to_string()} (export PPFlow models with format 'ppflow-official')"
        )
    (p, q), = sched.patches
    d = Dims(cfg.hidden_size, cfg.depth, int(cfg.hidden_size * cfg.mlp_ratio), cfg.in_channels, cfg.num_classes,
             cfg.out_channels, (p, q))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = to_foreign(entries(d), state)
    H, W = cfg.input_size
    out[POS_KEY] = model.pos_embed(0, H, W, torch.device("cpu"))[None].clone()  # (1, T, D)
    return out


def from_ppflow(model: PPFlowTransformer) -> dict[str, torch.Tensor]:
    return export_layout(model, "DiT")
