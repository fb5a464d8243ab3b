import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ppflow.models import create_config, create_model
from ppflow.models.flops import forward_flops, schedule_flops, train_flops


def test_paper_method_section_xl_256():
    # "two-stage removes 37.8% of the FLOPs, three-stage 50.6%" (paper convention)
    assert 1 - schedule_flops(create_config("PPF-XL-2"))["paper_fraction"] == pytest.approx(0.378, abs=0.001)
    assert 1 - schedule_flops(create_config("PPF-XL-3"))["paper_fraction"] == pytest.approx(0.506, abs=0.001)


@pytest.mark.parametrize("name, percent", [("PPF-B-2", 62.0), ("PPF-B-3", 49.1), ("PPF-XL-2", 62.6), ("PPF-XL-3", 49.4)])
def test_paper_table_test_flops(name, percent):
    assert 100 * schedule_flops(create_config(name))["paper_fraction"] == pytest.approx(percent, abs=0.5)


def test_dit_xl2_gflops():
    # DiT reports 118.6 GFLOPs counting multiply-adds, i.e. ~237.2 with 2 per multiply-add
    assert forward_flops(create_config("DiT-XL/2"), 0).total / 1e9 == pytest.approx(237.2, rel=0.005)


@pytest.mark.parametrize("schedule", ["ppf3", "0.5:8x8,1:2x2"])
def test_analytic_total_matches_counted(schedule):
    model = create_model("PPF-tiny", schedule=schedule, input_size=(16, 32), num_classes=10)
    cfg = model.config
    for stage in range(model.schedule.num_stages):
        x = torch.randn(1, 4, 16, 32)
        counter = FlopCounterMode(display=False)
        # the math SDPA backend runs as bmm's, which FlopCounterMode counts (the fused CPU kernel is not)
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(x, torch.tensor([0.0]), torch.tensor([1]), stage=stage)
        counted = counter.get_total_flops()
        assert forward_flops(cfg, stage, 16, 32).total == pytest.approx(counted, rel=0.01)


def test_stage_cfg_cost():
    cfg = create_config("PPF-B-2")
    plain = schedule_flops(cfg)["paper_fraction"]
    # CFG only in the fine stage vs CFG everywhere for the baseline: the coarse half stays single-pass
    staged = schedule_flops(cfg, cfg_scales=[1.0, 3.0])["paper_fraction"]
    assert staged == pytest.approx((0.5 * forward_flops(cfg, 0).paper + 0.5 * 2 * forward_flops(cfg, 1).paper)
                                   / (2 * forward_flops(cfg, 1).paper))
    assert staged > plain / 2 and staged < plain
    with pytest.raises(ValueError, match="3 CFG scales given for 2 stages"):
        schedule_flops(cfg, cfg_scales=[1, 2, 3])


def test_train_flops_fraction():
    cfg = create_config("PPF-B-2")
    r = train_flops(cfg, [8, 8])
    assert r["paper_fraction"] == pytest.approx(schedule_flops(cfg)["paper_fraction"])


def test_cli_json(capsys):
    from ppflow.cli import main

    assert main(["flops", "--model", "PPF-XL-3", "--image-size", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paper_fraction"] == pytest.approx(0.494, abs=0.001)
    assert len(out["stages"]) == 3 and out["stages"][0]["tokens"] == 64
