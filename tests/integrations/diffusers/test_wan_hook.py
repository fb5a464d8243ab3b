"""The PPFlow hook on an unmodified WanTransformer3DModel: spatio-temporal stages in the user's WanPipeline."""

import copy

import numpy as np
import pytest
import torch

from ppflow.integrations.diffusers import StagePlan, apply
from ppflow.integrations.diffusers.wan import depth_to_space, space_to_depth

CALL = {"prompt": "a shirt moving left", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 4,
        "max_sequence_length": 8, "output_type": "np"}  # latent 2 frames x 4x4 (the pipeline assumes 8x spatial)


def tiny_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
                                  rope_max_seq_len=32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def wan_inputs(batch=2, frames=4, size=8, timestep=300.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(batch, 4, frames, size, size, generator=g),
            "timestep": torch.full((batch,), timestep), "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
            "return_dict": False}


@pytest.fixture(scope="module")
def wan_parts():
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["a", "shirt", "bag", "moving", "left", "right", "up", "down"]
    tok = T5TokenizerFast(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in words],
                          extra_ids=0, model_max_length=16)
    torch.manual_seed(0)
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                       relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                       decoder_start_token_id=0)).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {"tokenizer": tok, "text_encoder": text, "vae": vae, "scheduler": sched, "transformer": tiny_wan()}


def _pipe(parts):
    from diffusers import WanPipeline

    pipe = WanPipeline(**{**parts, "transformer": copy.deepcopy(parts["transformer"]),
                          "scheduler": copy.deepcopy(parts["scheduler"])})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_space_to_depth_round_trip_and_layout():
    x = torch.randn(2, 3, 4, 6, 8)
    y = space_to_depth(x, (2, 3, 2))
    assert y.shape == (2, 36, 2, 2, 4) and torch.equal(depth_to_space(y, (2, 3, 2)), x)
    assert torch.equal(y[:, 12 + 1 * 6 + 2 * 2 + 1, 1, 0, 3], x[:, 1, 2 + 1, 0 + 2, 6 + 1])  # c=1, (kt, kh, kw)=(1,2,1)


def test_video_schedules_parse_to_factors_of_the_model_patch():
    plan = StagePlan.parse("ppf3-video", (1, 2, 2))
    assert plan.factors == ((2, 2, 2), (1, 2, 2), (1, 1, 1)) and plan.ends == (0.3, 0.6, 1.0)
    assert StagePlan.parse("0.5:2x4x4,1:1x2x2", (1, 2, 2)).factors == ((2, 2, 2), (1, 1, 1))
    assert StagePlan.parse("ppf2", (1, 2, 2)).factors == ((1, 2, 2), (1, 1, 1))


@torch.no_grad()
def test_one_stage_and_fine_stage_are_wan_bit_for_bit(wan_parts):
    want = _pipe(wan_parts)(**CALL, generator=torch.Generator().manual_seed(0)).frames
    pipe = _pipe(wan_parts)
    apply(pipe, "1:1x2x2")
    assert np.array_equal(pipe(**CALL, generator=torch.Generator().manual_seed(0)).frames, want)
    model = tiny_wan()
    apply(model, "ppf3-video")
    assert torch.equal(model(**wan_inputs(timestep=200.0))[0], tiny_wan()(**wan_inputs(timestep=200.0))[0])


@torch.no_grad()
def test_coarse_stages_run_an_eighth_and_a_quarter_of_the_tokens(wan_parts):
    pipe = _pipe(wan_parts)
    adapter = apply(pipe, "ppf3-video", boundaries="sigma")
    seen = []
    h = pipe.transformer.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    out = pipe(**{**CALL, "num_inference_steps": 8}, generator=torch.Generator().manual_seed(0)).frames
    h.remove()
    assert np.isfinite(out).all() and set(seen) == {1, 2, 8}  # 2x4x4 latent / (1,2,2) patches = 8 fine tokens
    assert [seen.count(n) for n in (1, 2, 8)] == [adapter.counts[0], adapter.counts[1], adapter.counts[2]]


@torch.no_grad()
def test_coarse_patch_embedding_starts_as_the_fine_one_on_the_block_averaged_latent():
    model = tiny_wan()
    adapter = apply(model, "0.5:2x4x4,1:1x2x2")
    x = torch.randn(1, 4, 4, 8, 8)
    coarse = adapter.embed["0"](space_to_depth(x, (2, 2, 2)))
    pooled = torch.nn.functional.avg_pool3d(x, (2, 2, 2))
    torch.testing.assert_close(coarse, model.patch_embedding(pooled), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_latent_the_coarse_patches_do_not_divide_is_padded_and_cropped():
    model = tiny_wan()
    apply(model, "0.5:2x4x4,1:1x2x2")
    seen = []
    h = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    out = model(**wan_inputs(frames=3, timestep=900.0))[0]
    h.remove()
    assert out.shape == (2, 4, 3, 8, 8) and seen == [2 * 2 * 2]  # 3 frames padded to 4, grouped by 2: 2x2x2 tokens
    x = wan_inputs(frames=4, timestep=900.0)
    x["hidden_states"][:, :, 3] = x["hidden_states"][:, :, 2]  # the padded input, given explicitly
    padded = model(**x)[0]
    three = model(**{**x, "hidden_states": x["hidden_states"][:, :, :3]})[0]
    torch.testing.assert_close(three, padded[:, :, :3], rtol=0, atol=1e-6)
    out = model(**wan_inputs(frames=4, size=6, timestep=900.0))[0]  # 6 rows: 3 tokens, padded to 8 rows
    assert out.shape == (2, 4, 4, 6, 6)


def test_noise_skip_gives_the_within_block_target_exactly_for_block_constant_data():
    from ppflow.integrations.diffusers.wan import depth_noise_skip

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 2, 4, 4, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    noise = torch.randn(x0.shape, generator=g)  # (2, 4, 4, 8, 8); x0 constant on 2x2x2 blocks
    sigma = torch.tensor([0.7, 0.9])
    x = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    target = space_to_depth(noise - x0, (2, 2, 2))  # (2, 32, 2, 4, 4)
    x_in = space_to_depth(x, (2, 2, 2))
    n = 8
    mean = target.view(2, 4, n, 2, 4, 4).mean(2, keepdim=True).expand(-1, -1, n, -1, -1, -1).reshape(target.shape)
    torch.testing.assert_close(depth_noise_skip(mean, x_in, sigma, n), target, rtol=1e-5, atol=1e-5)
    model = tiny_wan()
    apply(model, "0.5:2x4x4,1:1x2x2", coarse_output="noise_skip")
    with torch.no_grad():
        assert torch.isfinite(model(**wan_inputs(timestep=900.0))[0]).all()


@torch.no_grad()
def test_wan22_two_experts_each_get_the_schedule_and_remove_takes_both_off(wan_parts, tmp_path):
    from diffusers import WanPipeline

    from ppflow.integrations.diffusers import adapter_of, remove

    def pipe22():
        p = WanPipeline(**{**wan_parts, "transformer": copy.deepcopy(wan_parts["transformer"]),
                           "scheduler": copy.deepcopy(wan_parts["scheduler"])}, transformer_2=tiny_wan(seed=3),
                        boundary_ratio=0.7)
        p.set_progress_bar_config(disable=True)
        return p

    call = {**CALL, "num_inference_steps": 8}
    want = pipe22()(**call, generator=torch.Generator().manual_seed(0)).frames
    pipe = pipe22()
    high = apply(pipe, "0.6:1x4x4,1:1x2x2", boundaries="sigma")
    low = adapter_of(pipe.transformer_2)
    assert low is not None and low is not high
    seen = {"high": [], "low": []}
    hs = [pipe.transformer.blocks[0].register_forward_pre_hook(lambda m, a: seen["high"].append(a[0].shape[1])),
          pipe.transformer_2.blocks[0].register_forward_pre_hook(lambda m, a: seen["low"].append(a[0].shape[1]))]
    pipe(**call, generator=torch.Generator().manual_seed(0))
    for h in hs:
        h.remove()
    assert 2 in seen["high"] and 2 in seen["low"] and 8 in seen["low"]  # sigma 0.7 .. 0.4 coarse in the low expert too
    remove(pipe)
    assert adapter_of(pipe.transformer) is None and adapter_of(pipe.transformer_2) is None
    assert np.array_equal(pipe(**call, generator=torch.Generator().manual_seed(0)).frames, want)
    low.save_pretrained(tmp_path / "low")  # a saved adapter goes on the expert it was made for
    fresh = pipe22()
    apply(fresh, tmp_path / "low")
    assert adapter_of(fresh.transformer) is None and adapter_of(fresh.transformer_2) is not None


def test_centred_rope_tables_keep_factor_one_axes_and_put_coarse_tokens_at_the_centre_of_their_fine_ones():
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    from ppflow.integrations.diffusers.wan import centred_tables

    rope = tiny_wan().rope
    cos, sin = centred_tables(rope, (1, 1, 1))
    assert torch.equal(cos, rope.freqs_cos) and torch.equal(sin, rope.freqs_sin)
    cos, sin = centred_tables(rope, (1, 2, 4))
    t, h = rope.t_dim, rope.h_dim
    assert torch.equal(cos[:, :t], rope.freqs_cos[:, :t])  # time factor 1: the model's own rows
    for lo, dim, f in ((t, h, 2), (t + h, rope.w_dim, 4)):
        pos = torch.arange(len(cos), dtype=torch.float64) * f + (f - 1) / 2  # 0.5, 2.5, ... / 1.5, 5.5, ...
        want = get_1d_rotary_pos_embed(dim, pos, 10000.0, use_real=True, freqs_dtype=torch.float64)
        torch.testing.assert_close(cos[:, lo: lo + dim], want[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(sin[:, lo: lo + dim], want[1], atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("positions", ["centre", "grid"])
def test_a_coarse_forward_gets_the_rope_of_its_positions_and_the_fine_stage_the_models_own(positions):
    from ppflow.integrations.diffusers.wan import centred_tables

    model = tiny_wan()
    adapter = apply(model, "0.5:2x4x4,1:1x2x2", boundaries="sigma", positions=positions)  # factors (2, 2, 2)
    assert adapter.config.positions == positions
    seen = []
    model.rope.register_forward_hook(lambda m, a, out: seen.append((out[0].clone(), m.freqs_cos.clone())))
    model(**wan_inputs(timestep=900.0))  # coarse: a 4x8x8 latent in 2x4x4 patches = 8 tokens
    model(**wan_inputs(timestep=200.0))  # fine
    own = tiny_wan().rope
    (coarse, table), (fine, after) = seen
    assert torch.equal(after, own.freqs_cos) and torch.equal(fine, own(wan_inputs()["hidden_states"])[0])
    want = centred_tables(own, (2, 2, 2))[0] if positions == "centre" else own.freqs_cos
    assert torch.equal(table, want) and coarse.shape[1] == 8


def test_wan_adapter_folders_saved_before_positions_existed_keep_the_grid_rule(tmp_path):
    import json

    from ppflow.integrations.diffusers.adapter import read_config

    model = tiny_wan()
    adapter = apply(model, "0.5:2x2x2,1:1x2x2")
    assert adapter.config.positions == "centre"  # the default for new adapters
    adapter.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "ppflow_adapter.json").read_text())
    del cfg["positions"]
    (tmp_path / "a" / "ppflow_adapter.json").write_text(json.dumps(cfg))
    assert read_config(tmp_path / "a").positions == "grid"
    with pytest.raises(ValueError, match="positions 'middle' is not available for wan"):
        apply(tiny_wan(), "0.5:2x2x2,1:1x2x2", positions="middle")
