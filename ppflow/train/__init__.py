"""Training: config, loop, EMA, checkpoints, data order and distributed wrappers.

    from ppflow.train import TrainConfig, train
    cfg = TrainConfig(batch_size=16, max_steps=200, out="runs/demo")
    cfg.model.name, cfg.data.name, cfg.ema.decay = "PPF-mini-2", "fashion-mnist", 0.999
    result = train(cfg)                      # TrainResult(run_dir, step, loss, checkpoint, ema_dir, ...)
    train(resume="runs/demo", overrides={"max_steps": 400})
"""

from .checkpoint import find_checkpoint, load_checkpoint
from .config import (
    ConfigError,
    DataConfig,
    EmaSection,
    FlowSection,
    ModelSection,
    OptimSection,
    SampleSection,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from .engine import NonFiniteLossError, StepEvent, TrainResult
from .sit import train

__all__ = [
    "ConfigError",
    "DataConfig",
    "EmaSection",
    "FlowSection",
    "ModelSection",
    "NonFiniteLossError",
    "OptimSection",
    "SampleSection",
    "StepEvent",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "find_checkpoint",
    "load_checkpoint",
    "load_config",
    "train",
]
