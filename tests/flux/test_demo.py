"""`ppflow flux demo --quick` and the `ppflow flux` command line."""

import json

from ppflow.cli import main


def test_quick_demo_trains_adapts_compares_and_reports(tmp_path, capsys):
    assert main(["flux", "demo", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["train"]) == {"base", "ppflux", "flux-ft", "adapter"}
    s = report["speed"]
    assert s["stages"] == [0, 0, 1, 1] and 1.4 < s["bound"] < 1.7 and s["speedup"] > 0
    ad = report["speeds"]["adapter"]
    assert ad["reference"] == "base" and ad["stages"] == [0, 0, 1, 1] and 1.4 < ad["bound"] < 1.7
    assert all((tmp_path / f"grid-{n}.png").exists() for n in report["train"])
    assert "speed-up" in (tmp_path / "report.md").read_text()
    rows = {r["model"]: r for r in report["rows"]}
    keys = {"method", "data_free", "train_compute", "classifier_fid", "prompt_accuracy", "paired_agreement",
            "paired_psnr", "extra_params", "speedup", "flops_bound", "source"}
    assert all(keys <= set(r) for r in rows.values())
    assert rows["base"]["source"] and rows["adapter"]["data_free"] and not rows["ppflux"]["data_free"]
    assert 1 < rows["adapter"]["train_compute"] < 1.5 and 0 < rows["adapter"]["extra_params"] < 1


def test_flux_train_command_line(tmp_path, capsys):
    assert main(["flux", "train", "--print-config", "--model.base", "b", "--data.cache", "c",
                 "--train.mode", "full", "--model.schedule", "1:2x2"]) == 0
    out = capsys.readouterr().out
    assert "mode: full" in out and "schedule: 1:2x2" in out
    assert main(["flux", "train", "--data.cache", "c"]) == 2
    assert "model.base is not set" in capsys.readouterr().err
    assert main(["flux", "train", "--model.base", "b", "--data.cache", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err
