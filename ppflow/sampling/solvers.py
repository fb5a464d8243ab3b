"""ODE and SDE solvers for the flow x_t = t * x1 + (1 - t) * x0 (t=0 noise, t=1 data).

Every solver shares one signature:

    solver(fn, x, grid, stages, callback=None, **options) -> x

`fn(x, t, stage)` returns the velocity (t of shape (N,), stage an int that fixes the
patch size of the whole step, or None to let the model pick it from t); `grid` holds
the float64 times from t0 to t1; `stages[i]` is the stage of step (grid[i], grid[i+1]];
`callback(i, t, x)` runs after step i with the state at time t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None] | None

DIFFUSION_FORMS = ("sigma", "constant", "SBDM", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("mean", "euler", "tweedie", None)


def _times(t: float, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)  # (N,)


def euler(fn: Velocity, x: torch.Tensor, grid: torch.Tensor, stages: list, callback: Callback = None) -> torch.Tensor:
    """Explicit Euler: one velocity evaluation per step, at the step's start."""
    g = grid.tolist()
    for i in range(len(g) - 1):
        x = x + (g[i + 1] - g[i]) * fn(x, _times(g[i], x), stages[i])
        if callback is not None:
            callback(i, g[i + 1], x)
    return x


def heun(fn: Velocity, x: torch.Tensor, grid: torch.Tensor, stages: list, callback: Callback = None) -> torch.Tensor:
    """Heun (explicit trapezoid, torchdiffeq's `heun2`): two evaluations per step, both in the step's stage."""
    g = grid.tolist()
    for i in range(len(g) - 1):
        dt = g[i + 1] - g[i]
        k1 = fn(x, _times(g[i], x), stages[i])
        k2 = fn(x + dt * k1, _times(g[i + 1], x), stages[i])
        x = x + (0.5 * dt) * (k1 + k2)
        if callback is not None:
            callback(i, g[i + 1], x)
    return x


def dopri5(fn: Velocity, x: torch.Tensor, grid: torch.Tensor, stages: list, callback: Callback = None,
           atol: float = 1e-6, rtol: float = 1e-3) -> torch.Tensor:
    """Adaptive Dormand-Prince (torchdiffeq), restarted wherever the step stage changes.

    The grid only sets where the state is reported (and the restarts); step sizes are
    chosen by the error control (SiT defaults atol 1e-6, rtol 1e-3).
    """
    from torchdiffeq import odeint

    g = grid.tolist()
    i = 0
    while i < len(g) - 1:
        j = i + 1  # the segment covers steps i..j-1, all with stage stages[i]
        while j < len(g) - 1 and stages[j] == stages[i]:
            j += 1
        stage = stages[i]

        def f(t, state, stage=stage):
            return fn(state, _times(float(t), state), stage)

        ts = torch.tensor(g[i : j + 1], dtype=torch.float64, device=x.device)
        # with a fixed stage, land exactly on the segment end instead of stepping past it and interpolating
        opts = {} if stage is None else {"step_t": ts[-1:]}
        out = odeint(f, x, ts, method="dopri5", atol=atol, rtol=rtol, options=opts)  # (j - i + 1, N, ...)
        for k in range(i, j):
            if callback is not None:
                callback(k, g[k + 1], out[k - i + 1])
        x = out[-1]
        i = j
    return x


def diffusion_coefficient(form: str, t: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """SiT's diffusion forms w(t) for the linear path (sigma_t = 1 - t): dx = (v + w*score) dt + sqrt(2w) dW."""
    if form == "sigma" or form == "linear":  # identical for the linear path
        return norm * (1 - t)
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "SBDM":  # d(alpha)/alpha * sigma^2 - sigma * d(sigma) = (1 - t) / t
        return norm * (1 - t) / t
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
    if form == "increasing-decreasing":
        return norm * torch.sin(math.pi * t) ** 2
    raise ValueError(f"unknown diffusion form {form!r}; choose one of {DIFFUSION_FORMS}")


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score of p_t from the velocity on the linear path: (t * v - x) / (1 - t)."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    return (t * v - x) / (1 - t)


def euler_maruyama(fn: Velocity, x: torch.Tensor, grid: torch.Tensor, stages: list, callback: Callback = None,
                   diffusion_form: str = "sigma", diffusion_norm: float = 1.0, last_step: str | None = "mean",
                   last_step_size: float = 0.04, last_stage: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """SDE Euler-Maruyama with SiT's diffusion forms, then one noise-free last step of size `last_step_size`.

    Each step: x += (v + w * score) dt + sqrt(2 w dt) z. Last step at t1 = grid[-1]:
    'mean' x += (v + w * score) h, 'euler' x += v h, 'tweedie' x = (x + (1 - t)^2 * score) / t, None: nothing.
    `last_stage` is the stage of the last step (None: the model picks it from t).
    """
    g = grid.tolist()
    if diffusion_form not in DIFFUSION_FORMS:
        raise ValueError(f"unknown diffusion form {diffusion_form!r}; choose one of {DIFFUSION_FORMS}")
    if diffusion_form == "SBDM" and g[0] <= 0:
        raise ValueError("diffusion_form='SBDM' is infinite at t=0; start later, e.g. t0=1e-3")
    if last_step in ("mean", "tweedie") and g[-1] >= 1.0:
        raise ValueError(
            f"last_step={last_step!r} needs the score at t1={g[-1]}, which is singular at t=1; "
            "end the grid earlier (t1 = 1 - last_step_size) or use last_step='euler' / None"
        )

    def drift(x: torch.Tensor, t: torch.Tensor, stage) -> torch.Tensor:
        v = fn(x, t, stage)
        w = diffusion_coefficient(diffusion_form, t, diffusion_norm).view(-1, *([1] * (x.dim() - 1)))
        return v + w * score_from_velocity(v, x, t)

    for i in range(len(g) - 1):
        t = _times(g[i], x)
        dt = g[i + 1] - g[i]
        w = diffusion_coefficient(diffusion_form, t, diffusion_norm).view(-1, *([1] * (x.dim() - 1)))
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + drift(x, t, stages[i]) * dt + torch.sqrt(2 * w * dt) * z
        if callback is not None:
            callback(i, g[i + 1], x)
    if last_step is None:
        return x
    t = _times(g[-1], x)
    if last_step == "mean":
        x = x + drift(x, t, last_stage) * last_step_size
    elif last_step == "euler":
        x = x + fn(x, t, last_stage) * last_step_size
    elif last_step == "tweedie":
        tt = t.view(-1, *([1] * (x.dim() - 1)))
        x = (x + (1 - tt) ** 2 * score_from_velocity(fn(x, t, last_stage), x, t)) / tt
    else:
        raise ValueError(f"unknown last step {last_step!r}; choose one of {LAST_STEPS}")
    if callback is not None:
        callback(len(g) - 1, g[-1] + last_step_size, x)
    return x


SOLVERS: dict[str, Callable] = {"euler": euler, "heun": heun, "dopri5": dopri5, "sde": euler_maruyama}
# options each solver accepts besides the shared signature (checked by `sample`)
SOLVER_OPTIONS: dict[str, tuple[str, ...]] = {
    "euler": (),
    "heun": (),
    "dopri5": ("atol", "rtol"),
    "sde": ("diffusion_form", "diffusion_norm", "last_step", "last_step_size", "generator"),
}
