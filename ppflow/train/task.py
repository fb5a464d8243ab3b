"""What a model family or objective adds to the training engine (ppflow.train.engine): the `Task` contract.

A task builds its data and model, applies parallelism from outside, names the trainable parameters, computes the
loss of one micro-batch and exports its EMA weights. Everything else (run folder, lock, resume, logs, signals,
checkpoints, EMA updates, accumulation, clipping) is the engine's. docs/architecture.md shows how to add one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .ema import EMA
from .parallel import DistInfo, barrier, broadcast_object
from .run_config import validate


class Task:
    """What a model family or objective adds to the engine; `setup()` fills the attributes below."""

    command = "ppflow train"  # in messages: "continue with {command} --resume RUN"
    kind: str | None = None  # checkpoint "kind"; a checkpoint of another kind is refused on resume
    config_cls: type = object
    data: Any  # indexable by micro_batches (len(), batches of .x/.y)
    flip: bool = False  # random horizontal flips of the data
    num_workers: int = 0
    raw: nn.Module  # the unwrapped model, on the device
    model: nn.Module  # what the step calls (DDP / FSDP applied from outside)
    mode: str = "none"  # none | ddp | fsdp
    ema: EMA
    num_stages: int = 1
    model_config: Any = None

    def __init__(self, cfg, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info

    validate = staticmethod(validate)  # value checks of the task's config (ConfigError naming the option)

    @staticmethod
    def run_name(cfg) -> str:
        """The start of the default run folder's name (runs/NAME-DATE-TIME)."""
        return "run"

    @classmethod
    def default_out(cls, cfg) -> str:
        return str(Path("runs") / f"{cls.run_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}")

    def setup(self, ckpt: dict | None, verify: bool, log: Callable[[str], None]) -> None:
        """Build data, model (weights of `ckpt` loaded), its parallel wrapper and EMA."""
        raise NotImplementedError

    def rank0_first(self, make: Callable[[], Any]) -> Any:
        """`make()` on rank 0 first (it may write a cache the other ranks then read), then on the others; an
        error on rank 0 stops every rank with it."""
        if not self.info.distributed:
            return make()
        made = error = None
        if self.info.is_main:
            try:
                made = make()
            except (OSError, ValueError) as e:
                error = e
        error = broadcast_object(error, self.info)
        if error is not None:
            raise error
        barrier(self.info)
        return made if self.info.is_main else make()

    def param_groups(self) -> list[dict]:
        """The trainable parameters as optimizer groups; a group's "lr_scale" multiplies the learning rate."""
        return [{"params": [p for p in self.raw.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return self.cfg.optim.adamw(groups)

    def ema_source(self) -> nn.Module:
        """What the EMA follows (parameter for parameter)."""
        return self.raw

    def loss(self, mb, autocast) -> tuple[torch.Tensor, list[float], list[int]]:
        """(mean loss, per-stage sums of per-sample losses, per-stage counts) of one micro-batch."""
        raise NotImplementedError

    def weights(self) -> tuple[dict, dict]:
        """Full (unsharded, CPU) state of the model and of the EMA for the checkpoint; every rank calls it."""
        raise NotImplementedError

    def export(self, ema_state: dict, folder: Path, target: Path) -> None:
        """Write the EMA weights as the task's model folder into `folder` (rank 0), which the engine then swaps in
        as `target`."""
        raise NotImplementedError

    def saved_config(self) -> dict:
        """Extra keys of config.yaml and of the checkpoint's config."""
        return {}

    def describe(self) -> str:
        """The start-up line after "COMMAND: "."""
        return ""

    def after_save(self, engine, done: bool) -> None:
        """Runs after the step's save decision (not on a stop) with the running `Engine`: e.g. sample grids."""
