"""Training loop options and bad-input errors (tiny PPF models on digits, CPU)."""

import csv
import dataclasses

import pytest
import torch

import ppflow
from ppflow.cli import main as cli
from ppflow.train import ConfigError, NonFiniteLossError, TrainConfig, load_checkpoint, train


def cfg_for(out, model="PPF-tiny-2", **kw):
    kw = {"batch_size": 8, "max_steps": 4, "log_every": 2, "save_every": 2, "progress": False,
          "tensorboard": False, **kw}
    cfg = TrainConfig(out=str(out), **kw)
    cfg.model.name = model
    cfg.sample.every = 0
    return cfg


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_goes_down_on_digits(tmp_path):
    cfg = cfg_for(tmp_path / "run", batch_size=32, max_steps=60, log_every=10, save_every=1000)
    cfg.optim.lr = 2e-3
    cfg.ema.decay = 0.9
    res = train(cfg)
    rows = metrics(res.run_dir)
    assert float(rows[-1]["loss"]) < 0.8 * float(rows[0]["loss"])
    assert res.loss == float(rows[-1]["loss"]) and res.steps_per_sec > 0


def test_ablation_options_run_and_warmup_is_logged(tmp_path):
    cfg = cfg_for(tmp_path / "run", model="PPF-tiny-3", grad_accum=2, grad_checkpointing=True, batch_size=6)
    cfg.flow.time_sampling, cfg.flow.density, cfg.flow.shares = "all_t", "logit-normal", "density"
    cfg.optim.warmup_steps, cfg.optim.grad_clip = 4, None
    cfg.data.random_flip = True
    res = train(cfg)
    rows = metrics(res.run_dir)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.5e-4, 1e-4])  # lr of the last step in each row
    assert all(r["loss_stage2"] for r in rows)


def test_unconditional_iid_training(tmp_path):
    cfg = cfg_for(tmp_path / "run", max_steps=2)
    cfg.model.overrides = {"num_classes": 0, "learn_sigma": False}
    cfg.flow.time_sampling = "iid"
    res = train(cfg)
    assert res.model_config.num_classes == 0 and ppflow.load_model(res.ema_dir).y_embedder is None


def test_sample_grids_and_tensorboard(tmp_path):
    cfg = cfg_for(tmp_path / "run", max_steps=2, tensorboard=True)
    cfg.sample.every, cfg.sample.count, cfg.sample.steps, cfg.sample.cfg_scale = 1, 4, 3, 2.0
    res = train(cfg)
    assert sorted(p.name for p in (res.run_dir / "samples").iterdir()) == ["step-0000001.png", "step-0000002.png"]
    assert list((res.run_dir / "tb").iterdir())


def test_init_from_another_run(tmp_path, capsys):
    first = train(cfg_for(tmp_path / "a", max_steps=2))
    cfg = cfg_for(tmp_path / "b", max_steps=1)
    cfg.model.init = str(first.ema_dir)
    cfg.optim.lr = 1e-12
    cfg.ema.decay = 0.0
    res = train(cfg)
    start = ppflow.load_model(first.ema_dir).state_dict()
    for k, v in ppflow.load_model(res.ema_dir).state_dict().items():
        torch.testing.assert_close(v, start[k], atol=1e-8, rtol=0)
    assert load_checkpoint(res.checkpoint)["config"]["model"]["init"] == str(first.ema_dir)
    named = ppflow.load_model(first.ema_dir)
    nameless = type(named)(dataclasses.replace(named.config, name=""))
    nameless.save_pretrained(tmp_path / "nameless")  # e.g. an adapted 4x4-base model, which has no paper name
    capsys.readouterr()
    cfg = cfg_for(tmp_path / "c", model="SiT-tiny/2", max_steps=1)
    cfg.model.init = str(tmp_path / "nameless")
    train(cfg)
    log = capsys.readouterr()
    assert f"ppflow train: the model of {tmp_path / 'nameless'} (" in log.out + log.err  # not the unused --model.name


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, capsys):
    def poison(ev):  # after step 3, i.e. after the step-2 checkpoint
        if ev.step == 3:
            with torch.no_grad():
                next(ev.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 4 .*Last good checkpoint: .*last.pt \(step 2\)"):
        train(cfg_for(tmp_path / "run"), callbacks=[poison])
    ck = load_checkpoint(tmp_path / "run")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_bad_inputs_give_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--model", "PPF-tiny-2", "--max-steps", "2", "--progress", "false", "--batch-size", "8"]
    cases = [
        (["--data", "fashion-mnist", "--data-path", "nowhere"], "Fashion-MNIST train files not found in nowhere"),
        (["--data", "digits", "--data.image-size", "10"], "not divisible by stage 0 patch 4x4"),
        (["--data", "digits", "--batch-size", "6", "--grad-accum", "4"], "multiple of 4"),
        (["--data", "digits", "--data.limit", "4"], "fewer than one global batch"),
        (["--data", "digits", "--model.in-channels", "3"], "contradicts the data"),
        (["--resume", "missing-run"], "does not exist"),
    ]
    for extra, msg in cases:
        assert cli(base + extra + ["--out", "r"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and err.count("\n") == 0, err


def test_resume_rejects_a_changed_model(tmp_path):
    train(cfg_for(tmp_path / "a", max_steps=2))
    with pytest.raises(ConfigError, match=r"differs from the config in schedule \(checkpoint '0.5:4x4,1:2x2', config '0.5:4x4,0.75:2x4,1:2x2'\)"):
        train(resume=tmp_path / "a", overrides={"model.schedule": "ppf3", "max_steps": 4})
    with pytest.raises(ConfigError, match="expects 1x16x16 inputs but digits gives 1x24x24"):
        train(resume=tmp_path / "a", overrides={"data.image_size": 24, "max_steps": 4})
    with pytest.raises(ValueError, match="not a ppflow training checkpoint"):
        (tmp_path / "x.pt").write_bytes(b"junk")
        train(resume=tmp_path / "x.pt")
