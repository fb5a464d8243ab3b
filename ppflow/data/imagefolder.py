"""ImageNet-style image folders (`root/<class>/<image>`), ADM center crop, through a VAE for latent models."""

from __future__ import annotations

import os
import re
import sys
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


class UnreadableImageError(ValueError):
    """An image file that PIL cannot decode (truncated, damaged, not an image)."""


# what PIL raises for a file it cannot open or decode: "image file is truncated", "cannot identify image file", ...
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_problem(err: BaseException) -> str:
    """Why PIL could not read an image, in one line (a decompression-bomb refusal says what to do)."""
    if isinstance(err, Image.DecompressionBombError):
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        return (f"{size}, more than the {2 * (Image.MAX_IMAGE_PIXELS or 0):,} PIL opens, as a guard against "
                "decompression bombs; downscale it")
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """An image file -> (3, size, size) float32 in [-1, 1] after the ADM center crop.

    A file PIL cannot decode raises UnreadableImageError naming it.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(center_crop_adm(im.convert("RGB"), size), dtype=np.float32)  # (size, size, 3)
    except IMAGE_ERRORS as e:
        raise UnreadableImageError(f"cannot read image {path} ({image_problem(e)})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


class ImageFolderData(TrainData):
    """Images of a class-per-folder tree; the training loop encodes them with the VAE (posterior sample).

    An image that cannot be decoded (a truncated JPEG) is skipped: its place in the batch goes to the next
    readable file of the folder (with that file's label), and a warning names it once. The substitute is
    fixed, so runs and resumed runs stay reproducible.
    """

    default_flip = True

    def __init__(self, root: str | os.PathLike, image_size: int = 256, vae: str = "stabilityai/sd-vae-ft-ema",
                 limit: int | None = None, local_files_only: bool = False) -> None:
        from .vae import load_vae

        files, labels, classes = scan_image_folder(root)
        self.files, self.labels = files[:limit], torch.tensor(labels[:limit])
        self.classes = classes
        self._warned: set[int] = set()  # unreadable files already named
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
        images, used = [], []
        for i in indices.tolist():
            x, j = self._load(i)
            images.append(x)
            used.append(j)
        return apply_flips(torch.stack(images), flips), self.labels[torch.tensor(used, dtype=torch.long)]

    def _load(self, i: int) -> tuple[torch.Tensor, int]:
        """Image i, or the next readable one (skipping unreadable files, each named once on stderr)."""
        n = len(self.files)
        for k in range(n):
            j = (i + k) % n
            try:
                return load_image(self.files[j], self.image_size), j
            except UnreadableImageError as e:
                if j not in self._warned:
                    self._warned.add(j)
                    print(f"ppflow: warning: {e}; skipped: its place in the batch goes to the next readable image "
                          "of the folder. Replace or delete the file", file=sys.stderr, flush=True)
        raise UnreadableImageError(f"none of the {n} images under {self.files[0].parents[1]} can be read")

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.encoder.encode(x, sample=True, generator=generator)  # (n, c, S/f, S/f)

    def to(self, device: torch.device | str) -> ImageFolderData:
        self.encoder.to(device)
        return self
