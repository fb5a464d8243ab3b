"""Tiny random FLUX parts built locally (no downloads): a 1+1-block transformer, CLIP/T5 text models, a VAE."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

GRID = (8, 8)  # packed tokens of a 16x16 latent


def tiny_flux(seed: int = 0, guidance: bool = True, in_channels: int = 16):
    """FluxTransformer2DModel with 1 double + 1 single block, dim 32, random weights (no zero-init outputs)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=in_channels, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def flux_inputs(batch: int = 2, grid=GRID, text: int = 5, sigma: float = 0.3, seed: int = 1, channels: int = 16):
    """Keyword inputs of FluxTransformer2DModel.forward at one sigma."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, grid[0] * grid[1], channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, text, 32, generator=g),
        "pooled_projections": torch.randn(batch, 32, generator=g),
        "timestep": torch.full((batch,), sigma),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch, grid[0], grid[1], "cpu", torch.float32),
        "txt_ids": torch.zeros(text, 3),
        "guidance": torch.full((batch,), 3.5),
        "return_dict": False,
    }


def tiny_components(seed: int = 0):
    """Every FluxPipeline component, tiny and random: CLIP + T5 text models with local tokenizers, a VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    words = ["a", "photo", "of", "cat", "dog", "red", "blue", "blurry", "on", "the", "grass"]
    chars = "abcdefghijklmnopqrstuvwxyz"
    pieces = [w + "</w>" for w in words] + list(chars) + [c + "</w>" for c in chars]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{p: i + 2 for i, p in enumerate(dict.fromkeys(pieces))}}
    clip_tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    t5_tok = T5TokenizerFast(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in words],
                             extra_ids=0, model_max_length=16)
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=1, num_attention_heads=2, projection_dim=32,
                                        max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=1)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_ff=37, d_kv=8, num_layers=1,
                                 num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                 eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, scaling_factor=1.5, shift_factor=0.1).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    return {"scheduler": scheduler, "vae": vae, "text_encoder": clip, "tokenizer": clip_tok, "text_encoder_2": t5,
            "tokenizer_2": t5_tok, "transformer": tiny_flux(seed)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing here may reach the Hub: HF_HUB_OFFLINE for these tests only (the hub tests set their own)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def flux():
    return tiny_flux()


@pytest.fixture(scope="module")
def components():
    return tiny_components()
