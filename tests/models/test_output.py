import pytest
import torch

from ppflow.convert import load_model
from ppflow.convert.adaptation import adapt
from ppflow.models import create_model
from ppflow.models.output import MIN_ONE_MINUS_T, block_mean, pooling_ratio, snr_scale, snr_time, to_velocity
from tests.conftest import randomize

KW = {"in_channels": 1, "num_classes": 10, "input_size": 16, "learn_sigma": False}


def ppf(mode: str, **kw):
    return randomize(create_model("PPF-tiny-2", schedule="0.5:8x8,1:4x4", coarse_output=mode, **{**KW, **kw})).eval()


def test_block_mean_is_a_projection_onto_block_constant_images():
    x = torch.randn(2, 3, 8, 12)
    p = block_mean(x, (2, 3))
    assert torch.allclose(block_mean(p, (2, 3)), p, atol=1e-6)
    assert torch.allclose(p[..., 0:2, 0:3], x[..., 0:2, 0:3].mean(dim=(-1, -2), keepdim=True).expand(2, 3, 2, 3))


def test_to_velocity_formulas():
    out, x, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0.0, 0.25, 0.5])
    inv = (1 / (1 - t)).view(-1, 1, 1, 1)
    assert torch.equal(to_velocity(out, x, t, (2, 2), "v"), out)
    for mode in ("x", "noise_skip", "snr"):  # the base stage is never reparametrized
        assert torch.equal(to_velocity(out, x, t, (1, 1), mode), out)
    assert torch.allclose(to_velocity(out, x, t, (2, 2), "x"), (out - x) * inv)
    assert torch.allclose(to_velocity(out, x, t, (2, 2), "noise_skip"), out - (x - block_mean(x, (2, 2))) * inv)
    # block-constant x_t: nothing to skip
    flat = block_mean(x, (2, 2))
    assert torch.allclose(to_velocity(out, flat, t, (2, 2), "noise_skip"), out)
    # t near 1 (a coarse stage pinned there): finite, 1 - t clamped
    v = to_velocity(out, x, torch.ones(3), (2, 2), "x")
    assert torch.allclose(v, (out - x) / MIN_ONE_MINUS_T)


@pytest.mark.parametrize("mode", ["x", "noise_skip"])  # snr also changes the coarse input: tested below
def test_model_reparametrizes_only_coarse_stages(mode):
    base, other = ppf("v"), ppf(mode)
    other.load_state_dict(base.state_dict())
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])  # two coarse, two fine samples in one packed batch
    raw, v = base(x, t, y), other(x, t, y)
    assert torch.equal(v[2:], raw[2:])  # the finest stage is the paper's v
    assert torch.allclose(v[:2], to_velocity(raw[:2], x[:2], t[:2], (2, 2), mode), atol=1e-6)
    assert not torch.allclose(v[:2], raw[:2])


def test_one_stage_model_is_unchanged_by_the_option():
    a = randomize(create_model("SiT-tiny/4", schedule="1:4x4", **KW)).eval()
    b = randomize(create_model("SiT-tiny/4", schedule="1:4x4", coarse_output="noise_skip", **KW)).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([0.2, 0.7])
    assert torch.equal(a(x, t, torch.tensor([1, 2])), b(x, t, torch.tensor([1, 2])))


@pytest.mark.parametrize("mode", ["x", "noise_skip", "snr"])
def test_option_round_trips_through_save_and_load(mode, tmp_path):
    model = ppf(mode)
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.coarse_output == mode
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([0.1, 0.3, 0.8]), torch.tensor([4, 5, 6])
    assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="coarse_output 'eps' is not one of"):
        create_model("PPF-tiny-2", coarse_output="eps", **KW)


def test_adapted_noise_skip_starts_as_the_source_denoiser_at_half_resolution():
    """Adapted coarse stage = (up(x1_hat(down x_t)) - x_t) / (1 - t): with the average/copy init the block-mean
    part of x_t is what the copied projections see, and the skip restores the rest exactly."""
    sit = randomize(create_model("SiT-tiny/4", schedule="1:4x4", **KW)).eval()
    v_mode = adapt(sit, "0.5:8x8,1:4x4").eval()
    skip = adapt(sit, "0.5:8x8,1:4x4", coarse_output="noise_skip").eval()
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([0.1, 0.3, 0.45]), torch.tensor([1, 2, 3])
    inv = (1 / (1 - t)).view(-1, 1, 1, 1)
    raw = v_mode(x, t, y)
    assert torch.allclose(skip(x, t, y), raw - (x - block_mean(x, (2, 2))) * inv, atol=1e-6)
    # the copied projections only see the block means: raw output is unchanged by within-block noise
    wiggle = x - block_mean(x, (2, 2))
    assert torch.allclose(v_mode(x - wiggle, t, y), raw, atol=1e-5)
    assert skip.config.coarse_output == "noise_skip"


def test_snr_time_and_scale():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(snr_time(t, 1.0), t) and torch.equal(snr_scale(t, 1.0), torch.ones(4))
    assert pooling_ratio((2, 2)) == 2.0 and pooling_ratio((1, 2)) == 2 ** 0.5
    # 2x2 pooling halves the noise std: t = 1/3 has SNR (1/3)/(2/3) = 1/2 per pixel and 1 pooled, i.e. s = 1/2
    assert torch.allclose(snr_time(torch.tensor(1 / 3), 2.0), torch.tensor(0.5))
    # k * pooled x_t = s * x1 + (1 - s) * eps': signal scale s, noise std (1 - s) after pooling
    s, k = snr_time(t, 2.0), snr_scale(t, 2.0)
    assert torch.allclose(k * t, s) and torch.allclose(k * (1 - t) / 2, 1 - s)


def test_snr_output_is_exact_for_the_exact_pooled_velocity():
    """Point-mass data c (block-constant): feeding the exact s-frame velocity of the pooled data gives the exact
    t-frame velocity (c - x_t) / (1 - t) at full resolution."""
    g = torch.Generator().manual_seed(0)
    c = block_mean(torch.randn(4, 2, 8, 8, generator=g), (2, 2))
    x = torch.randn(4, 2, 8, 8, generator=g)
    t = torch.tensor([0.0, 0.2, 0.4, 0.5])
    s, k = snr_time(t, 2.0).view(-1, 1, 1, 1), snr_scale(t, 2.0).view(-1, 1, 1, 1)
    z = k * block_mean(x, (2, 2))  # the pooled sample at time s, broadcast back
    f = (c - z) / (1 - s)  # exact velocity of a point mass in the s frame
    v = to_velocity(f, x, t, (2, 2), "snr")
    assert torch.allclose(v, (c - x) / (1 - t).view(-1, 1, 1, 1), atol=1e-5)


def test_snr_coarse_stage_runs_the_backbone_at_the_pooled_noise_level():
    """Adapted with `snr`: coarse stage = the v-adapted model fed k x_t at time s, its output mapped back."""
    sit = randomize(create_model("SiT-tiny/4", schedule="1:4x4", **KW)).eval()
    v_mode = adapt(sit, "0.5:8x8,1:4x4").eval()
    snr = adapt(sit, "0.5:8x8,1:4x4", coarse_output="snr").eval()
    x, t, y = torch.randn(3, 1, 16, 16), torch.tensor([0.1, 0.3, 0.45]), torch.tensor([1, 2, 3])
    s, k = snr_time(t, 2.0), snr_scale(t, 2.0).view(-1, 1, 1, 1)
    f = v_mode(k * x, s, y, stage=0)
    assert torch.allclose(snr(x, t, y), to_velocity(f, x, t, (2, 2), "snr"), atol=1e-5)
    # the fine stage is the source's exactly, in a mixed batch too
    tm = torch.tensor([0.3, 0.7, 0.9])
    assert torch.equal(snr(x, tm, y)[1:], sit(x, tm, y)[1:])
    assert torch.allclose(snr(x, tm, y)[:1], snr(x[:1], tm[:1], y[:1]), atol=1e-5)
