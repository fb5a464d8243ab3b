"""Reading and writing checkpoints: ppflow's own folders plus one adapter per foreign format."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.backbone import PPFlowTransformer
from .native import is_pretrained_dir, load_pretrained, save_pretrained


def load_model(path: str | os.PathLike, format: str | None = None, **overrides) -> PPFlowTransformer:
    """Load any checkpoint ppflow understands; `format` forces an adapter, `overrides` fill what shapes can't tell."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if format in (None, "ppflow") and is_pretrained_dir(p):
        return load_pretrained(p, **overrides)
    from .formats import load_file_checkpoint  # foreign formats and training checkpoints

    return load_file_checkpoint(p, format=format, **overrides)


__all__ = ["load_model", "save_pretrained", "load_pretrained", "is_pretrained_dir"]
