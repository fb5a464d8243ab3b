"""What training needs from a PPFluxTransformer: gradients through both stages, checkpointing, FSDP2 per block."""

import copy

import torch
import torch.distributed as dist

from ppflow.flux.transformer import PPFluxTransformer
from tests.flux.conftest import flux_inputs, tiny_flux


def _grads(model, stage, **kw):
    model.zero_grad(set_to_none=True)
    out = model(**flux_inputs(**kw), stage=stage)[0]
    out.square().mean().backward()
    return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}


def test_gradients_reach_only_the_stage_that_ran_and_checkpointing_is_exact():
    model = PPFluxTransformer.from_flux(tiny_flux(), "ppf2").train()
    g0 = _grads(model, 0)
    assert g0["patch_embed.0.weight"] is not None and g0["base.x_embedder.weight"] is None
    assert g0["stage_embed"][0].abs().sum() > 0 and g0["stage_embed"][1].abs().sum() == 0
    g1 = _grads(model, 1)
    assert g1["patch_embed.0.weight"] is None and g1["base.proj_out.weight"] is not None
    model.base.enable_gradient_checkpointing()
    for stage, ref in ((0, g0), (1, g1)):
        got = _grads(model, stage)
        for k, v in ref.items():
            assert (v is None) == (got[k] is None), k
            if v is not None:
                torch.testing.assert_close(got[k], v, msg=k)


def test_fsdp2_per_block_matches_the_plain_model(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh

    from ppflow.flux.parallel import shard_ppflux

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain = PPFluxTransformer.from_flux(tiny_flux(), "ppf2").train()
        sharded = shard_ppflux(copy.deepcopy(plain), init_device_mesh("cpu", (1,)))
        for stage in (0, 1):
            ref = _grads(plain, stage)
            got = _grads(sharded, stage)
            for k, v in ref.items():
                g = got[k]
                if v is None:
                    assert g is None, k
                else:
                    torch.testing.assert_close(g.full_tensor() if hasattr(g, "full_tensor") else g, v, msg=k)
    finally:
        dist.destroy_process_group()
