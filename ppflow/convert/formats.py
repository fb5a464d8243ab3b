"""Dispatch for single-file checkpoints (training checkpoints and foreign formats)."""

from __future__ import annotations

from pathlib import Path

from ..models.backbone import PPFlowTransformer


def load_file_checkpoint(path: Path, format: str | None = None, **overrides) -> PPFlowTransformer:
    raise ValueError(
        f"{path} is not a ppflow model folder (model.safetensors + config.json) and no adapter for "
        f"format {format!r} is available yet"
    )
