"""Image conversions and grids (PIL only)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..io import write_atomic


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (N, C, H, W) -> uint8 (N, H, W, C) as ADM npz files store them."""
    x = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*H', cols*W', C) mosaic."""
    n, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i]
    return out


def save_image(array: np.ndarray, path: str | os.PathLike, scale: int = 1) -> Path:
    """Save a uint8 (H, W, C) array as PNG (atomically), optionally upscaled by an integer factor."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"), array.nbytes, "image")


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> Path:
    """Images in [-1, 1], (N, C, H, W) -> PNG grid."""
    return save_image(grid(to_uint8(x), nrow), path, scale)
