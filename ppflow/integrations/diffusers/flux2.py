"""FLUX.2 (`Flux2Transformer2DModel`): FLUX.1's token path (pre-packed tokens, RoPE from (t, h, w, l) ids,
`timestep` = sigma) with its own time embedding, fused single-block projections and 128-channel tokens.

The coarse grouping is FLUX.1's (flux.py). Its coarse projections start `tiled` (the mean of the covered tokens'
embeddings; every sub-token gets the fine output): the `pooled` init and `noise_skip` assume FLUX.1's 2x2 channel
order inside a token, which FLUX.2's VAE patchification does not promise.
"""

from __future__ import annotations

from .family import register
from .flux import Flux


@register
class Flux2(Flux):
    name = "flux2"
    classes = ("Flux2Transformer2DModel",)
    temb = "time_guidance_embed"
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                    "ff_context.linear_out", "attn.to_qkv_mlp_proj", "attn.to_out")
    coarse_outputs = ("v",)
    inits = ("tiled",)
