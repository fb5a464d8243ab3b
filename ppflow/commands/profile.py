"""`ppflow profile`: held-out loss per noise level of one or more models on the same draws."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CommandError
from .convert import add_load_arguments, load_spec


def add_arguments(p) -> None:
    p.description = (
        "Held-out flow-matching loss as a function of t (0 = noise, 1 = data) for one or more models, every model "
        "on exactly the same images, noise, times and labels: where along the noise axis a PPFlow model loses "
        "against its SiT baseline. Writes profile.csv, profile.json, profile.png (loss per bin, stage boundaries "
        "dashed) and profile_ratio.png (each model over the first). MODEL is any checkpoint ppflow reads, "
        "'LABEL=PATH' to name it, or 'A+B' for a stage swap (A serves the noisiest stage, B the next).")
    p.add_argument("models", nargs="+", metavar="MODEL", help="checkpoints to compare; the first is the reference "
                                                              "of the ratio plot")
    p.add_argument("--data", default="fashion-mnist", help="held-out data: fashion-mnist | digits | imagefolder | latents")
    p.add_argument("--data-path", default=None, help="folder of the data (Fashion-MNIST *-ubyte.gz, image folder, "
                                                     "latent cache)")
    p.add_argument("--split", default="test", help="fashion-mnist split (default: the held-out test split)")
    p.add_argument("--num", type=int, default=1024, help="held-out images (each appears once per bin)")
    p.add_argument("--bins", type=int, default=20, help="t bins of equal width on [0, 1]")
    p.add_argument("--all-stages", action="store_true",
                   help="also one curve per patch size at every t, the stage pinned (models trained with "
                        "flow.time_sampling all_t)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward")
    p.add_argument("--seed", type=int, default=0, help="seed of the times and noise (same for every model)")
    p.add_argument("--out", default="runs/profile", help="folder for the csv, json and plots")
    p.add_argument("--json", action="store_true", help="print one JSON object (bin edges, loss per bin per curve)")
    add_load_arguments(p, "--format")


def main(args) -> int:
    import torch

    from ..data.registry import DataConfig, build_dataset
    from ..eval.profile import loss_profile

    if args.num < 1 or args.bins < 1 or args.batch_size < 1:
        raise CommandError("--num, --bins and --batch-size must be >= 1")
    models = {}
    for spec in args.models:
        label, _, path = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        models[label or Path(path).name or path] = load_spec(path, args).eval()
    first = next(iter(models.values()))
    try:
        data = build_dataset(DataConfig(name=args.data, path=args.data_path, split=args.split, limit=args.num,
                                        image_size=first.config.input_size[0] if args.data == "fashion-mnist" else None))
    except (ValueError, OSError) as e:
        raise CommandError(f"cannot read --data {args.data}: {e}") from e
    x1, y = data.get_batch(torch.arange(min(args.num, len(data))))
    x1 = data.encode(x1, torch.Generator().manual_seed(args.seed))
    for label, m in models.items():
        want = (m.config.in_channels, *m.config.input_size)
        if tuple(x1.shape[1:]) != want:
            raise CommandError(f"{label} expects {want} inputs but {args.data} gives {tuple(x1.shape[1:])}; "
                               "pick the data the model was trained on (--data, --data-path)")
        if m.config.num_classes == 0:
            y = None
    prof = loss_profile(models, x1, y, bins=args.bins, seed=args.seed, batch_size=args.batch_size,
                        all_stages=args.all_stages, progress=not args.json)
    paths = prof.write(args.out)
    if args.json:
        print(json.dumps(prof.to_dict()))
        return 0
    names = list(prof.curves)
    print("t bin        " + "  ".join(f"{n[:14]:>14}" for n in names))
    for i, (a, b) in enumerate(zip(prof.edges[:-1], prof.edges[1:])):
        print(f"{a:4.2f}-{b:4.2f}    " + "  ".join(f"{prof.curves[n][i]:14.4f}" for n in names))
    print("mean         " + "  ".join(f"{prof.mean(n):14.4f}" for n in names))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
