"""Qwen-Image (`QwenImageTransformer2DModel`): FLUX-style 2x2-packed tokens whose RoPE the model builds from the
`img_shapes` argument (frames, rows, cols per image), `timestep` = sigma.

A coarse stage groups fh x fw packed tokens (flux.py's grouping) and passes `img_shapes` of the coarse grid, so
the model's own centred RoPE runs on the coarse grid: neighbouring coarse tokens are one position apart, as fine
ones are (`positions='grid'`; FLUX and Wan place them at the centre of the fine tokens they cover). One image per sample (text to
image); edit inputs (several images per sample, `zero_cond_t`) run only in the finest stage.
"""

from __future__ import annotations

from torch import nn

from ...models.packing import group_tokens
from .family import register
from .flux import Flux


@register
class Qwen(Flux):
    name = "qwen"
    classes = ("QwenImageTransformer2DModel",)
    embed = "img_in"
    temb = "time_text_embed"
    blocks = ("transformer_blocks.",)
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2",
                    "txt_mlp.net.0.proj", "txt_mlp.net.2")
    unbatched = ()
    positions = ("grid",)  # the model builds its RoPE from `img_shapes`: the coarse grid's own positions

    def base_patch(self, model: nn.Module) -> tuple[int, int]:
        return (2, 2)  # the pipeline packs 2x2 latent pixels into one token (config patch_size 2)

    def coarsen(self, model: nn.Module, kw: dict, factors: tuple[int, int]) -> tuple[dict, dict]:
        shapes = kw.get("img_shapes")
        if getattr(model, "zero_cond_t", False) or not shapes or any(len(s) != 1 for s in shapes):
            raise ValueError("coarse stages take one image per sample (text to image); image-edit inputs need a "
                             "one-stage schedule")
        frames, h, w = shapes[0][0]
        x = kw["hidden_states"]  # (B, L, C)
        if frames != 1 or h * w != x.shape[1] or h % factors[0] or w % factors[1]:
            raise ValueError(f"img_shapes {shapes[0][0]} do not give a {factors[0]}x{factors[1]}-divisible token grid "
                             f"of {x.shape[1]} tokens; choose a height/width that is a multiple of "
                             f"{16 * factors[0]}x{16 * factors[1]} pixels")
        x_in = group_tokens(x, (h, w), factors)  # (B, L/n, n*C)
        coarse = [[(1, h // factors[0], w // factors[1])] for _ in shapes]
        kw = {**kw, "hidden_states": x_in, "img_shapes": coarse}
        return kw, {"grid": (h, w), "factors": factors, "x_in": x_in, "sigma": kw["timestep"]}
