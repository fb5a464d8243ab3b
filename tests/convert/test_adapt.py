"""Adaptation of a one-stage model to PPFlow: the official average/copy init, tensor for tensor,
and the properties it guarantees at init."""

import pytest
import torch
import torch.nn.functional as F

import ppflow
from ppflow.convert.formats import CheckpointError, export_state
from ppflow.models.patchify import patchify
from tests.conftest import randomize
from tests.convert import reference as ref


@pytest.fixture
def sit_file(tmp_path):
    sd = ref.random_state(1)
    path = tmp_path / "SiT-tiny-2.pt"
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("stages", [2, 3])
def test_adapt_equals_official_initialize_from(sit_file, stages):
    path, sd = sit_file
    model = ppflow.adapt(path, f"ppf{stages}")
    assert model.config.name == f"PPF-tiny-{stages}" and model.schedule.num_stages == stages
    ours = export_state(model, "ppflow-official")
    official = ref.initialize_from(sd, stages)  # its level embedding set to zero, our start
    assert sorted(ours) == sorted(official)
    for k in official:
        if k.startswith("pos_embed"):
            torch.testing.assert_close(ours[k], official[k], atol=1e-6, rtol=0)
        else:
            assert torch.equal(ours[k], official[k]), k


def test_finest_stage_reproduces_the_source_exactly(sit_file):
    path, _ = sit_file
    src = ppflow.load_model(path).eval()
    model = ppflow.adapt(src, "ppf3").eval()
    assert torch.count_nonzero(model.level_embedder.weight) == 0
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([0.1, 0.6, 0.9]), torch.tensor([1, 10, 4])
    with torch.no_grad():
        assert torch.equal(model(x, t, y, stage=2, full_output=True), src(x, t, y, full_output=True))
        assert not torch.allclose(model(x, t, y, stage=0), src(x, t, y))  # the coarse stages do differ


@pytest.mark.parametrize("schedule", ["ppf3", "0.5:8x8,1:2x2"])
def test_coarse_tokens_average_the_fine_tokens(schedule):
    src = randomize(ppflow.create_model("SiT-tiny/2", num_classes=10, input_size=16))
    model = ppflow.adapt(src, schedule)
    fine = model.x_embedder[-1]
    x = torch.randn(2, 4, 16, 16)
    for s in range(model.schedule.num_stages - 1):
        (ph, pw), (fh, fw) = model.schedule.stages[s].patch, model.schedule.factors(s)
        # an input constant within each coarse patch: coarse token = mean of its fine tokens (+ own position)
        const = x[:, :, ::ph, ::pw].repeat_interleave(ph, 2).repeat_interleave(pw, 3)  # (N, C, H, W)
        fine_tok = fine(const).reshape(2, 16 // 2, 16 // 2, -1)  # (N, h, w, D) on the 2x2 grid
        mean = fine_tok.unflatten(1, (16 // ph, ph // 2)).unflatten(3, (16 // pw, pw // 2)).mean((2, 4))
        coarse = model.x_embedder[s](const) + model.pos_embed(s, 16, 16, x.device)
        torch.testing.assert_close(coarse, mean.flatten(1, 2) + model.pos_embed(s, 16, 16, x.device))
        # any input: the coarse token is the source patch embed of the (fh, fw)-average-pooled patch
        pooled = F.avg_pool2d(x, (fh, fw))  # (N, C, H/fh, W/fw)
        expect = src.x_embedder[0].proj(patchify(pooled, 2, 2))
        torch.testing.assert_close(model.x_embedder[s](x), expect)


def test_coarse_output_repeats_the_fine_output_over_each_block():
    src = randomize(ppflow.create_model("SiT-tiny/2", num_classes=10, input_size=16))
    model = ppflow.adapt(src, "ppf3")
    for s in range(2):
        (ph, pw), (fh, fw) = model.schedule.stages[s].patch, model.schedule.factors(s)
        h = torch.randn(2, (16 // ph) * (16 // pw), 64)  # tokens of stage s
        out = model.final_layer.unpatchify[s](h, 16, 16)  # (N, O, 16, 16)
        low = src.final_layer.unpatchify[0](h, 16 // fh, 16 // fw)  # the source head on the same tokens
        assert torch.equal(out, low.repeat_interleave(fh, 2).repeat_interleave(fw, 3))


def test_dit_source_and_level_init_option(tmp_path):
    path = tmp_path / "DiT-tiny-2.pt"
    torch.save(ref.random_state(1), path)
    model = ppflow.adapt(path, "ppf2", level_init_std=0.02, generator=torch.Generator().manual_seed(0))
    assert model.config.time_map == "dit" and model.config.level_init_std == 0.02
    assert 0.01 < model.level_embedder.weight.std().item() < 0.03
    model.save_pretrained(tmp_path / "out")
    assert ppflow.load_model(tmp_path / "out").config == model.config


def test_adapt_errors(sit_file):
    path, _ = sit_file
    ppf = ppflow.adapt(path, "ppf2")
    with pytest.raises(CheckpointError, match="already has 2 stages"):
        ppflow.adapt(ppf, "ppf3")
    with pytest.raises(CheckpointError, match="base patch"):
        ppflow.adapt(path, "0.5:8x8,1:4x4")
    with pytest.raises(ValueError, match="already a model"):
        ppflow.adapt(ppf, "ppf2", num_heads=4)


def _calibration_loss(model, x, y, stage, lo=0.0, hi=0.5, seed=5):
    from ppflow.flow.loss import flow_matching_loss

    g = torch.Generator().manual_seed(seed)
    t = lo + (hi - lo) * torch.rand(len(x), generator=g)
    with torch.no_grad():
        return float(flow_matching_loss(model, x, t, stage=torch.full((len(x),), stage), y=y, generator=g).loss)


@pytest.mark.parametrize("mode", ["v", "noise_skip"])
def test_lstsq_init_refits_only_the_coarse_readout_and_lowers_its_loss(mode):
    from ppflow.models import create_model

    kw = {"in_channels": 1, "num_classes": 10, "input_size": 16, "learn_sigma": True}
    sit = randomize(create_model("SiT-tiny/4", schedule="1:4x4", **kw)).eval()
    x = torch.randn(512, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5
    y = torch.arange(512) % 10
    pooled = ppflow.adapt(sit, "0.5:8x8,1:4x4", coarse_output=mode).eval()
    fitted = ppflow.adapt(sit, "0.5:8x8,1:4x4", coarse_output=mode, init="lstsq", calibration=(x, y),
                          generator=torch.Generator().manual_seed(0)).eval()
    a, b = pooled.state_dict(), fitted.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {"final_layer.unpatchify.0.linear.weight", "final_layer.unpatchify.0.linear.bias"}
    rows = b["final_layer.unpatchify.0.linear.weight"].shape[0]
    sigma_rows = torch.arange(rows).reshape(-1, 2)[:, 1]  # learn_sigma rows keep their copy init
    assert torch.equal(a["final_layer.unpatchify.0.linear.weight"][sigma_rows],
                       b["final_layer.unpatchify.0.linear.weight"][sigma_rows])
    held_out = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5
    assert _calibration_loss(fitted, held_out, y[:256], 0) < 0.9 * _calibration_loss(pooled, held_out, y[:256], 0)
    fine = _calibration_loss(fitted, held_out, y[:256], 1, 0.5, 1.0)
    assert fine == _calibration_loss(sit, held_out, y[:256], 0, 0.5, 1.0)  # the finest stage is the source's


def test_lstsq_needs_calibration_data():
    from ppflow.models import create_model

    sit = create_model("SiT-tiny/4", schedule="1:4x4", in_channels=1, num_classes=10, input_size=16)
    with pytest.raises(ValueError, match="calibration"):
        ppflow.adapt(sit, "0.5:8x8,1:4x4", init="lstsq")
    with pytest.raises(ValueError, match="not one of"):
        ppflow.adapt(sit, "0.5:8x8,1:4x4", init="tiled")


def test_adapt_cli_lstsq_and_coarse_output(tmp_path, capsys):
    from ppflow.cli import main
    from ppflow.models import create_model

    src = tmp_path / "sit"
    randomize(create_model("SiT-tiny/4", schedule="1:4x4", in_channels=1, num_classes=10, input_size=16,
                           learn_sigma=False)).save_pretrained(src)
    out = tmp_path / "ppf"
    rc = main(["adapt", "--from", str(src), "--schedule", "0.5:8x8,1:4x4", "--out", str(out), "--init", "lstsq",
               "--calib-data", "digits", "--calib-num", "64", "--coarse-output", "noise_skip"])
    assert rc == 0
    assert ppflow.load_model(out).config.coarse_output == "noise_skip"
    rc = main(["adapt", "--from", str(src), "--schedule", "0.5:8x8,1:4x4", "--out", str(tmp_path / "x"),
               "--init", "lstsq"])
    assert rc == 2 and "--calib-data" in capsys.readouterr().err


def test_same_patch_adaptation_copies_every_stage_and_saves(sit_file, tmp_path):
    """Two stages with the base patch (the same-patch control): both stages are the source, in separate tensors."""
    path, _ = sit_file
    src = ppflow.load_model(path).eval()
    model = ppflow.adapt(src, "0.5:2x2,1:2x2").eval()
    x, t, y = torch.randn(2, 4, 32, 32), torch.tensor([0.2, 0.8]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(model(x, t, y, stage=0), src(x, t, y)) and torch.equal(model(x, t, y, stage=1), src(x, t, y))
    ppflow.load_model(model.save_pretrained(tmp_path / "same"))  # no shared storage between the stages


def test_a_preset_schedule_is_relative_to_the_source_patch():
    sit = ppflow.create_model("SiT-tiny/4", input_size=32, num_classes=10)
    assert ppflow.adapt(sit, "ppf2").schedule.to_string() == "0.5:8x8,1:4x4"
    assert ppflow.adapt(sit, "ppf3").schedule.to_string() == "0.5:8x8,0.75:4x8,1:4x4"
    with pytest.raises(CheckpointError, match="base patch"):
        ppflow.adapt(sit, "0.5:4x4,1:2x2")  # an explicit schedule is taken as written
