import json

import numpy as np
import pytest
import torch
from PIL import Image

from ppflow.cli import main as cli
from ppflow.data import DataConfig, build_dataset
from ppflow.data.imagefolder import center_crop_adm, scan_image_folder
from ppflow.data.latents import LatentData
from tests.data.test_vae import tiny_vae_dir


def make_folder(root, per_class=3, size=(20, 14)):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_adm_center_crop_takes_the_middle():
    img = Image.fromarray(np.arange(40 * 20 * 3, dtype=np.uint8).reshape(20, 40, 3) % 251)  # 40 wide, 20 high
    out = center_crop_adm(img, 20)
    assert out.size == (20, 20)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:, 10:30])  # no resize needed: pure crop
    big = center_crop_adm(Image.new("RGB", (300, 200)), 32)  # box-halving path, then bicubic
    assert big.size == (32, 32)


def test_scan_image_folder_labels_and_errors(tmp_path):
    files, labels, classes = scan_image_folder(make_folder(tmp_path / "imgs"))
    assert classes == ["cat", "dog"] and labels == [0, 0, 0, 1, 1, 1] and len(files) == 6
    with pytest.raises(FileNotFoundError, match="one sub-folder of images per class"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        scan_image_folder(tmp_path / "empty")


def test_extract_latents_cache_then_train_without_vae(tmp_path):
    imgs, vae = make_folder(tmp_path / "imgs"), tiny_vae_dir(tmp_path)
    out = tmp_path / "cache"
    rc = cli(["extract-latents", "--data-path", str(imgs), "--out", str(out), "--vae", str(vae), "--image-size", "16",
              "--shard-size", "4", "--batch-size", "3", "--num-workers", "0", "--local-files-only", "--no-progress",
              "--posterior", "mean"])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 6 and [s["count"] for s in meta["shards"]] == [4, 2]
    assert meta["latent_shape"] == [4, 8, 8] and meta["scaling_factor"] == 0.5 and meta["vae"] == str(vae)

    data = LatentData(out)
    x, y = data.get_batch(torch.tensor([5, 0]), torch.tensor([True, False]))
    assert x.shape == (2, 4, 8, 8) and y.tolist() == [1, 0]
    # the stored latents are the VAE's (scaled) posterior means of the cropped image and of its mirror
    from ppflow.data.imagefolder import load_image
    from ppflow.data.vae import load_vae

    enc = load_vae(str(vae), local_files_only=True)
    files, _, _ = scan_image_folder(imgs)
    img = load_image(files[5], 16)[None]
    torch.testing.assert_close(x[0:1], enc.encode(img.flip(-1), sample=False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.get_batch(torch.tensor([5]))[0], enc.encode(img, sample=False),
                               atol=1e-5, rtol=1e-5)

    from ppflow.train import TrainConfig, train

    cfg = TrainConfig(batch_size=4, max_steps=2, save_every=2, out=str(tmp_path / "run"), progress=False,
                      tensorboard=False)
    cfg.data = DataConfig(name="latents", path=str(out))
    cfg.sample.steps = 2
    cfg.sample.count = 2
    res = train(cfg)
    assert res.step == 2 and res.model_config.in_channels == 4 and res.model_config.input_size == (8, 8)
    assert res.model_config.num_classes == 2 and res.model_config.vae == str(vae)  # sampling can decode
    assert (res.run_dir / "samples" / "step-0000002.png").exists()  # decoded through the cache's VAE


def test_imagefolder_trains_through_the_vae(tmp_path):
    imgs, vae = make_folder(tmp_path / "imgs"), tiny_vae_dir(tmp_path)
    data = build_dataset(DataConfig(name="imagefolder", path=str(imgs), image_size=16, vae=str(vae)))
    assert data.model_shape == (4, 8, 8) and data.sample_shape == (3, 16, 16) and data.default_flip
    x, _ = data.get_batch(torch.tensor([0, 0]), torch.tensor([False, True]))
    torch.testing.assert_close(x[1], x[0].flip(-1))

    from ppflow.train import TrainConfig, train

    results = []
    for workers in (0, 2):  # worker processes read ahead but the batches are the same
        cfg = TrainConfig(batch_size=2, max_steps=2, log_every=1, out=str(tmp_path / f"run{workers}"),
                          progress=False, tensorboard=False)
        cfg.data = DataConfig(name="imagefolder", path=str(imgs), image_size=16, vae=str(vae), num_workers=workers)
        cfg.sample.every = 0
        results.append(train(cfg))
    res = results[0]
    assert res.step == 2 and res.model_config.vae == str(vae) and res.model_config.in_channels == 4
    losses = [(r.run_dir / "metrics.csv").read_text().splitlines()[1:] for r in results]
    assert [row.split(",")[:2] for row in losses[0]] == [row.split(",")[:2] for row in losses[1]]


def test_missing_cache_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="ppflow extract-latents"):
        build_dataset(DataConfig(name="latents", path=str(tmp_path)))
    with pytest.raises(ValueError, match="needs --data.path"):
        build_dataset(DataConfig(name="imagefolder"))
