"""The stage convention in FLUX's sigma: one rule for sampling and training, a fixed coarse share per resolution."""

import numpy as np
import pytest
import torch

from ppflow.models.schedule import PyramidSchedule
from ppflow.sampling.sigmas import (
    FluxShift,
    insert_boundaries,
    inverse_time_shift,
    sigma_boundaries,
    stage_grid,
    stage_of_sigma,
    step_stages,
    time_shift,
)

PPF2 = PyramidSchedule.from_string("ppf2", base_patch=(2, 2))


def test_shift_matches_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    shift = FluxShift()
    for tokens in (256, 1024, 4096, 16384):
        mu = shift.mu(tokens)
        assert mu == pytest.approx(calculate_shift(tokens))
        sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=mu)
        want = [time_shift(mu, s) for s in (1.0, 0.75, 0.5, 0.25)]
        np.testing.assert_allclose(sched.sigmas[:-1].numpy(), want, rtol=1e-6)
        assert inverse_time_shift(mu, time_shift(mu, 0.3)) == pytest.approx(0.3)
    assert [round(shift.mu(n), 2) for n in (1024, 4096, 16384)] == [0.63, 1.15, 3.23]  # 512 / 1024 / 2048 px


def test_unshifted_boundaries_keep_the_coarse_share_fixed_across_resolutions():
    for tokens in (1024, 4096, 16384):  # 512, 1024, 2048 px
        bounds = sigma_boundaries(PPF2, tokens)  # in the network's sigma: moves with the resolution
        mu = FluxShift().mu(tokens)
        network = [time_shift(mu, s) for s in stage_grid(28, [0.5])]
        assert step_stages(network, bounds) == [0] * 14 + [1] * 14
    assert sigma_boundaries(PPF2, 1024, "sigma") == (0.5,)
    assert sigma_boundaries(PPF2, 16384)[0] > sigma_boundaries(PPF2, 1024)[0] > 0.5


def test_a_boundary_sigma_belongs_to_the_finer_stage():
    assert stage_of_sigma(torch.tensor([1.0, 0.51, 0.5, 0.4999, 0.0]), (0.5,)).tolist() == [0, 0, 1, 1, 1]
    ppf3 = sigma_boundaries(PyramidSchedule.from_string("ppf3", base_patch=(2, 2)), 0, "sigma")
    assert stage_of_sigma(torch.tensor([0.9, 0.5, 0.3, 0.25, 0.1]), ppf3).tolist() == [0, 1, 1, 2, 2]
    assert stage_of_sigma(torch.tensor(0.5 + 5e-7), (0.5,)).tolist() == [1]  # float32 rounding of the grid point


def test_grids():
    assert np.array_equal(stage_grid(28, []), np.linspace(1.0, 1 / 28, 28))
    assert np.array_equal(stage_grid(28, [0.5]), np.linspace(1.0, 1 / 28, 28))  # already on the grid
    g = stage_grid(7, [0.3])
    assert len(g) == 7 and np.isclose(g, 0.3).sum() == 1 and step_stages(g, [0.3]).count(0) == 5
    assert insert_boundaries([1.0, 0.6, 0.2], [0.5]) == [1.0, 0.6, 0.5, 0.2]
    assert insert_boundaries([1.0, 0.5, 0.2], [0.5]) == [1.0, 0.5, 0.2]
    with pytest.raises(ValueError, match="strictly decreasing"):
        insert_boundaries([0.2, 1.0], [0.5])
    with pytest.raises(ValueError, match="unknown boundary space"):
        sigma_boundaries(PPF2, 64, "t")
