"""Latent caches: VAE latents of an image folder (unflipped and flipped) in .npy shards.

Layout of a cache folder (written by `ppflow extract-latents`):
- `meta.json`: {"format": "ppflow-latents", "vae", "scaling_factor", "image_size", "latent_shape" [c, h, w],
  "num_classes", "classes", "dtype", "posterior", "count", "shards": [{"latents", "labels", "count"}, ...]}
- `latents-00000.npy`: (n, 2, c, h, w), index 1 on the second axis is the horizontally flipped image;
- `labels-00000.npy`: (n,) int64.
Training reads the shards memory-mapped and needs no VAE.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io import write_atomic, write_text_atomic
from .base import TrainData
from .imagefolder import UnreadableImageError, load_image, scan_image_folder

FORMAT = "ppflow-latents"
META = "meta.json"
EXTRACT_INFO = "extract.json"  # written by rank 0 after its shards: what was encoded from where
DTYPES = ("float32", "float16")
POSTERIORS = ("sample", "mean")


def shard_names(index: int) -> tuple[str, str]:
    return f"latents-{index:05d}.npy", f"labels-{index:05d}.npy"


def is_shard(name: str) -> bool:
    """A file name extract_latents writes before it finishes (a shard, or its temporary file)."""
    return re.fullmatch(r"\.?(latents|labels)-\d{5}\.npy(\.\d+\.tmp)?", name) is not None


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomic(path, write, array.nbytes, "latent shard")


class LatentData(TrainData):
    """A latent cache folder as a training set; flips select the stored flipped latents."""

    default_flip = True

    def __init__(self, root: str | os.PathLike, limit: int | None = None) -> None:
        root = Path(root)
        meta_path = root / META
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{root} is not a latent cache (no {META}); create one with "
                "'ppflow extract-latents --data-path IMAGE_FOLDER --out DIR' and pass --data.path DIR"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        self.root, self.meta = root, meta
        self.name, self.vae = "latents", meta["vae"]
        self.num_classes = int(meta["num_classes"])
        self._latents = [np.load(root / s["latents"], mmap_mode="r") for s in meta["shards"]]
        self._labels = [np.load(root / s["labels"]) for s in meta["shards"]]
        counts = [len(a) for a in self._latents]
        if counts != [s["count"] for s in meta["shards"]] or counts != [len(a) for a in self._labels]:
            raise ValueError(f"{root}: shard sizes {counts} do not match {META}; re-run ppflow extract-latents")
        self._starts = np.cumsum([0] + counts)
        self._len = int(self._starts[-1]) if limit is None else min(limit, int(self._starts[-1]))
        if self._len == 0:
            raise ValueError(f"latent cache {root} is empty")

    def __len__(self) -> int:
        return self._len

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["latent_shape"])

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.numpy()
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        row = idx - self._starts[shard]
        side = np.zeros(len(idx), dtype=np.int64) if flips is None else flips.numpy().astype(np.int64)
        x = np.stack([self._latents[s][r, f] for s, r, f in zip(shard, row, side)])  # (n, c, h, w)
        y = np.array([self._labels[s][r] for s, r in zip(shard, row)], dtype=np.int64)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        """(image, "") or (zeros, the error): an exception would cross the worker boundary as a traceback."""
        try:
            return load_image(self.files[i], self.size), ""
        except UnreadableImageError as e:
            return torch.zeros(3, self.size, self.size), str(e)


def extract_latents(
    image_folder: str | os.PathLike,
    out: str | os.PathLike,
    vae: str = "stabilityai/sd-vae-ft-ema",
    image_size: int = 256,
    batch_size: int = 32,
    shard_size: int = 10_000,
    posterior: str = "sample",
    dtype: str = "float32",
    seed: int = 0,
    limit: int | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    local_files_only: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every image (and its mirror image) of a class-per-folder tree into a latent cache.

    Shards are independent: under torchrun each rank writes shards rank, rank+world, ...; shards
    already on disk are skipped, so an interrupted extraction continues where it stopped. Returns the
    cache folder; `meta.json` is written by rank 0 (call `write_meta` after all ranks finished).
    """
    from .vae import load_vae

    if posterior not in POSTERIORS:
        raise ValueError(f"posterior {posterior!r} must be one of {POSTERIORS}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} must be one of {DTYPES}")
    files, labels, classes = scan_image_folder(image_folder)
    files, labels = files[:limit], labels[:limit]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc = load_vae(vae, device=device, local_files_only=local_files_only)
    if image_size % enc.downsample:
        raise ValueError(f"image size {image_size} is not divisible by the VAE's downsampling factor {enc.downsample}")
    num_shards = (len(files) + shard_size - 1) // shard_size
    mine = [s for s in range(num_shards) if s % world_size == rank]
    bar = tqdm(total=sum(min(shard_size, len(files) - s * shard_size) for s in mine), desc="encoding",
               unit="img", disable=not progress)
    for s in mine:
        lat_name, lbl_name = shard_names(s)
        lo, hi = s * shard_size, min(len(files), (s + 1) * shard_size)
        if (out / lat_name).exists() and (out / lbl_name).exists():
            bar.update(hi - lo)
            continue
        g = torch.Generator(device=torch.device(device)).manual_seed(seed * 1_000_003 + s)
        loader = torch.utils.data.DataLoader(_Files(files[lo:hi], image_size), batch_size=batch_size,
                                             num_workers=num_workers)
        parts = []
        for x, errors in loader:
            bad = [e for e in errors if e]
            if bad:  # the cache maps every image to its latents: a missing one cannot be skipped
                raise UnreadableImageError(f"{bad[0]}; extract-latents does not skip images (the cache keeps one "
                                           "entry per file): replace or delete the file and run again (finished "
                                           "shards are kept)")
            x = x.to(device)
            both = torch.stack([x, x.flip(-1)], 1).flatten(0, 1)  # (2n, 3, S, S): image, mirror, ...
            z = enc.encode(both, sample=posterior == "sample", generator=g)  # (2n, c, h, w)
            parts.append(z.view(len(x), 2, *z.shape[1:]).to("cpu", getattr(torch, dtype)).numpy())
            bar.update(len(x))
        _save_npy(out / lbl_name, np.asarray(labels[lo:hi], dtype=np.int64))
        _save_npy(out / lat_name, np.concatenate(parts))
    bar.close()
    info = {"vae": vae, "scaling_factor": enc.scaling_factor, "image_size": image_size,
            "latent_shape": [enc.latent_channels, image_size // enc.downsample, image_size // enc.downsample],
            "num_classes": len(classes), "classes": classes, "dtype": dtype, "posterior": posterior,
            "source": str(Path(image_folder).resolve()), "count": len(files), "shard_size": shard_size}
    if rank == 0:
        (out / EXTRACT_INFO).write_text(json.dumps(info, indent=2))
    return out


def write_meta(out: str | os.PathLike) -> Path:
    """Write `meta.json` once every shard listed by `extract.json` exists."""
    out = Path(out)
    info = json.loads((out / EXTRACT_INFO).read_text())
    num_shards = (info["count"] + info["shard_size"] - 1) // info["shard_size"]
    shards = []
    for s in range(num_shards):
        lat, lbl = shard_names(s)
        if not (out / lat).exists():
            raise FileNotFoundError(f"shard {out / lat} is missing; re-run ppflow extract-latents to finish it")
        n = min(info["shard_size"], info["count"] - s * info["shard_size"])
        shards.append({"latents": lat, "labels": lbl, "count": n})
    meta = {"format": FORMAT, "version": 1, **info, "shards": shards}
    return write_text_atomic(out / META, json.dumps(meta, indent=2), "latent cache index")
