"""What a training dataset provides: labelled samples by index, already in model space."""

from __future__ import annotations

from collections.abc import Callable

import torch


class TrainData:
    """A finite, indexable training set.

    `get_batch(indices, flips)` returns (x (n, C, H, W) float32, y (n,) long); `flips` (n,) bool asks
    for horizontally mirrored samples. Pixel datasets return model inputs directly; datasets with an
    `encoder` (images through a VAE) return images that the training loop encodes on its device.
    """

    name: str = ""
    num_classes: int = 0
    default_flip: bool = False  # random horizontal flips unless the config says otherwise
    vae: str | None = None  # the model's VAE (ModelConfig.vae); None = pixel space

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what `get_batch` returns."""
        raise NotImplementedError

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the model sees (after the encoder, if any)."""
        return self.sample_shape

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map what `get_batch` returned to model inputs (identity for pixel and latent data)."""
        return x

    def to(self, device: torch.device | str) -> TrainData:
        """Move any encoder to `device`."""
        return self

    def describe(self) -> str:
        c, h, w = self.model_shape
        return f"{self.name}: {len(self)} samples, {self.num_classes} classes, model input {c}x{h}x{w}"


def apply_flips(x: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """Mirror the samples whose flip flag is set (last axis = width)."""
    if flips is None or not bool(flips.any()):
        return x
    return torch.where(flips.view(-1, *([1] * (x.dim() - 1))).to(x.device), x.flip(-1), x)


class ArrayData(TrainData):
    """Samples held in memory plus labels (N,); `transform` maps stored rows to (n, C, H, W) float32.

    Storing raw rows (e.g. uint8 images) and converting per batch keeps large sets small in memory.
    """

    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, default_flip: bool = False) -> None:
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} samples but {len(y)} labels")
        self.name, self.x, self.y = name, x, y.long()
        self.transform = transform or (lambda rows: rows.float())
        self.num_classes = num_classes
        self.default_flip = default_flip
        self._shape = tuple(self.transform(x[:1]).shape[1:])
        if len(self._shape) != 3:
            raise ValueError(f"{name}: samples must be (C, H, W), got {self._shape}")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self._shape

    def get_batch(self, indices: torch.Tensor, flips: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_flips(self.transform(self.x[indices]), flips), self.y[indices]
