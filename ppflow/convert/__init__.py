"""Reading and writing checkpoints: ppflow's own folders plus one adapter per foreign format."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.backbone import PPFlowTransformer
from .native import CONFIG, WEIGHTS, is_pretrained_dir, load_pretrained, save_pretrained


def load_model(path: str | os.PathLike, format: str | None = None, *, weights: str | None = None,
               **overrides) -> PPFlowTransformer:
    """Load any checkpoint ppflow understands.

    `path`: a `save_pretrained` folder, a ppflow training checkpoint or run folder, or a
    DiT / SiT / official PPFlow file (.pt / .pth / .safetensors). `format` forces an adapter ('ppflow', 'ppflow-train', 'dit', 'sit',
    'ppflow-official'; default: detected from the keys). `weights` picks 'ema' (default) or
    'model' from a training checkpoint. `overrides` set config fields the weights cannot
    tell, e.g. `num_heads=4`, `time_map='identity'`, `input_size=64`, `vae=...`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file() and p.name == WEIGHTS and (p.parent / CONFIG).exists() and format in (None, "ppflow"):
        p = p.parent  # model.safetensors of a save_pretrained folder
    if format in (None, "ppflow") and is_pretrained_dir(p):
        if weights is not None:
            raise ValueError(f"{p} is a ppflow folder with one set of weights; drop weights=")
        return load_pretrained(p, **overrides)
    if p.is_dir() and (p / "checkpoints" / "last.pt").is_file():
        p = p / "checkpoints" / "last.pt"  # a `ppflow train` run folder: its latest training checkpoint
    if p.is_dir():
        raise FileNotFoundError(f"{p} is a folder without {WEIGHTS} + {CONFIG}; it is not a ppflow model folder")
    from .formats import load_file_checkpoint  # foreign formats and training checkpoints

    return load_file_checkpoint(p, format=format, weights=weights, **overrides)


from .adaptation import adapt  # after load_model, which adapt uses lazily

__all__ = ["adapt", "is_pretrained_dir", "load_model", "load_pretrained", "save_pretrained"]
