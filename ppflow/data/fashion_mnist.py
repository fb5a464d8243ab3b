"""Fashion-MNIST from its idx.gz files (Debian package `dataset-fashion-mnist` by default)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "PPFLOW_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def default_dir() -> Path:
    return Path(os.environ.get(ENV_VAR, DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of a split ('train' or 'test')."""
    if split not in FILES:
        raise ValueError(f"split {split!r} must be one of {list(FILES)}")
    root = Path(root) if root is not None else default_dir()
    img_path, lbl_path = (root / f for f in FILES[split])
    if not img_path.exists() or not lbl_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {root} (need {FILES[split][0]} and {FILES[split][1]}). "
            "Install them with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or download the "
            "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist and pass --data-path DIR "
            f"(or set {ENV_VAR})."
        )
    return _read_idx(img_path), _read_idx(lbl_path).astype(np.int64)


def to_model_space(images: np.ndarray, size: int = 32) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, size, size) in [-1, 1], zero-padded (background) around the 28x28 image."""
    x = torch.from_numpy(np.array(images)).float().div(127.5).sub(1.0)[:, None]  # (N, 1, 28, 28)
    pad = size - x.shape[-1]
    if pad < 0:
        raise ValueError(f"size {size} is smaller than the 28x28 images")
    return torch.nn.functional.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
