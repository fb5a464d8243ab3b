"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor parameter, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    """`ema = decay * ema + (1 - decay) * model` after every optimizer step; starts as a copy of the model.

    With `warmup`, the decay of update `step` (0-based) is min(decay, (1 + step) / (10 + step)), so the first
    updates follow the model closely and the random init fades out of short runs.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        ema_p = [_local(p) for p in self.model.parameters()]
        new_p = [_local(p.detach()) for p in model.parameters()]
        if len(ema_p) != len(new_p):
            raise RuntimeError("EMA and model have different parameter lists")
        torch._foreach_lerp_(ema_p, new_p, 1.0 - self.decay_at(step))

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            _local(e).copy_(_local(p.detach()))

    @torch.no_grad()
    def load_full(self, tensors: list[torch.Tensor]) -> None:
        """Copy full (unsharded) tensors into the EMA parameters, sharded like them where they are FSDP2 DTensors."""
        for e, v in zip(self.model.parameters(), tensors):
            if hasattr(e, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                v = distribute_tensor(v.to(e.device, e.dtype), e.device_mesh, e.placements)
            e.copy_(v)
