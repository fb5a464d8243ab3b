"""Dataset registry: name -> builder taking a `DataConfig`; feeds `--data` choices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .base import ArrayData, TrainData

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    """Which training set and how to read it."""

    name: str = _opt("digits", "dataset: digits | fashion-mnist | imagefolder | latents")
    path: str | None = _opt(None, "folder: Fashion-MNIST idx.gz files, image folder, or latent cache")
    image_size: int | None = _opt(None, "image size in pixels (default: digits 16, fashion-mnist 32, imagefolder 256)")
    random_flip: bool | None = _opt(None, "random horizontal flips (default: on for imagefolder/latents only)")
    vae: str | None = _opt(None, f"imagefolder: diffusers AutoencoderKL name or folder (default {DEFAULT_VAE})")
    split: str = _opt("train", "fashion-mnist split: train | test")
    limit: int | None = _opt(None, "use only the first N samples (smoke runs)")
    num_workers: int = _opt(0, "imagefolder: data-loading worker processes")


def _digits(cfg: DataConfig) -> TrainData:
    from .digits import load_digits_data

    return load_digits_data(cfg.image_size or 16, cfg.limit)


def _fashion(cfg: DataConfig) -> TrainData:
    from functools import partial

    import numpy as np
    import torch

    from .fashion_mnist import load_fashion_mnist, to_model_space

    images, labels = load_fashion_mnist(cfg.split, cfg.path)
    size = cfg.image_size or 32
    if size < 28:
        raise ValueError(f"fashion-mnist image size {size} is smaller than 28; use --data.image-size 28 or more")
    raw = torch.from_numpy(np.array(images[: cfg.limit]))  # uint8 (N, 28, 28), converted per batch
    return ArrayData("fashion-mnist", raw, torch.from_numpy(labels[: cfg.limit]), 10,
                     transform=partial(_to_model_space_tensor, fn=to_model_space, size=size))


def _to_model_space_tensor(rows, fn, size):
    return fn(rows.numpy(), size)


def _imagefolder(cfg: DataConfig) -> TrainData:
    from .imagefolder import ImageFolderData

    if cfg.path is None:
        raise ValueError("imagefolder needs --data.path DIR (one sub-folder of images per class)")
    return ImageFolderData(cfg.path, cfg.image_size or 256, cfg.vae or DEFAULT_VAE, cfg.limit)


def _latents(cfg: DataConfig) -> TrainData:
    from .latents import LatentData

    if cfg.path is None:
        raise ValueError("latents needs --data.path DIR, a cache written by 'ppflow extract-latents'")
    data = LatentData(cfg.path, cfg.limit)
    if cfg.image_size is not None and cfg.image_size != data.meta["image_size"]:
        raise ValueError(f"--data.image-size {cfg.image_size} differs from the cache's image size "
                         f"{data.meta['image_size']}; drop the option or extract latents at that size")
    return data


DATASETS: dict[str, Callable[[DataConfig], TrainData]] = {
    "digits": _digits,
    "fashion-mnist": _fashion,
    "imagefolder": _imagefolder,
    "latents": _latents,
}


def build_dataset(cfg: DataConfig) -> TrainData:
    """The training set a `DataConfig` names."""
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.name!r}; choose one of {list(DATASETS)}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"--data.limit must be a positive number of samples, got {cfg.limit}")
    return DATASETS[cfg.name](cfg)
