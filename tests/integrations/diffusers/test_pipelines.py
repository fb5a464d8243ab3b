"""The PPFlow hook inside the user's own FLUX.2, Qwen-Image and SD3.5 pipeline classes (prompt embeddings given,
latents out): a one-stage schedule is the plain pipeline bit for bit, and in a two-stage run every fine-stage
forward is the plain transformer's on the same inputs while coarse forwards see a quarter of the tokens."""

import copy

import pytest
import torch

from ppflow.integrations.diffusers import adapter_of, apply

from .test_flux2_hook import tiny_flux2
from .test_qwen_hook import tiny_qwen
from .test_sd3_hook import tiny_sd3


def _embeds(*shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*s, generator=g) for s in shapes]


def flux2_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = Flux2Pipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None, transformer=tiny_flux2())
    (text,) = _embeds((1, 5, 32))
    return pipe, {"prompt_embeds": text, "guidance_scale": 3.5}


def qwen_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = QwenImagePipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None, transformer=tiny_qwen())
    text, neg = _embeds((1, 5, 16), (1, 4, 16))
    mask = torch.ones(1, 5, dtype=torch.long)
    return pipe, {"prompt_embeds": text, "prompt_embeds_mask": mask, "negative_prompt_embeds": neg,
                  "negative_prompt_embeds_mask": torch.ones(1, 4, dtype=torch.long), "true_cfg_scale": 3.0}


def sd3_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None, transformer=tiny_sd3())
    text, pooled, neg, neg_pooled = _embeds((1, 5, 16), (1, 16), (1, 5, 16), (1, 16))
    return pipe, {"prompt_embeds": text, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": neg,
                  "negative_pooled_prompt_embeds": neg_pooled, "guidance_scale": 3.0}


PIPES = {"flux2": flux2_pipe, "qwen": qwen_pipe, "sd3": sd3_pipe}
SIZE = {"height": 128, "width": 128, "output_type": "latent"}  # 16x16 latent: 64 tokens of 2x2


def _run(pipe, call, steps=4):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**call, **SIZE, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("family", sorted(PIPES))
@torch.no_grad()
def test_one_stage_schedule_is_the_plain_pipeline_bit_for_bit(family):
    pipe, call = PIPES[family]()
    want = _run(pipe, call)
    pipe, call = PIPES[family]()
    apply(pipe, "1:2x2")
    assert torch.equal(_run(pipe, call), want)


@pytest.mark.parametrize("family", sorted(PIPES))
@torch.no_grad()
def test_fine_forwards_are_the_plain_transformer_and_coarse_ones_run_a_quarter_of_the_tokens(family):
    pipe, call = PIPES[family]()
    plain = copy.deepcopy(pipe.transformer)
    adapter = apply(pipe, "ppf2")
    tokens, calls = [], []
    block = pipe.transformer.transformer_blocks[0]
    h1 = block.register_forward_pre_hook(lambda m, a, kw: tokens.append(kw["hidden_states"].shape[1]),
                                         with_kwargs=True)
    h2 = pipe.transformer.register_forward_hook(lambda m, a, kw, out: calls.append((tokens[-1], kw, out[0])),
                                                with_kwargs=True)
    out = _run(pipe, call)
    h1.remove(), h2.remove()
    assert torch.isfinite(out).all()
    assert {n for n, _, _ in calls} == {16, 64}  # 8x8 fine tokens, 4x4 coarse
    fine = [(kw, y) for n, kw, y in calls if n == 64]
    for kw, y in fine:
        assert torch.equal(plain(**kw)[0], y)
    coarse = sum(1 for n, _, _ in calls if n == 16)
    # the boundary on the grid: 2 of 4 steps per stage (Qwen's true CFG: two forwards a step; SD3 passes no
    # sigmas: its own grid's nearest point moved onto the boundary)
    assert coarse == len(fine) == 2 * (1 + (family == "qwen"))
    assert sum(adapter.counts.values()) == sum(kw["hidden_states"].shape[0] for _, kw, _ in calls)


def test_snapping_moves_the_nearest_interior_point_onto_each_boundary():
    from ppflow.sampling.sigmas import snap_boundaries

    assert snap_boundaries([1.0, 0.75, 0.5, 0.25], [0.6]) == [1.0, 0.75, 0.6, 0.25]
    assert snap_boundaries([1.0, 0.5, 0.1], [0.5]) == [1.0, 0.5, 0.1]  # already on the grid
    assert snap_boundaries([1.0, 0.2], [0.6, 0.4]) == [1.0, 0.6, 0.4, 0.2]  # no free point left: inserted
    assert snap_boundaries([1.0, 0.9, 0.1], [0.95, 0.93]) == [1.0, 0.95, 0.93, 0.1]  # 0.9 moved, then inserted
    assert snap_boundaries([1.0, 0.8, 0.6, 0.4, 0.01], [0.65, 0.3]) == [1.0, 0.8, 0.65, 0.3, 0.01]


@torch.no_grad()
def test_flux2_stages_follow_the_pipelines_own_time_shift():
    """FLUX.2 picks mu from the resolution and the step count (compute_empirical_mu), not FLUX.1's line: the
    boundary lies on its grid and the hook reads the grid's mu; after the call the model is on its own again."""
    pipe, call = flux2_pipe()
    adapter = apply(pipe, "ppf2")
    for steps in (4, 6):
        adapter.reset_counts()
        _run(pipe, call, steps)
        assert adapter.counts == {0: steps // 2, 1: steps // 2}
        assert adapter.grid_mu is None  # reset with the pipeline's stateful hooks
    assert adapter_of(pipe.transformer) is adapter


@torch.no_grad()
def test_stage_cfg_answers_qwen_images_unconditional_pass_in_coarse_stages():
    pipe, call = qwen_pipe()
    adapter = apply(pipe, "ppf2", coarse_cfg=False)
    got = _run(pipe, call)
    assert adapter.counts == {0: 2, 1: 4} and adapter.skipped == 2  # 2 coarse steps: one forward each
    ref, _ = qwen_pipe()
    ref.transformer.load_state_dict(pipe.transformer.state_dict())
    apply(ref, "ppf2")
    assert not torch.equal(_run(ref, call), got)  # CFG 3 in the coarse stage too
    sd3, _ = sd3_pipe()
    with pytest.raises(ValueError, match="batch it with the conditional one"):
        apply(sd3, "ppf2", coarse_cfg=False)
