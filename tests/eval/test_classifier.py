"""The in-domain Fashion-MNIST classifier: input layout, training, atomic cache, metrics."""

import numpy as np
import pytest
import torch

from ppflow.eval import classifier as clf
from ppflow.eval.sources import load_dataset


def test_prepare_pads_28_like_the_training_data():
    from ppflow.data.fashion_mnist import to_model_space

    imgs = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    torch.testing.assert_close(clf.prepare(imgs), to_model_space(imgs, 32))
    torch.testing.assert_close(clf.prepare(imgs[..., None]), clf.prepare(imgs))  # (N, H, W, 1)
    torch.testing.assert_close(clf.prepare(np.repeat(imgs[..., None], 3, -1)), clf.prepare(imgs))  # gray RGB
    padded = clf.prepare(imgs)
    torch.testing.assert_close(clf.prepare(((padded[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8)), padded)
    with pytest.raises(ValueError, match="28x28 or 32x32"):
        clf.prepare(np.zeros((2, 64, 64), np.uint8))


def test_trained_classifier_is_cached_and_reused(classifier_cache, monkeypatch):
    path = clf.classifier_path(classifier_cache)
    assert path.exists() and not list(classifier_cache.glob(".*.tmp"))
    model = clf.read_classifier(path)
    assert model.info["steps"] == 40 and model.info["version"] == clf.VERSION
    # even 40 steps of a width-8 network are far above chance (10%) on the test split
    assert model.info["test_accuracy"] > 0.4

    def no_training(*a, **k):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(clf, "train_classifier", no_training)
    again = clf.load_classifier(classifier_cache)
    x = clf.prepare(np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    with torch.no_grad():
        torch.testing.assert_close(again(x)[1], model(x)[1])


def test_classifier_metrics_on_real_test_images(classifier_cache):
    model = clf.load_classifier(classifier_cache)
    test = load_dataset("fashion-mnist-test", 28)  # unpadded: the classifier pads like the training data
    imgs, labels = test.images[:600], test.labels[:600]
    same = clf.classifier_metrics(imgs, labels, ref=imgs, model=model, cache_dir=classifier_cache)
    assert same["fid"] == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        pred = model(clf.prepare(imgs))[1].argmax(1).numpy()
    assert same["accuracy"] == pytest.approx((pred == labels).mean())
    assert 1 < same["is"] <= 10 and same["n"] == 600
    # against the full test split (cached), real images are closer than shuffled-pixel images
    shuffled = imgs.reshape(600, -1)[:, np.random.default_rng(2).permutation(28 * 28)].reshape(imgs.shape)
    real = clf.classifier_metrics(imgs, labels, model=model, cache_dir=classifier_cache)
    fake = clf.classifier_metrics(shuffled, labels, model=model, cache_dir=classifier_cache)
    assert real["fid"] < fake["fid"] and real["accuracy"] > fake["accuracy"]
    assert list((classifier_cache / "eval").glob("classifier-fashion-mnist-test-*.npz"))
    with pytest.raises(ValueError, match="one per image"):
        clf.classifier_metrics(imgs, labels[:5], ref=imgs, model=model)
