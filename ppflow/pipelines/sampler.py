"""The ppflow sampler as a diffusers scheduler component: only its settings, saved as scheduler_config.json.

Sampling itself is `ppflow.sampling.sample_model` (stateless ODE/SDE solvers with grid points on the stage
boundaries); unlike a diffusers scheduler this object holds no step state.
"""

from __future__ import annotations

from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

from ..sampling import GRIDS, METHODS


class PPFlowSampler(SchedulerMixin, ConfigMixin):
    """Default solver settings of a PPFlowPipeline (`__call__` arguments override `method`)."""

    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, method: str = "heun", grid: str = "stages", shift: float = 1.0,
                 guidance_channels: int | None = None, doubled_batch: bool = False) -> None:
        if method not in METHODS:
            raise ValueError(f"method {method!r}: choose one of {METHODS}")
        if grid not in GRIDS:
            raise ValueError(f"grid {grid!r}: choose one of {GRIDS}")

    def options(self, method: str | None = None) -> dict:
        """Keyword arguments of `sample_model` (method, grid, shift, guidance_channels, doubled_batch)."""
        c = self.config
        opts = {"method": method or c.method, "grid": c.grid, "guidance_channels": c.guidance_channels,
                "doubled_batch": c.doubled_batch}
        if c.shift != 1.0:
            opts["shift"] = c.shift
        return opts
