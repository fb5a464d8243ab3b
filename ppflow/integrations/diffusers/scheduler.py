"""Stage boundaries on the pipeline's own sigma grid, without touching the pipeline's `__call__`.

The pipeline's scheduler instance gets a `set_timesteps` that places every stage boundary on the grid it
builds, so each step runs at one patch size: the default grid (`linspace(1, 1/n, n)`, what FLUX-style
pipelines pass) is redistributed over the stages with the same step count (ppflow.sampling.sigmas.stage_grid); a
custom `sigmas` list has each straddled step split; a pipeline that passes no `sigmas` (SD3) gets the
scheduler's own grid with the nearest point moved onto each boundary (the step count stays). With fewer steps
than stages (1-step FLUX.1-schnell) the grid stays as given and each step runs in the stage of its starting
sigma. The grid's time shift `mu` is handed to the hook, which maps the boundaries through it until the call's
end-of-call reset. Only the instance changes: its config, class and saved files stay diffusers'. `unpatch`
restores it.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from ...sampling.sigmas import insert_boundaries, inverse_time_shift, snap_boundaries, stage_grid

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
        sigmas, steps = kw.get("sigmas"), kw.get("num_inference_steps")
        if kw.get("timesteps") is not None:
            return original(**kw)
        bounds = _unshifted(adapter, scheduler, kw.get("mu"))
        if sigmas is not None and len(sigmas) >= adapter.plan.num_stages:
            n = len(sigmas)
            default = np.linspace(1.0, 1.0 / n, n)
            if np.allclose(np.asarray(sigmas, dtype=np.float64), default, rtol=0, atol=1e-6):
                kw["sigmas"] = stage_grid(n, bounds)
            else:
                kw["sigmas"] = np.asarray(insert_boundaries(sigmas, bounds))
        elif sigmas is None and steps is not None and steps >= adapter.plan.num_stages and _flow_match(scheduler):
            kw["sigmas"] = np.asarray(snap_boundaries(_default_grid(scheduler, steps), bounds))  # SD3: no sigmas
        if kw.get("sigmas") is not None and steps is not None:
            kw["num_inference_steps"] = len(kw["sigmas"])
        return original(**kw)

    scheduler.set_timesteps = set_timesteps
    setattr(scheduler, PATCHED, True)


def unpatch(scheduler) -> None:
    if scheduler is not None and scheduler.__dict__.pop(PATCHED, False):
        scheduler.__dict__.pop("set_timesteps", None)


def _flow_match(scheduler) -> bool:
    return any(c.__name__ == "FlowMatchEulerDiscreteScheduler" for c in type(scheduler).__mro__)


def _default_grid(scheduler, steps: int) -> np.ndarray:
    """The unshifted sigmas a FlowMatchEulerDiscreteScheduler builds when a pipeline passes none (SD3)."""
    t = np.linspace(scheduler._sigma_to_t(scheduler.sigma_max), scheduler._sigma_to_t(scheduler.sigma_min), steps)
    return t / scheduler.config.num_train_timesteps


def _unshifted(adapter, scheduler, mu) -> list[float]:
    """The boundaries as unshifted sigmas of this grid (the 'sigma' rule maps the network's back through mu)."""
    raw = adapter.plan.unshifted_boundaries()
    if adapter.config.boundaries == "unshifted":
        return list(raw)
    if mu is None:
        c = scheduler.config
        mu = float(np.log(c.get("shift", 1.0))) if not c.get("use_dynamic_shifting") else 0.0
    return [inverse_time_shift(mu, b) for b in raw]
