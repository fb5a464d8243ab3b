"""FLUX.1 with PPFlow on diffusers (the `flux` extra): transformer, pipeline, FLOPs, benchmark.

Names are imported on first use, so `import ppflow.flux` does not import diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PPFluxTransformer": "transformer", "PPFluxConfig": "transformer",
    "PPFluxPipeline": "pipeline", "StageStats": "pipeline",
    "FluxShift": "..sampling.sigmas", "sigma_boundaries": "..sampling.sigmas", "stage_of_sigma": "..sampling.sigmas",
    "stage_grid": "..sampling.sigmas",
    "FluxArch": "flops", "resolution_table": "flops",
}
__all__ = ["FluxArch", "FluxShift", "PPFluxConfig", "PPFluxPipeline", "PPFluxTransformer", "StageStats",
           "resolution_table", "sigma_boundaries", "stage_grid", "stage_of_sigma"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ppflow.flux' has no attribute {name!r}")
    module = _EXPORTS[name]
    return getattr(importlib.import_module(module if module.startswith(".") else f".{module}", __name__), name)
