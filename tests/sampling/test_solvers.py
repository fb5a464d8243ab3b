"""Solvers against the exact flow of a Gaussian mixture.

For data x1 ~ sum_k pi_k N(mu_k, s_k^2 I) and x_t = t x1 + (1 - t) x0, x0 ~ N(0, I), the
optimal velocity E[x1 - x0 | x_t = x] is known in closed form: given component k,
x_t ~ N(t mu_k, var_k I) with var_k = t^2 s_k^2 + (1 - t)^2, and
v_k(x) = mu_k + (t s_k^2 - (1 - t)) / var_k * (x - t mu_k); v mixes the v_k with the
posterior weights of the components. Integrating it must carry N(0, I) to the mixture.
"""

import math

import pytest
import torch

from ppflow.models import PyramidSchedule
from ppflow.sampling import sample
from ppflow.sampling.solvers import diffusion_coefficient, score_from_velocity

MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5]], dtype=torch.float64)
S = torch.tensor([0.5, 0.3], dtype=torch.float64)
PI = torch.tensor([0.3, 0.7], dtype=torch.float64)


def mixture_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.to(x.dtype)[:, None, None]  # (N, 1, 1)
    var = t**2 * S[None, :, None] ** 2 + (1 - t) ** 2  # (N, K, 1)
    d = x[:, None, :] - t * MU[None]  # (N, K, 2)
    logw = torch.log(PI)[None] - 0.5 * (d**2).sum(-1) / var[..., 0] - d.shape[-1] / 2 * torch.log(var[..., 0])
    w = torch.softmax(logw, dim=1)[..., None]  # (N, K, 1)
    vk = MU[None] + (t * S[None, :, None] ** 2 - (1 - t)) / var * d  # (N, K, 2)
    return (w * vk).sum(1)


def mixture_moments() -> tuple[torch.Tensor, torch.Tensor]:
    mean = (PI[:, None] * MU).sum(0)
    second = sum(PI[k] * (S[k] ** 2 * torch.eye(2, dtype=torch.float64) + torch.outer(MU[k], MU[k])) for k in range(2))
    return mean, second - torch.outer(mean, mean)


def check_mixture(x: torch.Tensor, tol: float) -> None:
    mean, cov = mixture_moments()
    torch.testing.assert_close(x.mean(0), mean, atol=tol, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=2 * tol, rtol=0)
    # component weights from the nearest mean
    near = torch.cdist(x, MU).argmin(1)
    assert abs(float((near == 1).double().mean()) - 0.7) < tol


def noise(n: int = 4000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_velocity_formula_matches_conditional_expectation():
    # check v against a Monte-Carlo estimate of E[x1 - x0 | x_t] on a thin shell around one point
    g = torch.Generator().manual_seed(1)
    n = 1_000_000
    k = (torch.rand(n, generator=g, dtype=torch.float64) < PI[1]).long()
    x1 = MU[k] + S[k, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.6
    xt = t * x1 + (1 - t) * x0
    point = torch.tensor([-0.5, 1.0], dtype=torch.float64)
    near = (xt - point).norm(dim=1) < 0.05
    mc = (x1 - x0)[near].mean(0)
    exact = mixture_velocity(point[None], torch.tensor([t]))[0]
    torch.testing.assert_close(mc, exact, atol=0.05, rtol=0)


@pytest.mark.parametrize("method, steps", [("euler", 200), ("heun", 20), ("dopri5", 4)])
def test_ode_solvers_carry_noise_to_the_mixture(method, steps):
    x = sample(mixture_velocity, noise(), method=method, steps=steps)
    check_mixture(x, tol=0.06)


@pytest.mark.parametrize("form", ["sigma", "increasing-decreasing"])
def test_sde_carries_noise_to_the_mixture(form):
    g = torch.Generator().manual_seed(3)
    x = sample(mixture_velocity, noise(10_000), method="sde", steps=60, diffusion_form=form,
               generator=g)
    check_mixture(x, tol=0.05)


def test_convergence_orders():
    ref = sample(mixture_velocity, noise(200), method="dopri5", steps=1, atol=1e-10, rtol=1e-10)

    def err(method, steps):
        x = sample(mixture_velocity, noise(200), method=method, steps=steps)
        return float((x - ref).norm(dim=1).mean())

    e = {m: [err(m, n) for n in (16, 32, 64)] for m in ("euler", "heun")}
    for a, b in zip(e["euler"], e["euler"][1:]):
        assert 1.6 < a / b < 2.4, e
    for a, b in zip(e["heun"], e["heun"][1:]):
        assert 3.2 < a / b < 4.8, e


def test_sde_moments_match_sit_definitions():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(diffusion_coefficient("SBDM", t), (1 - t) / t)  # (1-t)^2/t + (1-t)
    torch.testing.assert_close(diffusion_coefficient("sigma", t, 2.0), 2 * (1 - t))
    torch.testing.assert_close(diffusion_coefficient("decreasing", t), 0.25 * (torch.cos(math.pi * t) + 1) ** 2)
    # score from velocity at a Gaussian point mass data mu: p_t = N(t mu, (1-t)^2), v = (mu - x) / (1 - t)
    x, mu = torch.tensor([[0.3, -0.2]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    tt = torch.tensor([0.4], dtype=torch.float64)
    v = (mu - x) / (1 - tt)
    torch.testing.assert_close(score_from_velocity(v, x, tt), -(x - tt * mu) / (1 - tt) ** 2)


def test_sde_last_steps_and_forward_count():
    fn = mixture_velocity
    out = sample(fn, noise(50), method="sde", steps=24, last_step="mean", full_output=True,
                 generator=torch.Generator().manual_seed(0))
    assert sum(out.nfe) == 25 and abs(float(out.times[-2]) - 0.96) < 1e-12 and float(out.times[-1]) == 1.0
    out = sample(fn, noise(50), method="sde", steps=24, last_step=None, full_output=True)
    assert sum(out.nfe) == 24 and float(out.times[-1]) == 1.0
    # tweedie on the linear path is one Euler step to t=1
    g = torch.Generator().manual_seed(5)
    a = sample(fn, noise(50), method="sde", steps=8, last_step="tweedie", generator=g)
    g = torch.Generator().manual_seed(5)
    b = sample(fn, noise(50), method="sde", steps=8, last_step="euler", generator=g)
    torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="do not apply"):
        sample(fn, noise(5), method="euler", atol=1e-3)
    with pytest.raises(ValueError, match="SBDM"):
        sample(fn, noise(5), method="sde", diffusion_form="SBDM")


class StageRecorder:
    """A velocity that records (t, stage) of every call; stage is the patch size the step uses."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, stage=None):
        self.calls.append((float(t[0]), stage))
        return mixture_velocity(x, t)


@pytest.mark.parametrize("method", ["euler", "heun", "dopri5", "sde"])
@pytest.mark.parametrize("spec", ["ppf2", "ppf3"])
def test_every_evaluation_stays_in_its_stage(method, spec):
    sched = PyramidSchedule.from_string(spec)
    rec = StageRecorder()
    out = sample(rec, noise(20), method=method, steps=9, schedule=sched, full_output=True)
    assert len(rec.calls) == sum(out.nfe)
    seen = set()
    for t, s in rec.calls:
        st = sched.stages[s]
        assert st.t_start <= t <= st.t_end, (t, s)
        seen.add(s)
    assert seen == set(range(sched.num_stages))
    if method == "heun":  # a step that starts on the boundary 0.5 runs in stage 1, not stage 0
        assert (0.5, 1) in rec.calls and (0.5, 0) in rec.calls


def test_official_grid_matches_torchdiffeq_heun2_on_linspace():
    from torchdiffeq import odeint

    sched = PyramidSchedule.from_string("ppf2")
    calls = []

    def fn(x, t):  # the official sampler: no stage override, the model looks at its own t
        calls.append(int(sched.stage_of(t[:1])[0]))
        return mixture_velocity(x.double(), t).float()

    z = noise(30).float()
    ours = sample(fn, z, method="heun", steps=9, grid="official")
    ref = odeint(lambda t, x: fn(x, torch.ones(x.shape[0]) * t), z, torch.linspace(0, 1, 10), method="heun2")[-1]
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
