import math

import pytest
import torch

from ppflow.flow import allocate, sample_interval, sample_times, stage_shares
from ppflow.flow.time_sampling import density_cdf
from ppflow.models import PyramidSchedule

PPF2 = PyramidSchedule.from_string("ppf2")
PPF3 = PyramidSchedule.from_string("ppf3")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_default_shares_follow_stage_spans():
    assert stage_shares(PPF2) == [0.5, 0.5]
    assert stage_shares(PPF3) == [0.5, 0.25, 0.25]
    assert stage_shares(PyramidSchedule.from_string("0.3:4x4,1:2x2")) == pytest.approx([0.3, 0.7])
    assert stage_shares(PPF3, [2, 1, 1]) == [0.5, 0.25, 0.25]


def test_density_shares_are_probability_masses():
    mid = 0.5 * math.erfc(-math.log(3) / math.sqrt(2))  # P(logit-normal(0,1) <= 0.75)
    got = stage_shares(PPF3, "density", density="logit-normal")
    assert got == pytest.approx([0.5, mid - 0.5, 1 - mid])
    assert stage_shares(PPF3, "density") == pytest.approx([0.5, 0.25, 0.25])  # uniform: mass = span


def test_bad_shares_and_modes_are_clear():
    with pytest.raises(ValueError, match="got 2 stage shares for a 3-stage"):
        stage_shares(PPF3, [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        stage_shares(PPF2, [1, -1])
    with pytest.raises(ValueError, match="sum to zero"):
        stage_shares(PPF2, [0, 0])
    with pytest.raises(ValueError, match="mode 'nope'"):
        sample_times(PPF2, 4, mode="nope")
    with pytest.raises(ValueError, match="density"):
        sample_times(PPF2, 4, density="beta")


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 10, 16, 33])
@pytest.mark.parametrize("shares", [[0.5, 0.5], [0.5, 0.25, 0.25], [0.3, 0.7], [0.1, 0.2, 0.3, 0.4]])
def test_allocation_never_drops_a_sample_and_stays_within_one_of_exact(batch, shares):
    for seed in range(5):
        counts = allocate(batch, shares, gen(seed))
        assert sum(counts) == batch
        assert all(math.floor(batch * s) <= c <= math.ceil(batch * s) for c, s in zip(counts, shares))


def test_allocation_is_exact_when_divisible_and_unbiased_otherwise():
    assert allocate(16, [0.5, 0.25, 0.25], gen()) == [8, 4, 4]
    g = gen(1)
    mean = torch.tensor([allocate(10, [0.5, 0.25, 0.25], g) for _ in range(4000)], dtype=torch.float64).mean(0)
    torch.testing.assert_close(mean, torch.tensor([5.0, 2.5, 2.5], dtype=torch.float64), atol=0.05, rtol=0)


@pytest.mark.parametrize("schedule", [PPF2, PPF3])
def test_stratified_times_stay_inside_their_stage(schedule):
    ts = sample_times(schedule, 4001, gen())
    assert ts.t.dtype == torch.float32 and ts.stage.dtype == torch.long
    assert torch.all(ts.stage[1:] >= ts.stage[:-1])  # grouped by stage, noisiest first
    for i, s in enumerate(schedule.stages):
        t = ts.t[ts.stage == i]
        assert len(t) == pytest.approx(4001 * s.span, abs=1)
        assert t.min() >= s.t_start and t.max() <= s.t_end
        assert t.mean().item() == pytest.approx((s.t_start + s.t_end) / 2, abs=0.01)  # uniform inside


def test_stage_of_boundary_is_overridden_by_the_stratified_stage():
    # a stage-1 draw may land on its closed lower bound 0.5, which stage_of would give to stage 0;
    # the returned stage (passed to the model) keeps it in stage 1
    ts = sample_times(PPF2, 64, gen())
    assert torch.equal(ts.stage, torch.tensor([0] * 32 + [1] * 32))


def test_logit_normal_inside_a_stage_has_the_restricted_median():
    mean, std, lo, hi = 0.3, 1.2, 0.5, 0.75
    t = sample_interval(20000, lo, hi, gen(), "logit-normal", mean, std)
    assert t.min() >= lo and t.max() <= hi
    p = (density_cdf(lo, "logit-normal", mean, std) + density_cdf(hi, "logit-normal", mean, std)) / 2
    median = torch.sigmoid(mean + std * torch.special.ndtri(torch.tensor(p, dtype=torch.float64))).item()
    assert (t < median).double().mean().item() == pytest.approx(0.5, abs=0.015)


def test_iid_mode_derives_stage_from_t():
    ts = sample_times(PPF3, 500, gen(), mode="iid")
    assert torch.equal(ts.stage, PPF3.stage_of(ts.t))


def test_all_t_mode_trains_every_stage_on_every_noise_level():
    ts = sample_times(PPF2, 2000, gen(), mode="all_t")
    assert ts.counts(2) == [1000, 1000]
    for s in (0, 1):
        t = ts.t[ts.stage == s]
        assert (t < 0.5).any() and (t > 0.5).any()
        assert t.mean().item() == pytest.approx(0.5, abs=0.03)


def test_same_generator_state_same_draws():
    a = sample_times(PPF3, 13, gen(7), density="logit-normal")
    b = sample_times(PPF3, 13, gen(7), density="logit-normal")
    assert torch.equal(a.t, b.t) and torch.equal(a.stage, b.stage)


def test_stage_margin_widens_each_stage_past_its_switch_and_clips_to_the_unit_interval():
    s = PyramidSchedule.from_string("0.5:8x8,1:4x4")
    ts = sample_times(s, 20000, torch.Generator().manual_seed(0), margin=0.1)
    t0, t1 = ts.t[ts.stage == 0], ts.t[ts.stage == 1]
    assert t0.min() >= 0 and t0.max() <= 0.6 and t0.max() > 0.59  # [0, 0.6]: clipped below, widened above
    assert t1.min() >= 0.4 and t1.min() < 0.41 and t1.max() <= 1
    assert ts.counts(2) == [10000, 10000]  # shares still follow the spans
    plain = sample_times(s, 64, torch.Generator().manual_seed(0))
    assert torch.equal(plain.t, sample_times(s, 64, torch.Generator().manual_seed(0), margin=0.0).t)
    with pytest.raises(ValueError, match="margin"):
        sample_times(s, 4, margin=1.0)
