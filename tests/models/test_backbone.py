import pytest
import torch

from ppflow.models import create_model
from ppflow.models.layers import sincos_2d
from tests.conftest import randomize


def tiny(name="PPF-tiny-3", **kw):
    kw = {"in_channels": 4, "num_classes": 10, "input_size": 16, **kw}
    return randomize(create_model(name, **kw)).eval()


@pytest.mark.parametrize("name, schedule", [("PPF-tiny-2", None), ("PPF-tiny-3", None),
                                            ("PPF-tiny", "0.3:8x8,0.6:4x4,0.8:2x4,1:2x2")])
def test_mixed_stage_batch_equals_per_sample(name, schedule):
    kw = {"schedule": schedule} if schedule else {}
    model = tiny(name, **kw)
    x = torch.randn(7, 4, 16, 16)
    t = torch.tensor([0.9, 0.1, 0.5, 0.6, 0.75, 0.2, 0.95])
    y = torch.tensor([0, 1, 2, 3, 10, 5, 6])  # 10 = null class
    out = model(x, t, y)
    assert out.shape == (7, 4, 16, 16)
    per = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(out, per, atol=1e-5, rtol=1e-5)


def test_samples_do_not_attend_to_each_other():
    model = tiny()
    x = torch.randn(4, 4, 16, 16)
    t = torch.tensor([0.2, 0.2, 0.9, 0.6])
    base = model(x, t)
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])  # perturb one sample
    out = model(x2, t)
    torch.testing.assert_close(out[[0, 2, 3]], base[[0, 2, 3]])
    assert not torch.allclose(out[1], base[1])


def test_stage_override_and_full_output():
    model = tiny("PPF-tiny-2")
    x = torch.randn(2, 4, 16, 16)
    t = torch.full((2,), 0.5)
    assert not torch.allclose(model(x, t, stage=1), model(x, t))  # 0.5 is stage 0 by default
    torch.testing.assert_close(model(x, t, stage=0), model(x, t))
    assert model(x, t, full_output=True).shape == (2, 8, 16, 16)


def test_non_square_latent_and_scalar_t():
    model = tiny("PPF-tiny-3", input_size=(8, 16))
    out = model(torch.randn(2, 4, 8, 16), 0.3)
    assert out.shape == (2, 4, 8, 16)


def test_unconditional_and_one_stage_baseline():
    model = tiny("SiT-tiny/2", num_classes=0)
    assert model.schedule.num_stages == 1 and model.level_embedder is None
    assert model(torch.randn(2, 4, 16, 16), torch.rand(2)).shape == (2, 4, 16, 16)


def test_pos_embed_coarse_token_sits_on_its_fine_patches():
    model = tiny("PPF-tiny-3")
    fine = model.pos_embed(2, 16, 16, torch.device("cpu")).view(8, 8, -1)
    coarse = model.pos_embed(0, 16, 16, torch.device("cpu")).view(4, 4, -1)
    mid = model.pos_embed(1, 16, 16, torch.device("cpu")).view(8, 4, -1)  # 2 rows x 4 cols patches
    torch.testing.assert_close(coarse, fine[::2, ::2])
    torch.testing.assert_close(mid, fine[:, ::2])


def test_sincos_layout_first_half_is_column():
    emb = sincos_2d(8, torch.arange(2), torch.arange(3))  # grid 2 rows x 3 cols
    # token (row 1, col 2): first 4 channels encode column 2, the rest row 1
    tok = emb[1 * 3 + 2]
    assert tok[:2].tolist() == pytest.approx([torch.sin(torch.tensor(2.0)).item(), torch.sin(torch.tensor(0.02)).item()], abs=1e-6)
    assert tok[4:6].tolist() == pytest.approx([torch.sin(torch.tensor(1.0)).item(), torch.sin(torch.tensor(0.01)).item()], abs=1e-6)


def test_wrong_channels_is_clear():
    with pytest.raises(ValueError, match="expects 4"):
        tiny()(torch.randn(1, 3, 16, 16), torch.rand(1))


def test_names_and_sizes():
    m = create_model("SiT-S/2", num_classes=10, input_size=8)
    assert (len(m.blocks), m.config.hidden_size, m.config.num_heads) == (12, 384, 6)
    assert create_model("PPF-tiny-3", input_size=8).schedule.num_stages == 3
    with pytest.raises(ValueError, match="unknown model name"):
        create_model("PPF-Q-2")


def test_dit_xl2_parameter_count():
    from ppflow.models import create_config
    from ppflow.models.backbone import PPFlowTransformer

    with torch.device("meta"):
        m = PPFlowTransformer(create_config("DiT-XL/2"))
    # DiT's published count 675,129,632 includes its frozen pos_embed (256 x 1152), which we compute instead
    assert m.num_parameters() + 256 * 1152 == 675_129_632


@pytest.mark.parametrize("schedule", ["ppf3", "0.5:2x2,1:2x2", "0.4:4x8,1:2x2"])
def test_pooled_stage_init_makes_a_coarse_token_the_fine_embedding_of_its_pooled_patch(schedule):
    """stage_init='pooled' from scratch: every coarse patchify starts as the finest one applied to the block
    average, so the backbone sees one token dialect at step 0 (the same-patch control starts as one model)."""
    torch.manual_seed(0)
    model = create_model("PPF-tiny", schedule=schedule, in_channels=4, num_classes=10, input_size=16,
                         stage_init="pooled")
    x = torch.randn(2, 4, 16, 16)
    fine = model.schedule.stages[-1].patch
    for s, st in enumerate(model.schedule.stages[:-1]):
        fh, fw = st.patch[0] // fine[0], st.patch[1] // fine[1]
        pooled = torch.nn.functional.avg_pool2d(x, (fh, fw))  # (2, 4, 16/fh, 16/fw)
        fine_emb = torch.nn.functional.conv2d(
            pooled, model.x_embedder[-1].proj.weight.view(-1, 4, *fine), model.x_embedder[-1].proj.bias, stride=fine)
        torch.testing.assert_close(model.x_embedder[s](x), fine_emb.flatten(2).transpose(1, 2), atol=1e-5, rtol=0)
    independent = create_model("PPF-tiny", schedule=schedule, in_channels=4, num_classes=10, input_size=16)
    assert not torch.allclose(independent.x_embedder[0].proj.weight[:, :4], independent.x_embedder[-1].proj.weight[:, :4])


def test_stage_init_errors_are_clear():
    with pytest.raises(ValueError, match="stage_init"):
        create_model("PPF-tiny-2", stage_init="shared")
