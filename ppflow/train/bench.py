"""Time real training steps (stratified times, packed forward, backward, AdamW) on random data.

For `ppflow bench train`: same code path as the training loop (`flow_matching_loss` on a packed
mixed-stage batch, autocast as `--precision`), no data loading. Step i draws the same latents,
noise and labels for every model of one shape (seeded by (seed, i)), so models compare on equal data.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from ..flow import flow_matching_loss, sample_times
from .batches import generator
from .config import OptimSection


class TrainStep:
    """One optimizer step of `model` (trained in place) on step i's random batch; `run(i)` -> seconds."""

    def __init__(self, model: nn.Module, batch: int, seed: int = 0, time_sampling: str = "stratified",
                 lr: float = 1e-4, autocast_dtype: torch.dtype | None = None) -> None:
        self.model, self.batch, self.seed, self.time_sampling = model, batch, seed, time_sampling
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.opt = OptimSection(lr=lr).adamw(model.parameters())  # as ppflow train builds it (fused where it can)
        self.last_counts: list[int] = []

    def inputs(self, i: int):
        """(x, noise, t, stage, y) of step i on the model's device."""
        cfg, dev, n = self.model.config, self.device, self.batch
        x = torch.randn(n, cfg.in_channels, *cfg.input_size, generator=generator(self.seed, i, 0, "data")).to(dev)
        noise = torch.randn(x.shape, generator=generator(self.seed, i, 0, "noise")).to(dev)
        y = None
        if cfg.num_classes:
            y = torch.randint(0, cfg.num_classes, (n,), generator=generator(self.seed, i, 0, "labels")).to(dev)
        ts = sample_times(self.model.schedule, n, generator(self.seed, i, 0, "time"), self.time_sampling)
        return x, noise, ts.t.to(dev), ts.stage.to(dev), y

    def run(self, i: int) -> float:
        x, noise, t, stage, y = self.inputs(i)
        self.last_counts = torch.bincount(stage.cpu(), minlength=self.model.schedule.num_stages).tolist()
        self.model.train()
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        with ctx:
            loss = flow_matching_loss(self.model, x, t, stage, y, noise).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


def time_train_steps(model: nn.Module, batch: int, steps: int = 3, warmup: int = 1, seed: int = 0,
                     time_sampling: str = "stratified", lr: float = 1e-4) -> list[float]:
    """Seconds per optimizer step of `model` (trained in place) on random latents and labels."""
    step = TrainStep(model, batch, seed, time_sampling, lr)
    times = [step.run(i) for i in range(warmup + steps)]
    return times[warmup:]
