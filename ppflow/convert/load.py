"""`load_model`: any checkpoint ppflow understands, local or remote, as a PPFlowTransformer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..hub.download import fetch
from ..hub.hub import from_hub, is_hub_id, snapshot
from ..hub.registry import get_release, is_release_name
from ..io import CheckpointError, content_sha256, read_weights
from ..models.adapter import ADAPTER_WEIGHTS, apply_adapter, is_adapter_dir, read_adapter_config
from ..models.backbone import CONFIG, FORMAT_TAG, WEIGHTS, PPFlowTransformer
from ..models.pretrained import is_pretrained_dir, load_pretrained
from .formats import load_file_checkpoint


def load_model(path: str | os.PathLike, format: str | None = None, *, weights: str | None = None,
               revision: str | None = None, **overrides) -> PPFlowTransformer:
    """Load any checkpoint ppflow understands.

    `path`: a `save_pretrained` folder, a ppflow training checkpoint or run folder, or a
    DiT / SiT / official PPFlow file (.pt / .pth / .safetensors). `format` forces an adapter
    ('ppflow', 'ppflow-train', 'dit', 'sit', 'ppflow-official'; default: detected from the keys). `weights` picks 'ema' (default) or
    'model' from a training checkpoint. `overrides` set config fields the weights cannot
    tell, e.g. `num_heads=4`, `time_map='identity'`, `input_size=64`, `vae=...`. Files ppflow wrote carry a
    SHA-256 that is checked on load (a damaged file raises DamagedFileError); `verify=False` loads a deliberate
    edit. A `path` that does not exist may name a known release (`"PPF-XL-2"`, fetched once into PPFLOW_HOME and
    hash-checked) or a Hugging Face Hub repo (`"org/repo"`, at `revision`); see ppflow.hub.
    """
    if isinstance(path, str) and not os.path.exists(path):
        model = _load_remote(path, format=format, weights=weights, revision=revision, **overrides)
        if model is not None:
            return model
    if revision is not None:
        raise ValueError(f"revision={revision!r} applies to hub ids 'org/repo'; {path} is a local path")
    p = resolve_path(path, format)
    if format in (None, "adapter") and is_adapter_dir(p):
        return load_adapter(p, verify=overrides.pop("verify", True))
    if format in (None, FORMAT_TAG) and is_pretrained_dir(p):
        if weights is not None:
            raise ValueError(f"{p} is a ppflow folder with one set of weights; drop weights=")
        return load_pretrained(p, **overrides)
    return load_file_checkpoint(p, format=format, weights=weights, **overrides)


def _is_remote_id(name: str) -> bool:
    return is_hub_id(name) and not Path(name.split("/")[0]).exists()  # "runs/typo" is a missing local path


def _load_remote(name: str, *, format: str | None, weights: str | None, revision: str | None,
                 **overrides) -> PPFlowTransformer | None:
    """The model a release name or hub id stands for, or None when `name` is neither."""
    if is_release_name(name):
        if revision is not None:
            raise ValueError(f"{name!r} is a release name (one file); revision= applies to hub ids 'org/repo'")
        release = get_release(name)
        path = fetch(release, progress=sys.stderr.isatty())
        return load_file_checkpoint(path, format=format or release.format, weights=weights,
                                    **{**release.overrides, **overrides})
    if _is_remote_id(name):
        if weights is not None or format not in (None, FORMAT_TAG, "adapter"):
            raise ValueError(f"{name} is a hub repo holding a ppflow folder: drop format= / weights=")
        folder = snapshot(name, revision, **{k: overrides[k] for k in ("cache_dir", "local_files_only", "token")
                                             if k in overrides})
        if is_adapter_dir(folder):  # a speed adapter: applied on the base it names (a hub id or release name)
            return load_adapter(folder, verify=overrides.pop("verify", True))
        return from_hub(name, revision, **overrides)
    return None


def resolve_path(path: str | os.PathLike, format: str | None = None) -> Path:
    """Where a checkpoint path points: a folder's `model.safetensors` -> the folder; a `ppflow train`
    run folder -> its `checkpoints/last.pt`; a release name -> its verified file; a hub id -> the cached snapshot
    folder at main; anything else as given."""
    p = Path(path)
    if not p.exists():
        name = str(path)
        if is_release_name(name):
            return fetch(name, progress=sys.stderr.isatty())
        if _is_remote_id(name):
            return snapshot(name)
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file() and p.name == WEIGHTS and (p.parent / CONFIG).exists() and format in (None, FORMAT_TAG):
        return p.parent
    if p.is_dir() and not is_pretrained_dir(p) and (p / "checkpoints" / "last.pt").is_file():
        return p / "checkpoints" / "last.pt"
    return p


def load_adapter(folder: str | os.PathLike, base: PPFlowTransformer | str | os.PathLike | None = None, *,
                 verify: bool = True, check_base: bool = True) -> PPFlowTransformer:
    """The model an adapter folder makes of its base: `base` (a model or anything load_model reads), else the base
    its config names (a relative path is looked up beside the folder first). A base whose content hash differs
    from the one the adapter was trained on is refused unless `check_base=False`."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    if base is None:
        if not config.base:
            raise CheckpointError(f"{folder} names no base model: pass the SiT/DiT it was trained on as base")
        beside = folder / config.base
        base = beside if not Path(config.base).is_absolute() and beside.exists() else config.base
    source = base if isinstance(base, PPFlowTransformer) else load_model(base)
    if check_base and config.base_sha256:
        got = content_sha256(source.state_dict())
        if got != config.base_sha256:
            raise CheckpointError(f"the adapter {folder} was trained on a base with SHA-256 "
                                  f"{config.base_sha256[:12]}..., the given base has {got[:12]}...: use the base it "
                                  f"names ({config.base}), or pass check_base=False (--no-base-check) to apply it "
                                  "anyway")
    state = read_weights(folder / ADAPTER_WEIGHTS, verify=verify)
    try:
        return apply_adapter(source, config, state)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from None
