"""`ppflow eval` end to end on tiny inputs: ADM npz pairs, folders, statistics-only references, named datasets,
checkpoints it samples itself, and torchrun."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppflow.cli import main
from ppflow.models import create_model
from tests.conftest import randomize

from .conftest import shapes

ROOT = Path(__file__).resolve().parents[2]


def run_json(capsys, *argv) -> dict:
    assert main(["eval", *map(str, argv), "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    np.savez(d / "a.npz", shapes(6, size=20, channels=3, seed=1))
    np.savez(d / "b.npz", shapes(6, size=20, channels=3, seed=2))
    return d


def test_two_adm_npz_files(pair, tmp_path, capsys, inception):
    cache = tmp_path / "cache"
    r = run_json(capsys, pair / "a.npz", pair / "b.npz", "--cache-dir", cache)
    assert r["fid"] > 1 and r["sfid"] > 1 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert r["is"] is None and any("softmax" in n for n in r["notes"])
    assert r["n_samples"] == 6 and r["n_ref"] == 6
    cached = list((cache / "eval").glob("inception-b.npz-*.npz"))
    assert len(cached) == 1
    # the cached reference is reused: a set against itself is 0
    same = run_json(capsys, pair / "b.npz", pair / "b.npz", "--cache-dir", cache)
    assert same["fid"] == pytest.approx(0, abs=1e-6) and same["sfid"] == pytest.approx(0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    assert list((cache / "eval").glob("*.npz")) == cached

    # samples as a folder of PNGs, reference as precomputed ADM statistics (mu, sigma only)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(np.load(pair / "a.npz")["arr_0"]):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    with np.load(cached[0]) as c:
        np.savez(tmp_path / "stats.npz", mu=c["mu"], sigma=c["sigma"])
    s = run_json(capsys, folder, tmp_path / "stats.npz", "--cache-dir", cache)
    assert s["fid"] == pytest.approx(r["fid"], rel=1e-6)
    assert s["sfid"] is None and s["precision"] is None
    assert any("statistics only" in n for n in s["notes"]) and any("mu_s" in n for n in s["notes"])


def test_fashion_mnist_reference_adds_classifier_metrics(tmp_path, capsys, classifier_cache):
    from ppflow.eval.sources import load_dataset

    test = load_dataset("fashion-mnist-test", 28)
    np.savez(tmp_path / "s.npz", test.images[:200], test.labels[:200])  # 28x28 samples with their labels
    r = run_json(capsys, tmp_path / "s.npz", "fashion-mnist-test", "--no-inception", "--cache-dir", classifier_cache)
    assert r["fid"] is None and r["n_ref"] == 10000
    assert r["classifier_fid"] < 5 and r["classifier_accuracy"] > 0.4 and 1 < r["classifier_is"] <= 10
    assert r["classifier_test_accuracy"] > 0.4
    # the table names every metric
    assert main(["eval", str(tmp_path / "s.npz"), "fashion-mnist-test", "--no-inception", "--cache-dir",
                 str(classifier_cache), "--no-progress", "--max-samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "classifier FID" in out and "class accuracy" in out and "(50 images)" in out


def test_checkpoint_is_sampled_then_evaluated(tmp_path, capsys, classifier_cache, inception):
    model = randomize(create_model("PPF-tiny-2", in_channels=1, num_classes=10, input_size=32, learn_sigma=False))
    model.save_pretrained(tmp_path / "model")
    np.savez(tmp_path / "ref.npz", shapes(4, size=32, channels=1, seed=3))
    r = run_json(capsys, tmp_path / "model", tmp_path / "ref.npz", "--num-samples", 4, "--steps", 2, "--method",
                 "euler", "--labels", "0,1,2,3", "--classifier", "on", "--cache-dir", classifier_cache, "--no-pr")
    assert r["n_samples"] == 4 and r["fid"] > 0 and r["precision"] is None
    assert 0 <= r["classifier_accuracy"] <= 1 and r["samples"].startswith("model:euler-2")


def test_clear_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.npz"), "fashion-mnist-test"]) == 2
    assert "not a file, a folder, or a dataset name" in capsys.readouterr().err
    np.savez(tmp_path / "f.npz", np.zeros((3, 8, 8, 3), np.float32))
    assert main(["eval", str(tmp_path / "f.npz"), str(tmp_path / "f.npz")]) == 2
    assert "must be uint8" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "f.npz"), "x", "--batch-size", "0"]) == 2
    assert "argument --batch-size: must be >= 1, got 0" in capsys.readouterr().err
    np.savez(tmp_path / "u.npz", np.zeros((3, 8, 8, 3), np.uint8))
    assert main(["eval", str(tmp_path / "u.npz"), str(tmp_path / "u.npz"), "--steps", "10", "--cfg", "2"]) == 2
    assert "--steps, --cfg only apply when SAMPLES is a checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_gathers_the_same_numbers(pair, tmp_path, capsys, inception):
    args = [pair / "a.npz", pair / "b.npz", "--json", "--no-progress", "--cache-dir", tmp_path / "c1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "ppflow.cli", "eval", *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 prints
    one = run_json(capsys, *args[:2], "--cache-dir", tmp_path / "c2")
    for k in ("fid", "sfid", "precision", "recall"):
        assert lines[0][k] == pytest.approx(one[k], rel=1e-4, abs=1e-6), k
