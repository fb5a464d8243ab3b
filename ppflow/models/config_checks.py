"""Checks of single ModelConfig field values, wherever they come from (a run config, options, a config.json)."""

from __future__ import annotations

import math

from .backbone import STAGE_INITS, TIME_MAPS
from .output import OUTPUTS


def _is_int(v, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ModelConfig field -> (check of a value, what a valid value is), or the names it may take
FIELD_CHECKS = {
    "depth": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "hidden_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "num_heads": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "mlp_ratio": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "in_channels": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "input_size": (lambda v: _is_int(v, 1) or (isinstance(v, (list, tuple)) and len(v) == 2
                                               and all(_is_int(x, 1) for x in v)), "a size >= 1 or [height, width]"),
    "num_classes": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "learn_sigma": (lambda v: isinstance(v, bool), "true or false"),
    "schedule": (lambda v: isinstance(v, (str, dict)), "a string such as 'ppf2' or '0.5:4x4,1:2x2'"),
    "level_embedding": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "level_init_std": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "time_map": TIME_MAPS,
    "coarse_output": OUTPUTS,
    "stage_init": STAGE_INITS,
    "vae": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "name": (lambda v: isinstance(v, str), "a string"),
}


def model_field_problem(key: str, value: object) -> str | None:
    """What is wrong with one ModelConfig field value (wrong type, range or name), or None (also for unknown keys)."""
    check = FIELD_CHECKS.get(key)
    if check is None:
        return None
    if not callable(check[0]):  # names, phrased as ModelConfig says it
        return None if value in check else f"{key} {value!r} is not one of {check}"
    return None if check[0](value) else f"{key} must be {check[1]}, got {value!r}"
