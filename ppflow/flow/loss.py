"""Flow-matching (velocity-prediction) loss for a mixed-stage batch in one packed forward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .path import linear_path


@dataclass
class LossOutput:
    """Mean loss (scalar, differentiable) plus detached per-sample losses (N,) and stages (N,) for logging."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    stage: torch.Tensor | None

    def stage_sums(self, num_stages: int) -> tuple[list[float], list[int]]:
        """Per-stage sum of per-sample losses and sample counts (stage 0 only when no stages were given)."""
        stage = self.stage if self.stage is not None else torch.zeros_like(self.per_sample, dtype=torch.long)
        stage = stage.to(self.per_sample.device)
        sums = torch.zeros(num_stages, dtype=torch.float64, device=stage.device)
        sums.index_add_(0, stage, self.per_sample.double())
        return sums.tolist(), torch.bincount(stage, minlength=num_stages).tolist()


def drop_labels(model: nn.Module, y: torch.Tensor | None, prob: float,
                generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Label dropout for classifier-free guidance: labels -> null class with probability `prob`."""
    model = getattr(model, "module", model)  # unwrap DDP
    if y is None or prob <= 0 or model.y_embedder is None:
        return y
    return model.y_embedder.drop(y, prob, generator)


def flow_matching_loss(
    model: Callable[..., torch.Tensor],
    x1: torch.Tensor,
    t: torch.Tensor,
    stage: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """MSE between model(x_t, t, y, stage=stage) and the velocity x1 - x0 on the linear path.

    The whole batch goes through the model once; the model packs samples of different stages
    (attention stays inside each sample). `stage` pins each sample's patch size (stratified or
    all-t training); None lets the model pick the stage from t.
    """
    if noise is None:
        noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    path = linear_path(x1, noise, t)
    v = model(path.x_t, t, y, stage=stage)  # (N, C, H, W)
    per_sample = (v.float() - path.target.float()).square().mean(dim=tuple(range(1, v.dim())))  # (N,)
    return LossOutput(per_sample.mean(), per_sample.detach(), stage)
