"""scikit-learn's 8x8 handwritten digits (1797 images, bundled with sklearn): instant smoke runs."""

from __future__ import annotations

import torch

from .base import ArrayData

NATIVE = 8


def digits_to_model_space(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """(N, 8, 8) values 0..16 -> (N, 1, size, size) in [-1, 1]: nearest upsampling by size//8, then padding."""
    if size < NATIVE:
        raise ValueError(f"digits image size {size} is smaller than the native 8x8; use --data.image-size 8 or more")
    x = images.float().div(8.0).sub(1.0)[:, None]  # (N, 1, 8, 8) in [-1, 1]
    k = size // NATIVE
    x = x.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)  # (N, 1, 8k, 8k)
    pad = size - x.shape[-1]
    return torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)


def load_digits_data(image_size: int = 16, limit: int | None = None) -> ArrayData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset needs scikit-learn: pip install 'ppflow[data]'") from e
    d = load_digits()
    images = torch.from_numpy(d.images[:limit])  # (N, 8, 8) float64
    labels = torch.from_numpy(d.target[:limit])
    return ArrayData("digits", digits_to_model_space(images, image_size), labels, num_classes=10)
