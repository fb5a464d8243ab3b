import pytest
import torch

from ppflow.models import create_model
from ppflow.models.flops import evaluation_flops
from ppflow.sampling import ForwardCounter, doubled_cfg_velocity, guided_velocity, sample_model, stage_scales
from tests.conftest import randomize


def tiny(name="PPF-tiny-3", **kw):
    kw = {"in_channels": 4, "num_classes": 10, "input_size": 16, **kw}
    return randomize(create_model(name, **kw)).eval()


T = torch.tensor([0.1, 0.9, 0.6, 0.5, 0.75, 0.3, 0.95])  # stages 0, 2, 1, 0, 1, 0, 2
Y = torch.tensor([1, 2, 3, 4, 5, 6, 7])


def formula(model, x, t, y, scales, channels=None, stage=None):
    """Reference: per stage, uncond + s * (cond - uncond) on the guided channels, cond elsewhere."""
    cond = model(x, t, y, stage=stage)
    uncond = model(x, t, torch.full_like(y, model.null_label), stage=stage)
    st = model.schedule.stage_of(t) if stage is None else torch.as_tensor(stage).expand(len(t))
    s = torch.tensor(scales)[st].view(-1, 1, 1, 1)
    k = x.shape[1] if channels is None else channels
    out = cond.clone()
    out[:, :k] = uncond[:, :k] + s * (cond[:, :k] - uncond[:, :k])
    return out


@torch.no_grad()
@pytest.mark.parametrize("channels", [None, 3])
def test_stage_cfg_equals_formula_on_a_mixed_stage_batch(channels):
    model = tiny()
    x = torch.randn(7, 4, 16, 16)
    scales = [1.0, 3.0, 4.5]
    counter = ForwardCounter()
    v = guided_velocity(model, x, T, Y, scales, guidance_channels=channels, counter=counter)
    torch.testing.assert_close(v, formula(model, x, T, Y, scales, channels), atol=1e-5, rtol=1e-5)
    # stage 0 (3 samples) gets its conditional pass only; stages 1 and 2 (2 + 2) are doubled
    assert counter.rows == [3, 4, 4] and counter.calls == 1
    if channels == 3:
        torch.testing.assert_close(v[:, 3], model(x, T, Y)[:, 3], atol=1e-5, rtol=1e-5)  # channel 3 stays cond


@torch.no_grad()
def test_scale_one_skips_the_unconditional_pass():
    model = tiny("PPF-tiny-2")
    x = torch.randn(7, 4, 16, 16)
    counter = ForwardCounter()
    v = guided_velocity(model, x, T, Y, [1.0, 1.0], counter=counter)
    torch.testing.assert_close(v, model(x, T, Y))
    assert counter.rows == [3, 4]  # N forwards, no unconditional rows
    # same through a whole sampling run: CFG [1, 3] equals "uncond everywhere with scale 1 in stage 0"
    z = torch.randn(3, 4, 16, 16)
    y = torch.tensor([0, 5, 9])
    out = sample_model(model, z, y, cfg_scales=[1.0, 3.0], method="heun", steps=6, full_output=True)
    assert out.nfe == [6, 6] and out.forwards == [6 * 3, 2 * 6 * 3]  # heun: 2 evals per step, 3 steps per stage

    def reference(x, t, stage=None):
        return formula(model, x, t, y, [1.0, 3.0], stage=stage)

    from ppflow.sampling import sample

    ref = sample(reference, z, method="heun", steps=6, schedule=model.schedule)
    torch.testing.assert_close(out.x, ref, atol=1e-5, rtol=1e-5)
    paper, total = evaluation_flops(model.config, out.forwards, 16, 16)
    assert out.flops == {"paper": paper, "total": total}


@torch.no_grad()
def test_null_labels_and_unconditional_models_never_double():
    model = tiny("PPF-tiny-2")
    x = torch.randn(3, 4, 16, 16)
    t = torch.tensor([0.2, 0.7, 0.9])
    counter = ForwardCounter()
    y = torch.tensor([10, 10, 2])  # 10 = null: already unconditional
    guided_velocity(model, x, t, y, 3.0, counter=counter)
    assert counter.rows == [1, 3]
    uncond = tiny("PPF-tiny-2", num_classes=0)
    counter = ForwardCounter()
    torch.testing.assert_close(guided_velocity(uncond, x, t, None, 1.0, counter=counter), uncond(x, t))
    assert counter.rows == [1, 2]


def test_scale_list_must_match_stages():
    assert stage_scales([1, 3], 2) == [1.0, 3.0]
    assert stage_scales(1.5, 3) == [1.5] * 3 and stage_scales([2.0], 3) == [2.0] * 3
    with pytest.raises(ValueError, match="2 CFG scales .* 3 stages"):
        stage_scales([1, 3], 3)
    model = tiny()
    with pytest.raises(ValueError, match="one per stage"):
        sample_model(model, torch.randn(1, 4, 16, 16), torch.tensor([1]), cfg_scales=[1, 3], steps=3)
    with pytest.raises(ValueError, match="need class labels"):
        sample_model(model, torch.randn(1, 4, 16, 16), None, cfg_scales=3.0, steps=3)


@torch.no_grad()
def test_stage_override_applies_to_both_passes():
    model = tiny("PPF-tiny-2")
    x = torch.randn(2, 4, 16, 16)
    t = torch.full((2,), 0.5)  # the boundary: stage 0 unless overridden
    v = guided_velocity(model, x, t, Y[:2], [1.0, 3.0], stage=1)
    torch.testing.assert_close(v, formula(model, x, t, Y[:2], [1.0, 3.0], stage=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guided_velocity(model, x, t, Y[:2], [1.0, 3.0]), model(x, t, Y[:2]))


@torch.no_grad()
def test_doubled_batch_matches_split_cfg_when_guiding_all_channels():
    model = tiny("PPF-tiny-2")
    z = torch.randn(2, 4, 16, 16)
    y = torch.tensor([3, 4])
    x2 = torch.cat([z, z])
    y2 = torch.cat([y, torch.full_like(y, model.null_label)])
    t = torch.full((4,), 0.7)
    v2 = doubled_cfg_velocity(model, x2, t, y2, [1.0, 3.0])
    torch.testing.assert_close(v2[:2], v2[2:])
    torch.testing.assert_close(v2[:2], guided_velocity(model, z, t[:2], y, [1.0, 3.0]), atol=1e-5, rtol=1e-5)
    a = sample_model(model, z, y, [1.0, 3.0], method="euler", steps=4, grid="official", doubled_batch=True)
    b = sample_model(model, z, y, [1.0, 3.0], method="euler", steps=4, grid="official")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # with the 3-channel quirk the unconditional half drifts apart in channel 3, so the two differ
    a = sample_model(model, z, y, 3.0, method="euler", steps=4, grid="official", doubled_batch=True,
                     guidance_channels=3)
    b = sample_model(model, z, y, 3.0, method="euler", steps=4, grid="official", guidance_channels=3)
    assert not torch.allclose(a, b, atol=1e-4)


@torch.no_grad()
def test_official_sampler_reproduction():
    """grid='official' + doubled_batch + guidance_channels=3 is SiT's loop: odeint heun2 on a linspace,
    forward_with_cfg on (z, z) with labels (y, null), stage from each evaluation's own t."""
    from torchdiffeq import odeint

    model = tiny("PPF-tiny-2")
    z = torch.randn(2, 4, 16, 16)
    y = torch.tensor([3, 4])
    scales = torch.tensor([1.0, 3.0])

    def forward_with_cfg(x, t, yy):
        out = model(x, t, yy)
        eps, rest = out[:, :3], out[:, 3:]
        c, u = eps.chunk(2)
        s = scales[model.schedule.stage_of(t[:1])[0]]
        half = u + s * (c - u)
        return torch.cat([torch.cat([half, half]), rest], 1)

    x2 = torch.cat([z, z])
    y2 = torch.cat([y, torch.full_like(y, model.null_label)])
    ref = odeint(lambda t, x: forward_with_cfg(x, torch.ones(4) * t, y2), x2, torch.linspace(0, 1, 7),
                 method="heun2")[-1][:2]
    ours = sample_model(model, z, y, [1.0, 3.0], method="heun", steps=6, grid="official", doubled_batch=True,
                        guidance_channels=3)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
