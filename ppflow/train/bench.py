"""Time real training steps (stratified times, packed forward, backward, AdamW) on random data.

For `ppflow bench train`: same code path as the training loop, no data loading.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..flow import flow_matching_loss, sample_times


def time_train_steps(model: nn.Module, batch: int, steps: int = 3, warmup: int = 1, seed: int = 0,
                     time_sampling: str = "stratified", lr: float = 1e-4) -> list[float]:
    """Seconds per optimizer step of `model` (trained in place) on random latents and labels."""
    device = next(model.parameters()).device
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    out = []
    for i in range(warmup + steps):
        x = torch.randn(batch, cfg.in_channels, *cfg.input_size, generator=g).to(device)
        y = torch.randint(0, max(1, cfg.num_classes), (batch,), generator=g).to(device) if cfg.num_classes else None
        ts = sample_times(model.schedule, batch, g, time_sampling)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = flow_matching_loss(model, x, ts.t.to(device), ts.stage.to(device), y, generator=None).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def median_step(model: nn.Module, batch: int, **kw) -> float:
    return statistics.median(time_train_steps(model, batch, **kw))
