"""ppflow's own format: a folder with `model.safetensors` + `config.json`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..models.backbone import ModelConfig, PPFlowTransformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_TAG = "ppflow"


def save_pretrained(model: PPFlowTransformer, directory: str | os.PathLike) -> Path:
    """Write weights and config atomically into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT_TAG})
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


def load_pretrained(directory: str | os.PathLike, **overrides) -> PPFlowTransformer:
    """Read a `save_pretrained` folder; `overrides` replace config fields."""
    directory = Path(directory)
    cfg = json.loads((directory / CONFIG).read_text())
    cfg.pop("format", None)
    cfg.update(overrides)
    model = PPFlowTransformer(ModelConfig.from_dict(cfg))
    state = load_file(str(directory / WEIGHTS))
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
