"""`ppflow flux stack` on a quick flux demo run: every (adapter, cache) row, paired with the base."""

import json

from ppflow.cli import main


def test_stack_rows_on_a_quick_demo_run(tmp_path):
    assert main(["flux", "demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    assert main(["flux", "stack", "--run", str(tmp_path / "demo"), "--caches", "first_block", "--repeats", "1"]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "demo" / "stack" / "report.json").read_text())["rows"]}
    assert set(rows) == {"base", "adapter", "base+first_block", "adapter+first_block"}
    assert rows["base"]["base"] and rows["base"]["speedup"] == 1.0 and rows["base"]["paired_agreement"] == 1.0
    for key in ("family", "schedule", "cache", "speedup", "flops_bound", "prompt_accuracy", "fid"):
        assert key in rows["adapter+first_block"]
    assert rows["adapter"]["flops_bound"] > 1.3 and rows["adapter+first_block"]["cache"] == "first_block"


def test_stack_names_a_missing_run_and_a_wrong_cache(tmp_path, capsys):
    assert main(["flux", "stack", "--run", str(tmp_path)]) != 0
    assert "is not a finished `ppflow flux demo` run" in capsys.readouterr().err
    assert main(["flux", "stack", "--run", str(tmp_path), "--caches", "magic"]) != 0
    assert "unknown cache 'magic'" in capsys.readouterr().err
    assert main(["flux", "stack", "--run", str(tmp_path), "--caches", "taylorseer:interval=3,speed=2"]) != 0
    assert "unknown key 'speed'" in capsys.readouterr().err
