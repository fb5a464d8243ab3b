"""Training checkpoints: ppflow's own (`"format": "ppflow-train"`) and DiT/SiT/PPFlow ones.

ppflow's trainer writes {"format": "ppflow-train", "config": {..., "model_config": {...}},
"model", "ema", "optimizer", "step"}. DiT, SiT and the official PPFlow code write
{"model", "ema", "opt", "args"} with an argparse.Namespace in "args". Both hold two
sets of weights; the EMA ones are what every release samples with, so they are the
default (`weights='model'` picks the raw ones).
"""

from __future__ import annotations

import argparse

import torch

from ..models.pretrained import model_config_from_dict
from .keymap import CheckpointError, Converted

FORMAT_TAG = "ppflow-train"
WEIGHTS = ("ema", "model")
FOREIGN_KEYS = {"model", "ema"}  # + "opt", "args"


def is_ppflow_training(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT_TAG


def is_foreign_training(obj) -> bool:
    """A DiT/SiT/official training checkpoint: 'model' and/or 'ema' state dicts (with or without 'args'/'opt')."""
    if not isinstance(obj, dict) or not FOREIGN_KEYS & set(obj):
        return False
    if "args" in obj or "opt" in obj:
        return True
    return all(isinstance(obj[k], dict) and obj[k] for k in FOREIGN_KEYS & set(obj))


def pick_weights(obj: dict, weights: str | None, source: str) -> tuple[dict, str]:
    """The EMA (default) or raw state dict of a training checkpoint, and which one was taken."""
    choice = weights or "ema"
    if choice not in WEIGHTS:
        raise CheckpointError(f"weights={weights!r}: choose one of {WEIGHTS}")
    state = obj.get(choice)
    if not isinstance(state, dict) or not state:
        other = "model" if choice == "ema" else "ema"
        raise CheckpointError(
            f"{source} is a training checkpoint without {choice!r} weights; pass weights={other!r} "
            f"(CLI: --weights {other})"
        )
    return strip_prefix(state), choice


def strip_prefix(state: dict) -> dict:
    """Drop a wrapper prefix shared by every key (DDP 'module.', torch.compile '_orig_mod.')."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def family_hint(obj: dict) -> str | None:
    """'dit' or 'sit' from a DiT/SiT training checkpoint's args (`--model DiT-XL/2`, SiT's transport flags)."""
    args = obj.get("args")
    if not isinstance(args, argparse.Namespace):
        return None
    model = str(getattr(args, "model", ""))
    if model.startswith("SiT") or hasattr(args, "path_type") or hasattr(args, "prediction"):
        return "sit"
    if model.startswith("DiT"):
        return "dit"
    return None


def from_ppflow_training(obj: dict, weights: str | None, overrides: dict, source: str) -> Converted:
    """ppflow's trainer checkpoint -> config (with overrides) + our state dict."""
    config = obj.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model_config"), dict):
        raise CheckpointError(
            f"{source} is tagged {FORMAT_TAG!r} but has no config['model_config'] dict; it was not written by "
            "ppflow's trainer, or is damaged"
        )
    state, choice = pick_weights(obj, weights, source)
    cfg = dict(config["model_config"])
    cfg.pop("format", None)
    cfg.update(overrides)
    model_config = model_config_from_dict(cfg, source)
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    notes = [f"{choice} weights of step {obj.get('step', '?')}"]
    return Converted(FORMAT_TAG, model_config, state, {}, model_config.input_size, notes)
