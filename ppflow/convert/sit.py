"""willisma/SiT checkpoints (e.g. `SiT-XL-2-256.pt`): the DiT key layout, flow time t in [0, 1].

SiT is a flow (interpolant) model with ppflow's time convention (t=0 noise, t=1 data) and
velocity prediction, so it loads with `time_map='identity'` and samples as is. Training
checkpoints ({"model", "ema", "opt", "args"}) are unwrapped by `ppflow.convert.training`.
"""

from __future__ import annotations

import torch

from ..models.backbone import PPFlowTransformer
from .dit import convert_layout, detect, export_layout
from .keymap import Converted

NAME = "sit"

__all__ = ["NAME", "detect", "from_ppflow", "to_ppflow"]


def to_ppflow(state: dict, overrides: dict, source: str) -> Converted:
    return convert_layout(state, overrides, source, NAME, "SiT", "identity")


def from_ppflow(model: PPFlowTransformer) -> dict[str, torch.Tensor]:
    return export_layout(model, "SiT")
