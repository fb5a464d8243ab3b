"""`ppflow convert`, `ppflow adapt` and `ppflow info` end to end on tiny files."""

import json

import torch

import ppflow
from ppflow.cli import main
from ppflow.convert.formats import export_state
from tests.convert import reference as ref


def test_convert_adapt_info(tmp_path, capsys):
    sd = ref.random_state(1)
    torch.save(sd, tmp_path / "weights.pt")
    assert main(["convert", str(tmp_path / "weights.pt"), str(tmp_path / "sit"), "--from", "sit"]) == 0
    sit = ppflow.load_model(tmp_path / "sit")
    assert sit.config.name == "SiT-tiny/2" and torch.equal(export_state(sit, "sit")["blocks.1.mlp.fc1.weight"],
                                                           sd["blocks.1.mlp.fc1.weight"])
    assert main(["convert", str(tmp_path / "weights.pt"), str(tmp_path / "sit"), "--from", "sit"]) == 2  # exists

    assert main(["adapt", "--from", str(tmp_path / "weights.pt"), "--format", "sit", "--schedule", "ppf2",
                 "--out", str(tmp_path / "ppf")]) == 0
    assert ppflow.load_model(tmp_path / "ppf").config.schedule == "ppf2"

    capsys.readouterr()
    assert main(["info", str(tmp_path / "ppf"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["format"], d["name"], d["schedule"]) == ("ppflow", "PPF-tiny-2", "0.5:4x4,1:2x2")
    assert d["parameters"] == ppflow.load_model(tmp_path / "ppf").num_parameters()
    assert 0.5 < d["paper_fraction"] < 0.7

    assert main(["info", str(tmp_path / "weights.pt"), "--from", "dit"]) == 0
    out = capsys.readouterr().out
    assert "format      dit" in out and "100.0% of the one-stage baseline" in out and "epsilon" in out


def test_cli_errors_are_messages(tmp_path, capsys):
    torch.save(ref.random_state(1, width=48), tmp_path / "SiT-w48.pt")
    assert main(["info", str(tmp_path / "SiT-w48.pt")]) == 2
    assert "--num-heads" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "SiT-w48.pt"), "--num-heads", "4"]) == 0
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
