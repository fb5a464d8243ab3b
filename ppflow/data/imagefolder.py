"""ImageNet-style image folders (`root/<class>/<image>`), ADM center crop, through a VAE for latent models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import TrainData, apply_flips

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".jpe")


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names): one class per sub-folder, sorted by name; files sorted inside each class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a folder; pass --data.path DIR with one sub-folder "
            "of images per class (ImageNet train layout)"
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(root / c, followlinks=True)):
            for n in sorted(names):
                if n.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath) / n)
                    labels.append(k)
    if not files:
        raise FileNotFoundError(
            f"no images found under {root}: expected {root}/<class>/<image>{IMAGE_EXTENSIONS[:2]} "
            "(one sub-folder per class)"
        )
    return files, labels, classes


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM / DiT preprocessing: halve with box filtering while the short side >= 2*size, bicubic-resize
    the short side to `size`, then take the central size x size crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(v // 2 for v in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(v * scale) for v in image.size), resample=Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """An image file -> (3, size, size) float32 in [-1, 1] after the ADM center crop."""
    with Image.open(path) as im:
        arr = np.asarray(center_crop_adm(im.convert("RGB"), size), dtype=np.float32)  # (size, size, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


class ImageFolderData(TrainData):
    """Images of a class-per-folder tree; the training loop encodes them with the VAE (posterior sample)."""

    default_flip = True

    def __init__(self, root: str | os.PathLike, image_size: int = 256, vae: str = "stabilityai/sd-vae-ft-ema",
                 limit: int | None = None, local_files_only: bool = False) -> None:
        from .vae import load_vae

        files, labels, classes = scan_image_folder(root)
        self.files, self.labels = files[:limit], torch.tensor(labels[:limit])
        self.classes = classes
        self.name, self.num_classes, self.image_size, self.vae = "imagefolder", len(classes), image_size, vae
        self.encoder = load_vae(vae, local_files_only=local_files_only)
        f = self.encoder.downsample
        if image_size % f:
            raise ValueError(f"image size {image_size} is not divisible by the VAE's downsampling factor {f}")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.encoder.downsample
        return (self.encoder.latent_channels, s, s)

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([load_image(self.files[i], self.image_size) for i in indices.tolist()])  # (n, 3, S, S)
        return apply_flips(x, flips), self.labels[indices]

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.encoder.encode(x, sample=True, generator=generator)  # (n, c, S/f, S/f)

    def to(self, device: torch.device | str) -> ImageFolderData:
        self.encoder.to(device)
        return self
