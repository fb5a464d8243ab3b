import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppflow.cli import main
from ppflow.models import create_model
from tests.conftest import randomize

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = randomize(create_model("PPF-tiny-2", in_channels=1, num_classes=10, input_size=16, learn_sigma=False))
    model.save_pretrained(path)
    return path


def run(*argv) -> int:
    return main(["sample", *map(str, argv)])


def test_npz_and_png_for_a_pixel_model(pixel_model, tmp_path):
    npz, png = tmp_path / "s.npz", tmp_path / "g.png"
    rc = run("--ckpt", pixel_model, "--num", 5, "--batch-size", 2, "--steps", 4, "--cfg", "1,3", "--labels", "0,7",
             "--npz", npz, "--out", png, "--no-progress")
    assert rc == 0 and png.exists()
    data = np.load(npz)
    assert data["arr_0"].shape == (5, 16, 16, 1) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [0, 7, 0, 7, 0]
    # same seed, other batch size: the same samples (per-sample noise); other seed: different ones
    rc = run("--ckpt", pixel_model, "--num", 5, "--batch-size", 5, "--steps", 4, "--cfg", "1,3", "--labels", "0,7",
             "--npz", tmp_path / "t.npz", "--no-progress")
    assert rc == 0
    assert np.abs(np.load(tmp_path / "t.npz")["arr_0"].astype(int) - data["arr_0"]).max() <= 1
    run("--ckpt", pixel_model, "--num", 5, "--steps", 4, "--seed", 1, "--npz", tmp_path / "u.npz", "--no-progress")
    assert not np.array_equal(np.load(tmp_path / "u.npz")["arr_0"], data["arr_0"])


def test_clear_errors(pixel_model, tmp_path, capsys):
    out = ["--npz", tmp_path / "x.npz", "--no-progress", "--steps", 2]
    assert run("--ckpt", pixel_model, "--cfg", "1,3,4", *out) == 2
    assert "3 CFG scales" in capsys.readouterr().err
    assert run("--ckpt", pixel_model, "--atol", "1e-3", *out) == 2
    assert "--atol do(es) not apply to --method heun" in capsys.readouterr().err
    assert run("--ckpt", pixel_model, "--labels", "3,12", *out) == 2
    assert "outside the model's classes" in capsys.readouterr().err
    assert run("--ckpt", pixel_model, "--steps", 2) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_latent_model_is_decoded_by_its_vae(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    model = randomize(create_model("SiT-tiny/2", num_classes=4, input_size=8, vae=str(tmp_path / "vae")))
    model.save_pretrained(tmp_path / "model")
    rc = run("--ckpt", tmp_path / "model", "--num", 3, "--steps", 2, "--method", "euler", "--cfg", "2",
             "--guidance-channels", 3, "--npz", tmp_path / "s.npz", "--no-progress")
    assert rc == 0
    data = np.load(tmp_path / "s.npz")
    assert data["arr_0"].shape == (3, 16, 16, 3) and set(data["arr_1"].tolist()) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_torchrun_shards_and_writes_exactly_num(pixel_model, tmp_path):
    args = ["--ckpt", pixel_model, "--num-samples", 7, "--batch-size", 2, "--steps", 3, "--method", "euler",
            "--cfg", "1,2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "ppflow.cli", "sample", *map(str, args), "--npz", str(tmp_path / "dist.npz")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    assert not list(tmp_path.glob(".*shards"))  # shard files cleaned up
    dist = np.load(tmp_path / "dist.npz")
    torch.set_num_threads(1)
    try:
        assert run(*args, "--npz", tmp_path / "one.npz") == 0
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    one = np.load(tmp_path / "one.npz")
    assert dist["arr_0"].shape == (7, 16, 16, 1)
    assert dist["arr_1"].tolist() == one["arr_1"].tolist()
    assert np.abs(dist["arr_0"].astype(int) - one["arr_0"]).max() <= 1


def test_stage_swap_checkpoint_spec(pixel_model, tmp_path):
    """--ckpt A+B samples stage 0 with A and stage 1 with B; A+A equals A alone."""
    sit = tmp_path / "sit"
    randomize(create_model("SiT-tiny/2", schedule="1:2x2", in_channels=1, num_classes=10, input_size=16,
                           learn_sigma=False), seed=3).save_pretrained(sit)
    common = ["--num", 4, "--steps", 4, "--cfg", "1,2", "--labels", "1,2", "--no-progress"]
    assert run("--ckpt", pixel_model, "--npz", tmp_path / "a.npz", *common) == 0
    assert run("--ckpt", f"{pixel_model}+{pixel_model}", "--npz", tmp_path / "aa.npz", *common) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "aa.npz")["arr_0"])
    assert run("--ckpt", f"{pixel_model}+{sit}", "--npz", tmp_path / "ab.npz", *common) == 0
    assert not np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "ab.npz")["arr_0"])
