"""Single-file checkpoints: read safely, detect the format, convert, build the model.

Formats: `ppflow-train` (ppflow's trainer), `dit`, `sit`, `ppflow-official`; each foreign
one is an adapter module with an explicit key map (`dit.py`, `sit.py`, `official.py`).
Files are read with `torch.load(weights_only=True)`; the only class allowed beyond
tensors and containers is argparse.Namespace (the "args" of DiT/SiT/PPFlow training
checkpoints). Nothing else is ever unpickled. Files ppflow wrote (a "sha256" in the
safetensors metadata or in the training checkpoint) are checked against that hash unless
`verify=False`.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from types import ModuleType

import torch

from ..io import read_weights, refused_pickle, verify_state
from ..models.backbone import CONFIG, WEIGHTS, PPFlowTransformer
from ..models.pretrained import load_state_strict
from . import dit, official, sit, training
from .keymap import CheckpointError, Converted

FOREIGN: dict[str, ModuleType] = {dit.NAME: dit, sit.NAME: sit, official.NAME: official}
FORMATS = ("ppflow", training.FORMAT_TAG, *FOREIGN)  # names accepted by `format=` / `--from`
SAFE_GLOBALS = [argparse.Namespace]


# ------------------------------------------------------------------ reading
def read_file(path: Path, verify: bool = True) -> object:
    """Load a torch or safetensors file without running pickled code (a ppflow safetensors file: hash-checked)."""
    if path.suffix == ".safetensors":
        return read_weights(path, verify=verify)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise (refused_pickle(path, e) or _unreadable(path, e)) from e
    except Exception as e:  # truncated zip, garbage, I/O errors, bad safetensors header
        raise _unreadable(path, e) from e


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    reason = (str(err).splitlines() or [type(err).__name__])[0][:200] or type(err).__name__
    return CheckpointError(
        f"cannot read {path}: it is not a complete PyTorch or safetensors checkpoint ({type(err).__name__}: "
        f"{reason}). If it was downloaded or copied, it is probably truncated: fetch it again and compare its "
        "size or checksum."
    )


# ---------------------------------------------------------------- detecting
def _family_from_name(path: Path) -> str | None:
    """'dit' / 'sit' when the file name says so (DiT-XL-2-256x256.pt, SiT-XL-2-256.pt)."""
    found = {m for m in ("dit", "sit") if re.search(rf"(^|[^a-z]){m}([^a-z]|$)", path.name.lower())}
    return found.pop() if len(found) == 1 else None


def detect_format(state: dict, path: Path, hint: str | None = None) -> str:
    """Format name of a state dict from its keys (DiT vs SiT, which share keys: from `hint` or the file name)."""
    if official.detect(state):
        return official.NAME
    if dit.detect(state):
        family = hint if hint in (dit.NAME, sit.NAME) else _family_from_name(path)
        if family is None:
            raise CheckpointError(
                f"{path} has the DiT/SiT layout, and the two share their keys; say which it is with "
                "format='dit' (epsilon prediction, discrete time) or format='sit' (flow velocity) "
                "(CLI: --from dit / --from sit)"
            )
        return family
    if any(k.startswith("x_embedder.0.") for k in state):
        raise CheckpointError(
            f"{path} is a bare ppflow state dict without its config; save models with save_pretrained() "
            "(a folder), or build the model with create_model(...) and call load_state_dict yourself"
        )
    keys = sorted(state)[:8]
    raise CheckpointError(
        f"{path} holds keys {keys} which match none of the formats ppflow reads ({', '.join(FORMATS)}); "
        "it is not a DiT/SiT/PPFlow checkpoint"
    )


def convert_file(path: str | Path, format: str | None = None, weights: str | None = None, *,
                 verify: bool = True, **overrides) -> Converted:
    """Read a single-file checkpoint and re-index it into ppflow's layout (no model is built).

    `verify=False` skips the SHA-256 check of files ppflow wrote (for deliberate edits).
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; choose one of {FORMATS} (or leave it to detection)")
    if format == "ppflow":
        if path.name == WEIGHTS and (path.parent / CONFIG).exists():
            raise CheckpointError(f"{path} belongs to a ppflow folder: load the folder {path.parent} instead")
        raise CheckpointError(f"format 'ppflow' is a folder (model.safetensors + config.json); {path} is a file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, but not a ppflow model folder ({WEIGHTS} + {CONFIG}) "
                              "or run folder (checkpoints/last.pt)")
    obj = read_file(path, verify=verify)
    source = str(path)
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or training checkpoint")
    if training.is_ppflow_training(obj):
        if verify:
            verify_state(obj, path)
        if format not in (None, training.FORMAT_TAG):
            raise CheckpointError(f"{path} is a {training.FORMAT_TAG} checkpoint, not {format!r}; drop format=")
        return training.from_ppflow_training(obj, weights, overrides, source)
    if format == training.FORMAT_TAG:
        raise CheckpointError(f"{path} is not a {training.FORMAT_TAG} checkpoint (no 'format' tag); drop format=")
    hint = None
    if training.is_foreign_training(obj):
        hint = training.family_hint(obj)
        state, choice = training.pick_weights(obj, weights, source)
        note = f"{choice} weights of a training checkpoint"
    else:
        if weights is not None:
            raise CheckpointError(
                f"{path} holds a single set of weights (not a training checkpoint with 'model' and 'ema'); "
                "drop weights="
            )
        state, note = training.strip_prefix(obj), "bare state dict"
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; this is not a model state dict")
    if format is None:
        fmt = detect_format(state, path, hint)
    else:
        layout = official.NAME if official.detect(state) else "dit/sit" if dit.detect(state) else None
        if layout is None:
            detect_format(state, path)  # raises: what the keys look like instead
        if layout != (official.NAME if format == official.NAME else "dit/sit"):
            fix = official.NAME if layout == official.NAME else "'dit' or 'sit'"
            raise CheckpointError(
                f"{path} looks like a {layout!r} checkpoint, not {format!r}: drop format= / --from (detect), "
                f"or pass {fix}"
            )
        fmt = format
    conv = FOREIGN[fmt].to_ppflow(state, overrides, source)
    conv.notes.insert(0, note)
    return conv


# ---------------------------------------------------------------- building
def check_pos_tables(model: PPFlowTransformer, conv: Converted, source: str) -> None:
    """The file's positional tables must equal the sin-cos tables ppflow computes; they are then dropped."""
    H, W = conv.grid
    for key, (stage, table) in conv.pos_tables.items():
        ours = model.pos_embed(stage, H, W, torch.device("cpu"))
        if tuple(table.shape) != tuple(ours.shape):
            raise CheckpointError(
                f"{source}: {key!r} has shape {tuple(table.shape)} but stage {stage} of a {H}x{W} latent has "
                f"{tuple(ours.shape)} positions; the file's tables are inconsistent with its finest table"
            )
        tol = 1e-5 if table.dtype in (torch.float32, torch.float64) else 1e-2
        diff = (table.float() - ours).abs().max().item()
        if not diff <= tol:
            raise CheckpointError(
                f"{source}: {key!r} differs from the sin-cos table ppflow computes for stage {stage} "
                f"(max |diff| {diff:.3g} > {tol:g}); the model was trained with other positions and ppflow "
                "cannot reproduce it"
            )


def build(conv: Converted, source: str, materialize: bool = True) -> PPFlowTransformer:
    """Model of `conv.config` holding `conv.state` (float32 copies), after checking the positional tables.

    The model is created on the meta device (no init cost); `materialize=False` returns it
    without weights (enough for parameter counts and FLOPs).
    """
    with torch.device("meta"):
        model = PPFlowTransformer(conv.config)
    check_pos_tables(model, conv, source)
    if not materialize:
        return model
    state = {k: torch.empty(v.shape, dtype=torch.float32).copy_(v) for k, v in conv.state.items()}
    load_state_strict(model, state, source, assign=True)
    return model


def load_file_checkpoint(path: Path, format: str | None = None, weights: str | None = None, *,
                         verify: bool = True, **overrides) -> PPFlowTransformer:
    """Load a single-file checkpoint of any supported format as a ppflow model (`verify`: see convert_file)."""
    conv = convert_file(path, format=format, weights=weights, verify=verify, **overrides)
    return build(conv, str(path))


def export_state(model: PPFlowTransformer, format: str) -> dict[str, torch.Tensor]:
    """The model's weights in a foreign layout ('dit', 'sit' or 'ppflow-official'), positional tables included."""
    if format not in FOREIGN:
        raise CheckpointError(f"cannot export to {format!r}; choose one of {list(FOREIGN)}")
    return FOREIGN[format].from_ppflow(model)
