"""Moving Fashion-MNIST clips: an item drifting across a frame, captioned "a {class} moving {direction}".

Each clip has `frames` frames of `size` x `size` pixels on black; the item (the 28 px image resized to `item`
px) starts at a random position from which it can travel `step * (frames - 1)` px in its direction, and moves
`step` px a frame. `direction_of` recovers a clip's direction from its intensity centroids (the motion check of
the video demo), `centre_crops` cuts the item out of each frame for the Fashion-MNIST classifier.
"""

from __future__ import annotations

import numpy as np
import torch

DIRECTIONS = ("left", "right", "up", "down")
MOVES = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (rows, cols) per step


def resize(images: np.ndarray, item: int) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, item, item) in [0, 1] (area resampling)."""
    x = torch.from_numpy(images).float().div(255.0)[:, None]  # (N, 1, 28, 28)
    return torch.nn.functional.interpolate(x, size=(item, item), mode="area")[:, 0]


def make_clips(images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0, frames: int = 8, size: int = 32,
               item: int = 20, step: int = 1) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(clips (n, 1, frames, size, size) in [-1, 1], class (n,), direction index (n,)), drawn with `seed`."""
    travel = step * (frames - 1)
    if item + travel > size:
        raise ValueError(f"an item of {item} px moving {travel} px does not fit a {size} px frame")
    g = np.random.default_rng(seed)
    rows = g.integers(0, len(images), n)
    dirs = g.integers(0, len(DIRECTIONS), n)
    sprites = resize(images[rows], item)  # (n, item, item)
    clips = torch.zeros(n, 1, frames, size, size)
    for i in range(n):
        dy, dx = MOVES[DIRECTIONS[dirs[i]]]
        # start so that the whole path stays inside; the free axis is random
        y0 = g.integers(travel if dy < 0 else 0, size - item - (travel if dy > 0 else 0) + 1)
        x0 = g.integers(travel if dx < 0 else 0, size - item - (travel if dx > 0 else 0) + 1)
        for f in range(frames):
            y, x = y0 + dy * step * f, x0 + dx * step * f
            clips[i, 0, f, y: y + item, x: x + item] = sprites[i]
    return clips * 2 - 1, labels[rows], dirs


def captions(classes: np.ndarray, dirs: np.ndarray, class_words) -> list[str]:
    return [f"a {class_words[c]} moving {DIRECTIONS[d]}" for c, d in zip(classes, dirs, strict=True)]


def centroids(clips: torch.Tensor) -> torch.Tensor:
    """(n, frames, 2) intensity centroids (row, col) of clips (n, 1, frames, H, W) in [-1, 1]."""
    w = (clips[:, 0] + 1).clamp_min(0)  # (n, F, H, W)
    H, W = w.shape[-2:]
    total = w.sum((-2, -1)).clamp_min(1e-6)  # (n, F)
    r = (w.sum(-1) * torch.arange(H)).sum(-1) / total  # (n, F)
    c = (w.sum(-2) * torch.arange(W)).sum(-1) / total  # (n, F)
    return torch.stack([r, c], -1)


def direction_of(clips: torch.Tensor) -> np.ndarray:
    """Direction index per clip from the centroid's total displacement (the larger axis decides)."""
    d = centroids(clips)
    move = (d[:, -1] - d[:, 0]).numpy()  # (n, 2) rows, cols
    out = np.where(np.abs(move[:, 1]) >= np.abs(move[:, 0]),
                   np.where(move[:, 1] < 0, 0, 1), np.where(move[:, 0] < 0, 2, 3))
    return out.astype(np.int64)


def centre_crops(clips: torch.Tensor, item: int) -> np.ndarray:
    """uint8 (n * frames, 32, 32): each frame's item (an `item` px window at its centroid) padded to 32 px as
    Fashion-MNIST's 28 px images are, for the classifier."""
    n, _, F = clips.shape[:3]
    cen = centroids(clips).round().long()  # (n, F, 2)
    out = torch.full((n * F, 32, 32), -1.0)
    half = item // 2
    pad = torch.nn.functional.pad(clips[:, 0], (half, half, half, half), value=-1.0)  # (n, F, H + item, W + item)
    for i in range(n):
        for f in range(F):
            r, c = int(cen[i, f, 0]), int(cen[i, f, 1])
            crop = pad[i, f, r: r + item, c: c + item][None, None]  # (1, 1, item, item)
            big = torch.nn.functional.interpolate(crop, size=(28, 28), mode="bilinear", align_corners=False)
            out[i * F + f, 2:30, 2:30] = big[0, 0]
    return ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
