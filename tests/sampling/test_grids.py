import pytest
import torch

from ppflow.models import PyramidSchedule
from ppflow.sampling.grids import (
    allocate_steps,
    interval_stages,
    official_grid,
    shift_time,
    shifted_grid,
    time_grid,
    uniform_grid,
    unshift_time,
)

SCHEDULES = ["ppf2", "ppf3", "0.3:8x8,0.6:4x4,0.8:2x4,1:2x2", "0.37:4x4,1:2x2"]


@pytest.mark.parametrize("spec", SCHEDULES)
@pytest.mark.parametrize("steps", [4, 7, 10, 25, 50, 250])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_grids_contain_every_boundary_and_each_step_has_one_stage(spec, steps, shift):
    sched = PyramidSchedule.from_string(spec)
    g = shifted_grid(steps, shift, sched.boundaries)
    assert g.dtype == torch.float64 and len(g) == steps + 1
    assert g[0] == 0.0 and g[-1] == 1.0
    assert torch.all(g[1:] > g[:-1])
    for b in sched.boundaries:
        assert b in g.tolist()  # exactly, not approximately
    stages = interval_stages(g, sched.boundaries)
    for i, s in enumerate(stages):  # both ends of every step lie in the closed range of its stage
        st = sched.stages[s]
        assert st.t_start <= g[i] and g[i + 1] <= st.t_end
    assert sorted(set(stages)) == list(range(sched.num_stages))


def test_uniform_grid_is_linspace_when_boundaries_fall_on_it():
    torch.testing.assert_close(uniform_grid(10, (0.5,)), torch.linspace(0, 1, 11, dtype=torch.float64))
    torch.testing.assert_close(uniform_grid(8, (0.5, 0.75)), torch.linspace(0, 1, 9, dtype=torch.float64))
    # 7 steps over (0.5, 0.25, 0.25): the largest remainder gives 3 + 2 + 2
    g = uniform_grid(7, (0.5, 0.75))
    assert interval_stages(g, (0.5, 0.75)) == [0, 0, 0, 1, 1, 2, 2]


def test_allocation_and_errors():
    assert allocate_steps(10, [0.5, 0.5]) == [5, 5]
    assert allocate_steps(3, [0.9, 0.05, 0.05]) == [1, 1, 1]  # every stage gets a step
    assert sum(allocate_steps(49, [0.5, 0.25, 0.25])) == 49
    with pytest.raises(ValueError, match="at least 3 steps"):
        uniform_grid(2, (0.5, 0.75))
    with pytest.raises(ValueError, match="unknown grid"):
        time_grid("karras", 10)
    with pytest.raises(ValueError, match="linspace"):
        time_grid("official", 10, shift=3.0)


def test_shift_is_invertible_and_moves_steps_to_high_noise():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(unshift_time(shift_time(t, 3.0), 3.0), t)
    assert torch.all(shift_time(t[1:-1], 3.0) < t[1:-1])  # shift > 1: times pulled toward noise (t=0)
    g = shifted_grid(8, 3.0, (0.5,))
    assert interval_stages(g, (0.5,)).count(0) == 6  # 0.5 maps to 0.75 in shifted time


def test_official_grid_is_sit_linspace_with_boundaries_inside_steps():
    g = official_grid(249)
    torch.testing.assert_close(g, torch.linspace(0, 1, 250).double())
    assert 0.5 not in g.tolist()  # SiT's 250 points straddle the boundary; only 'stages' grids avoid that
    sde = official_grid(249, 0.0, 0.96)
    assert abs(float(sde[-1]) - 0.96) < 1e-7
