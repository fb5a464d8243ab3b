"""Image sources: ADM npz (memory-mapped), folders, named datasets padded like the training data; the cache dir."""

import numpy as np
import pytest
from PIL import Image

from ppflow.eval.sources import (
    ImageFolder,
    default_cache_dir,
    load_dataset,
    load_images,
    load_npz,
    npz_array,
    pad_to,
)


def test_npz_is_memory_mapped_when_stored_and_loaded_when_compressed(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", imgs, np.arange(5))
    np.savez_compressed(tmp_path / "c.npz", imgs)
    stored = npz_array(tmp_path / "s.npz", "arr_0")
    assert isinstance(stored, np.memmap) and np.array_equal(stored, imgs)
    compressed = npz_array(tmp_path / "c.npz", "arr_0")
    assert not isinstance(compressed, np.memmap) and np.array_equal(compressed, imgs)
    with pytest.raises(KeyError, match="has no array 'mu'"):
        npz_array(tmp_path / "s.npz", "mu")


def test_adm_npz_layouts(tmp_path):
    imgs = np.zeros((4, 6, 6, 3), np.uint8)
    np.savez(tmp_path / "cond.npz", imgs, np.array([3, 1, 4, 1]))
    s = load_npz(tmp_path / "cond.npz")
    assert len(s) == 4 and s.image_size == (6, 6) and s.labels.tolist() == [3, 1, 4, 1] and not s.stats
    # an ADM reference batch: images plus precomputed statistics
    np.savez(tmp_path / "ref.npz", arr_0=imgs, mu=np.zeros(2), sigma=np.eye(2), mu_s=np.ones(3), sigma_s=np.eye(3))
    r = load_npz(tmp_path / "ref.npz")
    assert r.stats["pool"].dim == 2 and r.stats["spatial"].dim == 3 and len(r) == 4
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2), sigma=np.eye(2))
    only = load_npz(tmp_path / "stats.npz")
    assert only.images is None and len(only) == 0 and "spatial" not in only.stats
    # gray images as (N, H, W) get a channel axis; floats are refused with the fix in the message
    np.savez(tmp_path / "gray.npz", np.zeros((2, 5, 5), np.uint8))
    assert load_npz(tmp_path / "gray.npz").images.shape == (2, 5, 5, 1)
    np.savez(tmp_path / "float.npz", np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        load_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an ADM batch"):
        load_npz(tmp_path / "other.npz")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (3, 7, 9), dtype=np.uint8)
    (tmp_path / "g" / "sub").mkdir(parents=True)
    for i, a in enumerate(gray):
        Image.fromarray(a).save(tmp_path / "g" / ("sub" if i == 2 else "") / f"{i}.png")
    f = ImageFolder(tmp_path / "g")
    assert f.shape == (3, 7, 9, 1) and len(f) == 3
    assert np.array_equal(f[0:3][..., 0], gray)  # sorted paths: 0.png, 1.png, sub/2.png
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "g" / "x.png")
    with pytest.raises(ValueError, match="one size and colour mode"):
        ImageFolder(tmp_path / "g")[0:4]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_images(tmp_path / "empty")
    s = load_images(tmp_path / "g")
    assert s.head(2).images[0:5].shape == (2, 7, 9, 1) and s.head(2).key != s.key


def test_pad_to_matches_the_training_layout():
    from ppflow.data.fashion_mnist import to_model_space

    imgs = np.random.default_rng(2).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    padded = pad_to(imgs, 32)
    model_space = to_model_space(imgs, 32)[:, 0]  # [-1, 1]
    assert np.array_equal(padded, ((model_space.numpy() + 1) * 127.5).round().astype(np.uint8))
    with pytest.raises(ValueError, match="cannot pad"):
        pad_to(imgs, 20)


def test_named_dataset_is_padded_to_the_requested_size(fashion_available):
    d32 = load_dataset("fashion-mnist-test")
    d28 = load_dataset("fashion-mnist-test", 28)
    assert d32.images.shape == (10000, 32, 32, 1) and d28.images.shape == (10000, 28, 28, 1)
    assert np.array_equal(d32.images[:, 2:30, 2:30], d28.images) and d32.images[:, :2].max() == 0
    assert d32.labels.shape == (10000,) and d32.key != d28.key
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="dataset name"):
        load_images("no-such-thing")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PPFLOW_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ppflow"
    monkeypatch.setenv("PPFLOW_CACHE_DIR", str(tmp_path / "own"))
    assert default_cache_dir() == tmp_path / "own"
