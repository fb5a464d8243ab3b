"""`ppflow sample`: draw images from a checkpoint into a PNG grid and/or an ADM-style npz.

Under torchrun the batches are dealt out to the ranks; rank 0 writes the files. Sample i
always gets the same noise (seeded by --seed and i) and batch k always holds samples
kB..(k+1)B-1, so results do not depend on the number of processes.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..cli import at_least, non_negative, positive
from ..errors import CommandError
from ..sampling import DIFFUSION_FORMS, GRIDS, METHODS, sample_model, stage_scales
from . import parse_scales
from .convert import add_load_arguments, load_spec

LAST_STEP_CHOICES = ("mean", "euler", "tweedie", "none")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(p) -> None:
    p.description = ("Sample a ppflow / DiT / SiT / official PPFlow checkpoint with an ODE or SDE solver and "
                     "stage-level classifier-free guidance. Writes a PNG grid (--out) and/or an ADM-style npz "
                     "(--npz: uint8 NHWC images arr_0, labels arr_1). Latent models are decoded with the VAE "
                     "named in their config (or --vae); pixel models are written directly. Run it under "
                     "`torchrun --nproc_per_node K -m ppflow.cli sample ...` to share the work across K processes.")
    p.add_argument("--ckpt", required=True, help="checkpoint: ppflow folder, training checkpoint/run, or a "
                                                 "DiT / SiT / official PPFlow file; 'A+B' = stage swap: A serves "
                                                 "the first (noisiest) stage of the pyramid, B the next, ...")
    add_load_arguments(p, "--format")
    p.add_argument("--num", "--num-samples", dest="num", type=at_least(1), default=64,
                   help="number of samples (under torchrun write --num-samples, or put -- before `sample`: "
                        "torchrun reads --num as its own --numa-binding)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="samples per forward batch (per process)")
    p.add_argument("--method", choices=METHODS, default="heun",
                   help="euler, heun (2 forwards/step), dopri5 (adaptive), sde (Euler-Maruyama + last step)")
    p.add_argument("--steps", type=at_least(1), default=50,
                   help="grid steps (SiT's --num-sampling-steps N is N-1 here; SDE: plus one last step)")
    p.add_argument("--cfg", default="1.0",
                   help="CFG scale, or one per stage noisiest first (e.g. '1,3'); a stage at 1 skips its "
                        "unconditional pass")
    p.add_argument("--guidance-channels", type=at_least(1), default=None,
                   help="guide only the first K latent channels (3 = DiT/SiT/official quirk); default: all")
    p.add_argument("--labels", default=None,
                   help="class labels, comma-separated, repeated over the samples (default: uniform random "
                        "from --seed; unconditional models take none)")
    p.add_argument("--grid", choices=GRIDS, default="stages",
                   help="'stages': grid points on every stage boundary, one patch size per step; 'official': "
                        "SiT/official linspace, each evaluation in the stage of its own t")
    p.add_argument("--shift", type=positive, default=1.0, help="time shift of the grid (>1: more steps at high noise)")
    p.add_argument("--doubled-batch", action="store_true",
                   help="official CFG batch (cond, uncond) whose uncond half follows its own trajectory; with "
                        "--grid official --guidance-channels 3 this reproduces the official sampler")
    p.add_argument("--atol", type=positive, default=None, help="dopri5 absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=positive, default=None, help="dopri5 relative tolerance (default 1e-3)")
    p.add_argument("--diffusion-form", choices=DIFFUSION_FORMS, default=None, help="SDE diffusion form "
                                                                                   "(default sigma)")
    p.add_argument("--diffusion-norm", type=non_negative, default=None, help="SDE diffusion scale (default 1)")
    p.add_argument("--last-step", choices=LAST_STEP_CHOICES, default=None, help="SDE last step (default mean)")
    p.add_argument("--last-step-size", type=positive, default=None, help="SDE last step size (default 0.04)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise, the random labels and SDE noise")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available; under "
                                                    "torchrun each rank uses cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="autocast dtype of the model")
    p.add_argument("--out", default=None, help="PNG grid to write (the first --grid-max samples)")
    p.add_argument("--grid-max", type=at_least(1), default=256, help="at most this many samples in the PNG grid")
    p.add_argument("--nrow", type=at_least(1), default=None, help="images per row of the grid (default: square)")
    p.add_argument("--png-scale", type=at_least(1), default=1, help="integer upscaling of the PNG grid")
    p.add_argument("--npz", default=None, help="ADM-style npz to write (arr_0 uint8 NHWC, arr_1 labels)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def solver_options(args) -> dict:
    """Solver options the user set; an option that does not apply to --method is an error."""
    given = {"atol": args.atol, "rtol": args.rtol, "diffusion_form": args.diffusion_form,
             "diffusion_norm": args.diffusion_norm, "last_step_size": args.last_step_size}
    opts = {k: v for k, v in given.items() if v is not None}
    if args.last_step is not None:
        opts["last_step"] = None if args.last_step == "none" else args.last_step
    allowed = {"dopri5": {"atol", "rtol"}, "sde": {"diffusion_form", "diffusion_norm", "last_step", "last_step_size"}}
    bad = set(opts) - allowed.get(args.method, set())
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(bad))
        raise CommandError(f"{flags} do(es) not apply to --method {args.method}")
    if args.shift != 1.0 and args.grid == "official":
        raise CommandError("--shift needs --grid stages (the official grid is a plain linspace)")
    if args.last_step_size is not None and args.last_step_size >= 1:
        raise CommandError(f"--last-step-size must be below 1 (the SDE grid ends at t = 1 - size), got "
                           f"{args.last_step_size}")
    return opts


def check_outputs(*paths: tuple[str, str | None]) -> None:
    """Each (option, path) to write must have a folder we can create, before any sampling is done."""
    for option, path in paths:
        if path is None:
            continue
        target = Path(path)
        if target.is_dir():
            raise CommandError(f"{option} {path} is a folder; give a file name such as {target / 'samples.png'}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CommandError(f"{option} {path}: cannot create its folder {target.parent} ({e.strerror or e})") \
                from None


def make_labels(args, model) -> torch.Tensor | None:
    """(num,) labels shared by every rank, or None for unconditional models."""
    n_cls = model.config.num_classes
    if n_cls == 0:
        if args.labels is not None:
            raise CommandError("the model is unconditional (num_classes=0); drop --labels")
        return None
    if args.labels is None:
        return torch.randint(0, n_cls, (args.num,), generator=torch.Generator().manual_seed(args.seed))
    try:
        vals = [int(v) for v in args.labels.split(",")]
    except ValueError:
        raise CommandError(f"--labels {args.labels!r} must be comma-separated integers, e.g. '0,1,2'") from None
    bad = [v for v in vals if not 0 <= v < n_cls]
    if bad:
        raise CommandError(f"--labels {bad} outside the model's classes 0..{n_cls - 1}")
    return torch.tensor(vals).repeat(math.ceil(args.num / len(vals)))[: args.num]


def sample_noise(seed: int, start: int, end: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise of samples start..end-1; sample i always draws from its own seed (seed, i)."""
    g = torch.Generator()
    out = torch.empty((end - start, *shape))
    for k, i in enumerate(range(start, end)):
        g.manual_seed((seed << 40) + i)
        out[k] = torch.randn(shape, generator=g)
    return out


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when there is one (gloo on CPU, nccl on CUDA)."""
    from ..train.parallel import init_distributed

    info = init_distributed(device_arg)
    return info.rank, info.world_size, info.device


def main(args) -> int:
    if args.out is None and args.npz is None:
        raise CommandError("nothing to write: give --out grid.png and/or --npz samples.npz")
    if not 0 <= args.seed < 2**23:
        raise CommandError(f"--seed {args.seed} must be in 0..{2**23 - 1} (per-sample seeds are seed * 2^40 + index)")
    opts = solver_options(args)
    scales = parse_scales(args.cfg)
    check_outputs(("--out", args.out), ("--npz", args.npz))
    rank, world, device = setup_distributed(args.device)
    try:
        model = load_spec(args.ckpt, args)
        stage_scales(scales, model.schedule.num_stages)
        labels = make_labels(args, model)
        if args.guidance_channels is not None and not 1 <= args.guidance_channels <= model.config.in_channels:
            raise CommandError(f"--guidance-channels must be in 1..{model.config.in_channels}")
        vae = None
        if model.config.vae:
            from ..data.vae import load_vae

            vae = load_vae(model.config.vae, device)
    except ImportError as e:  # a VAE that needs diffusers
        raise CommandError(str(e)) from e
    model = model.to(device).eval()
    C, (H, W) = model.config.in_channels, model.config.input_size
    B = args.batch_size
    batches = [(s, min(s + B, args.num)) for s in range(0, args.num, B)][rank::world]
    show = rank == 0 and not args.no_progress
    bar = None
    if show and len(batches) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(e - s for s, e in batches), desc=f"sampling (rank 0 of {world})", unit="img")
    dtype = PRECISIONS[args.precision]
    parts = []
    for start, end in batches:
        z = sample_noise(args.seed, start, end, (C, H, W)).to(device)
        y = labels[start:end].to(device) if labels is not None else None
        extra = dict(opts)
        if args.method == "sde":
            extra["generator"] = torch.Generator(device).manual_seed((args.seed << 40) + (1 << 39) + start)
        if args.grid == "stages":
            extra["shift"] = args.shift
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.no_grad(), autocast:
            x = sample_model(model, z, y, cfg_scales=scales, method=args.method, steps=args.steps,
                             guidance_channels=args.guidance_channels, grid=args.grid,
                             progress=show and bar is None, doubled_batch=args.doubled_batch, **extra)
            images = vae.decode(x.float()) if vae is not None else x.float().clamp(-1, 1)
        parts.append(_to_uint8(images))
        if bar is not None:
            bar.update(end - start)
    if bar is not None:
        bar.close()
    images = _gather(parts, args, rank, world)
    if rank == 0:
        _write(images, labels, args)  # a full disk: no partial file is left
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    from ..utils.images import to_uint8

    return to_uint8(images)


def _shard_dir(args) -> Path:
    target = Path(args.npz or args.out)
    return target.parent / f".{target.name}.shards"


def _gather(parts: list[np.ndarray], args, rank: int, world: int) -> np.ndarray | None:
    """All images in sample order on rank 0 (None elsewhere); ranks exchange them through shard files."""
    mine = np.concatenate(parts) if parts else None
    if world == 1:
        return mine
    import torch.distributed as dist

    shards = _shard_dir(args)
    if rank == 0:
        shards.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    if mine is not None:
        tmp = shards / f"rank{rank}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, mine)
        os.replace(tmp, shards / f"rank{rank}.npy")
    dist.barrier()
    if rank != 0:
        return None
    B = args.batch_size
    batches = [(s, min(s + B, args.num)) for s in range(0, args.num, B)]
    loaded = {r: np.load(shards / f"rank{r}.npy", mmap_mode="r") for r in range(min(world, len(batches)))}
    out = np.empty((args.num, *loaded[0].shape[1:]), dtype=np.uint8)
    offset = dict.fromkeys(loaded, 0)
    for k, (s, e) in enumerate(batches):
        r = k % world
        out[s:e] = loaded[r][offset[r] : offset[r] + e - s]
        offset[r] += e - s
    del loaded
    for r in range(world):
        (shards / f"rank{r}.npy").unlink(missing_ok=True)
    shards.rmdir()
    return out


def _write(images: np.ndarray, labels: torch.Tensor | None, args) -> None:
    from ..io import remove_quietly, save_error
    from ..utils.images import grid, save_image

    if args.npz:
        path = Path(args.npz)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                arrays = [images] if labels is None else [images, labels.numpy().astype(np.int64)]
                np.savez(f, *arrays)
            os.replace(tmp, path)
        except OSError as e:
            remove_quietly(tmp)
            raise save_error(e, path, images.nbytes, "npz file") from e
        print(f"wrote {len(images)} samples {images.shape[1:]} to {path}")
    if args.out:
        shown = images[: args.grid_max]
        try:
            save_image(grid(shown, args.nrow), args.out, scale=args.png_scale)
        except OSError as e:
            remove_quietly(args.out)
            raise save_error(e, args.out, shown.nbytes * args.png_scale**2, "PNG grid") from e
        print(f"wrote a grid of {len(shown)} samples to {args.out}")
