"""`ppflow bench flux`: base FLUX vs PPFlux denoising loops on the same inputs, with the FLOPs bound."""

import json

from ppflow.cli import main

QUICK = ["bench", "flux", "--size", "tiny", "--resolution", "128", "--text-tokens", "8", "--steps", "4",
         "--repeats", "1", "--warmup", "0"]


def test_bench_flux_tiny_json(capsys):
    assert main(QUICK + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["stages"] == [0, 0, 1, 1] and r["forwards"] == [2, 2]
    assert set(r["runs"]) == {"FLUX", "PPFlux ppf2"} and r["settings"]["image_tokens"] == 64
    assert r["bound"] > 1 and r["efficiency"] == r["speedup"] / r["bound"]
    assert r["settings"]["threads"] == 1  # tiny on CPU: one thread unless --threads


def test_bench_flux_rejects_other_sizes(capsys):
    assert main(["bench", "flux", "--size", "XL"]) == 2
    assert "choose one of tiny, dev" in capsys.readouterr().err


def test_bench_flux_with_first_block_cache(capsys):
    assert main(QUICK + ["--cache", "1e9", "--json"]) == 0  # reuse whenever allowed
    r = json.loads(capsys.readouterr().out)
    # the cache recomputes every block once per stage (a stage change changes the token count)
    assert r["full_steps"] == {"FLUX": 4, "PPFlux ppf2": 4, "FLUX + FBC 1e+09": 1, "PPFlux ppf2 + FBC 1e+09": 2}
    assert set(r["cache"]) == {"threshold", "speedup_flux_cache", "speedup_ppflux_cache", "product"}


def test_flux_denoising_through_the_shared_euler_solver_matches_fluxpipelines_loop():
    """`denoise` (sampling.solvers.euler over t = 1 - sigma) = FluxPipeline's x += (sigma_next - sigma) * v."""
    import torch
    from diffusers import FluxPipeline

    from ppflow.flux.bench import build_base, denoise
    from ppflow.flux.flops import ARCHS
    from ppflow.flux.transformer import PPFluxTransformer

    def flux_loop(model, x, sigmas, stages, cond, grid):  # the loop flux/bench.py had before
        for i in range(len(sigmas) - 1):
            t = torch.full((x.shape[0],), float(sigmas[i]), dtype=x.dtype)
            extra = {} if stages is None else {"stage": stages[i], "grid": grid}
            v = model(hidden_states=x, timestep=t, return_dict=False, **cond, **extra)[0]
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v
        return x

    arch, grid = ARCHS["tiny"], (4, 4)
    base = build_base(arch, torch.device("cpu"), torch.float32, seed=0)
    ppf = PPFluxTransformer.from_flux(base, "ppf2")
    g = torch.Generator().manual_seed(0)
    cond = {"encoder_hidden_states": torch.randn(2, 8, arch.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(2, arch.pooled_projection_dim, generator=g),
            "img_ids": FluxPipeline._prepare_latent_image_ids(2, *grid, "cpu", torch.float32),
            "txt_ids": torch.zeros(8, 3), "guidance": torch.full((2,), 3.5) if arch.guidance_embeds else None}
    x = torch.randn(2, 16, arch.in_channels, generator=g)
    sigmas = [1.0, 0.8, 0.55, 0.3, 0.0]
    with torch.no_grad():
        for model, stages in ((base, None), (ppf, [0, 0, 1, 1])):
            torch.testing.assert_close(denoise(model, x, sigmas, stages, cond, grid),
                                       flux_loop(model, x, sigmas, stages, cond, grid), atol=1e-5, rtol=1e-5)
