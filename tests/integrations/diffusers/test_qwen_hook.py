"""The PPFlow hook on an unmodified QwenImageTransformer2DModel: RoPE from the coarse `img_shapes`."""

import pytest
import torch

from ppflow.integrations.diffusers import adapter_of, apply


def tiny_qwen(seed: int = 0, **kw):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    model = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                        axes_dims_rope=(4, 6, 6), **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(sigma: float, batch=2, grid=(8, 8)):
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(batch, grid[0] * grid[1], 16, generator=g),
            "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
            "encoder_hidden_states_mask": torch.ones(batch, 5, dtype=torch.long), "timestep": torch.full((batch,), sigma),
            "img_shapes": [[(1, *grid)]] * batch, "return_dict": False}


@torch.no_grad()
def test_fine_stage_is_qwen_image_and_the_coarse_stage_runs_a_quarter_of_the_tokens():
    model, ref = tiny_qwen(), tiny_qwen()
    apply(model, "ppf2")
    assert torch.equal(model(**inputs(0.3))[0], ref(**inputs(0.3))[0])
    seen = []
    h = model.transformer_blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]),
                                                              with_kwargs=True)
    out = model(**inputs(0.9))[0]
    h.remove()
    assert out.shape == (2, 64, 16) and seen == [16] and adapter_of(model).counts == {1: 2, 0: 2}
    edit = inputs(0.9)
    edit["img_shapes"] = [[(1, 8, 8), (1, 4, 4)]] * 2
    with pytest.raises(ValueError, match="one image per sample"):
        model(**edit)
