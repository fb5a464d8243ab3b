"""`ppflow info`: what a checkpoint is (format, size, schedule, parameters, FLOPs fraction)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..convert.formats import build, convert_file
from ..convert.keymap import CheckpointError, size_name
from ..convert.load import resolve_path
from ..io import read_weights
from ..models.backbone import CONFIG, WEIGHTS, PPFlowTransformer
from ..models.flops import schedule_flops
from ..models.pretrained import check_state_shapes, is_pretrained_dir, model_config_from_dict, read_config
from . import parse_scales
from .convert import add_load_arguments, load_overrides, semantics_note


def add_arguments(p) -> None:
    p.description = ("Describe a checkpoint without loading its weights into a model: format, size, schedule, "
                     "parameter count and sampling FLOPs relative to the one-stage baseline of the same size.")
    p.add_argument("path", help="ppflow folder, ppflow training checkpoint, or DiT / SiT / official PPFlow file")
    add_load_arguments(p, "--from")
    p.add_argument("--cfg", default=None,
                   help="CFG scale or one per stage for the FLOPs fraction, e.g. '1,3' (a scale != 1 doubles a stage)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def describe(path: Path, args) -> dict:
    """Facts about the checkpoint at `path` (the model is built on the meta device: no weights are copied)."""
    from ..hub import release_overrides

    notes: list[str] = []
    overrides = {**release_overrides(path), **load_overrides(args)}  # a release name: its registry entry's VAE
    path = resolve_path(path, args.format)
    if is_pretrained_dir(path):
        if args.weights is not None or args.format not in (None, "ppflow"):
            raise CheckpointError(f"{path} is a ppflow folder: drop --from/--weights")
        cfg = read_config(path / CONFIG)
        cfg.pop("format", None)
        config = model_config_from_dict({**cfg, **overrides}, path / CONFIG)
        with torch.device("meta"):
            model = PPFlowTransformer(config)
        fmt = "ppflow"
        state = read_weights(path / WEIGHTS, verify=getattr(args, "verify", True))  # a damaged file is an error
        check_state_shapes(model, state, f"{path / WEIGHTS} (with {path / CONFIG})")  # the config fits the tensors
    else:
        conv = convert_file(path, format=args.format, weights=args.weights, verify=getattr(args, "verify", True),
                            **overrides)
        model, fmt, notes = build(conv, str(path), materialize=False), conv.format, conv.notes
        check_state_shapes(model, conv.state, str(path))
        config = model.config
    note = semantics_note(model, fmt)
    if note:
        notes.append(note)
    H, W = config.input_size
    fl = schedule_flops(config, H, W, cfg_scales=parse_scales(args.cfg))
    return {
        "path": str(path),
        "format": fmt,
        "name": config.name,
        "size": size_name(config.depth, config.hidden_size, config.num_heads),
        "config": config.to_dict(),
        "schedule": fl["schedule"],
        "stages": fl["stages"],
        "parameters": model.num_parameters(),
        "paper_fraction": fl["paper_fraction"],
        "total_fraction": fl["total_fraction"],
        "notes": notes,
    }


def main(args) -> int:
    d = describe(Path(args.path), args)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    c = d["config"]
    H, W = c["input_size"]
    print(f"{d['path']}")
    print(f"  format      {d['format']}")
    print(f"  model       {d['name'] or '-'}  (size {d['size'] or 'custom'}: depth {c['depth']}, width "
          f"{c['hidden_size']}, {c['num_heads']} heads, mlp ratio {c['mlp_ratio']:g})")
    print(f"  io          latent {H}x{W}x{c['in_channels']}, {c['num_classes']} classes, learn_sigma "
          f"{c['learn_sigma']}, time_map {c['time_map']}, vae {c['vae'] or '-'}")
    stages = ", ".join(f"({s['t_range'][0]:g}, {s['t_range'][1]:g}] {s['patch'][0]}x{s['patch'][1]} "
                       f"({s['tokens']} tokens)" for s in d["stages"])
    print(f"  schedule    {d['schedule']}: {stages}")
    print(f"  parameters  {d['parameters']:,} ({d['parameters'] / 1e6:.2f}M)")
    print(f"  FLOPs       {100 * d['paper_fraction']:.1f}% of the one-stage baseline (paper convention), "
          f"{100 * d['total_fraction']:.1f}% (all matrix products)")
    for n in d["notes"]:
        print(f"  note        {n}")
    return 0
