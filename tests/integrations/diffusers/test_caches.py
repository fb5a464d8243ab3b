"""diffusers' cache hooks stacked with the PPFlow hook: per-stage state, nothing carried across the switch."""

import copy

import numpy as np
import pytest
import torch

from ppflow.integrations.diffusers import apply

CALL = {"prompt": "a photo of a cat", "height": 32, "width": 32, "num_inference_steps": 6,
        "max_sequence_length": 8, "output_type": "np"}


def _pipe(components):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**{**components, "transformer": copy.deepcopy(components["transformer"]),
                           "scheduler": copy.deepcopy(components["scheduler"])})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _config(name, pipe):
    import diffusers

    step = (-1, 1001)  # every timestep may reuse
    return {
        "first_block": lambda: diffusers.FirstBlockCacheConfig(threshold=1e9),
        "pab": lambda: diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=step,
            current_timestep_callback=lambda: pipe.current_timestep),
        "taylorseer": lambda: diffusers.TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                              taylor_factors_dtype=torch.float32),
        "magcache": lambda: diffusers.MagCacheConfig(num_inference_steps=6, mag_ratios=[1.0] * 6, threshold=1e9),
    }[name]()


@pytest.mark.parametrize("cache_first", [False, True])
@pytest.mark.parametrize("name", ["first_block", "pab", "taylorseer", "magcache"])
@torch.no_grad()
def test_cache_hooks_run_across_the_stage_switch_and_reset_between_calls(components, name, cache_first):
    pipe = _pipe(components)
    if cache_first:
        pipe.transformer.enable_cache(_config(name, pipe))
        apply(pipe, "ppf2")
    else:
        apply(pipe, "ppf2")
        pipe.transformer.enable_cache(_config(name, pipe))
    first = pipe(**CALL, generator=torch.Generator().manual_seed(0)).images
    again = pipe(**CALL, generator=torch.Generator().manual_seed(0)).images  # no state leaks into the next call
    assert np.isfinite(first).all() and np.array_equal(first, again)


@torch.no_grad()
def test_first_block_cache_keeps_one_state_per_stage(components):
    pipe = _pipe(components)
    adapter = apply(pipe, "ppf2")
    runs = []
    last = pipe.transformer.single_transformer_blocks[-1].proj_mlp  # runs only when the blocks compute
    hook = last.register_forward_pre_hook(lambda m, a: runs.append(a[0].shape[1] - 8))  # image tokens
    pipe.transformer.enable_cache(_config("first_block", pipe))  # reuse whenever allowed
    pipe(**CALL, generator=torch.Generator().manual_seed(0))
    hook.remove()
    # the first step of each stage computes every block (no residual of the other token count), the rest reuse
    assert adapter.counts == {0: 3, 1: 3} and runs == [16, 64]
