"""Reading ppflow's own folder (`model.safetensors` + `config.json`, written by `PPFlowTransformer.save_pretrained`).

`config.json` is read through `read_config`, whose errors name the file; its fields are checked one by one
(`model_field_problem`) before a ModelConfig is built. The weights are checked against the SHA-256 in their
metadata (ppflow.io.read_weights) unless `verify=False`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..io import CheckpointError, one_line, read_weights
from .backbone import CONFIG, WEIGHTS, ModelConfig, PPFlowTransformer
from .config_checks import model_field_problem


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).exists() and (p / WEIGHTS).exists()


def read_config(path: str | os.PathLike) -> dict:
    """The JSON object in `path` (a model folder's config.json); unreadable bytes, invalid JSON or anything but an
    object raise CheckpointError naming the file."""
    path = Path(path)
    fix = "restore it from a backup, or write it again (ppflow convert / save_pretrained)"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); it is damaged: {fix}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({one_line(e)})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {fix}") \
            from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, not an object of model settings "
                              f"({{\"depth\": ..., \"hidden_size\": ...}}); {fix}")
    return cfg


def model_config_from_dict(cfg: object, source: str | os.PathLike) -> ModelConfig:
    """A ModelConfig from plain data read from `source`; every problem is a CheckpointError naming `source`."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: the model config is a {type(cfg).__name__}, not a mapping of settings")
    cfg = {k: v for k, v in cfg.items() if k != "format"}
    for k, v in cfg.items():
        problem = model_field_problem(k, v)
        if problem:
            raise CheckpointError(f"{source}: {problem}")
    if isinstance(cfg.get("schedule"), dict):
        cfg["schedule"] = json.dumps(cfg["schedule"])
    try:
        return ModelConfig.from_dict(cfg)
    except (ValueError, TypeError, KeyError) as e:  # ScheduleError, unknown keys, heads not dividing the width
        raise CheckpointError(f"{source}: {one_line(e)}") from None


def load_pretrained(directory: str | os.PathLike, *, verify: bool = True, **overrides) -> PPFlowTransformer:
    """Read a `save_pretrained` folder; `overrides` replace config fields.

    `verify=False` skips the check of the weights against their stored SHA-256 (for deliberate edits).
    """
    directory = Path(directory)
    cfg = read_config(directory / CONFIG)
    cfg.pop("format", None)
    cfg.update(overrides)
    config = model_config_from_dict(cfg, directory / CONFIG)
    shapes = _file_shapes(directory / WEIGHTS)
    if shapes is None:
        read_weights(directory / WEIGHTS, verify=verify)  # the one-line error of an unreadable file
    with torch.device("meta"):  # sizes are checked before anything is allocated (a config with huge sizes)
        check_state_shapes(PPFlowTransformer(config), shapes, str(directory))
    model = PPFlowTransformer(config)
    state = read_weights(directory / WEIGHTS, verify=verify)
    load_state_strict(model, state, source=str(directory))
    return model


def _file_shapes(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a safetensors file as empty meta tensors (read from its header alone), or None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, ValueError, RuntimeError):  # not readable: read_weights says why
        return None


def load_state_strict(model: torch.nn.Module, state: dict, source: str, assign: bool = False) -> None:
    """Load a state dict, reporting missing/unexpected keys and shape mismatches by name.

    `assign=True` adopts the given tensors as parameters (for a model built on the meta device).
    """
    check_state_shapes(model, state, source)
    model.load_state_dict(state, assign=assign)


def check_state_shapes(model: torch.nn.Module, state: dict, source: str) -> None:
    """CheckpointError naming `source` and the first mismatches when `state`'s keys or shapes differ from the
    model's (works on a model built on the meta device: only shapes are compared)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}. Check that the config (size, schedule, channels, classes) "
            "is the one the weights were saved with."
        )
