"""Does a model trained on a few images copy them? Nearest-neighbour distances of its samples.

A model that learned the distribution puts its samples about as far from the images it was trained on as from
other images of the same kind; one that memorised them puts its samples much closer to the training images, many
of them at a near-copy distance. `copy_check` measures both in model space (pixels or latents), as root mean square
distances, so the verdict does not depend on the value range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

RATIO_LIMIT = 0.9  # samples closer to the training images than this share of their distance to held-out images
NEAR_FRACTION = 0.5  # a near copy: closer to a training image than this share of the typical held-out distance
NEAR_SHARE_LIMIT = 0.02  # more near copies than this share of the samples


def nearest_rms(samples: torch.Tensor, refs: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """RMS distance (n,) of each sample (n, ...) to its nearest reference (m, ...)."""
    a = samples.reshape(len(samples), -1).double()  # (n, D)
    b = refs.reshape(len(refs), -1).double()  # (m, D)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and references {tuple(refs.shape[1:])} differ in shape")
    best = []
    for i in range(0, len(a), chunk):
        d2 = torch.cdist(a[i: i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist").pow(2).min(1).values  # (chunk,)
        best.append((d2.clamp_min(0) / a.shape[1]).sqrt())
    return torch.cat(best)


@dataclass
class CopyCheck:
    """Nearest-neighbour distances of `samples` samples to `images` training and as many held-out images."""

    train: float  # mean RMS distance of a sample to its nearest training image
    holdout: float  # ... to its nearest held-out image
    near: float  # the near-copy distance (NEAR_FRACTION of the median held-out distance)
    near_share: float  # share of samples closer than `near` to a training image
    samples: int
    images: int

    @property
    def ratio(self) -> float:
        return self.train / self.holdout if self.holdout > 0 else float("inf")

    @property
    def copying(self) -> bool:
        return self.ratio < RATIO_LIMIT or self.near_share > NEAR_SHARE_LIMIT

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "copying": self.copying}

    def describe(self) -> str:
        verdict = ("COPYING: the samples sit closer to the training images than to others of the same kind; train "
                   "on more images, fewer steps, or a lower rank" if self.copying else "no sign of copying")
        return (f"copy check over {self.samples} samples: nearest training image {self.train:.4f}, nearest of "
                f"{self.images} held-out images {self.holdout:.4f} (ratio {self.ratio:.3f}, limit {RATIO_LIMIT}); "
                f"{100 * self.near_share:.1f}% within {self.near:.4f} of a training image (limit "
                f"{100 * NEAR_SHARE_LIMIT:.0f}%): {verdict}")


def copy_check(samples: torch.Tensor, train: torch.Tensor, holdout: torch.Tensor, mirror: bool = False) -> CopyCheck:
    """Compare `samples` (n, C, H, W) with the `train` images and as many `holdout` images of the same kind.

    `mirror`: the model was trained with horizontal flips, so mirrored training (and held-out) images count too.
    """
    if len(train) == 0 or len(holdout) == 0:
        raise ValueError("the copy check needs training and held-out images")
    if mirror:
        train, holdout = torch.cat([train, train.flip(-1)]), torch.cat([holdout, holdout.flip(-1)])
    d_train, d_hold = nearest_rms(samples, train), nearest_rms(samples, holdout)
    near = NEAR_FRACTION * float(d_hold.median())
    return CopyCheck(train=float(d_train.mean()), holdout=float(d_hold.mean()), near=near,
                     near_share=float((d_train < near).double().mean()), samples=len(samples),
                     images=len(holdout) // (2 if mirror else 1))


def reference_images(data_cfg, images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(training images, their labels, held-out images, mirror) in model space: the first `images` of `data_cfg`
    (what a run with `data.limit = images` trained on) and up to as many after them."""
    from dataclasses import replace

    from ..data.registry import build_dataset

    data = build_dataset(replace(data_cfg, limit=2 * images))
    if len(data) <= images:
        raise ValueError(f"the copy check needs held-out images: {data_cfg.name} has {len(data)} samples, all of them "
                         f"used for training (data.limit {images}); add images or skip the check")
    x, y = data.get_batch(torch.arange(len(data)))
    x = data.encode(x, torch.Generator().manual_seed(seed))
    mirror = data.default_flip if data_cfg.random_flip is None else bool(data_cfg.random_flip)
    return x[:images], y[:images], x[images:], mirror
