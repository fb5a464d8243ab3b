"""PPFluxPipeline: FluxPipeline's output for a one-stage schedule, exact per-stage counts and FLOPs otherwise."""

import numpy as np
import pytest
import torch

from ppflow.flux.flops import FluxArch, forward_flops
from ppflow.flux.pipeline import PPFluxPipeline
from ppflow.flux.transformer import PPFluxTransformer
from tests.flux.conftest import tiny_flux

CALL = {"prompt": "a photo of a cat", "height": 32, "width": 32, "num_inference_steps": 4,
        "max_sequence_length": 8, "output_type": "np"}  # 32 px through a 2x VAE: 16x16 latent, 8x8 packed tokens


def _pipe(components, schedule="ppf2", cls=PPFluxPipeline, **options):
    from diffusers import FluxPipeline

    comps = dict(components)
    if cls is not FluxPipeline:
        comps["transformer"] = PPFluxTransformer.from_flux(components["transformer"], schedule, **options)
    pipe = cls(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seed():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("cfg", [{}, {"negative_prompt": "blurry", "true_cfg_scale": 2.0}])
def test_one_stage_schedule_equals_flux_pipeline(components, cfg):
    from diffusers import FluxPipeline

    ref = _pipe(components, cls=FluxPipeline)(**CALL, **cfg, generator=_seed()).images
    pipe = _pipe(components, "1:2x2")
    out = pipe(**CALL, **cfg, generator=_seed()).images
    assert ref.shape == (1, 32, 32, 3) and np.array_equal(out, ref)
    assert pipe.stage_stats.steps == [4] and pipe.stage_stats.forwards == [4 * (1 + bool(cfg))]


def test_flux_pipeline_runs_a_ppflux_transformer_unchanged(components):
    from diffusers import FluxPipeline

    pipe = _pipe(components, "ppf2")
    ours = pipe(**CALL, generator=_seed()).images
    theirs = FluxPipeline(**pipe.components)  # the stage comes from the sigma FluxPipeline passes
    theirs.set_progress_bar_config(disable=True)
    assert np.array_equal(theirs(**CALL, generator=_seed()).images, ours)


def test_mixed_stage_counts_and_flops_are_exact(components):
    pipe = _pipe(components, "ppf2")
    seen = []
    hook = pipe.transformer.base.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].shape[:2]), with_kwargs=True)
    pipe(**CALL, num_images_per_prompt=2, negative_prompt="blurry", true_cfg_scale=[1.0, 3.0],
         generator=[_seed(), _seed()])
    hook.remove()
    st = pipe.stage_stats
    # ppf2 at 4 steps: the unshifted grid 1, .75, .5, .25 -> two coarse, two fine steps; CFG only when fine
    assert st.stages == [0, 0, 1, 1] and st.steps == [2, 2] and st.forwards == [2 * 2, 2 * 2 * 2]
    assert seen == [(2, 16)] * 2 + [(2, 64)] * 4  # what really ran: 16 coarse / 64 fine image tokens
    arch = FluxArch.from_config(pipe.transformer.config)
    coarse, fine = forward_flops(arch, (2, 2), (8, 8), 8), forward_flops(arch, (1, 1), (8, 8), 8)
    assert st.flops["total"] == 4 * coarse.total + 8 * fine.total
    assert st.flops["baseline_total"] == 12 * fine.total
    assert st.bound == pytest.approx(12 * fine.total / (4 * coarse.total + 8 * fine.total))


def test_boundary_is_a_grid_point_and_straddling_steps_split(components):
    pipe = _pipe(components, "ppf2")
    pipe(**{**CALL, "num_inference_steps": 5, "output_type": "latent"}, generator=_seed())
    st = pipe.stage_stats
    b = pipe.transformer.sigma_boundaries(64)[0]
    assert st.steps == [3, 2] and min(abs(s - b) for s in st.sigmas) < 1e-6  # a step starts on the boundary
    pipe(**{**CALL, "output_type": "latent"}, sigmas=[1.0, 0.6, 0.2], generator=_seed())
    assert len(pipe.stage_stats.sigmas) == 4 and pipe.stage_stats.steps == [2, 2]  # 0.6 -> 0.2 split at 0.5


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_fixed_shift_scheduler_like_schnell(components, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ppflow.sampling.sigmas import FluxShift

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False, shift=shift)
    rule = FluxShift.from_scheduler(scheduler)
    assert not rule.dynamic and rule.shift == shift
    pipe = _pipe({**components, "scheduler": scheduler}, "ppf2", shift=rule)
    pipe(**{**CALL, "output_type": "latent"}, generator=_seed())
    st = pipe.stage_stats
    boundary = shift * 0.5 / (1 + (shift - 1) * 0.5)  # the scheduler's shift of the unshifted boundary 0.5
    assert pipe.transformer.sigma_boundaries(64)[0] == pytest.approx(boundary)
    assert st.steps == [2, 2] and st.sigmas[2] == pytest.approx(boundary, abs=1e-6)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        FluxShift.from_scheduler(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True))


def test_per_stage_guidance_reaches_each_stage(components):
    pipe = _pipe(components, "ppf2")
    seen = []
    embed = pipe.transformer.base.time_text_embed
    hook = embed.register_forward_pre_hook(lambda m, a: seen.append(float(a[1][0]) / 1000))
    pipe(**{**CALL, "output_type": "latent"}, guidance_scale=[1.5, 4.0], generator=_seed())
    hook.remove()
    assert seen == [1.5, 1.5, 4.0, 4.0]
    with pytest.raises(ValueError, match="3 values given for 2 stages"):
        pipe(**CALL, guidance_scale=[1, 2, 3])
    with pytest.raises(ValueError, match="36x32 px is not a multiple of stage 0's 8x8 px"):
        pipe(**{**CALL, "height": 36, "output_type": "latent"})  # 9x8 packed tokens: no 2x2 groups



def test_first_block_cache_on_the_inner_model(components):
    from diffusers import FirstBlockCacheConfig

    pipe = _pipe(components, "ppf2")
    runs = []
    last = pipe.transformer.base.single_transformer_blocks[-1].proj_mlp  # runs only when the block computes
    hook = last.register_forward_pre_hook(lambda m, a: runs.append(a[0].shape[1] - 8))  # image tokens
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # reuse whenever allowed
    try:
        out = pipe(**{**CALL, "num_inference_steps": 6}, generator=_seed()).images
    finally:
        pipe.transformer.disable_cache()
        hook.remove()
    # each stage has its own cache state: the first step of each stage runs every block, the others reuse
    assert np.isfinite(out).all() and pipe.stage_stats.steps == [3, 3] and runs == [16, 64]


def test_from_pretrained_loads_flux_and_the_extras(components, tmp_path):
    from diffusers import FluxPipeline

    _pipe(components, cls=FluxPipeline).save_pretrained(tmp_path / "flux")
    pipe = _pipe(components, "ppf2", init="tiled")
    with torch.no_grad():
        pipe.transformer.stage_embed.add_(0.1)
    pipe.transformer.save_pretrained(tmp_path / "ppf", base_model=str(tmp_path / "flux"), base_subfolder="transformer")
    want = pipe(**CALL, generator=_seed()).images
    for loaded in (PPFluxPipeline.from_pretrained(tmp_path / "flux", ppflow=tmp_path / "ppf"),
                   PPFluxPipeline.from_pretrained(tmp_path / "ppf")):
        loaded.set_progress_bar_config(disable=True)
        # equal weights, but loaded ones may sit at unaligned addresses (safetensors mmap), where CPU BLAS rounds
        # differently: equal to float32 rounding (a wrong or missing weight moves pixels by far more)
        np.testing.assert_allclose(loaded(**CALL, generator=_seed()).images, want, rtol=0, atol=1e-5)
    fresh = PPFluxPipeline.from_pretrained(tmp_path / "flux", schedule="ppf3")
    assert fresh.transformer.schedule.num_stages == 3
    fresh.save_pretrained(tmp_path / "again")  # extras + a reference to the FLUX folder it came from
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["ppflux.safetensors", "ppflux_config.json"]
    assert PPFluxPipeline.from_pretrained(tmp_path / "again").transformer.schedule.num_stages == 3
    with pytest.raises(ValueError, match="pass base_model"):
        pipe.save_pretrained(tmp_path / "nowhere")


def test_needs_a_ppflux_transformer(components):
    with pytest.raises(TypeError, match="from_flux"):
        PPFluxPipeline(**{**components, "transformer": tiny_flux()})


def test_diffusers_lora_loading_reaches_the_base(components, tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model_state_dict

    from tests.flux.conftest import flux_inputs

    tuned = tiny_flux()
    tuned.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    lora = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(tuned).items()}
    pipe = _pipe({**components, "transformer": tiny_flux()}, "ppf2")
    pipe.load_lora_weights(lora)  # FluxLoraLoaderMixin -> transformer.load_lora_adapter, i.e. the base's
    kw = flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**kw, stage=1)[0], tuned(**kw)[0])
    pipe.transformer.save_pretrained(tmp_path / "ppf")  # the LoRA travels with the extras
    loaded = PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=tiny_flux())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**kw, stage=1)[0], tuned(**kw)[0])


def test_a_call_leaves_no_state_behind(components):
    """The scheduler is patched for the call only and the hook's grid shift is reset at its end (diffusers'
    `_reset_stateful_cache` reaches the base through PPFlux)."""
    pipe = _pipe(components, "ppf2")
    pipe(**{**CALL, "output_type": "latent"}, generator=_seed())
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert pipe.transformer._adapter.grid_mu is None
