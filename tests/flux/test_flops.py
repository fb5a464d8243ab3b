"""Analytic FLUX FLOPs against torch's FLOP counter, the resolution table, and `ppflow flops --flux`."""

import json

import pytest
import torch

from ppflow.cli import main
from ppflow.flux.flops import ARCHS, FluxArch, forward_flops, resolution_table
from ppflow.models.schedule import PyramidSchedule
from tests.flux.conftest import flux_inputs, tiny_flux


@pytest.mark.parametrize("stage,factors", [(0, (2, 2)), (1, (1, 1))])
def test_analytic_flops_match_the_flop_counter(stage, factors):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ppflow.flux.transformer import PPFluxTransformer

    model = PPFluxTransformer.from_flux(tiny_flux(), "ppf2")
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(**flux_inputs(batch=1), stage=stage)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    f = forward_flops(FluxArch.from_config(model.config), factors, (8, 8), 5)
    assert counts["aten.addmm"] == f.total - f.terms["blocks_attention"]  # every Linear, exactly
    assert counts.get("aten.bmm", 0) == f.terms["blocks_attention"]  # QK^T and AV of the math attention


def test_dev_table():
    ppf2 = PyramidSchedule.from_string("ppf2", base_patch=(2, 2))
    rows = resolution_table(ARCHS["dev"], ppf2, [512, 1024, 2048], 512)
    assert [r["image_tokens"] for r in rows] == [1024, 4096, 16384]
    assert [round(r["coarse_fine_ratio"], 3) for r in rows] == [0.481, 0.289, 0.178]
    assert [round(r["bound"], 2) for r in rows] == [1.35, 1.55, 1.70]
    assert round(rows[0]["bound_text_free"], 2) == 1.61 == rows[0]["paper_speedup"]  # 512 px: text-free matches
    assert rows[2]["stages"][0]["image_tokens"] == 16384 // 4


def test_flops_command(capsys):
    assert main(["flops", "--flux", "dev", "--resolution", "512,1024,2048"]) == 0
    out = capsys.readouterr().out
    assert "FLUX.1-dev" in out and "1.61" in out and "1.86" in out and "text-free" in out
    assert main(["flops", "--flux", "dev", "--resolution", "1024", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["resolution"] == 1024 and rows[0]["bound"] == pytest.approx(1.551, abs=1e-3)
    assert main(["flops", "--flux", "dev", "--resolution", "500"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


def test_dev_table_is_exact_on_the_real_architecture():
    """FLUX.1-dev's shape on the meta device (no memory, no weights): 11.9B parameters, FLOPs counted by torch."""
    from diffusers import FluxTransformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ppflow.flux.transformer import PPFluxTransformer

    with torch.device("meta"):
        base = FluxTransformer2DModel(patch_size=1, guidance_embeds=True)  # diffusers' defaults = FLUX.1-dev
        model = PPFluxTransformer(base)
        kw = {"hidden_states": torch.empty(1, 1024, 64), "encoder_hidden_states": torch.empty(1, 512, 4096),
              "pooled_projections": torch.empty(1, 768), "timestep": torch.full((1,), 0.5),
              "img_ids": torch.zeros(1024, 3), "txt_ids": torch.zeros(512, 3), "guidance": torch.full((1,), 3.5)}
    assert sum(p.numel() for p in base.parameters()) == 11_901_408_320
    assert FluxArch.from_config(base.config) == ARCHS["dev"]
    for stage, factors in ((0, (2, 2)), (1, (1, 1))):  # 512 px: 32x32 packed tokens
        with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(**kw, stage=stage, grid=(32, 32), return_dict=False)
        assert counter.get_total_flops() == forward_flops(ARCHS["dev"], factors, (32, 32), 512).total
