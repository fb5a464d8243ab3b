"""The PPFlow hook on an unmodified SD3Transformer2DModel (SD3.5): learned-size positions pooled for coarse tokens."""

import torch

from ppflow.integrations.diffusers import adapter_of, apply
from ppflow.integrations.diffusers.sd3 import _s2d


def tiny_sd3(seed: int = 0, max_size: int | None = 16):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                  pooled_projection_dim=16, out_channels=4, pos_embed_max_size=max_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(t: float, size=16, batch=2):
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(batch, 4, size, size, generator=g),
            "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
            "pooled_projections": torch.randn(batch, 16, generator=g), "timestep": torch.full((batch,), t),
            "return_dict": False}


@torch.no_grad()
def test_fine_stage_is_sd3_and_the_coarse_stage_runs_a_quarter_of_the_tokens():
    model, ref = tiny_sd3(), tiny_sd3()
    apply(model, "ppf2")
    assert torch.equal(model(**inputs(300.0))[0], ref(**inputs(300.0))[0])  # sigma 0.3: fine
    seen = []
    h = model.transformer_blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]),
                                                              with_kwargs=True)
    out = model(**inputs(900.0))[0]
    h.remove()
    assert out.shape == (2, 4, 16, 16) and seen == [16] and adapter_of(model).counts == {1: 2, 0: 2}
    assert model.out_channels == 4  # restored after the coarse forward
    odd = model(**inputs(900.0, size=12))[0]  # 6x6 fine tokens: padded to 8x8, cropped back
    assert odd.shape == (2, 4, 12, 12)


@torch.no_grad()
def test_coarse_positions_are_the_pooled_fine_ones_and_the_conv_sees_the_block_mean():
    for max_size in (16, None):
        model = tiny_sd3(max_size=max_size)
        adapter = apply(model, "ppf2")
        x = torch.randn(1, 4, 16, 16)
        coarse = adapter.embed["0"](_s2d(x, (2, 2)))  # (1, 16, D)
        fine = model.pos_embed
        conv = fine.proj(torch.nn.functional.avg_pool2d(x, 2)).flatten(2).transpose(1, 2)  # fine conv, pooled latent
        pos = (fine.cropped_pos_embed(16, 16) if max_size else fine.pos_embed)  # (1, 64, D) of the 8x8 grid
        pooled = pos.view(1, 4, 2, 4, 2, -1).mean((2, 4)).reshape(1, 16, -1)
        torch.testing.assert_close(coarse, conv + pooled, rtol=1e-5, atol=1e-5)
