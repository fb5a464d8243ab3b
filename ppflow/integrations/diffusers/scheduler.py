"""Stage boundaries on the pipeline's own sigma grid, without touching the pipeline's `__call__`.

The pipeline's scheduler instance gets a `set_timesteps` that places every stage boundary on the grid it
builds from a `sigmas` list (FLUX-style pipelines pass one), so each step runs at one patch size: the default grid (`linspace(1, 1/n, n)`, what FLUX-style
pipelines pass) is redistributed over the stages with the same step count (ppflow.flux.sigmas.stage_grid);
a custom `sigmas` list has each straddled step split. With fewer steps than stages (1-step FLUX.1-schnell)
the grid stays as given and each step runs in the stage of its starting sigma. Only the instance changes: its config, class and
saved files stay diffusers'. The grid's time shift `mu` is handed to the hook, which maps the boundaries through it
(until the call's end-of-call reset). `unpatch` restores it.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from ...flux.sigmas import insert_boundaries, inverse_time_shift, stage_grid

PATCHED = "_ppflow_set_timesteps"


def patch(scheduler, adapter) -> None:
    """Make `scheduler.set_timesteps` put `adapter`'s stage boundaries on the grid (FlowMatch schedulers)."""
    unpatch(scheduler)
    original = scheduler.set_timesteps
    if not adapter.plan.coarse or "sigmas" not in inspect.signature(original).parameters:
        return  # no boundary, or a scheduler without custom sigmas (UniPC): a step runs at its start's stage

    signature = inspect.signature(original)

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        kw = signature.bind_partial(*args, **kwargs).arguments
        # the forward maps the boundaries through this grid's shift: pipelines differ in how they pick mu
        # (FLUX.1 / Qwen-Image: from the resolution; FLUX.2: from the resolution and the step count)
        adapter.grid_mu = float(kw["mu"]) if kw.get("mu") is not None and scheduler.config.get(
            "use_dynamic_shifting") else None
        sigmas = kw.get("sigmas")
        if kw.get("timesteps") is None and sigmas is not None and len(sigmas) >= adapter.plan.num_stages:
            n = len(sigmas)
            bounds = _unshifted(adapter, scheduler, kw.get("mu"))
            default = np.linspace(1.0, 1.0 / n, n)
            if np.allclose(np.asarray(sigmas, dtype=np.float64), default, rtol=0, atol=1e-6):
                kw["sigmas"] = stage_grid(n, bounds)
            else:
                kw["sigmas"] = np.asarray(insert_boundaries(sigmas, bounds))
            if kw.get("num_inference_steps") is not None:
                kw["num_inference_steps"] = len(kw["sigmas"])
        return original(**kw)

    scheduler.set_timesteps = set_timesteps
    setattr(scheduler, PATCHED, True)


def unpatch(scheduler) -> None:
    if scheduler is not None and scheduler.__dict__.pop(PATCHED, False):
        scheduler.__dict__.pop("set_timesteps", None)


def _unshifted(adapter, scheduler, mu) -> list[float]:
    """The boundaries as unshifted sigmas of this grid (the 'sigma' rule maps the network's back through mu)."""
    raw = adapter.plan.unshifted_boundaries()
    if adapter.config.boundaries == "unshifted":
        return list(raw)
    if mu is None:
        c = scheduler.config
        mu = float(np.log(c.get("shift", 1.0))) if not c.get("use_dynamic_shifting") else 0.0
    return [inverse_time_shift(mu, b) for b in raw]
