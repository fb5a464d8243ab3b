"""Model definitions: schedule, layers, patchify, backbone, size registry."""

from .backbone import ModelConfig, PPFlowTransformer
from .registry import SIZES, create_config, create_model, model_names, parse_name
from .schedule import PRESETS, PyramidSchedule, ScheduleError, Stage

__all__ = [
    "PRESETS",
    "SIZES",
    "ModelConfig",
    "PPFlowTransformer",
    "PyramidSchedule",
    "ScheduleError",
    "Stage",
    "create_config",
    "create_model",
    "model_names",
    "parse_name",
]
