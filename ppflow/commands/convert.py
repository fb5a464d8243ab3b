"""`ppflow convert`: a DiT / SiT / official PPFlow (or ppflow training) checkpoint -> a ppflow folder."""

from __future__ import annotations

from pathlib import Path

from ..cli import at_least
from ..convert import load_model
from ..convert.formats import FORMATS, build, convert_file
from ..convert.keymap import CheckpointError
from ..convert.load import resolve_path
from ..errors import CommandError
from ..models.backbone import TIME_MAPS, PPFlowTransformer
from ..models.pretrained import is_pretrained_dir


def add_load_arguments(p, format_flag: str) -> None:
    """Options shared by convert / adapt / info for reading a checkpoint."""
    p.add_argument(format_flag, dest="format", choices=FORMATS, default=None,
                   help="checkpoint format (default: detected from the keys; DiT and SiT share their keys, so a "
                        "file whose name says neither needs 'dit' or 'sit')")
    p.add_argument("--weights", choices=("ema", "model"), default=None,
                   help="which weights of a training checkpoint (default: ema)")
    p.add_argument("--num-heads", type=at_least(1), default=None,
                   help="attention heads; needed when the width is not a registry size (S/B/L/XL...)")
    p.add_argument("--time-map", choices=TIME_MAPS, default=None,
                   help="what the time embedder sees: DiT files default to 'dit' (999*(1-t), DiT's discrete "
                        "step), every other format to 'identity' (flow t)")
    p.add_argument("--input-size", type=at_least(1), default=None,
                   help="default latent size (default: read from the file's positional table)")
    p.add_argument("--vae", default=None, help="diffusers VAE (hub name or folder) to record in the config")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="load a ppflow file whose SHA-256 no longer matches its contents (a deliberate edit)")


def load_overrides(args) -> dict:
    """Config overrides from the options the user actually gave."""
    fields = {"num_heads": args.num_heads, "time_map": args.time_map, "input_size": args.input_size,
              "vae": args.vae}
    return {k: v for k, v in fields.items() if v is not None}


def load_spec(spec: str, args):
    """A model, or `A+B[+...]` (one checkpoint per stage, noisiest first) as a StageSwap."""
    if "+" not in spec or Path(spec).exists():
        return load_model(spec, format=args.format, weights=args.weights, verify=args.verify, **load_overrides(args))
    from ..sampling.swap import StageSwap

    parts = [p for p in spec.split("+") if p]
    return StageSwap([load_model(p, format=args.format, weights=args.weights, verify=args.verify, **load_overrides(args))
                      for p in parts])


def load_with_info(path: str | Path, args) -> tuple[PPFlowTransformer, str, list[str]]:
    """The model, its format name and loader notes (`path` may be a release name or a hub id: ppflow.hub)."""
    from ..hub import release_overrides

    overrides = {**release_overrides(path), **load_overrides(args)}  # a release's VAE, unless --vae says otherwise
    path = resolve_path(path, args.format)
    if is_pretrained_dir(path):
        if args.format not in (None, "ppflow"):
            raise CheckpointError(f"{path} is a ppflow folder, not {args.format!r}; drop the format option")
        return load_model(path, weights=args.weights, verify=args.verify, **overrides), "ppflow", []
    conv = convert_file(path, format=args.format, weights=args.weights, verify=args.verify, **overrides)
    return build(conv, str(path)), conv.format, conv.notes


def semantics_note(model: PPFlowTransformer, fmt: str) -> str | None:
    if fmt == "dit":
        return ("DiT predicts noise (epsilon) in discrete time, so this is not a flow model yet: a starting point "
                f"for flow-matching fine-tuning (time_map={model.config.time_map!r}; see docs/interop.md)")
    return None


def add_arguments(p) -> None:
    p.description = ("Convert a DiT, SiT or official PPFlow checkpoint (or a ppflow training checkpoint) into a "
                     "ppflow folder (model.safetensors + config.json) that ppflow.load_model and every ppflow "
                     "command read. Weights are re-indexed only; outputs stay identical.")
    p.add_argument("input", help="checkpoint file (.pt / .pth / .safetensors) or ppflow folder")
    p.add_argument("output", help="folder to write")
    add_load_arguments(p, "--from")
    p.add_argument("--force", action="store_true", help="overwrite an existing ppflow folder at OUTPUT")


def main(args) -> int:
    out = Path(args.output)
    if is_pretrained_dir(out) and not args.force:
        raise CommandError(f"{out} already holds a ppflow model; pass --force to overwrite it")
    model, fmt, notes = load_with_info(args.input, args)
    model.save_pretrained(out)  # a full disk, a read-only folder: no temporary file is left, an old folder stays
    c = model.config
    print(f"{args.input} [{fmt}{': ' + '; '.join(notes) if notes else ''}]")
    print(f"-> {out}: {c.name or 'custom size'}, schedule {model.schedule.to_string()}, "
          f"{model.num_parameters() / 1e6:.2f}M parameters, time_map {c.time_map}")
    note = semantics_note(model, fmt)
    if note:
        print(f"note: {note}")
    return 0
