"""SIGINT / SIGTERM: a stop writes the metrics row of its step and a checkpoint, a resumed run logs the rows of
one never stopped, a signal during start-up stops train() before its first step, and every train() call gives
the previous handlers back, however it ends, so a later signal is never swallowed."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ppflow.train import engine, load_checkpoint, sit, train
from ppflow.train.signals import TrainingInterrupted
from tests.reliability.conftest import tiny_cfg

EXACT = ["step", "loss", "loss_stage0", "loss_stage1", "grad_norm", "lr"]
ROOT = Path(__file__).resolve().parents[2]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: r[k] for k in EXACT} for r in csv.DictReader(f)]


@pytest.fixture
def sentinel():
    """A SIGTERM handler of the test's own, so a handler train() failed to restore shows (and never kills pytest)."""
    received = []

    def handler(signum, frame):
        received.append(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler, received
    finally:
        signal.signal(signal.SIGTERM, old)


def assert_restored(handler) -> None:
    assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("log_every", [1, 4])
def test_a_stop_writes_its_metrics_row_and_the_resumed_rows_match(tmp_path, sentinel, capsys, log_every):
    handler, received = sentinel
    full = train(tiny_cfg(tmp_path / "full", max_steps=8, log_every=log_every))

    def stop_at_3(ev):
        if ev.step == 3:
            signal.raise_signal(signal.SIGTERM)

    capsys.readouterr()
    part = train(tiny_cfg(tmp_path / "part", max_steps=8, log_every=log_every), callbacks=[stop_at_3])
    out = capsys.readouterr().out
    assert part.interrupted and part.stop_signal == signal.SIGTERM and part.step == 3 and received == []
    assert load_checkpoint(part.checkpoint)["step"] == 3
    got = rows(part.run_dir)
    assert got[-1]["step"] == "3"  # the row of the stop step is written, off the log grid too
    if log_every == 1:
        assert got == rows(full.run_dir)[:3]
    summary = next(line for line in out.splitlines() if line.startswith("stopped by SIGTERM: step 3/8"))
    assert f"loss {float(got[-1]['loss']):.4f}," in summary  # the loss of the stop step, not an older row
    assert_restored(handler)

    done = train(resume=part.run_dir)
    assert done.step == 8 and not done.interrupted
    assert rows(part.run_dir) == rows(full.run_dir)  # no missing row, no row averaging two windows
    assert [r["step"] for r in rows(full.run_dir)] == [str(s) for s in range(log_every, 9, log_every)]


def test_train_twice_in_one_process_a_later_sigterm_is_never_swallowed(tmp_path, sentinel, monkeypatch):
    handler, received = sentinel
    first = train(tiny_cfg(tmp_path / "a", max_steps=2))
    assert first.step == 2 and not first.interrupted
    assert_restored(handler)
    os.kill(os.getpid(), signal.SIGTERM)  # after the first call returned: reaches the handler it reached before
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received == [signal.SIGTERM]

    # a second call, SIGTERM from another thread while it trains: it stops after the current step
    go = threading.Event()
    sender = threading.Thread(target=lambda: go.wait(30) and os.kill(os.getpid(), signal.SIGTERM))
    sender.start()
    second = train(tiny_cfg(tmp_path / "b", max_steps=200), callbacks=[lambda ev: ev.step == 2 and go.set()])
    sender.join()
    assert second.interrupted and second.stop_signal == signal.SIGTERM and 2 <= second.step < 200
    assert load_checkpoint(tmp_path / "b")["step"] == second.step and received == [signal.SIGTERM]
    assert_restored(handler)

    # a third call, SIGTERM from a thread during its start-up (while the data set is built): stopped before step 1
    real = sit.build_dataset

    def build_with_signal(cfg):
        t = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
        t.start()
        t.join()
        time.sleep(0.05)  # the main thread runs the Python handler at its next instruction
        return real(cfg)

    monkeypatch.setattr(sit, "build_dataset", build_with_signal)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM during start-up") as e:
        train(tiny_cfg(tmp_path / "c", max_steps=200))
    monkeypatch.undo()
    assert isinstance(e.value, KeyboardInterrupt) and e.value.signum == signal.SIGTERM
    assert not (tmp_path / "c" / "checkpoints" / "last.pt").exists() and received == [signal.SIGTERM]
    assert_restored(handler)

    # every other way out gives the handlers back too: an error in a callback, a resume with nothing to do
    def boom(ev):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        train(tiny_cfg(tmp_path / "d", max_steps=3), callbacks=[boom])
    assert_restored(handler)
    assert train(resume=tmp_path / "a").step == 2  # already at max_steps
    assert_restored(handler)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_cfg(tmp_path / "a", max_steps=2))
    assert_restored(handler)


def test_a_signal_during_the_last_save_still_reports_the_stop(tmp_path, sentinel, monkeypatch):
    handler, received = sentinel
    real = engine.Engine.save

    def save_then_signal(self):
        path = real(self)
        if self.step == self.cfg.max_steps:
            signal.raise_signal(signal.SIGTERM)
        return path

    monkeypatch.setattr(engine.Engine, "save", save_then_signal)
    res = train(tiny_cfg(tmp_path / "run", max_steps=2))
    assert res.step == 2 and res.interrupted and res.stop_signal == signal.SIGTERM  # the caller hears of it
    assert received == []
    assert_restored(handler)


def test_ctrl_c_while_a_command_starts_is_one_line(monkeypatch, capsys):
    from ppflow import cli

    def interrupted(name):
        raise KeyboardInterrupt  # as Ctrl-C while the command's modules are imported

    monkeypatch.setattr(cli, "_module", interrupted)
    assert cli.main(["train", "--model", "PPF-tiny-2"]) == 130
    assert capsys.readouterr().err == "ppflow train: interrupted\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_command_line_stops_on_a_signal_at_start_up_without_a_traceback(tmp_path, sig):
    cmd = [sys.executable, "-m", "ppflow.cli", "train", "--model", "PPF-tiny-2", "--data", "digits", "--batch-size",
           "16", "--max-steps", "100000000", "--save-every", "100000000", "--threads", "1", "--progress", "false",
           "--tensorboard", "false", "--sample.every", "0", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # the signal lands once the run folder is locked: start-up or first steps
    while not (tmp_path / "run" / ".lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert err.startswith("ppflow train: stopped") and err.count("\n") == 1, err
