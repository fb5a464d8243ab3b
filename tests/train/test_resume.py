"""Checkpoints and exact resume: a stopped-and-resumed run repeats the uninterrupted one."""

import csv
import signal

import pytest
import torch

import ppflow
from ppflow.cli import main as cli
from ppflow.train import TrainConfig, load_checkpoint, train

EXACT = ["step", "loss", "loss_stage0", "loss_stage1", "grad_norm", "lr"]


def rows(run, fields=EXACT):
    with open(run / "metrics.csv", newline="") as f:
        return [{k: r[k] for k in fields} for r in csv.DictReader(f)]


def tiny_cfg(out, **kw):
    kw = {"batch_size": 8, "max_steps": 6, "log_every": 2, "save_every": 100, "progress": False,
          "tensorboard": False, **kw}
    cfg = TrainConfig(out=str(out), **kw)
    cfg.sample.every = 0
    return cfg


def test_documented_resume_commands_give_identical_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--model", "PPF-tiny-2", "--data", "digits", "--batch-size", "16", "--save-every", "10"]
    assert cli(base + ["--max-steps", "20", "--out", "A"]) == 0
    assert cli(base + ["--max-steps", "10", "--out", "B"]) == 0
    assert load_checkpoint("B")["step"] == 10
    assert cli(["train", "--resume", "B", "--max-steps", "20"]) == 0

    a, b = rows(tmp_path / "A"), rows(tmp_path / "B")
    assert [r["step"] for r in a] == ["10", "20"] and a == b
    ca, cb = (torch.load(p / "checkpoints" / "last.pt", weights_only=True) for p in (tmp_path / "A", tmp_path / "B"))
    assert ca["step"] == cb["step"] == 20 and ca["data"] == cb["data"]
    for key in ("model", "ema"):
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert (tmp_path / "B" / "samples" / "step-0000020.png").exists()


def test_checkpoint_layout_and_exports(tmp_path):
    res = train(tiny_cfg(tmp_path / "run", max_steps=2, keep_every=2))
    ck = torch.load(res.checkpoint, weights_only=True)  # plain types only
    assert ck["format"] == "ppflow-train" and ck["step"] == 2 and ck["data"] == {"epoch": 0, "offset": 16}
    assert ck["config"]["batch_size"] == 8 and ck["config"]["model_config"] == res.model_config.to_dict()
    assert ck["rng"]["torch"].dtype == torch.uint8
    assert set(ck["optimizer"]["state"]) == set(ck["model"])  # keyed by parameter name
    assert (res.run_dir / "checkpoints" / "step-0000002.pt").exists() and (res.run_dir / "ema-0000002").is_dir()
    assert (res.run_dir / "config.yaml").exists()
    for path in (res.ema_dir, res.checkpoint):  # both load as the EMA model
        m = ppflow.load_model(path)
        assert all(torch.equal(v, ck["ema"][k]) for k, v in m.state_dict().items())
    assert not list(res.run_dir.rglob("*.tmp"))


def test_ctrl_c_saves_and_resume_matches(tmp_path):
    full = train(tiny_cfg(tmp_path / "full"))

    def interrupt(ev):
        if ev.step == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C in a terminal

    part = train(tiny_cfg(tmp_path / "part"), callbacks=[interrupt])
    assert part.interrupted and part.step == 3 and load_checkpoint(part.checkpoint)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    done = train(resume=tmp_path / "part")
    assert done.step == 6 and not done.interrupted
    assert rows(tmp_path / "part") == rows(tmp_path / "full") and len(rows(full.run_dir)) == 3


def test_keyboard_interrupt_between_steps_leaves_a_checkpoint(tmp_path):
    def boom(ev):
        if ev.step == 2:
            raise KeyboardInterrupt

    res = train(tiny_cfg(tmp_path / "run"), callbacks=[boom])
    assert res.interrupted and load_checkpoint(tmp_path / "run")["step"] == 2


def test_resume_can_fork_into_a_new_folder(tmp_path):
    train(tiny_cfg(tmp_path / "a", max_steps=4))
    res = train(resume=tmp_path / "a", overrides={"max_steps": 6, "out": str(tmp_path / "b")})
    assert res.run_dir == tmp_path / "b" and [r["step"] for r in rows(tmp_path / "b")] == ["2", "4", "6"]
    assert load_checkpoint(tmp_path / "a")["step"] == 4


def test_fresh_run_refuses_to_overwrite(tmp_path):
    train(tiny_cfg(tmp_path / "a", max_steps=1))
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_cfg(tmp_path / "a", max_steps=1))
