"""Sampling: time grids that respect stage switches, ODE/SDE solvers, stage-level CFG."""

from .grids import GRIDS, interval_stages, official_grid, shifted_grid, time_grid, uniform_grid
from .guidance import ForwardCounter, check_count, check_scales, doubled_cfg_velocity, guided_velocity, stage_scales
from .sampler import METHODS, SampleOutput, sample, sample_model
from .solvers import DIFFUSION_FORMS, LAST_STEPS, SOLVERS
from .swap import StageSwap

__all__ = [
    "DIFFUSION_FORMS",
    "GRIDS",
    "LAST_STEPS",
    "METHODS",
    "SOLVERS",
    "ForwardCounter",
    "SampleOutput",
    "StageSwap",
    "check_count",
    "check_scales",
    "doubled_cfg_velocity",
    "guided_velocity",
    "interval_stages",
    "official_grid",
    "sample",
    "sample_model",
    "shifted_grid",
    "stage_scales",
    "time_grid",
    "uniform_grid",
]
