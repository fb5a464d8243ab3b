"""`ppflow adapt`: a one-stage SiT/DiT model -> a PPFlow model (average/copy init, level embedding at zero)."""

from __future__ import annotations

from pathlib import Path

from ..cli import at_least, non_negative
from ..convert.adaptation import adapt
from ..errors import CommandError
from ..models.flops import schedule_flops
from ..models.output import OUTPUTS
from ..models.pretrained import is_pretrained_dir
from ..models.schedule import PRESETS
from .convert import add_load_arguments, load_with_info, semantics_note


def add_arguments(p) -> None:
    p.description = ("Build a PPFlow model from a one-stage SiT/DiT checkpoint, as the paper's adaptation: blocks "
                     "and embedders copied, larger patches' patchify = average init, their unpatchify = copy init, "
                     "level embedding at zero (the finest stage reproduces the source exactly). The result is "
                     "the starting point for PPFlow fine-tuning: `ppflow train --model.init OUT ...`.")
    p.add_argument("--from", dest="source", required=True,
                   help="one-stage checkpoint: SiT/DiT file, training checkpoint or ppflow folder")
    p.add_argument("--schedule", default="ppf2",
                   help=f"target pyramid: a preset ({', '.join(PRESETS)}) or 't_end:ROWSxCOLS,...' whose finest "
                        "patch is the source patch")
    p.add_argument("--out", required=True, help="folder to write (model.safetensors + config.json)")
    p.add_argument("--level-init-std", type=non_negative, default=0.0,
                   help="start of the level embedding: 0 keeps the finest stage equal to the source; 0.02 is the "
                        "official code's N(0, 0.02^2)")
    p.add_argument("--coarse-output", choices=OUTPUTS, default="v",
                   help="what the coarse stages emit: v (the paper), x (clean sample), noise_skip (within-block noise "
                        "handled analytically; the adapted coarse stage then starts far closer to the source), snr "
                        "(noise_skip, and the coarse stage runs at the noise level its pooled tokens have: the adapted "
                        "coarse stage starts as the source denoising the pooled image at that level)")
    p.add_argument("--init", choices=("pooled", "lstsq"), default="pooled",
                   help="pooled: the paper's average/copy init; lstsq: then refit each coarse unpatchify by least "
                        "squares on --calib-data images (seconds; the coarse stage starts far closer to its optimum)")
    p.add_argument("--calib-data", default=None, help="--init lstsq: dataset name (fashion-mnist, digits, "
                                                      "imagefolder, latents)")
    p.add_argument("--calib-path", default=None, help="--init lstsq: folder of the calibration data")
    p.add_argument("--calib-num", type=at_least(1), default=1024, help="--init lstsq: calibration images")
    p.add_argument("--seed", type=int, default=0, help="seed of the level embedding when --level-init-std > 0")
    add_load_arguments(p, "--format")
    p.add_argument("--force", action="store_true", help="overwrite an existing ppflow folder at --out")


def _calibration(args, source):
    """(images, labels) in the model's input space for the least-squares init."""
    import torch

    from ..data.registry import DataConfig, build_dataset

    size = source.config.input_size[0] if args.calib_data == "fashion-mnist" else None
    data = build_dataset(DataConfig(name=args.calib_data, path=args.calib_path, limit=args.calib_num, image_size=size))
    x, y = data.get_batch(torch.arange(len(data)))
    x = data.encode(x, torch.Generator().manual_seed(args.seed))
    want = (source.config.in_channels, *source.config.input_size)
    if tuple(x.shape[1:]) != want:
        raise CommandError(f"--calib-data {args.calib_data} gives {tuple(x.shape[1:])} inputs but the model expects "
                           f"{want}")
    return x, (y if source.config.num_classes else None)


def main(args) -> int:
    import torch

    out = Path(args.out)
    if is_pretrained_dir(out) and not args.force:
        raise CommandError(f"{out} already holds a ppflow model; pass --force to overwrite it")
    if args.init == "lstsq" and not args.calib_data:
        raise CommandError("--init lstsq fits on data: give --calib-data NAME (and --calib-path DIR)")
    source, fmt, notes = load_with_info(args.source, args)
    calibration = _calibration(args, source) if args.init == "lstsq" else None
    model = adapt(source, args.schedule, level_init_std=args.level_init_std, coarse_output=args.coarse_output,
                  init=args.init, calibration=calibration, generator=torch.Generator().manual_seed(args.seed))
    model.save_pretrained(out)  # a full disk, a read-only folder: no temporary file is left, an old folder stays
    r = schedule_flops(model.config)
    print(f"{args.source} [{fmt}{': ' + '; '.join(notes) if notes else ''}]: {source.config.name or 'custom size'}")
    print(f"-> {out}: {model.config.name or 'PPFlow model'}, schedule {model.schedule.to_string()}, "
          f"{model.num_parameters() / 1e6:.2f}M parameters, "
          f"{100 * r['paper_fraction']:.1f}% of the source's sampling FLOPs (paper convention)")
    note = semantics_note(model, fmt)
    if note:
        print(f"note: {note}")
    return 0
