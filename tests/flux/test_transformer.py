"""PPFluxTransformer on a tiny random FLUX: the fine stage is FLUX, the coarse stage is FLUX on 4x fewer tokens."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from ppflow.flux.transformer import CONFIG_NAME, WEIGHTS_NAME, PPFluxTransformer
from ppflow.models.packing import group_ids, group_tokens, ungroup_tokens
from tests.flux.conftest import GRID, flux_inputs, tiny_flux


def _randomize_extras(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.extras_state_dict(keep_vars=True).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _image_tokens(model, **kw):
    """Image / text token counts seen by the first double-stream and the first single-stream block."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1]))

    hooks = [model.base.transformer_blocks[0].register_forward_pre_hook(hook, with_kwargs=True),
             model.base.single_transformer_blocks[0].register_forward_pre_hook(hook, with_kwargs=True)]
    with torch.no_grad():
        out = model(**kw)[0]
    for h in hooks:
        h.remove()
    return seen, out


@pytest.mark.parametrize("init", ["pooled", "tiled"])
def test_fine_stage_is_flux_bit_for_bit(flux, init):
    model = PPFluxTransformer.from_flux(flux, "ppf2", init=init)
    kw = flux_inputs(sigma=0.3)  # below the boundary at 64 tokens (0.61): finest stage
    with torch.no_grad():
        ref = flux(**kw)[0]
        assert torch.equal(model(**kw)[0], ref)  # stage from sigma
        assert torch.equal(model(**kw, stage=1)[0], ref)  # pinned
    assert model.base is flux and set(model.extras_state_dict()) == {
        "stage_embed", "patch_embed.0.weight", "patch_embed.0.bias", "proj.0.weight", "proj.0.bias"}


def test_coarse_stage_runs_on_a_quarter_of_the_image_tokens(flux):
    model = PPFluxTransformer.from_flux(flux, "ppf2")
    L = GRID[0] * GRID[1]
    seen, out = _image_tokens(model, **flux_inputs(sigma=0.9))
    assert seen == [(L // 4, 5), (L // 4, 5)]  # text tokens unchanged
    assert out.shape == (2, L, 16)  # FLUX's packing out
    seen, _ = _image_tokens(model, **flux_inputs(sigma=0.3))
    assert seen == [(L, 5), (L, 5)]
    rect = PPFluxTransformer.from_flux(flux, "0.5:2x4,1:2x2")  # rectangular: 1x2 packed tokens
    seen, out = _image_tokens(rect, **flux_inputs(sigma=0.9))
    assert seen[0] == (L // 2, 5) and out.shape == (2, L, 16)


def test_coarse_ids_are_centres_and_grouping_inverts():
    from diffusers import FluxPipeline

    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 6, "cpu", torch.float32)
    coarse = group_ids(ids, (4, 6), (2, 2))
    assert coarse.shape == (6, 3) and coarse[0].tolist() == [0, 0.5, 0.5] and coarse[-1].tolist() == [0, 2.5, 4.5]
    x = torch.randn(2, 24, 16)
    g = group_tokens(x, (4, 6), (2, 2))
    assert g.shape == (2, 6, 64) and torch.equal(g[0, 0, 16:32], x[0, 1])  # sub-token major: k = a*fw + b
    assert torch.equal(ungroup_tokens(g, (4, 6), (2, 2)), x)


def test_tiled_init_is_the_mean_of_covered_fine_embeddings(flux):
    model = PPFluxTransformer.from_flux(flux, "ppf2", init="tiled")
    x = flux_inputs()["hidden_states"]
    with torch.no_grad():
        coarse = model.patch_embed["0"](group_tokens(x, GRID, (2, 2)))  # (B, 16, D)
        fine = flux.x_embedder(x)  # (B, 64, D)
        mean = group_tokens(fine, GRID, (2, 2)).view(2, 16, 4, -1).mean(2)
    torch.testing.assert_close(coarse, mean, rtol=1e-5, atol=1e-6)


def test_pooled_init_embeds_the_average_pooled_latent(flux):
    from diffusers import FluxPipeline

    model = PPFluxTransformer.from_flux(flux, "ppf2", init="pooled")
    latent = torch.randn(2, 4, 16, 16)
    x = FluxPipeline._pack_latents(latent, 2, 4, 16, 16)  # (B, 64, 16)
    pooled = FluxPipeline._pack_latents(F.avg_pool2d(latent, 2), 2, 4, 8, 8)  # (B, 16, 16)
    with torch.no_grad():
        coarse = model.patch_embed["0"](group_tokens(x, GRID, (2, 2)))
        torch.testing.assert_close(coarse, flux.x_embedder(pooled), rtol=1e-5, atol=1e-5)
        # copy init: the fine 2x2 output nearest-upsampled
        h = torch.randn(2, 16, 32)
        up = ungroup_tokens(model.proj["0"](h), GRID, (2, 2))
        fine = FluxPipeline._unpack_latents(flux.proj_out(h), 64, 64, 8)  # (B, 4, 8, 8): 16 tokens = 8x8 latent
        near = FluxPipeline._pack_latents(F.interpolate(fine, scale_factor=2, mode="nearest"), 2, 4, 16, 16)
    torch.testing.assert_close(up, near)


def test_mixed_stages_in_one_batch_equal_separate_calls(flux):
    model = PPFluxTransformer.from_flux(flux, "ppf2")
    _randomize_extras(model)
    kw = flux_inputs()
    kw["timestep"] = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        mixed = model(**kw)[0]
        coarse = model(**kw, stage=0)[0]
        fine = model(**kw, stage=1)[0]
    torch.testing.assert_close(mixed[0], coarse[0])
    torch.testing.assert_close(mixed[1], fine[1])


def test_save_load_round_trip_stores_only_the_extras(flux, tmp_path):
    model = PPFluxTransformer.from_flux(flux, "ppf3", init="tiled")
    _randomize_extras(model)
    base_dir = tmp_path / "base"
    flux.save_pretrained(base_dir)
    model.save_pretrained(tmp_path / "ppf", base_model=str(base_dir))
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "ppf" / WEIGHTS_NAME)
    assert not any(k.startswith("base.") for k in saved) and "stage_embed" in saved
    cfg = json.loads((tmp_path / "ppf" / CONFIG_NAME).read_text())
    assert cfg["base_model"] == str(base_dir) and cfg["schedule"] == "ppf3" and cfg["init"] == "tiled"
    kw = flux_inputs()
    for loaded in (PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=tiny_flux()),  # base given
                   PPFluxTransformer.from_pretrained(tmp_path / "ppf")):  # base from the reference
        with torch.no_grad():
            for s in range(3):
                assert torch.equal(loaded(**kw, stage=s)[0], model(**kw, stage=s)[0])
    assert os.path.getsize(tmp_path / "ppf" / WEIGHTS_NAME) < os.path.getsize(base_dir / "diffusion_pytorch_model.safetensors")


def test_lora_weights_travel_with_the_extras(tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig

    base = tiny_flux()
    base.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    model = PPFluxTransformer.from_flux(base, "ppf2")
    model.save_pretrained(tmp_path / "ppf")
    loaded = PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=tiny_flux())
    kw = flux_inputs()
    with torch.no_grad():
        for s in (0, 1):
            assert torch.equal(loaded(**kw, stage=s)[0], model(**kw, stage=s)[0])
        assert not torch.equal(tiny_flux()(**kw)[0], model(**kw, stage=1)[0])  # the LoRA does change FLUX


def test_bf16_base(flux):
    base = flux.to(torch.bfloat16)
    model = PPFluxTransformer.from_flux(base, "ppf2")
    assert model.patch_embed["0"].weight.dtype == torch.bfloat16
    kw = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
          for k, v in flux_inputs().items()}
    with torch.no_grad():
        assert torch.equal(model(**kw, stage=1)[0], base(**kw)[0])
        out = model(**kw, stage=0)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_compile_one_graph_per_stage(flux):
    import torch._dynamo.testing

    model = PPFluxTransformer.from_flux(flux, "ppf2")
    kw = flux_inputs()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for s in (0, 1, 0, 1):
            assert torch.equal(compiled(**kw, stage=s, grid=GRID)[0], model(**kw, stage=s, grid=GRID)[0])
    assert counter.frame_count == 2
    torch._dynamo.reset()


def test_bad_inputs_are_one_line_errors(flux):
    model = PPFluxTransformer.from_flux(flux, "0.5:8x8,1:2x2")  # 4x4 packed tokens
    with pytest.raises(ValueError, match="not divisible"):
        model(**flux_inputs(grid=(6, 6)), stage=0)
    with pytest.raises(ValueError, match="unknown init"):
        PPFluxTransformer.from_flux(flux, "ppf2", init="mean")
    with pytest.raises(ValueError, match="multiple of the base patch"):
        PPFluxTransformer.from_flux(flux, "0.5:3x3,1:2x2")
    with pytest.raises(ValueError, match="pass grid"):  # coarse: the ids must say the grid (fine: any ids)
        kw = flux_inputs(sigma=0.9)
        kw["img_ids"] = kw["img_ids"][:10]
        model(**kw)
    with pytest.raises(FileNotFoundError, match="not a PPFlux folder"):
        PPFluxTransformer.from_pretrained("/nonexistent", base=flux)


def test_block_mean_is_the_latent_average_pooled_and_broadcast():
    from diffusers import FluxPipeline

    from ppflow.models.packing import block_mean

    latent = torch.randn(2, 4, 16, 16)
    x = group_tokens(FluxPipeline._pack_latents(latent, 2, 4, 16, 16), GRID, (2, 2))  # (B, 16, 64)
    up = F.interpolate(F.avg_pool2d(latent, 2), scale_factor=2, mode="nearest")  # P x as latent pixels
    want = group_tokens(FluxPipeline._pack_latents(up, 2, 4, 16, 16), GRID, (2, 2))
    torch.testing.assert_close(block_mean(x, (2, 2)), want)


def test_noise_skip_adds_the_within_block_noise_exactly(flux, tmp_path):
    from diffusers import FluxPipeline

    plain = PPFluxTransformer.from_flux(flux, "ppf2")
    _randomize_extras(plain)
    skip = PPFluxTransformer.from_flux(flux, "ppf2", coarse_output="noise_skip")
    skip.load_state_dict(plain.state_dict())
    x0 = F.interpolate(torch.randn(2, 4, 8, 8), scale_factor=2, mode="nearest")  # constant on 2x2 latent blocks
    noise = torch.randn(2, 4, 16, 16)
    kw = flux_inputs(sigma=0.8)  # coarse stage
    x = 0.8 * noise + 0.2 * x0
    kw["hidden_states"] = FluxPipeline._pack_latents(x, 2, 4, 16, 16)
    within = noise - F.interpolate(F.avg_pool2d(noise, 2), scale_factor=2, mode="nearest")  # (I - P) noise
    with torch.no_grad():
        got = skip(**kw)[0] - plain(**kw)[0]
        torch.testing.assert_close(got, FluxPipeline._pack_latents(within, 2, 4, 16, 16), rtol=1e-5, atol=1e-5)
        kw["timestep"] = torch.full((2,), 0.3)  # finest stage: plain v
        assert torch.equal(skip(**kw)[0], plain(**kw)[0])
    skip.save_pretrained(tmp_path / "ppf")
    loaded = PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=flux)
    assert loaded.ppflow_config.coarse_output == "noise_skip"
    with pytest.raises(ValueError, match="unknown coarse_output 'x'"):
        PPFluxTransformer.from_flux(flux, "ppf2", coarse_output="x")


# ---------------------------------------------------------------- issue 27: PPFlux folders atomic, verified, portable
def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_save_pretrained_over_an_existing_folder_is_all_or_nothing(flux, tmp_path):
    model = PPFluxTransformer.from_flux(flux, "ppf2")
    folder = tmp_path / "ppf"
    model.save_pretrained(folder)
    (folder / "README.md").write_text("mine")  # what else the folder holds is kept
    before = _hashes(folder)
    _randomize_extras(model)
    with pytest.raises(TypeError):  # fails after the new weights were written: the config cannot be encoded
        model.save_pretrained(folder, base_model=str(tmp_path), base_subfolder=object())
    assert _hashes(folder) == before  # the old folder is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppf"]  # and no temporary folder is left
    PPFluxTransformer.from_pretrained(folder, base=tiny_flux())
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "mine" and _hashes(folder)[WEIGHTS_NAME] != before[WEIGHTS_NAME]


def test_a_relative_base_is_stored_relative_to_the_folder(flux, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    flux.save_pretrained(tmp_path / "work" / "base")
    monkeypatch.chdir(tmp_path / "work")
    model = PPFluxTransformer.from_flux(flux, "ppf2")
    model.save_pretrained("runs/ppf", base_model="base")
    assert json.loads((tmp_path / "work/runs/ppf" / CONFIG_NAME).read_text())["base_model"] == "../../base"
    other = tmp_path / "elsewhere"
    tiny_flux(seed=5).save_pretrained(other / "base")  # another base/ where the folder is loaded from
    monkeypatch.chdir(other)
    loaded = PPFluxTransformer.from_pretrained(tmp_path / "work/runs/ppf")
    kw = flux_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**kw, stage=1)[0], model(**kw, stage=1)[0])  # the folder's base, not ./base
    os.rename(tmp_path / "work" / "base", tmp_path / "work" / "gone")
    with pytest.raises(FileNotFoundError, match=r"the base folder .*work/base of the PPFlux folder .* is missing"):
        PPFluxTransformer.from_pretrained(tmp_path / "work/runs/ppf")


def test_ppflux_and_lora_files_carry_a_verified_sha256(tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ppflow.flux.transformer import LORA_NAME
    from ppflow.io import CheckpointError, DamagedFileError

    base = tiny_flux()
    base.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=False))
    PPFluxTransformer.from_flux(base, "ppf2").save_pretrained(tmp_path / "ppf")
    for name in (WEIGHTS_NAME, LORA_NAME):
        path = tmp_path / "ppf" / name
        original = path.read_bytes()
        with safe_open(str(path), "pt") as f:
            meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        assert len(meta["sha256"]) == 64
        key = next(iter(state))
        state[key] = state[key] + 1  # tampered, metadata kept
        save_file(state, str(path), metadata=meta)
        with pytest.raises(DamagedFileError, match=f"{name} is damaged.*verify=False"):
            PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=tiny_flux())
        PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=tiny_flux(), verify=False)  # on purpose
        path.write_bytes(original[: len(original) // 2])  # truncated: one error naming the file
        with pytest.raises(CheckpointError, match=f"cannot read .*{name}: it is not a complete safetensors file"):
            PPFluxTransformer.from_pretrained(tmp_path / "ppf", base=tiny_flux())
        path.write_bytes(original)
