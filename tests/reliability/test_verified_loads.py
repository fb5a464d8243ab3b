"""Verified loads: a byte flipped in a file ppflow wrote is refused by every loader, with a clear error."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import ppflow
from ppflow.cli import main as cli
from ppflow.io import DamagedFileError, content_sha256
from ppflow.train import load_checkpoint, train
from tests.conftest import randomize
from tests.reliability.conftest import flip_middle


@pytest.fixture
def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_damaged_model_safetensors_is_refused(tmp_path):
    model = randomize(ppflow.create_model("PPF-tiny-2", num_classes=10, input_size=8))
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    flip_middle(weights)
    with pytest.raises(DamagedFileError, match=f"{weights} is damaged") as e:
        ppflow.load_model(tmp_path / "m")
    assert "\n" not in str(e.value) and "verify=False" in str(e.value)
    back = ppflow.load_model(tmp_path / "m", verify=False)  # a deliberate edit loads when asked
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


def test_damaged_ema_folder_is_refused_by_the_cli(copy, tmp_path, capsys):
    flip_middle(copy / "ema" / "model.safetensors")
    assert cli(["convert", str(copy / "ema"), str(tmp_path / "out")]) == 2
    assert "is damaged" in capsys.readouterr().err
    assert cli(["sample", "--ckpt", str(copy / "ema"), "--num", "2", "--steps", "2", "--out",
                str(tmp_path / "s.png")]) != 0
    assert "is damaged" in capsys.readouterr().err
    # --no-verify takes the edit; the converted copy carries a fresh hash and loads verified
    assert cli(["convert", str(copy / "ema"), str(tmp_path / "out"), "--no-verify"]) == 0
    ppflow.load_model(tmp_path / "out")


def test_damaged_training_checkpoint_is_refused(copy, capsys):
    last = copy / "checkpoints" / "last.pt"
    assert isinstance(torch.load(last, weights_only=True)["sha256"], str)  # still weights_only-loadable
    flip_middle(last)
    with pytest.raises(DamagedFileError, match=f"{last} is damaged"):
        load_checkpoint(copy)
    with pytest.raises(DamagedFileError, match="is damaged"):
        ppflow.load_model(last)
    with pytest.raises(DamagedFileError, match="is damaged"):
        train(resume=copy)
    for cmd in (["info", str(last)], ["convert", str(last), str(copy / "conv")], ["train", "--resume", str(copy)]):
        assert cli(cmd) != 0, cmd
        err = capsys.readouterr().err
        assert f"{last} is damaged" in err and err.count("\n") == 1, err
    assert load_checkpoint(copy, verify=False)["step"] == 2
    ppflow.load_model(last, verify=False)
    res = train(resume=copy, overrides={"max_steps": 3}, verify=False)  # deliberate edit: resume anyway
    assert res.step == 3 and load_checkpoint(copy)["step"] == 3  # the new checkpoint carries a fresh hash


def test_files_without_a_hash_load_as_before(run, tmp_path):
    # a safetensors folder from another project (no metadata), and a checkpoint written before hashes
    model = ppflow.load_model(run / "ema")
    folder = tmp_path / "foreign"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ppflow.load_model(folder).state_dict().items())
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del state["sha256"]
    old = tmp_path / "old" / "checkpoints" / "last.pt"
    old.parent.mkdir(parents=True)
    torch.save(state, old)
    assert load_checkpoint(old)["step"] == 2
    ppflow.load_model(old)


def test_content_hash_covers_values_dtypes_and_shapes_not_order():
    a = {"w": torch.arange(6.0).reshape(2, 3), "step": 3, "cfg": {"lr": 1e-4, "betas": (0.9, 0.99)}}
    h = content_sha256(a)
    assert h == content_sha256({"cfg": {"betas": (0.9, 0.99), "lr": 1e-4}, "step": 3, "w": a["w"].clone()})
    for other in ({**a, "w": a["w"].reshape(3, 2)}, {**a, "w": a["w"].double()}, {**a, "step": 4},
                  {**a, "cfg": {"lr": 1e-4, "betas": [0.9, 0.99]}}, {**a, "w": a["w"] + 1e-7}):
        assert content_sha256(other) != h


def test_info_checks_the_weights_it_describes(copy, capsys):
    """`ppflow info` on a model folder reads the weights too: a damaged file is refused, --no-verify describes it."""
    flip_middle(copy / "ema" / "model.safetensors")
    assert cli(["info", str(copy / "ema")]) == 2
    assert "is damaged" in capsys.readouterr().err
    assert cli(["info", str(copy / "ema"), "--no-verify"]) == 0
    flip_middle(copy / "checkpoints" / "last.pt")
    assert cli(["info", str(copy / "checkpoints" / "last.pt"), "--no-verify"]) == 0
