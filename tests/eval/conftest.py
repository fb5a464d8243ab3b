import contextlib

import numpy as np
import pytest
import torch

from ppflow.eval.inception import load_inception


@contextlib.contextmanager
def one_thread():
    """One torch thread inside session fixtures, which run before the root conftest's per-test `_one_thread`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def inception(inception_weights):
    """The real network (the weights come with `make setup`; without them the Inception tests are skipped)."""
    return load_inception()


def shapes(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 (n, size, size, channels) images: bright rectangles on a dark background."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, channels), np.uint8)
    for img in out:
        for _ in range(3):
            y0, x0 = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, size // 2, 2)
            img[y0: y0 + h, x0: x0 + w] = rng.integers(60, 256, channels)
    return out


@pytest.fixture(scope="session")
def fashion_available():
    from ppflow.data.fashion_mnist import default_dir

    if not (default_dir() / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not installed (make data)")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory, fashion_available):
    """A cache dir holding a classifier trained for a few steps (fast; far from the real ~90% one)."""
    from ppflow.eval.classifier import ClassifierTrainConfig, classifier_path, save_classifier, train_classifier

    cache = tmp_path_factory.mktemp("cache")
    with one_thread():
        model, info = train_classifier(ClassifierTrainConfig(max_steps=40, width=8), progress=False)
    save_classifier(model, info, classifier_path(cache))
    return cache
