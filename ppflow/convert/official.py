"""Official PPFlow checkpoints (fudan-generative-vision/PPFlow: `PPF-XL-2.pt`, `PPF-XL-3.pt`).

The official model patchifies stage s by space-to-depth then a p x p conv (`x_embedder.proj1`,
`proj2`, finest `proj`), unpatchifies in the space-to-depth domain (`final_layer.linear1`,
`linear2`, finest `linear`), adds `level_embedder.embedding_table` to the conditioning and
stores one sin-cos table per stage (`pos_embed.<stage>`). Stage 0 is the coarsest. All of
this maps onto ppflow's per-stage Linear layers by re-indexing only (see `keymap`), so a
loaded model gives the official outputs; the stage boundaries are 0.5 (and 0.75).
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

NAME = "ppflow-official"
LEVEL_KEY = "level_embedder.embedding_table.weight"

# stages -> per stage: (space-to-depth factors (rows, cols), patch-embed key, final-linear key, t_end)
LAYOUTS: dict[int, tuple[tuple[tuple[int, int], str, str, float], ...]] = {
    2: (((2, 2), "x_embedder.proj1", "final_layer.linear1", 0.5),
        ((1, 1), "x_embedder.proj", "final_layer.linear", 1.0)),
    3: (((2, 2), "x_embedder.proj1", "final_layer.linear1", 0.5),
        ((1, 2), "x_embedder.proj2", "final_layer.linear2", 0.75),
        ((1, 1), "x_embedder.proj", "final_layer.linear", 1.0)),
}


def detect(state: dict) -> bool:
    return "x_embedder.proj1.weight" in state


def num_stages(state: dict) -> int:
    """2 or 3 stages, from the keys (`proj2` exists only in the 3-stage model)."""
    return 3 if "x_embedder.proj2.weight" in state else 2


def schedule_string(stages: int, patch: tuple[int, int]) -> str:
    """The official schedule for base patch (p, q); 'ppf2'/'ppf3' for 2x2."""
    if patch == (2, 2):
        return {2: "ppf2", 3: "ppf3"}[stages]
    p, q = patch
    return ",".join(f"{t:g}:{p * fh}x{q * fw}" for (fh, fw), _, _, t in LAYOUTS[stages])


def entries(d: Dims, stages: int) -> list[Entry]:
    """Explicit key map of the official layout (stage 0 = coarsest)."""
    out = []
    for s, (factors, embed, _, _) in enumerate(LAYOUTS[stages]):
        out += conv_patch_entries(embed, s, d, factors)
    out += backbone_entries(d)
    out.append(Entry(LEVEL_KEY, "level_embedder.weight", (stages, d.width)))
    for s, (factors, _, linear, _) in enumerate(LAYOUTS[stages]):
        out += unpatchify_entries(linear, s, d, factors)
    return out


def to_ppflow(state: dict, overrides: dict, source: str) -> Converted:
    n = num_stages(state)
    d = infer_dims(state, "x_embedder.proj.weight", "final_layer.linear.weight", source)
    p, q = d.patch
    default = schedule_string(n, d.patch)
    expected = PyramidSchedule.from_string(default).patches
    if "schedule" in overrides:
        given = PyramidSchedule.from_config(overrides["schedule"])
        if given.patches != expected:
            raise CheckpointError(
                f"{source} is a {n}-stage official PPFlow model with patches {list(expected)}; "
                f"schedule={overrides['schedule']!r} has patches {list(given.patches)}. Only the stage "
                "boundaries may be overridden."
            )
    pos_keys = {f"pos_embed.{s}" for s in range(n)}
    finest = f"pos_embed.{n - 1}"
    fields = {"schedule": default, "level_embedding": True, "time_map": "identity"}
    grid = None
    if finest in state:
        grid = grid_of(state[finest].shape[-2], d.patch, source, finest)
        fields["input_size"] = grid
    cfg = build_config(d, fields, overrides, source)
    if "name" not in overrides:
        size = size_name(cfg.depth, cfg.hidden_size, cfg.num_heads)
        cfg.name = f"PPF-{size}-{n}" if size and (p, q) == (2, 2) else ""
    ours = to_ours(entries(d, n), state, pos_keys, source, NAME)
    tables = {}
    for s in range(n):
        t = state.get(f"pos_embed.{s}")
        if t is not None:
            tables[f"pos_embed.{s}"] = (s, t.reshape(t.shape[-2], t.shape[-1]))
    notes = [] if tables else ["no 'pos_embed.<stage>' tables in the file: positional tables not checked"]
    return Converted(NAME, cfg, ours, tables, grid or cfg.input_size, notes)


def from_ppflow(model: PPFlowTransformer) -> dict[str, torch.Tensor]:
    """Our 2/3-stage PPFlow model with the official patch layout -> the official state dict."""
    cfg, sched = model.config, model.schedule
    p, q = sched.base_patch
    n = sched.num_stages
    if n not in LAYOUTS or sched.patches != PyramidSchedule.from_string(schedule_string(n, (p, q))).patches \
            or model.level_embedder is None:
        raise CheckpointError(
            f"the official PPFlow layout has the ppf2/ppf3 patches and a level embedding; this model has "
            f"schedule {sched.to_string()} (level embedding: {model.level_embedder is not None})"
        )
    d = Dims(cfg.hidden_size, cfg.depth, int(cfg.hidden_size * cfg.mlp_ratio), cfg.in_channels, cfg.num_classes,
             cfg.out_channels, (p, q))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = to_foreign(entries(d, n), state)
    H, W = cfg.input_size
    for s in range(n):
        out[f"pos_embed.{s}"] = model.pos_embed(s, H, W, torch.device("cpu"))[None].clone()  # (1, L_s, D)
    return out
