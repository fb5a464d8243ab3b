"""The PPFlow hook on an unmodified Flux2Transformer2DModel (FLUX.2): fine stage exact, quarter tokens coarse."""

import pytest
import torch

from ppflow.integrations.diffusers import adapter_of, apply, family_of


def tiny_flux2(seed: int = 0):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    model = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(sigma: float, batch: int = 2, grid=(8, 8)):
    from diffusers import Flux2Pipeline

    g = torch.Generator().manual_seed(1)
    lat = torch.randn(batch, 16, *grid, generator=g)
    return {"hidden_states": lat.flatten(2).transpose(1, 2), "encoder_hidden_states": torch.randn(batch, 5, 32, generator=g),
            "timestep": torch.full((batch,), sigma), "img_ids": Flux2Pipeline._prepare_latent_ids(lat),
            "txt_ids": torch.zeros(batch, 5, 4), "guidance": torch.full((batch,), 3.5), "return_dict": False}


@torch.no_grad()
def test_fine_stage_is_flux2_and_the_coarse_stage_runs_a_quarter_of_the_tokens():
    model, ref = tiny_flux2(), tiny_flux2()
    adapter = apply(model, "ppf2")
    assert family_of(model).name == "flux2" and adapter.config.init == "tiled"
    assert torch.equal(model(**inputs(0.3))[0], ref(**inputs(0.3))[0])
    seen = []
    h = model.transformer_blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]),
                                                              with_kwargs=True)
    out = model(**inputs(0.9))[0]
    h.remove()
    assert out.shape == (2, 64, 16) and seen == [16] and adapter_of(model).counts == {1: 2, 0: 2}
    with pytest.raises(ValueError, match="not available for flux2"):
        apply(tiny_flux2(), "ppf2", init="pooled")
    lora = apply(tiny_flux2(), "ppf2", rank=2)
    assert any(p.endswith("to_qkv_mlp_proj") for p, _ in lora.lora_layers())
