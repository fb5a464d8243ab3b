"""Where each training step's samples and random draws come from.

Everything is a pure function of (seed, step, shard): the data order is a permutation per epoch
seeded by (seed, epoch); each step takes the next `batch_size` samples of it; the global batch is cut
into `world_size * grad_accum` shards (shard = rank * grad_accum + micro step) and every shard's
noise, times, label dropout and flips come from generators seeded by (seed, step, shard, purpose).
So a resumed run repeats an uninterrupted one exactly, and runs with the same number of shards give
the same result whatever the mix of processes and accumulation steps (2 GPUs == 1 GPU x 2 micro-steps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data.base import TrainData

PURPOSES = {"data": 1, "time": 2, "noise": 3, "labels": 4, "flip": 5, "encode": 6, "sample": 7, "stage": 8}


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from a base seed and keys (stable across platforms and Python versions)."""
    text = ":".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, step: int, shard: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one (step, shard, purpose)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(derive_seed(seed, step, shard, PURPOSES[purpose]))
    return g


@dataclass
class DataPosition:
    """Position in the data stream: epoch and samples of its permutation already used."""

    epoch: int = 0
    offset: int = 0


class BatchPlan:
    """Global batches drawn from per-epoch permutations; an epoch's incomplete tail is skipped."""

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < batch_size:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch of {batch_size}; "
                "lower --batch-size or use more data (--data.limit)"
            )
        self.n, self.batch, self.seed = num_samples, batch_size, seed
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, PURPOSES["data"]))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def next(self, pos: DataPosition) -> tuple[torch.Tensor, DataPosition]:
        """Indices (batch,) of the next global batch and the position after it."""
        if pos.offset + self.batch > self.n:
            pos = DataPosition(pos.epoch + 1, 0)
        idx = self.permutation(pos.epoch)[pos.offset: pos.offset + self.batch]
        return idx, DataPosition(pos.epoch, pos.offset + self.batch)


@dataclass
class MicroBatch:
    """One shard of one step: what `TrainData.get_batch` returned for it."""

    step: int
    shard: int
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Layout:
    """How a global batch is cut: shards = world_size * grad_accum, this process's shards."""

    batch_size: int
    world_size: int
    rank: int
    grad_accum: int

    def __post_init__(self) -> None:
        shards = self.world_size * self.grad_accum
        if self.batch_size % shards:
            raise ValueError(
                f"global batch {self.batch_size} does not split into {self.world_size} process(es) x "
                f"{self.grad_accum} accumulation step(s); choose --batch-size as a multiple of {shards}"
            )

    @property
    def micro(self) -> int:
        return self.batch_size // (self.world_size * self.grad_accum)

    def shards(self) -> list[int]:
        return [self.rank * self.grad_accum + m for m in range(self.grad_accum)]

    def slice(self, indices: torch.Tensor, shard: int) -> torch.Tensor:
        return indices[shard * self.micro: (shard + 1) * self.micro]


def _keys(plan: BatchPlan, layout: Layout, seed: int, flip: bool, step: int, pos: DataPosition):
    """(step, shard, indices, flips) for every micro-batch of this process from `step` on."""
    while True:
        idx, pos = plan.next(pos)
        for shard in layout.shards():
            part = layout.slice(idx, shard)
            flips = (torch.rand(len(part), generator=generator(seed, step, shard, "flip")) < 0.5) if flip else None
            yield step, shard, part, flips, pos
        step += 1


class _Fetch(torch.utils.data.Dataset):
    def __init__(self, data: TrainData) -> None:
        self.data = data

    def __len__(self) -> int:  # pragma: no cover - keys come from the sampler
        return len(self.data)

    def __getitem__(self, key):
        step, shard, idx, flips, pos = key
        x, y = self.data.get_batch(idx, flips)
        return step, shard, x, y, pos


def micro_batches(data: TrainData, plan: BatchPlan, layout: Layout, seed: int, flip: bool, start_step: int,
                  start: DataPosition, num_workers: int = 0) -> Iterator[tuple[MicroBatch, DataPosition]]:
    """This process's micro-batches from `start_step` on, with the data position after their step.

    With workers, batches are read ahead in worker processes (keys are planned in the main process,
    so the order does not depend on the number of workers).
    """
    keys = _keys(plan, layout, seed, flip, start_step, DataPosition(start.epoch, start.offset))
    if num_workers <= 0:
        for step, shard, idx, flips, pos in keys:
            x, y = data.get_batch(idx, flips)
            yield MicroBatch(step, shard, x, y), pos
        return
    loader = torch.utils.data.DataLoader(_Fetch(data), sampler=keys, batch_size=None, num_workers=num_workers,
                                         pin_memory=torch.cuda.is_available(), prefetch_factor=4)
    for step, shard, x, y, pos in loader:
        yield MicroBatch(step, shard, x, y), pos
