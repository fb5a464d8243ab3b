"""torchrun on 2 CPU processes (gloo): DDP and FSDP2 equal one process with the same global batch."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppflow.train import TrainConfig, load_checkpoint, train

ARGS = ["--model", "PPF-tiny-3", "--data", "digits", "--batch-size", "8", "--max-steps", "4", "--log-every", "2",
        "--save-every", "2", "--progress", "false", "--tensorboard", "false", "--sample.every", "0"]


def torchrun(out: Path, *extra: str) -> None:
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun_bin), "--nproc_per_node", "2", "--standalone", "-m", "ppflow.cli", "train", *ARGS,
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def one_process(out: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(batch_size=8, max_steps=4, log_every=2, save_every=2, grad_accum=2, out=str(out),
                      progress=False, tensorboard=False, **kw)
    cfg.model.name = "PPF-tiny-3"
    cfg.sample.every = 0
    return cfg


def losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["step"] == cb["step"]
    for key in ("model", "ema"):
        for k in ca[key]:
            torch.testing.assert_close(ca[key][k], cb[key][k], atol=atol, rtol=0, msg=f"{key}.{k}")


@pytest.mark.slow
def test_ddp_equals_one_process_and_resumes_on_another_world_size(tmp_path):
    torchrun(tmp_path / "ddp")
    ref = train(one_process(tmp_path / "ref"))  # 1 process x 2 accumulation steps = same 2 shards
    assert_same_weights(tmp_path / "ddp", ref.run_dir, atol=1e-6)
    assert load_checkpoint(tmp_path / "ddp")["world_size"] == 2
    assert [s for s, _ in losses(tmp_path / "ddp")] == ["2", "4"]
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / "ddp"), losses(ref.run_dir)):
        assert s1 == s2 and float(l1) == pytest.approx(float(l2), rel=1e-6)

    # the 2-process checkpoint continues in one process (different world size), same trajectory
    train(resume=tmp_path / "ddp", overrides={"max_steps": 6, "grad_accum": 2})
    train(resume=ref.run_dir, overrides={"max_steps": 6})
    assert_same_weights(tmp_path / "ddp", ref.run_dir, atol=1e-6)


@pytest.mark.slow
def test_fsdp_equals_one_process(tmp_path):
    torchrun(tmp_path / "fsdp", "--parallel", "fsdp")
    ref = train(one_process(tmp_path / "ref"))
    assert_same_weights(tmp_path / "fsdp", ref.run_dir, atol=1e-6)
    # its checkpoint (full state dicts, optimizer keyed by name) resumes without FSDP
    res = train(resume=tmp_path / "fsdp", overrides={"max_steps": 5, "grad_accum": 2})
    assert res.step == 5


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_saves_it(tmp_path):
    from tests import torchrun as tr

    out_dir = tmp_path / "stop"
    args = [a for a in ARGS]
    args[args.index("--max-steps") + 1] = "100000"
    args[args.index("--save-every") + 1] = "100000"
    args[args.index("--log-every") + 1] = "1"
    out, seconds = tr.sigterm_after_rows(out_dir, 2, "train", *args, "--out", str(out_dir))
    assert seconds < 25, (seconds, out[-3000:])  # within a step, not torchrun's 30 s kill timeout
    ckpt = load_checkpoint(out_dir)
    rows = tr.metrics(out_dir)
    assert out.count("stopped by SIGTERM: step ") == 1, out[-3000:]  # rank 0 speaks, once
    assert f"stopped by SIGTERM: step {ckpt['step']}/" in out
    assert [int(r["step"]) for r in rows] == list(range(1, ckpt["step"] + 1))  # each row once, up to the stop
    res = train(resume=out_dir, overrides={"max_steps": ckpt["step"] + 1, "grad_accum": 2})  # it resumes
    assert res.step == ckpt["step"] + 1
