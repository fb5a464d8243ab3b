"""High-level sampling: `sample` over any velocity callable, `sample_model` for a PPFlow model with CFG."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.schedule import PyramidSchedule
from .grids import interval_stages, time_grid
from .guidance import ForwardCounter, Scales, check_count, doubled_cfg_velocity, guided_velocity, stage_scales
from .solvers import SOLVER_OPTIONS, SOLVERS

METHODS = tuple(SOLVERS)


@dataclass
class SampleOutput:
    """Result of a sampling run."""

    x: torch.Tensor  # final state (N, C, H, W)
    times: torch.Tensor  # (K,) float64 times of the trajectory states (start included)
    trajectory: list[torch.Tensor] | None  # K states if requested
    nfe: list[int]  # velocity evaluations (batched calls) per stage
    forwards: list[int] | None = None  # model forwards per stage counted in samples (CFG passes included)
    flops: dict | None = None  # {'paper': ..., 'total': ...} FLOPs of those forwards (ppflow.models.flops)


def _schedule(schedule) -> PyramidSchedule | None:
    if schedule is None or isinstance(schedule, PyramidSchedule):
        return schedule
    return PyramidSchedule.from_string(schedule)


def sample(
    fn: Callable,
    noise: torch.Tensor,
    *,
    method: str = "euler",
    steps: int = 50,
    schedule: PyramidSchedule | str | None = None,
    grid: str = "stages",
    shift: float = 1.0,
    t0: float = 0.0,
    t1: float | None = None,
    return_trajectory: bool = False,
    full_output: bool = False,
    progress: bool = False,
    config=None,
    **options,
) -> torch.Tensor | SampleOutput:
    """Integrate the velocity `fn` from `noise` (t=t0) to data (t=t1); returns x, or a SampleOutput.

    `fn(x, t) -> v` with t of shape (N,). With a `schedule` and grid='stages', grid points
    sit on every stage boundary and fn is called as `fn(x, t, stage=s)` with the stage of
    the whole step (dopri5 restarts at each boundary); grid='official' is SiT's plain
    linspace with `fn(x, t)`. `steps`: steps of the grid (SDE: Euler-Maruyama steps, the
    last step comes on top). `t1` defaults to 1 (SDE: 1 - last_step_size). `options`:
    dopri5 atol/rtol; sde diffusion_form/diffusion_norm/last_step/last_step_size/generator.
    `config` (a ModelConfig) adds the FLOPs of one forward of the batch per evaluation.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {METHODS}")
    unknown = set(options) - set(SOLVER_OPTIONS[method])
    if unknown:
        raise TypeError(
            f"option(s) {sorted(unknown)} do not apply to method {method!r}; "
            f"it accepts {list(SOLVER_OPTIONS[method]) or 'no extra options'}"
        )
    sched = _schedule(schedule)
    boundaries = sched.boundaries if sched is not None else ()
    num_stages = sched.num_stages if sched is not None else 1
    if t1 is None:
        last = options.get("last_step", "mean")
        t1 = 1.0 - options.get("last_step_size", 0.04) if method == "sde" and last is not None else 1.0
    if method == "sde" and options.get("last_step", "mean") is not None:
        options.setdefault("last_step_size", 1.0 - t1)
    times = time_grid(grid, steps, boundaries, t0, t1, shift)
    use_stage = sched is not None and grid == "stages"
    stages = interval_stages(times, boundaries) if use_stage else [None] * (len(times) - 1)
    if method == "sde" and use_stage:  # the last step (t1, 1] also keeps one stage
        options["last_stage"] = interval_stages(torch.tensor([t1, 1.0], dtype=torch.float64), boundaries)[0]
    if use_stage and not accepts_stage(fn):
        raise TypeError("with a schedule and grid='stages' the velocity is called as fn(x, t, stage=s); "
                        "give fn a `stage` keyword, or pass grid='official' / no schedule")
    nfe = [0] * num_stages

    def call(x: torch.Tensor, t: torch.Tensor, stage: int | None) -> torch.Tensor:
        if stage is not None:
            nfe[stage] += 1
            return fn(x, t, stage=stage)
        nfe[int(sched.stage_of(t[:1].double())[0]) if sched is not None else 0] += 1
        return fn(x, t)

    keep = [noise] if return_trajectory else None
    saved_t = [float(times[0])]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(times) - 1 + (method == "sde" and options.get("last_step", "mean") is not None),
                   desc=f"sampling ({method})", leave=False)

    def callback(i: int, t: float, x: torch.Tensor) -> None:
        saved_t.append(t)
        if keep is not None:
            keep.append(x)
        if bar is not None:
            bar.update(1)

    x = SOLVERS[method](call, noise, times, stages, callback=callback, **options)
    if bar is not None:
        bar.close()
    if not (full_output or return_trajectory):
        return x
    flops = None
    if config is not None:
        rows = [n * noise.shape[0] for n in nfe]
        flops = _flops(config, rows, noise.shape[-2:])
    return SampleOutput(x, torch.tensor(saved_t, dtype=torch.float64), keep, nfe, None, flops)


def _flops(config, rows: list[int], hw) -> dict:
    from ..models.flops import evaluation_flops

    paper, total = evaluation_flops(config, rows, int(hw[0]), int(hw[1]))
    return {"paper": paper, "total": total}


@torch.no_grad()
def sample_model(
    model,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
    cfg_scales: Scales = 1.0,
    method: str = "euler",
    steps: int = 50,
    guidance_channels: int | None = None,
    grid: str = "stages",
    progress: bool = False,
    doubled_batch: bool = False,
    return_trajectory: bool = False,
    full_output: bool = False,
    **options,
) -> torch.Tensor | SampleOutput:
    """Sample a PPFlow/SiT model from `noise` (N, C, H, W) with labels y (N,) and stage-level CFG.

    Returns the final latents (or images for pixel models), or a SampleOutput with the
    model forwards per stage and their FLOPs. `cfg_scales`: one scale or one per stage; a
    stage at scale 1 skips its unconditional pass. `guidance_channels=3`: guide channels
    0..2 only (DiT/SiT/official quirk). `grid='official'` with `doubled_batch=True`
    reproduces the official sampler: plain linspace, stage from each evaluation's own t,
    and a doubled (cond, uncond) batch whose uncond half follows its own trajectory.
    `options`: see `sample` (shift, t0, t1, atol, rtol, SDE options).
    """
    num_stages = model.schedule.num_stages
    steps = check_count(steps, "steps")
    scales = stage_scales(cfg_scales, num_stages)
    if noise.ndim != 4:
        raise ValueError(f"noise must be a batch of latents (N, C, H, W), got shape {tuple(noise.shape)}")
    model.schedule.check_latent(*noise.shape[-2:])
    C = noise.shape[1]
    if guidance_channels is not None and not 1 <= guidance_channels <= C:
        raise ValueError(f"guidance_channels={guidance_channels} must be in 1..{C} (or None for all channels)")
    if y is not None:
        y = torch.as_tensor(y, device=noise.device, dtype=torch.long).expand(noise.shape[0])
    if any(s != 1.0 for s in scales) and (y is None or model.null_label is None):
        raise ValueError("CFG scales != 1 need class labels y and a class-conditional model; pass y or cfg_scales=1")
    counter = ForwardCounter([0] * num_stages)
    N = noise.shape[0]
    if doubled_batch:
        if y is None or model.null_label is None:
            raise ValueError("doubled_batch=True is the (cond, uncond) CFG batch; it needs labels y")
        y2 = torch.cat([y, torch.full_like(y, model.null_label)])

        def fn(x, t, stage=None):
            return doubled_cfg_velocity(model, x, t, y2, scales, guidance_channels, stage, counter)

        start = torch.cat([noise, noise])
    else:

        def fn(x, t, stage=None):
            return guided_velocity(model, x, t, y, scales, guidance_channels, stage, counter)

        start = noise
    out = sample(fn, start, method=method, steps=steps, schedule=model.schedule, grid=grid, progress=progress,
                 return_trajectory=return_trajectory, full_output=True, **options)
    if doubled_batch:
        out.x = out.x[:N]
        if out.trajectory is not None:
            out.trajectory = [s[:N] for s in out.trajectory]
    if not (full_output or return_trajectory):
        return out.x
    out.forwards = counter.rows
    out.flops = model_flops(model, counter.rows, noise.shape[-2:])
    return out


def model_flops(model, rows: list[int], hw) -> dict:
    """FLOPs of `rows[s]` single-sample forwards per stage of a model (a StageSwap counts each member's stage)."""
    if not hasattr(model, "stage_flops"):
        return _flops(model.config, rows, hw)
    fl = [model.stage_flops(s, int(hw[0]), int(hw[1])) for s in range(len(rows))]
    return {"paper": sum(n * f.paper for n, f in zip(rows, fl)), "total": sum(n * f.total for n, f in zip(rows, fl))}


def accepts_stage(fn: Callable) -> bool:
    """Whether a velocity callable takes a `stage` keyword."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "stage" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
