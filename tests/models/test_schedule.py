import pytest
import torch

from ppflow.models import PyramidSchedule, ScheduleError


def test_presets_match_paper():
    assert PyramidSchedule.from_string("ppf2").patches == ((4, 4), (2, 2))
    s3 = PyramidSchedule.from_string("ppf3")
    assert s3.patches == ((4, 4), (2, 4), (2, 2))
    assert s3.boundaries == (0.5, 0.75)
    assert PyramidSchedule.from_string("sit").num_stages == 1


def test_boundary_belongs_to_earlier_stage():
    s = PyramidSchedule.from_string("ppf3")
    t = torch.tensor([0.0, 0.25, 0.5, 0.5001, 0.75, 0.7501, 1.0])
    assert s.stage_of(t).tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_string_round_trip_and_dict_round_trip():
    s = PyramidSchedule.from_string("0.25:8x8,0.5:4x4,1:2x2")
    assert PyramidSchedule.from_string(s.to_string()) == s
    assert PyramidSchedule.from_config(s.to_dict()) == s
    assert s.factors(0) == (4, 4)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0.5:4x4,0.4:2x2,1:2x2", "strictly increasing"),
        ("0.5:4x4,0.9:2x2", "end at t=1"),
        ("0.5:3x3,1:2x2", "not a multiple of the base patch"),
        ("1.5:4x4,1:2x2", "outside \\[0, 1\\]"),
        ("0.5-4x4,1:2x2", "cannot parse"),
    ],
)
def test_bad_schedules_name_the_rule(spec, message):
    with pytest.raises(ScheduleError, match=message):
        PyramidSchedule.from_string(spec)


def test_gap_and_overlap():
    from ppflow.models import Stage

    with pytest.raises(ScheduleError, match="gap"):
        PyramidSchedule((Stage(0, 0.4, (4, 4)), Stage(0.5, 1, (2, 2))))
    with pytest.raises(ScheduleError, match="overlaps"):
        PyramidSchedule((Stage(0, 0.6, (4, 4)), Stage(0.5, 1, (2, 2))))


def test_latent_not_divisible():
    with pytest.raises(ScheduleError, match="not divisible by stage 0 patch 8x8"):
        PyramidSchedule.from_string("0.5:8x8,1:2x2").check_latent(12, 16)
