"""One writer per run folder: a second `ppflow train` on a folder in use is refused; a dead run's lock is not."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ppflow
from ppflow.train import load_checkpoint, train
from ppflow.train.lock import RunLockedError, lock_run
from tests.reliability.conftest import tiny_cfg

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-m", "ppflow.cli", "train", "--device", "cpu", "--threads", "1", "--progress", "false",
         "--tensorboard", "false", "--sample.every", "0", "--save-every", "100000"]
FRESH = ["--model", "PPF-tiny-2", "--data", "digits", "--batch-size", "16"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_holder(out: Path, *args: str, pause: bool = True) -> subprocess.Popen:
    """A `ppflow train` process that would run (practically) forever, returned once it holds out/.lock, then
    paused unless `pause=False` (SIGSTOP: it keeps the lock without taking CPU from the rest of the test)."""
    proc = subprocess.Popen([*TRAIN, *args, "--max-steps", "10000000", "--out", str(out)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the first run exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        lock = out / ".lock"
        if lock.exists() and lock.read_text().split()[:1] == [str(proc.pid)]:
            if pause:
                proc.send_signal(signal.SIGSTOP)
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the first run did not take the lock within 120 s")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind: the lock file stays behind
    proc.wait(timeout=30)
    proc.stderr.close()


@pytest.mark.slow
def test_second_train_on_the_same_out_is_refused_and_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = start_holder(out, *FRESH)
    try:
        second = subprocess.run([*TRAIN, *FRESH, "--max-steps", "1", "--out", str(out)], check=False, cwd=ROOT,
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = second.stderr.strip()
        assert f"{out} is in use by another ppflow train (pid {holder.pid}" in err and "\n" not in err, err
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):  # the Python API likewise
            train(tiny_cfg(out))
        assert holder.poll() is None  # the first run is still there
    finally:
        kill(holder)
    assert (out / ".lock").read_text().split()[0] == str(holder.pid)  # stale: its holder is dead
    res = train(tiny_cfg(out))  # ... and needs no cleanup
    assert res.step == 1 and (out / ".lock").read_text().split()[0] == str(os.getpid())


@pytest.mark.slow
def test_second_resume_is_refused_and_a_killed_run_leaves_a_verified_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(out))
    holder = start_holder(out, "--resume", str(out), "--save-every", "1", pause=False)  # saves after every step
    try:
        with pytest.raises(RunLockedError, match=f"{out} is in use by another ppflow train \\(pid {holder.pid}"):
            train(resume=out, overrides={"max_steps": 2})
        deadline = time.monotonic() + 60
        while load_checkpoint(out)["step"] < 4:  # verified reads while the holder keeps replacing the file
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
    finally:
        kill(holder)  # often in the middle of a save
    step = load_checkpoint(out)["step"]
    ppflow.load_model(out / "ema")
    assert train(resume=out, overrides={"max_steps": step + 1}).step == step + 1


def test_lock_is_exclusive_and_released(tmp_path):
    (tmp_path / ".lock").write_text("999999999 some-host\n")  # left by a dead run elsewhere: no effect
    first = lock_run(tmp_path)
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):  # exclusive even within one process
        lock_run(tmp_path)
    first.release()
    lock_run(tmp_path).release()
