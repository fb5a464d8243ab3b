"""`ppflow extract-latents`: encode an image folder (and its mirror images) with a VAE into a latent cache."""

from __future__ import annotations


def add_arguments(p) -> None:
    from ..cli import at_least
    from ..data.registry import DEFAULT_VAE

    p.add_argument("--data-path", required=True, metavar="DIR", help="image folder: DIR/<class>/<image>")
    p.add_argument("--out", required=True, metavar="DIR", help="latent cache folder to write (train with "
                   "--data latents --data.path DIR)")
    p.add_argument("--vae", default=DEFAULT_VAE, help="diffusers AutoencoderKL: hub name or local folder "
                   "(its config gives the scaling factor)")
    p.add_argument("--image-size", type=at_least(1), default=256, help="ADM center-crop size in pixels")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per VAE forward (x2 with the flipped copies)")
    p.add_argument("--shard-size", type=at_least(1), default=10_000, help="images per .npy shard")
    p.add_argument("--posterior", choices=("sample", "mean"), default="sample",
                   help="store a posterior sample (as fast-DiT) or the posterior mean")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage precision")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    p.add_argument("--limit", type=at_least(1), default=None, help="encode only the first N images")
    p.add_argument("--num-workers", type=at_least(0), default=4, help="image-decoding worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub for the VAE")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--force", action="store_true", help="write into --out even when it holds other files (an image "
                   "folder, a run folder, another cache)")


def main(args) -> int:
    from pathlib import Path

    from ..data.latents import EXTRACT_INFO, extract_latents, is_shard, write_meta
    from ..io import check_output_folder
    from ..train.parallel import barrier, cleanup, init_distributed

    # a latent cache of the same images (finished or interrupted) continues; anything else needs --force
    check_output_folder(args.out, force=args.force, marker=EXTRACT_INFO, source=str(Path(args.data_path).resolve()),
                        own=is_shard, what="latent cache", option="--force (or another --out)")
    info = init_distributed(args.device)  # --device cuda without CUDA: a ValueError naming it
    try:
        out = extract_latents(
            args.data_path, args.out, vae=args.vae, image_size=args.image_size, batch_size=args.batch_size,
            shard_size=args.shard_size, posterior=args.posterior, dtype=args.dtype, seed=args.seed, limit=args.limit,
            num_workers=args.num_workers, device=info.device, rank=info.rank, world_size=info.world_size,
            local_files_only=args.local_files_only, progress=info.is_main and not args.no_progress,
        )
        barrier(info)
        if info.is_main:
            meta = write_meta(out)
            print(f"latent cache written: {meta} (train with --data latents --data.path {out})")
        return 0
    finally:
        cleanup(info)
