"""FLOPs of the hook on meta-device models: a coarse stage is the model at the coarse grid."""

import pytest

from ppflow.integrations.diffusers import flops


@pytest.fixture
def tiny_specs(monkeypatch):
    specs = {
        "flux": flops.FullSize("tiny FLUX", "flux", dict(  # noqa: C408 (configs read as keyword arguments)
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6)), 8, ((128, 128),), ("ppf2",)),
        "wan": flops.FullSize("tiny Wan", "wan", dict(  # noqa: C408 (configs read as keyword arguments)
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=16, ffn_dim=32, num_layers=1), 8, ((9, 64, 64),), ("ppf3-video",)),
        "flux2": flops.FullSize("tiny FLUX.2", "flux2", {
            "patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
            "num_attention_heads": 2, "joint_attention_dim": 32, "timestep_guidance_channels": 32,
            "axes_dims_rope": (4, 4, 4, 4)}, 8, ((128, 128),), ("ppf2",)),
        "qwen": flops.FullSize("tiny Qwen", "qwen", {
            "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 1, "attention_head_dim": 16,
            "num_attention_heads": 2, "joint_attention_dim": 16, "axes_dims_rope": (4, 6, 6)}, 8, ((128, 128),),
            ("ppf2",)),
        "sd3": flops.FullSize("tiny SD3", "sd3", {
            "sample_size": 16, "patch_size": 2, "in_channels": 4, "num_layers": 1, "attention_head_dim": 8,
            "num_attention_heads": 2, "joint_attention_dim": 16, "caption_projection_dim": 16,
            "pooled_projection_dim": 16, "out_channels": 4, "pos_embed_max_size": 32}, 8, ((128, 128),), ("ppf2",)),
    }
    monkeypatch.setattr(flops, "FULL_SIZES", specs)
    return specs


def test_stage_flops_and_bounds_on_meta_models(tiny_specs):
    rows = {r["family"]: r for r in flops.full_size_table(("flux", "wan"))}
    fl = rows["flux"]
    coarse, fine = fl["stage_flops"]
    assert 0 < coarse < fine / 2  # a quarter of the image tokens (the text tokens stay)
    # ppf2 spends half of the steps at the coarse grid: bound = fine / (0.5 coarse + 0.5 fine)
    assert fl["flops_bound"] == pytest.approx(fine / (0.5 * coarse + 0.5 * fine))
    assert 1 < fl["flops_bound"] < 2 and fl["flops_bound_text_free"] >= fl["flops_bound"]
    wan = rows["wan"]  # 9 frames -> 3 latent frames, padded to 4 for the (2, 2, 2) stage
    c8, c4, full = wan["stage_flops"]
    assert c8 < c4 < full and wan["flops_bound"] == pytest.approx(full / (0.3 * c8 + 0.3 * c4 + 0.4 * full))
    assert "| tiny Wan | 9x64x64 | ppf3-video |" in flops.format_table(list(rows.values()))


def test_every_family_counts_on_the_meta_device(tiny_specs):
    rows = flops.full_size_table(("flux2", "qwen", "sd3"))
    assert all("error" not in r and 1.2 < r["flops_bound"] < 2 for r in rows), rows


def test_the_command_names_unknown_models(tiny_specs, capsys):
    from ppflow.cli import main

    assert main(["flops", "--diffusers", "flux"]) == 0 and "tiny FLUX" in capsys.readouterr().out
    assert main(["flops", "--diffusers", "sd9"]) != 0
    assert "unknown model 'sd9'" in capsys.readouterr().err
