"""Explicit key maps between foreign state dicts and ppflow's, with shape asserts.

Every foreign adapter lists its tensors as `Entry`s (foreign key, our key, the
foreign shape, and the re-indexing both ways); `to_ours` / `to_foreign` apply a
list and fail with the key names when a file has missing, extra or misshapen
tensors. The DiT block stack, time/label embedders and final adaLN are the same
in DiT, SiT and the official PPFlow code, so `backbone_entries` is shared.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..io import CheckpointError
from ..models.backbone import ModelConfig
from ..models.registry import SIZES

Tensor = torch.Tensor
FREQUENCY_SIZE = 256  # width of the sinusoidal time features (fixed in DiT/SiT/PPFlow and in ppflow)


def _same(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Entry:
    """One tensor: foreign key <-> our key, its shape in the foreign file, and the re-indexing both ways."""

    foreign: str
    ours: str
    shape: tuple[int, ...]
    to_ours: Callable[[Tensor], Tensor] = _same
    to_foreign: Callable[[Tensor], Tensor] = _same


@dataclass(frozen=True)
class Dims:
    """Sizes read off a foreign state dict."""

    width: int  # D
    depth: int  # number of blocks
    mlp_hidden: int  # fc1 rows
    in_channels: int  # C
    num_classes: int  # label rows minus the null row (0 = unconditional)
    out_channels: int  # O (2C with learn_sigma)
    patch: tuple[int, int]  # base patch (rows, cols)


@dataclass
class Converted:
    """A foreign checkpoint re-indexed into ppflow's layout (nothing is built yet)."""

    format: str
    config: ModelConfig
    state: dict[str, Tensor]  # our keys
    pos_tables: dict[str, tuple[int, Tensor]]  # foreign key -> (stage, (L, D) table) to check against ours
    grid: tuple[int, int]  # latent (H, W) the stored tables were made for
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- entries
def backbone_entries(d: Dims) -> list[Entry]:
    """Embedders, blocks and final adaLN: identical names and layouts in DiT, SiT, official PPFlow and ppflow."""
    D, H = d.width, d.mlp_hidden
    out = [
        Entry("t_embedder.mlp.0.weight", "t_embedder.mlp.0.weight", (D, FREQUENCY_SIZE)),
        Entry("t_embedder.mlp.0.bias", "t_embedder.mlp.0.bias", (D,)),
        Entry("t_embedder.mlp.2.weight", "t_embedder.mlp.2.weight", (D, D)),
        Entry("t_embedder.mlp.2.bias", "t_embedder.mlp.2.bias", (D,)),
    ]
    if d.num_classes > 0:
        out.append(Entry("y_embedder.embedding_table.weight", "y_embedder.embedding_table.weight",
                         (d.num_classes + 1, D)))
    for i in range(d.depth):
        b = f"blocks.{i}."
        for name, shape in (("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (H, D)),
                            ("mlp.fc2", (D, H)), ("adaLN_modulation.1", (6 * D, D))):
            out.append(Entry(b + name + ".weight", b + name + ".weight", shape))
            out.append(Entry(b + name + ".bias", b + name + ".bias", shape[:1]))
    out += [
        Entry("final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.weight", (2 * D, D)),
        Entry("final_layer.adaLN_modulation.1.bias", "final_layer.adaLN_modulation.1.bias", (2 * D,)),
    ]
    return out


def conv_patch_entries(foreign: str, stage: int, d: Dims, factors: tuple[int, int]) -> list[Entry]:
    """A stride-p conv over a space-to-depth image -> our PatchEmbed Linear.

    The space-to-depth by (fh, fw) puts pixel (fh*h+i, fw*w+j) of channel c in channel
    c*fh*fw + i*fw + j; kernel position (a, b) then sees in-patch pixel (a*fh+i, b*fw+j).
    (1, 1) is a plain DiT/SiT patch embed.
    """
    D, C = d.width, d.in_channels
    p, q = d.patch
    fh, fw = factors

    def to_ours(w: Tensor) -> Tensor:  # (D, C*fh*fw, p, q) -> (D, C*(p*fh)*(q*fw))
        w = w.reshape(D, C, fh, fw, p, q).permute(0, 1, 4, 2, 5, 3)  # (D, C, a, i, b, j)
        return w.reshape(D, C * p * fh * q * fw)

    def to_foreign(w: Tensor) -> Tensor:
        w = w.reshape(D, C, p, fh, q, fw).permute(0, 1, 3, 5, 2, 4)  # (D, C, i, j, a, b)
        return w.reshape(D, C * fh * fw, p, q)

    ours = f"x_embedder.{stage}.proj."
    return [
        Entry(foreign + ".weight", ours + "weight", (D, C * fh * fw, p, q), to_ours, to_foreign),
        Entry(foreign + ".bias", ours + "bias", (D,)),
    ]


def unpatchify_entries(foreign: str, stage: int, d: Dims, factors: tuple[int, int]) -> list[Entry]:
    """A final Linear unpatchified in the space-to-depth domain -> our Unpatchify Linear.

    Foreign row (a*q+b)*(fh*fw*O) + o*fh*fw + i*fw + j  <->  our row (r*pw+s)*O + o
    with r = a*fh+i, s = b*fw+j, pw = q*fw. (1, 1) is the DiT/SiT final layer.
    """
    D, O = d.width, d.out_channels
    p, q = d.patch
    fh, fw = factors
    rows = p * q * fh * fw * O

    def to_ours(w: Tensor) -> Tensor:  # foreign (rows, ...) -> ours (rows, ...)
        tail = w.shape[1:]
        w = w.reshape(p, q, O, fh, fw, *tail).permute(0, 3, 1, 4, 2, *range(5, 5 + len(tail)))  # (a, i, b, j, o)
        return w.reshape(rows, *tail)

    def to_foreign(w: Tensor) -> Tensor:
        tail = w.shape[1:]
        w = w.reshape(p, fh, q, fw, O, *tail).permute(0, 2, 4, 1, 3, *range(5, 5 + len(tail)))  # (a, b, o, i, j)
        return w.reshape(rows, *tail)

    ours = f"final_layer.unpatchify.{stage}.linear."
    return [
        Entry(foreign + ".weight", ours + "weight", (rows, D), to_ours, to_foreign),
        Entry(foreign + ".bias", ours + "bias", (rows,), to_ours, to_foreign),
    ]


# ------------------------------------------------------------ apply a map
def to_ours(entries: list[Entry], state: dict[str, Tensor], fixed: set[str], source: str,
            fmt: str) -> dict[str, Tensor]:
    """Re-index `state` by `entries`; `fixed` keys (positional tables) are allowed and skipped."""
    known = {e.foreign for e in entries}
    missing = [e.foreign for e in entries if e.foreign not in state]
    unexpected = sorted(set(state) - known - fixed)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not have the tensors of a {fmt} checkpoint of this size: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
            f"{' ...' if len(unexpected) > 6 else ''}. The file may be truncated/edited, or of another format: "
            "let ppflow detect the format (drop --from / format=) or pass the right one."
        )
    out = {}
    for e in entries:
        t = state[e.foreign]
        if tuple(t.shape) != e.shape:
            raise CheckpointError(
                f"{source}: tensor {e.foreign!r} has shape {tuple(t.shape)} but the other tensors of this {fmt} "
                f"checkpoint imply {e.shape}; the file is inconsistent (edited or truncated). Re-export it."
            )
        out[e.ours] = e.to_ours(t)
    return out


def to_foreign(entries: list[Entry], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `to_ours` (positional tables are added by the caller)."""
    return {e.foreign: e.to_foreign(state[e.ours]).contiguous() for e in entries}


# -------------------------------------------------------------- inference
def block_count(state: dict[str, Tensor], source: str) -> int:
    """Number of `blocks.i.` entries; they must be numbered 0..n-1."""
    ids = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not ids:
        raise CheckpointError(f"{source} has no transformer blocks ('blocks.0.*'); it is not a DiT-style checkpoint")
    gaps = sorted(set(range(max(ids) + 1)) - ids)
    if gaps:
        raise CheckpointError(f"{source}: blocks {gaps[:6]} are missing (truncated or edited file); re-export it")
    return max(ids) + 1


def infer_dims(state: dict[str, Tensor], patch_key: str, final_key: str, source: str) -> Dims:
    """Read width, depth, channels, classes and output width off the finest patch embed and final layer."""
    for key in (patch_key, final_key, "blocks.0.mlp.fc1.weight", "t_embedder.mlp.0.weight"):
        if key not in state:
            raise CheckpointError(f"{source} has no {key!r}; it is not a DiT/SiT/PPFlow checkpoint")
    w = state[patch_key]
    if w.dim() != 4:
        raise CheckpointError(f"{source}: {patch_key!r} has shape {tuple(w.shape)}, expected a conv kernel (D, C, p, p)")
    D, C, p, q = w.shape
    if state["t_embedder.mlp.0.weight"].shape[1] != FREQUENCY_SIZE:
        raise CheckpointError(
            f"{source}: the time embedder reads {state['t_embedder.mlp.0.weight'].shape[1]} sinusoidal features; "
            f"ppflow's reads {FREQUENCY_SIZE} (as DiT/SiT/PPFlow)"
        )
    table = state.get("y_embedder.embedding_table.weight")
    num_classes = 0 if table is None else table.shape[0] - 1
    rows = state[final_key].shape[0]
    if rows % (p * q):
        raise CheckpointError(f"{source}: {final_key!r} has {rows} rows, not a multiple of the patch area {p * q}")
    return Dims(width=D, depth=block_count(state, source), mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
                in_channels=C, num_classes=num_classes, out_channels=rows // (p * q), patch=(p, q))


def grid_of(tokens: int, patch: tuple[int, int], source: str, key: str) -> tuple[int, int]:
    """Latent (H, W) of a square token grid with `tokens` tokens of the base patch."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(
            f"{source}: {key!r} holds {tokens} positions, not a square grid; pass input_size=(H, W) "
            "(the latent size the model was trained at)"
        )
    return side * patch[0], side * patch[1]


def size_name(depth: int, width: int, heads: int) -> str | None:
    """Registry size name (S, B, L, XL, ...) of an architecture, or None."""
    for name, s in SIZES.items():
        if (s.depth, s.hidden_size, s.num_heads) == (depth, width, heads):
            return name
    return None


def default_heads(width: int, source: str, overrides: dict) -> int:
    """Heads are not in the weights: take the override, else the registry size of this width."""
    if overrides.get("num_heads") is not None:
        return int(overrides["num_heads"])
    for s in SIZES.values():
        if s.hidden_size == width:
            return s.num_heads
    widths = {name: s.hidden_size for name, s in SIZES.items()}
    raise CheckpointError(
        f"{source}: width {width} is not a registry size {widths}, and the number of attention heads "
        "cannot be read from the weights; pass num_heads=... (CLI: --num-heads)"
    )


# Config fields the weights determine; an override may only repeat them.
SHAPE_FIELDS = ("depth", "hidden_size", "mlp_ratio", "in_channels", "num_classes", "learn_sigma", "level_embedding")


def build_config(d: Dims, fields: dict, overrides: dict, source: str) -> ModelConfig:
    """ModelConfig from dims + format fields (schedule, time_map, input_size, name), then user overrides."""
    if d.out_channels not in (d.in_channels, 2 * d.in_channels):
        raise CheckpointError(
            f"{source}: the final layer emits {d.out_channels} channels per pixel for {d.in_channels} input "
            f"channels; expected {d.in_channels} or {2 * d.in_channels} (learn_sigma)"
        )
    ratio = d.mlp_hidden / d.width
    if int(d.width * ratio) != d.mlp_hidden:
        raise CheckpointError(f"{source}: MLP width {d.mlp_hidden} is not representable as width x mlp_ratio")
    inferred = {
        "depth": d.depth,
        "hidden_size": d.width,
        "mlp_ratio": ratio,
        "in_channels": d.in_channels,
        "num_classes": d.num_classes,
        "learn_sigma": d.out_channels == 2 * d.in_channels,
    }
    inferred.update(fields)
    for key in SHAPE_FIELDS:
        if key in overrides and key in inferred and overrides[key] != inferred[key]:
            raise CheckpointError(
                f"{source}: {key}={overrides[key]!r} was requested but the weights have {key}={inferred[key]!r}; "
                f"drop the {key} override (sizes are read from the file)"
            )
    heads = default_heads(d.width, source, overrides)
    if d.width % heads:
        raise CheckpointError(f"{source}: width {d.width} is not divisible by num_heads={heads}; pass a divisor")
    cfg = {**inferred, "num_heads": heads, **overrides}
    try:
        return ModelConfig.from_dict(cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
