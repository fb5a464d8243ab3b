import pytest
import torch

from ppflow.flow import linear_path, velocity_to_data


def test_endpoints_and_constant_velocity():
    x1, x0 = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    p = linear_path(x1, x0, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(p.x_t[0], x0[0])  # t=0 is noise
    torch.testing.assert_close(p.x_t[1], x1[1])  # t=1 is data
    torch.testing.assert_close(p.x_t[2], 0.25 * x1[2] + 0.75 * x0[2])
    torch.testing.assert_close(p.target, x1 - x0)
    # moving from x_t along the target for the remaining time 1-t lands exactly on the data
    torch.testing.assert_close(velocity_to_data(p.x_t, p.target, p.t), x1)


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="noise shape"):
        linear_path(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        linear_path(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(3))
