"""A full disk: a failed save removes its temporary file, keeps the last good checkpoint and says, in one line,
that the disk is full, where, and how much the file needs. On a real (small tmpfs) file system where the test
may mount one, and with a monkeypatched write that fails with ENOSPC everywhere."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import ppflow
import ppflow.train.checkpoint as ckpt_io
from ppflow import io as ppio
from ppflow.cli import main as cli
from ppflow.io import DiskFullError
from ppflow.train import load_checkpoint, train
from tests.reliability.conftest import tiny_cfg

TRAIN = ["--threads", "1", "--progress", "false", "--tensorboard", "false", "--sample.every", "0"]


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def fill(folder: Path) -> Path:
    """Write zeros into folder/filler until the file system is full."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (2**20, 2**12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs, when this process may mount one (root with CAP_SYS_ADMIN); skipped otherwise."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_a_full_tmpfs_stops_training_and_keeps_the_last_checkpoint(small_disk, capsys):
    out = small_disk / "run"

    def fill_at_step_2(ev):
        if ev.step == 2:
            fill(small_disk)

    with pytest.raises(DiskFullError) as e:
        train(tiny_cfg(out, max_steps=3, save_every=1, log_every=100), callbacks=[fill_at_step_2])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"disk full: cannot write {out / 'checkpoints' / 'last.pt'}")
    assert f"the file system of {out / 'checkpoints'}" in msg and "the checkpoint needs about" in msg
    assert f"the last good checkpoint is {out / 'checkpoints' / 'last.pt'} (step 1)" in msg and "--resume" in msg
    assert temporary_files(out) == []  # no .last.pt.tmp, no .ema.tmp
    assert load_checkpoint(out)["step"] == 1  # verified
    ppflow.load_model(out / "ema")
    (small_disk / "filler").unlink()
    assert train(resume=out).step == 3

    # the command line: a disk too small for the first checkpoint; one line, non-zero exit, nothing left over
    with open(small_disk / "filler", "wb") as f:  # leave about 2 MB: less than the 3 MB checkpoint
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - 2 * 2**20))
    capsys.readouterr()
    rc = cli(["train", "--model", "PPF-tiny-2", "--data", "digits", "--batch-size", "16", "--max-steps", "1",
              "--out", str(small_disk / "cli"), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ppflow train: error: disk full: cannot write ") and "needs about" in err
    assert "no checkpoint of this run exists yet" in err
    assert temporary_files(small_disk / "cli") == []

    # convert into a full disk: the weights file is not left half-written
    fill(small_disk)
    assert cli(["convert", str(out / "ema"), str(small_disk / "converted")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppflow convert: error: disk full: cannot write ") and err.count("\n") == 1, err
    assert temporary_files(small_disk) == [] and not (small_disk / "converted" / "model.safetensors").exists()


def enospc_halfway(real):
    """A writer that puts half of the real bytes on disk and then fails as a full disk does."""
    def write(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_enospc_while_saving_a_checkpoint_is_one_line_and_keeps_the_old_one(run, tmp_path, monkeypatch, capsys):
    shutil.copytree(run, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    monkeypatch.setattr(ckpt_io.torch, "save", enospc_halfway(torch.save))
    rc = cli(["train", "--resume", str(tmp_path / "run"), "--max-steps", "3"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"disk full: cannot write {last}" in err and "the checkpoint needs about" in err
    assert f"the last good checkpoint is {last} (step 2)" in err
    assert last.read_bytes() == before and temporary_files(tmp_path / "run") == []
    assert train(resume=tmp_path / "run", overrides={"max_steps": 3}).step == 3


def test_torch_saves_ios_error_on_a_full_disk_is_named_by_the_free_space(run, tmp_path, monkeypatch):
    # torch.save reports a full disk as RuntimeError("basic_ios::clear: iostream error"), with no errno
    state = load_checkpoint(run)

    def ios_error(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(ckpt_io.torch, "save", ios_error)
    monkeypatch.setattr(ppio, "free_bytes", lambda path: 1000)
    with pytest.raises(DiskFullError, match=r"^disk full: cannot write .*last\.pt: the checkpoint needs about "
                                            r"[0-9.]+ MB and the file system of .* has 0\.0 MB free$"):
        ckpt_io.save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")
    assert temporary_files(tmp_path) == []


def test_enospc_while_exporting_the_ema_folder_removes_the_temporary_folder(run, tmp_path, monkeypatch):
    shutil.copytree(run, tmp_path / "run")
    ema = tmp_path / "run" / "ema" / "model.safetensors"
    before = ema.read_bytes()
    monkeypatch.setattr(ppio, "save_file", enospc_halfway(ppio.save_file))
    with pytest.raises(DiskFullError) as e:
        train(resume=tmp_path / "run", overrides={"max_steps": 3})
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and "disk full: cannot write" in msg and "the weights file needs about" in msg
    assert "checkpoints/last.pt holds step 3 (written before the failure)" in msg
    assert ema.read_bytes() == before and temporary_files(tmp_path / "run") == []
    assert not (tmp_path / "run" / ".ema.tmp").exists()
    assert load_checkpoint(tmp_path / "run")["step"] == 3
    assert train(resume=tmp_path / "run", overrides={"max_steps": 4}).step == 4


def test_a_metrics_row_cut_short_by_a_full_disk_is_removed(tmp_path, monkeypatch):
    import csv

    from ppflow.train.runlog import MetricsFile

    metrics = MetricsFile(tmp_path / "metrics.csv", 2, 0)
    metrics.write({"step": 1, "loss": 0.5})
    before = (tmp_path / "metrics.csv").read_bytes()

    def half_a_row(self, row):
        self.writer.writerow(["2", "0.4"])  # part of the row reaches the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerow", half_a_row)
    with pytest.raises(DiskFullError, match="^disk full: cannot write .*metrics.csv: the metrics row needs about"):
        metrics.write({"step": 2, "loss": 0.4})
    monkeypatch.undo()
    assert (tmp_path / "metrics.csv").read_bytes() == before
