"""Issue 27, below the commands: caches that are ours are recomputed when damaged (and named), sizes are checked
before anything is allocated, hostile images are one line. Real files and processes throughout."""

from __future__ import annotations

import json
import resource
import shutil

import numpy as np
import pytest
import torch

from ppflow.cli import main as cli
from tests.eval.conftest import inception, shapes  # noqa: F401 (fixture)
from tests.flux.test_captions import huge_png


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x93NUMPY garbage that is no zip file" * 10)
    else:  # a pickled object array under the cache's name: never unpickled
        np.savez(path, mu=np.array([object()], dtype=object), sigma=np.zeros((1, 1)), n=np.array(3))


@pytest.mark.parametrize("how", ["truncated", "garbage", "pickled"])
def test_a_damaged_classifier_statistics_cache_is_named_and_recomputed(tmp_path, capsys, how):
    from ppflow.eval.classifier import FashionCNN, reference_stats
    from ppflow.eval.sources import array_source

    torch.manual_seed(0)
    model = FashionCNN().eval()
    model.path = tmp_path / "classifier.safetensors"
    model.path.write_bytes(b"stands for the classifier file (its mtime keys the cache)")
    ref = array_source(shapes(12, size=28, channels=1), name="ref")
    first = reference_stats(model, ref, tmp_path, batch_size=6)
    (cached,) = (tmp_path / "eval").glob("classifier-ref-*.npz")
    _damage(cached, how)
    again = reference_stats(model, ref, tmp_path, batch_size=6)
    np.testing.assert_allclose(again.mu, first.mu)
    err = capsys.readouterr().err
    assert f"the cached statistics {cached} are damaged" in err and "computing them again" in err
    assert "allow_pickle" not in err and err.count("\n") == 1
    with np.load(cached) as d:  # written again, whole
        np.testing.assert_allclose(d["mu"], first.mu)


def test_a_truncated_inception_cache_is_named_and_recomputed(tmp_path, capsys, inception):  # noqa: F811
    np.savez(tmp_path / "a.npz", shapes(4, size=20, channels=3, seed=1))
    np.savez(tmp_path / "b.npz", shapes(4, size=20, channels=3, seed=2))
    argv = ["eval", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--cache-dir", str(tmp_path / "c"), "--json",
            "--no-progress"]
    assert cli(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (cached,) = (tmp_path / "c" / "eval").glob("inception-*.npz")
    _damage(cached, "truncated")
    assert cli(argv) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert f"the cached statistics {cached} are damaged (BadZipFile" in out.err


def test_a_config_with_huge_sizes_is_refused_before_anything_is_allocated(run, tmp_path):
    import ppflow

    folder = tmp_path / "huge"
    shutil.copytree(run / "ema", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_size": 2**16, "num_heads": 16, "depth": 64}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ValueError, match="huge does not match the model config.*shape mismatches"):
        ppflow.load_model(folder)  # built for real: 64 blocks of width 65536, about 13 TB of float32
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2**20  # under 1 GiB more, ever


def test_extract_latents_on_a_decompression_bomb_is_one_line(tmp_path, capsys):
    from PIL import Image

    from tests.data.test_vae import tiny_vae_dir

    images = tmp_path / "images" / "c0"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(images / "000.png")
    huge_png(images / "001.png")
    assert cli(["extract-latents", "--data-path", str(tmp_path / "images"), "--out", str(tmp_path / "lat"), "--vae",
                str(tiny_vae_dir(tmp_path)), "--image-size", "16", "--num-workers", "1", "--device", "cpu",
                "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ppflow extract-latents: error: cannot read image {images / '001.png'} (900,000,000 pixels")
    assert err.count("\n") == 1 and "Traceback" not in err and "DecompressionBomb" not in err, err
