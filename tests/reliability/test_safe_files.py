"""Atomic saves (a crash mid-write keeps the previous file) and loading that never runs pickled code."""

import os
import shutil
from pathlib import Path

import pytest
import torch

import ppflow
import ppflow.train.checkpoint as ckpt_io
from ppflow import io as ppio
from ppflow.cli import main as cli
from ppflow.train import load_checkpoint, train


class Crash(Exception):
    pass


def crash_halfway(real):
    """A writer that leaves half of the real bytes on disk and then dies."""
    def write(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise Crash
    return write


def test_a_crash_mid_write_keeps_the_previous_files(run, tmp_path, monkeypatch):
    shutil.copytree(run, tmp_path / "run")
    last, weights = tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "run" / "ema" / "model.safetensors"
    before = last.read_bytes(), weights.read_bytes()
    state = load_checkpoint(last)
    monkeypatch.setattr(ckpt_io.torch, "save", crash_halfway(torch.save))
    with pytest.raises(Crash):
        ckpt_io.save_checkpoint({**state, "step": 99}, last)
    monkeypatch.setattr(ppio, "save_file", crash_halfway(ppio.save_file))
    model = ppflow.load_model(tmp_path / "run" / "ema")
    with pytest.raises(Crash):
        model.save_pretrained(tmp_path / "run" / "ema")
    monkeypatch.undo()
    assert (last.read_bytes(), weights.read_bytes()) == before
    assert load_checkpoint(last)["step"] == 2  # verified
    ppflow.load_model(tmp_path / "run" / "ema")
    assert train(resume=tmp_path / "run", overrides={"max_steps": 3}).step == 3  # the leftover .tmp is harmless


class Payload:
    """Unpickling this would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_no_loader_runs_pickled_code(run, tmp_path, capsys):
    marker = tmp_path / "ran"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["log"] = Payload(marker)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match="does not unpickle"):
        ppflow.load_model(tmp_path / "run")
    assert cli(["train", "--resume", str(tmp_path / "run")]) == 2
    assert cli(["info", str(tmp_path / "run")]) == 2
    capsys.readouterr()
    assert not marker.exists()
