"""`ppflow video-demo --quick`: train a tiny Wan, distil a spatio-temporal adapter, compare, report."""

import json

import pytest

from ppflow.cli import main


@pytest.mark.parametrize("guided", [False, True])
def test_quick_video_demo_reports_paired_rows(tmp_path, guided):
    assert main(["video-demo", "--quick", "--out", str(tmp_path), *(["--guided", "3"] if guided else [])]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    rows = {w["model"]: w for w in r["rows"]}
    assert set(rows) == {"base", "adapter", "real clips"} and rows["base"]["base"] and not rows["adapter"]["base"]
    for key in ("family", "schedule", "cache", "speedup", "flops_bound", "direction_accuracy"):
        assert key in rows["adapter"]
    assert rows["adapter"]["flops_bound"] > 1.3 and rows["real clips"]["direction_accuracy"] == 1.0
    assert (tmp_path / "clips-adapter.png").exists() and (tmp_path / "report.md").exists()
    assert r["config"]["adapter_guided"] == (3.0 if guided else None)
    assert ("no unconditional coarse forward" in (tmp_path / "report.md").read_text()) == guided


def test_word_sensitivity_sees_whether_the_velocity_follows_each_word():
    """The first base ignored its direction word (sensitivity 0.003 vs 0.03 for the class) while its direction
    accuracy sat at chance: the measure reads 0 for a model deaf to the text and > 0 for a fresh one."""
    import torch

    from ppflow.experiments.video import VideoDemoConfig, tiny_wan, word_sensitivity

    torch.manual_seed(0)
    cfg = VideoDemoConfig.quick()
    model = tiny_wan(cfg).eval()
    fresh = word_sensitivity(model, cfg, sigmas=(0.5,), n=2)
    assert fresh["class"] > 1e-3 and fresh["direction"] > 1e-3
    for block in model.blocks:  # cross-attention writes nothing: the text cannot reach the velocity
        torch.nn.init.zeros_(block.attn2.to_out[0].weight)
        torch.nn.init.zeros_(block.attn2.to_out[0].bias)
    deaf = word_sensitivity(model, cfg, sigmas=(0.5,), n=2)
    assert deaf == {"class": 0.0, "direction": 0.0}
