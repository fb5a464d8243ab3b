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
