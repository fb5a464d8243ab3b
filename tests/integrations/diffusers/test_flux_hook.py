"""The PPFlow hook on an unmodified FluxTransformer2DModel inside the user's own FluxPipeline."""

import copy

import numpy as np
import pytest
import torch

from ppflow.flux.pipeline import PPFluxPipeline
from ppflow.flux.transformer import PPFluxTransformer
from ppflow.integrations.diffusers import adapter_of, apply, remove
from tests.flux.conftest import flux_inputs, tiny_flux

CALL = {"prompt": "a photo of a cat", "height": 32, "width": 32, "num_inference_steps": 5,
        "max_sequence_length": 8, "output_type": "np"}  # 16x16 latent: 8x8 packed tokens


def _flux_pipe(components, transformer=None):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**{**components, "transformer": transformer or copy.deepcopy(components["transformer"]),
                           "scheduler": copy.deepcopy(components["scheduler"])})  # apply patches the instance
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seed():
    return torch.Generator().manual_seed(0)


def _tokens_seen(model):
    """Image-token counts entering the first block, per forward."""
    seen = []
    h = model.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]), with_kwargs=True)
    return seen, h


@torch.no_grad()
def test_fine_stage_and_one_stage_schedule_are_flux_bit_for_bit(components):
    plain = _flux_pipe(components)
    want = plain(**CALL, generator=_seed()).images
    pipe = _flux_pipe(components)
    apply(pipe, "1:2x2")
    assert np.array_equal(pipe(**CALL, generator=_seed()).images, want)
    model = tiny_flux()
    ref = tiny_flux()(**flux_inputs(sigma=0.3))[0]
    apply(model, "ppf2")
    assert torch.equal(model(**flux_inputs(sigma=0.3))[0], ref)  # sigma 0.3 < boundary: the fine stage
    assert type(model).__name__ == "FluxTransformer2DModel" and adapter_of(model).counts == {1: 2}


@torch.no_grad()
def test_equals_the_ppflux_wrapper_and_runs_a_quarter_of_the_tokens_in_the_coarse_stage(components):
    old = PPFluxPipeline(**{**components, "transformer": PPFluxTransformer.from_flux(
        copy.deepcopy(components["transformer"]), "ppf2")})
    old.set_progress_bar_config(disable=True)
    want = old(**CALL, generator=_seed()).images
    pipe = _flux_pipe(components)
    adapter = apply(pipe, "ppf2")
    seen, h = _tokens_seen(pipe.transformer)
    got = pipe(**CALL, generator=_seed()).images
    h.remove()
    assert np.array_equal(got, want)  # same stages, same grid, same coarse projections
    assert seen == [16] * 3 + [64] * 2 and adapter.counts == {0: 3, 1: 2} == dict(enumerate(old.stage_stats.steps))


@torch.no_grad()
def test_mixed_stage_batch_equals_one_forward_per_sample():
    model = tiny_flux()
    apply(model, "ppf2")
    kw = flux_inputs(batch=2)
    kw["timestep"] = torch.tensor([0.9, 0.2])  # sample 0 coarse, sample 1 fine
    out = model(**kw)[0]
    for i, s in enumerate((0.9, 0.2)):
        one = {k: (v[i:i + 1] if k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "guidance")
                   else v) for k, v in flux_inputs(batch=2).items()}
        one["timestep"] = torch.tensor([s])
        torch.testing.assert_close(out[i:i + 1], model(**one)[0], rtol=0, atol=1e-6)


@torch.no_grad()
def test_remove_restores_the_plain_model_and_scheduler(components):
    pipe = _flux_pipe(components)
    want = _flux_pipe(components)(**CALL, generator=_seed()).images
    apply(pipe, "ppf2")
    remove(pipe)
    assert "set_timesteps" not in vars(pipe.scheduler) and not hasattr(pipe.transformer.x_embedder.forward, "func")
    assert np.array_equal(pipe(**CALL, generator=_seed()).images, want)


@torch.no_grad()
def test_any_position_ids_in_the_fine_stage():
    model, ref = tiny_flux(), tiny_flux()
    apply(model, "ppf2")
    kw = flux_inputs(sigma=0.2)
    ids = kw["img_ids"].clone()
    kw["img_ids"] = torch.cat([ids[:32], ids[:32] + torch.tensor([1.0, 0, 0])])  # Kontext-style: two frames
    torch.testing.assert_close(model(**kw)[0], ref(**kw)[0], rtol=0, atol=0)


@torch.no_grad()
def test_one_step_sampling_runs_in_the_stage_of_its_sigma(components):
    pipe = _flux_pipe(components)
    adapter = apply(pipe, "ppf2")
    out = pipe(**{**CALL, "num_inference_steps": 1}, generator=_seed()).images
    assert np.isfinite(out).all() and adapter.counts == {0: 1}


def test_save_pretrained_writes_plain_flux_files(components, tmp_path):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    pipe = _flux_pipe(components)
    apply(pipe, "ppf2", rank=2)
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True, max_shard_size="10MB")
    pipe.transformer.save_pretrained(tmp_path / "tr", variant="fp32")
    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "tr", variant="fp32")
    assert set(loaded.state_dict()) == set(components["transformer"].state_dict())
    again = FluxPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = _flux_pipe(components)(**CALL, generator=_seed()).images
        np.testing.assert_allclose(again(**CALL, generator=_seed()).images, want, rtol=0, atol=1e-5)


def test_a_pipeline_without_transformer_works_and_apply_says_why_not(components):
    pipe = _flux_pipe(components)
    text_only = type(pipe)(**{**pipe.components, "transformer": None})
    with torch.no_grad():
        embeds = text_only.encode_prompt("a photo of a cat", prompt_2=None, max_sequence_length=8)[0]
    assert embeds.shape[0] == 1
    with pytest.raises(ValueError, match="has no transformer"):
        apply(text_only, "ppf2")


def test_user_lora_loads_with_diffusers_keys_and_acts_in_both_stages(components):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model_state_dict

    tuned = tiny_flux()
    tuned.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    lora = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(tuned).items()}
    pipe = _flux_pipe(components, tiny_flux())
    apply(pipe, "ppf2", rank=2)
    pipe.load_lora_weights(lora)
    name = next(iter(pipe.transformer.peft_config))
    saved = get_peft_model_state_dict(pipe.transformer, adapter_name=name)  # what diffusers' scripts save
    assert set(saved) == {k[len("transformer."):] for k in lora}
    with torch.no_grad():
        kw = flux_inputs(sigma=0.2)
        torch.testing.assert_close(pipe.transformer(**kw)[0], tuned(**kw)[0], rtol=0, atol=0)  # fine: FLUX + LoRA
        plain = tiny_flux()
        apply(plain, "ppf2", rank=2)
        coarse = flux_inputs(sigma=0.9)
        assert not torch.allclose(pipe.transformer(**coarse)[0], plain(**coarse)[0])  # the user LoRA acts there too


@torch.no_grad()
def test_stage_gated_lora_acts_only_in_coarse_stages():
    model, ref = tiny_flux(), tiny_flux()
    adapter = apply(model, "ppf2", rank=4)
    assert adapter.lora and all(p.startswith(("transformer_blocks.", "single_transformer_blocks."))
                                for p, _ in adapter.lora_layers())
    before = model(**flux_inputs(sigma=0.9))[0]
    for m in adapter.lora.values():
        m.B.normal_()
    assert torch.equal(model(**flux_inputs(sigma=0.3))[0], ref(**flux_inputs(sigma=0.3))[0])
    assert not torch.allclose(model(**flux_inputs(sigma=0.9))[0], before)
    extra, share = adapter.size(model)
    assert extra == sum(p.numel() for p in adapter.parameters()) and 0 < share < 1


def test_adapter_folder_round_trip_base_check_and_damage(tmp_path):
    model = tiny_flux()
    adapter = apply(model, "ppf2", rank=2, coarse_output="noise_skip")
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.01 * torch.randn_like(p))
        want = model(**flux_inputs(sigma=0.9))[0]
    adapter.save_pretrained(tmp_path / "ad")
    other = tiny_flux()
    loaded = apply(other, tmp_path / "ad")
    assert loaded.config.coarse_output == "noise_skip" and loaded.config.rank == 2
    with torch.no_grad():
        torch.testing.assert_close(other(**flux_inputs(sigma=0.9))[0], want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="made for another base model"):
        apply(tiny_flux(seed=1), tmp_path / "ad")
    apply(tiny_flux(seed=1), tmp_path / "ad", force=True)
    weights = tmp_path / "ad" / "ppflow_adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="damaged"):
        apply(tiny_flux(), tmp_path / "ad")


def test_clear_errors():
    from ppflow.models.schedule import ScheduleError

    with pytest.raises(TypeError, match="no family for Linear"):
        apply(torch.nn.Linear(2, 2), "ppf2")
    with pytest.raises(ScheduleError, match="finest patch"):
        apply(tiny_flux(), "0.5:8x8,1:4x4")
    with pytest.raises(ScheduleError, match="video schedule"):
        apply(tiny_flux(), "ppf2-video")
    model = tiny_flux()
    apply(model, "ppf2")
    kw = flux_inputs(sigma=0.9, grid=(6, 5))
    with pytest.raises(ValueError, match="not divisible"):
        model(**kw)


@torch.no_grad()
def test_stage_cfg_skips_the_unconditional_pass_in_coarse_stages_as_the_ppflux_pipeline_does(components):
    """coarse_cfg=False in the user's FluxPipeline with true CFG = PPFluxPipeline(true_cfg_scale=[1, s])."""
    call = {**CALL, "negative_prompt": "a photo of a dog", "true_cfg_scale": 3.0}
    old = PPFluxPipeline(**{**components, "transformer": PPFluxTransformer.from_flux(
        copy.deepcopy(components["transformer"]), "ppf2")})
    old.set_progress_bar_config(disable=True)
    want = old(**{**call, "true_cfg_scale": [1.0, 3.0]}, generator=_seed()).images
    pipe = _flux_pipe(components)
    adapter = apply(pipe, "ppf2", coarse_cfg=False)
    seen, h = _tokens_seen(pipe.transformer)
    got = pipe(**call, generator=_seed()).images
    h.remove()
    assert np.array_equal(got, want)
    assert seen == [16] * 3 + [64] * 4 and adapter.counts == {0: 3, 1: 4} and adapter.skipped == 3
    full = _flux_pipe(components)
    apply(full, "ppf2")  # default: the pipeline's CFG in every stage
    assert not np.array_equal(full(**call, generator=_seed()).images, got)
    assert adapter_of(full).counts == {0: 6, 1: 4} and adapter_of(full).skipped == 0


@torch.no_grad()
def test_a_lora_loaded_after_apply_on_the_projections_leaves_the_coarse_stage_its_own_layers():
    """peft wraps proj_out / x_embedder in new modules: the part hooks move onto them, so a coarse stage runs its
    own projections and not the LoRA'd fine ones (was: a size mismatch in the coarse stage)."""
    from peft import LoraConfig

    model = tiny_flux()
    apply(model, "ppf2")
    coarse = flux_inputs(sigma=0.9)
    want = model(**coarse)[0]
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["x_embedder", "proj_out"],
                                 init_lora_weights=True))  # B = 0: the LoRA changes nothing yet
    assert hasattr(model.proj_out, "base_layer")  # wrapped by peft
    assert torch.equal(model(**coarse)[0], want)


@torch.no_grad()
def test_the_base_of_a_ppflux_transformer_called_directly_is_plain_flux():
    base = tiny_flux()
    model = PPFluxTransformer.from_flux(base, "ppf2")
    coarse = flux_inputs(sigma=0.9)
    assert torch.equal(base(**coarse)[0], tiny_flux()(**coarse)[0])  # the hook acts only through the wrapper
    assert not torch.equal(model(**coarse)[0], base(**coarse)[0])


@torch.no_grad()
def test_a_deep_copy_of_a_hooked_transformer_runs_itself_not_the_original():
    model = tiny_flux()
    apply(model, "ppf2", rank=2)
    twin = copy.deepcopy(model)  # what an EMA copy in a training script does
    kw = flux_inputs(sigma=0.9)  # coarse stage
    want = model(**kw)[0]
    assert adapter_of(twin) is not adapter_of(model) and torch.equal(twin(**kw)[0], want)
    for p in adapter_of(twin).parameters():
        p.add_(0.05)
    for p in twin.parameters():
        p.mul_(1.01)
    moved = twin(**kw)[0]
    assert not torch.equal(moved, want) and torch.equal(model(**kw)[0], want)  # before: the copy ran the original
    assert torch.equal(copy.deepcopy(twin)(**kw)[0], moved)
    remove(twin)
    fine = flux_inputs(sigma=0.2)
    plain = copy.deepcopy(twin)
    assert torch.equal(plain(**kw)[0], twin(**kw)[0]) and torch.equal(plain(**fine)[0], twin(**fine)[0])
