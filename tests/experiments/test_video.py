"""`ppflow video-demo --quick`: train a tiny Wan, distil a spatio-temporal adapter, compare, report."""

import json

from ppflow.cli import main


def test_quick_video_demo_reports_paired_rows(tmp_path):
    assert main(["video-demo", "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    rows = {w["model"]: w for w in r["rows"]}
    assert set(rows) == {"base", "adapter", "real clips"} and rows["base"]["base"] and not rows["adapter"]["base"]
    for key in ("family", "schedule", "cache", "speedup", "flops_bound", "direction_accuracy"):
        assert key in rows["adapter"]
    assert rows["adapter"]["flops_bound"] > 1.3 and rows["real clips"]["direction_accuracy"] == 1.0
    assert (tmp_path / "clips-adapter.png").exists() and (tmp_path / "report.md").exists()
