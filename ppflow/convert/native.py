"""ppflow's own format: a folder with `model.safetensors` + `config.json`.

Every tensor file ppflow writes carries a SHA-256 of its contents (`content_sha256`): in the
safetensors metadata of `model.safetensors` (key "sha256") and as the "sha256" entry of a
training checkpoint. Loaders recompute it and refuse a file that changed after it was written
(`DamagedFileError`) unless called with `verify=False`; files without a hash (other projects,
older ppflow) load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.backbone import ModelConfig, PPFlowTransformer
from .keymap import CheckpointError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_TAG = "ppflow"
HASH_KEY = "sha256"  # safetensors metadata key / training checkpoint entry


class DamagedFileError(CheckpointError):
    """A file's contents no longer match the hash ppflow stored when it wrote the file."""


# ---------------------------------------------------------------- content hashes
def content_sha256(obj: object) -> str:
    """SHA-256 (hex) of a nest of dicts / lists / tuples holding tensors and plain values.

    Covers every tensor's key path, dtype, shape and raw bytes, and every plain value
    (str, int, float, bool, None); dict entries are visited in sorted key order, so the
    hash does not depend on insertion order or on where the tensors live.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{str(t.dtype)[6:]}{list(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device)):
        text = repr(obj).encode()
        h.update(f"{type(obj).__name__}{len(text)}:".encode())
        h.update(text)
    else:
        raise TypeError(f"content_sha256: cannot hash a {type(obj).__name__}; store tensors and plain values only")


def check_sha256(obj: object, expected: str, path: str | os.PathLike, what: str = "file") -> None:
    """Raise DamagedFileError naming `path` when `content_sha256(obj)` is not `expected`."""
    if content_sha256(obj) != expected:
        raise DamagedFileError(
            f"{path} is damaged: its contents do not match the SHA-256 ppflow stored when it wrote the {what}, so "
            "it changed after saving (disk or copy error, or an edit). Restore it from a backup or an earlier "
            "copy (a run keeps checkpoints/step-*.pt and ema-*/ with --keep-every); if you changed it on purpose, "
            "load it with verify=False (CLI: --no-verify)"
        )


def with_sha256(state: dict) -> dict:
    """A copy of `state` (a torch.save dict) with a "sha256" entry hashing every other entry."""
    body = {k: v for k, v in state.items() if k != HASH_KEY}
    return {**body, HASH_KEY: content_sha256(body)}


def verify_state(state: dict, path: str | os.PathLike) -> None:
    """Check a dict written through `with_sha256` against its "sha256" entry (no entry: nothing to check)."""
    stored = state.get(HASH_KEY)
    if isinstance(stored, str):
        check_sha256({k: v for k, v in state.items() if k != HASH_KEY}, stored, path, "checkpoint")


def read_weights(path: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the "sha256" in its metadata when it has one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # bad header, truncated data, I/O error
        reason = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot read {path}: it is not a complete safetensors file ({type(e).__name__}: "
                              f"{reason}). If it was downloaded or copied, it is probably truncated: fetch it again "
                              "or restore it from a backup") from e
    if verify and HASH_KEY in meta:
        check_sha256(state, meta[HASH_KEY], path, "weights")
    return state


def save_pretrained(model: PPFlowTransformer, directory: str | os.PathLike) -> Path:
    """Write weights (with their SHA-256 in the metadata) and config atomically into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT_TAG, HASH_KEY: content_sha256(state)})
    os.replace(tmp, directory / WEIGHTS)
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT_TAG, **model.config.to_dict()}, indent=2))
    os.replace(tmp, directory / CONFIG)
    return directory


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).exists() and (p / WEIGHTS).exists()


def resolve_path(path: str | os.PathLike, format: str | None = None) -> Path:
    """Where a checkpoint path points: a folder's `model.safetensors` -> the folder; a `ppflow train`
    run folder -> its `checkpoints/last.pt`; anything else as given."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file() and p.name == WEIGHTS and (p.parent / CONFIG).exists() and format in (None, FORMAT_TAG):
        return p.parent
    if p.is_dir() and not is_pretrained_dir(p) and (p / "checkpoints" / "last.pt").is_file():
        return p / "checkpoints" / "last.pt"
    return p


def load_pretrained(directory: str | os.PathLike, *, verify: bool = True, **overrides) -> PPFlowTransformer:
    """Read a `save_pretrained` folder; `overrides` replace config fields.

    `verify=False` skips the check of the weights against their stored SHA-256 (for deliberate edits).
    """
    directory = Path(directory)
    cfg = json.loads((directory / CONFIG).read_text())
    cfg.pop("format", None)
    cfg.update(overrides)
    model = PPFlowTransformer(ModelConfig.from_dict(cfg))
    state = read_weights(directory / WEIGHTS, verify=verify)
    load_state_strict(model, state, source=str(directory))
    return model


def load_state_strict(model: torch.nn.Module, state: dict, source: str, assign: bool = False) -> None:
    """Load a state dict, reporting missing/unexpected keys and shape mismatches by name.

    `assign=True` adopts the given tensors as parameters (for a model built on the meta device).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}. Check that the config (size, schedule, channels, classes) "
            "is the one the weights were saved with."
        )
    model.load_state_dict(state, assign=assign)
