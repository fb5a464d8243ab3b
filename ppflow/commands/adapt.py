"""`ppflow adapt`: a one-stage SiT/DiT model -> PPFlow: the paper's adapted model (`--method init`, to fine-tune
with `ppflow train --model.init OUT`), or a distilled stage-gated speed adapter (`--method lora-distill`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import at_least, non_negative
from ..convert.adaptation import adapt
from ..errors import CommandError
from ..models.flops import schedule_flops
from ..models.output import OUTPUTS
from ..models.pretrained import is_pretrained_dir
from ..models.schedule import PRESETS
from .convert import add_load_arguments, load_with_info, semantics_note

METHODS = ("init", "lora-distill")


def add_arguments(p) -> None:
    p.description = (
        "Turn a one-stage SiT/DiT checkpoint into PPFlow. Which method when: lora-distill (recommended) keeps the "
        "source frozen and trains a small stage-gated adapter (coarse projections + a LoRA active only on "
        "coarse-stage tokens) to reproduce the source's own velocity: the fine stage stays the source bit for bit, "
        "no dataset is needed (data-free unless --data is given), and --guided S bakes CFG at scale S into the coarse stage "
        "so it runs one forward per step there; the result is an adapter folder ppflow.load_model applies on the "
        "base. If you have a few hundred images of your domain, give them (--data imagefolder --data-path DIR "
        "--images 256: the adapter learns the flow-matching target on them, no teacher forward, and its samples "
        "are checked for copies of them at the end): on the SiT-mini of docs/adaptation.md, 256 images at +5% "
        "reached 1.13-1.20x the source's FID against 1.79x data-free, because data are a better target than the "
        "source's own velocity; 128 images reached 1.01x with samples pulled towards them (the check flags it), 64 were "
        "copied. init writes the paper's adapted model (blocks copied, average/copy init of the new projections, level "
        "embedding at zero) as the start of a full fine-tune (`ppflow train --model.init OUT`): use it to reproduce "
        "the paper's recipe or to train the shared backbone further.")
    p.add_argument("--method", choices=METHODS, default="init", help="init: the adapted model to fine-tune; "
                   "lora-distill: train a speed adapter by distillation from the frozen source")
    p.add_argument("--from", dest="source", default=None,
                   help="one-stage checkpoint: SiT/DiT file, training checkpoint, run folder or ppflow folder")
    p.add_argument("--schedule", default="ppf2",
                   help=f"target pyramid: a preset ({', '.join(PRESETS)}) or 't_end:ROWSxCOLS,...' whose finest "
                        "patch is the source patch")
    p.add_argument("--out", default=None, help="init: folder to write (model.safetensors + config.json); "
                                                "lora-distill: the run folder (its ema/ is the adapter)")
    p.add_argument("--level-init-std", type=non_negative, default=0.0,
                   help="start of the level embedding: 0 keeps the finest stage equal to the source; 0.02 is the "
                        "official code's N(0, 0.02^2)")
    p.add_argument("--coarse-output", choices=OUTPUTS, default=None,
                   help="what the coarse stages emit: v (the paper), x (clean sample), noise_skip (within-block noise "
                        "handled analytically; the adapted coarse stage then starts far closer to the source), snr "
                        "(noise_skip, and the coarse stage runs at the noise level its pooled tokens have: the adapted "
                        "coarse stage starts as the source denoising the pooled image at that level); default: v for "
                        "init, noise_skip for lora-distill")
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
    d = p.add_argument_group("lora-distill options")
    d.add_argument("--budget", type=float, default=None,
                   help="conversion compute as a fraction of the source's training compute (0.05 = +5%%; teacher "
                        "trajectories included); sets the steps")
    d.add_argument("--source-steps", type=at_least(1), default=None,
                   help="the source's training steps for --budget (default: read from its run folder)")
    d.add_argument("--source-batch", type=at_least(1), default=None, help="the source's batch size for --budget")
    d.add_argument("--steps", type=at_least(1), default=None, help="adapter training steps (instead of --budget)")
    d.add_argument("--data", default=None, help="distil on this dataset's x_t (fashion-mnist, imagefolder, "
                                                "latents, ...) instead of the teacher's own trajectories")
    d.add_argument("--data-path", default=None, help="folder of --data")
    d.add_argument("--images", type=at_least(1), default=None,
                   help="few-shot: train on the first N images of --data only (a few hundred; 256 measured best, "
                        "docs/adaptation.md); the run ends with a copy check of the adapter's samples against them")
    d.add_argument("--copy-check", type=at_least(0), default=256, metavar="N",
                   help="with --images: samples (Heun 16 steps, no guidance) compared with the N training images and "
                        "as many held-out ones; RUN/copy-check.json; 0 skips it")
    d.add_argument("--guided", type=float, default=None, help="CFG scale distilled into the coarse stage (sample "
                                                               "with CFG 1 there)")
    d.add_argument("--rank", type=at_least(1), default=8,
                   help="LoRA rank (8: 8.5%% of a SiT-mini's parameters at the same FID as rank 16 or 32, "
                        "docs/adaptation.md)")
    d.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1)")
    d.add_argument("--targets", default=None,
                   help="block layers the LoRA adapts, comma-separated among qkv, proj, fc1, fc2, adaLN (default: all)")
    d.add_argument("--teacher", choices=("cache", "forward"), default="cache",
                   help="data-free targets: the cached teacher velocities at the trajectories' step times, or the "
                        "teacher evaluated at any coarse t (one more full-resolution forward per sample)")
    d.add_argument("--mix", type=float, default=None,
                   help="with --data: share of the flow-matching target (x1 - x0) mixed into the teacher's; default 1, "
                        "the flow-matching target alone with no teacher forward (measured better than the teacher's "
                        "velocity on the same states, docs/adaptation.md); 0 distils the teacher on data's x_t")
    d.add_argument("--batch-size", type=at_least(1), default=32)
    d.add_argument("--lr", type=float, default=3e-3, help="adapter learning rate (3e-3: measured better than 1e-3 "
                                                          "for rank 8 and 16)")
    d.add_argument("--trajectories", type=at_least(1), default=256, help="data-free: teacher trajectories")
    d.add_argument("--trajectory-steps", type=at_least(1), default=8,
                   help="data-free: Euler steps per trajectory over the coarse range")
    d.add_argument("--trajectory-cfg", type=float, default=None,
                   help="data-free: CFG scale of the trajectories (default: --guided, else 1)")
    d.add_argument("--ema-decay", type=float, default=0.99)
    d.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")
    d.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an adapter run where it stopped")


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
    if args.method == "lora-distill" or args.resume:
        return distill_main(args)
    import torch

    if args.source is None or args.out is None:
        raise CommandError("--method init needs --from SOURCE and --out FOLDER")
    _check_out(args.source, args.out)
    args.coarse_output = args.coarse_output or "v"
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


def _check_out(source: str, out: str) -> None:
    """--out may never be the source (resolved, through symlinks), whatever the flags."""
    src, dst = Path(source), Path(out)
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise CommandError(f"--out {out} is the source {source}: writing there would destroy it; choose another --out")
    if src.exists() and src.resolve().is_relative_to(dst.resolve()):
        raise CommandError(f"--out {out} holds the source {source}: choose a folder outside it")


def distill_main(args) -> int:
    """--method lora-distill: an AdaptTask run (ppflow.train.distill) sized by --budget or --steps."""
    from ..train.distill import AdaptConfig, adapt_train
    from .train import run_training

    ns = argparse.Namespace(resume=args.resume, config=None, print_config=False, verify=True)
    if args.resume:
        return run_training("ppflow adapt", ns, adapt_train, AdaptConfig, report=_report)
    if args.source is None or args.out is None:
        raise CommandError("--method lora-distill needs --from SOURCE and --out RUN_DIR")
    _check_out(args.source, args.out)
    cfg = AdaptConfig(out=args.out, seed=args.seed, batch_size=args.batch_size, log_every=10, save_every=250,
                      threads=args.threads)
    cfg.model.init, cfg.model.init_format = args.source, args.format
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.ema.decay, cfg.sample.every = args.lr, 0, args.ema_decay, 0
    a = cfg.adapter
    a.schedule, a.rank, a.guided = args.schedule, args.rank, args.guided
    a.alpha = float(args.alpha if args.alpha is not None else args.rank)
    a.teacher = args.teacher
    if args.data is None and (args.mix is not None or args.images is not None):
        raise CommandError(f"--{'mix' if args.mix is not None else 'images'} needs --data NAME (--data-path DIR): "
                           "without data the adapter is distilled from the teacher's own trajectories")
    a.mix = 1.0 if args.mix is None and args.data else (args.mix or 0.0)
    if args.targets:
        a.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    a.coarse_output = args.coarse_output or "noise_skip"
    a.data_free = args.data is None
    a.trajectories, a.trajectory_steps, a.trajectory_cfg = args.trajectories, args.trajectory_steps, args.trajectory_cfg
    if args.data:
        cfg.data.name, cfg.data.path, cfg.data.limit = args.data, args.data_path, args.images
    cfg.max_steps = args.steps or plan_steps(cfg, args)
    check = args.copy_check if args.images else 0
    return run_training("ppflow adapt", ns, adapt_train, AdaptConfig, config=cfg,
                        report=lambda result: _report(result, check))


def plan_steps(cfg, args) -> int:
    """Adapter steps that spend `--budget` of the source's training compute (teacher trajectories included)."""
    from ..convert import load_model
    from ..train.distill import conversion_flops

    if args.budget is None:
        raise CommandError("give --budget FRACTION (of the source's training compute, e.g. 0.05) or --steps N")
    if not 0 < args.budget <= 10:
        raise CommandError(f"--budget {args.budget} must be a fraction of the source's training compute in (0, 10]")
    steps, batch = args.source_steps, args.source_batch
    if steps is None or batch is None:
        found = source_training(args.source)
        if found is None:
            raise CommandError(f"cannot tell how long {args.source} was trained: give --source-steps N and "
                               "--source-batch B for --budget")
        steps, batch = steps or found[0], batch or found[1]
    source = load_model(args.source, format=args.format)
    config = adapt(source, cfg.adapter.schedule).config
    f = conversion_flops(config, cfg.adapter, cfg.batch_size, 1)
    budget = args.budget * steps * batch * f["source_step_per_sample"]
    if budget <= f["cache"]:
        raise CommandError(f"--budget {args.budget}: the {cfg.adapter.trajectories} teacher trajectories alone cost "
                           f"{f['cache'] / (steps * batch * f['source_step_per_sample']):.3f} of the source's "
                           "training; raise --budget or lower --trajectories / --trajectory-steps")
    return max(1, int((budget - f["cache"]) // f["step"]))


def source_training(source: str) -> tuple[int, int] | None:
    """(steps, batch size) of the ppflow train run a source folder belongs to (RUN, RUN/ema or a checkpoint)."""
    import torch

    p = Path(source)
    for ckpt in (p / "checkpoints" / "last.pt", p.parent / "checkpoints" / "last.pt", p):
        if ckpt.is_file() and ckpt.suffix == ".pt":
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
                return int(state["step"]), int(state["config"]["batch_size"])
            except (OSError, RuntimeError, KeyError, TypeError, ValueError):
                return None
    return None


def _report(result, copy_samples: int = 0) -> None:
    from ..convert import load_model
    from ..models.adapter import adapter_size

    if result.ema_dir is None:
        return
    model = load_model(result.ema_dir)
    extra, share = adapter_size(model)
    size = sum(f.stat().st_size for f in Path(result.ema_dir).iterdir())
    print(f"adapter {result.ema_dir}: {extra / 1e6:.3f}M parameters ({100 * share:.1f}% of the base), "
          f"{size / 1e6:.2f} MB; load it with ppflow.load_model('{result.ema_dir}')")
    if copy_samples and not result.interrupted:
        try:
            print(run_copy_check(result.run_dir, model, copy_samples).describe())
        except ValueError as e:  # e.g. no image left over to hold out: the adapter is saved all the same
            print(f"copy check skipped: {e}")


def run_copy_check(run_dir: Path, model, samples: int, seed: int = 0):
    """Sample `samples` images from a few-shot adapter run's model and compare them with its training images and
    as many held-out ones (ppflow.eval.copying); the result goes to RUN/copy-check.json."""
    import json

    import torch

    from ..eval.copying import copy_check, reference_images
    from ..io import write_text_atomic
    from ..sampling import sample_model
    from ..train.config import load_config
    from ..train.distill import AdaptConfig

    cfg = load_config(Path(run_dir) / "config.yaml", AdaptConfig)
    train, labels, holdout, mirror = reference_images(cfg.data, cfg.data.limit, seed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, *train.shape[1:], generator=g)
    y = labels[torch.randint(len(labels), (samples,), generator=g)]
    with torch.no_grad():
        x = torch.cat([sample_model(model, noise[i: i + 64], y[i: i + 64], method="heun", steps=16)
                       for i in range(0, samples, 64)])
    check = copy_check(x, train, holdout, mirror)
    write_text_atomic(Path(run_dir) / "copy-check.json", json.dumps(check.to_dict(), indent=2) + "\n", "copy check")
    return check
