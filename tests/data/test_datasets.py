import pytest
import torch

from ppflow.data import DATASETS, DataConfig, build_dataset
from ppflow.data.digits import digits_to_model_space


def test_registry_names():
    assert set(DATASETS) == {"digits", "fashion-mnist", "imagefolder", "latents"}
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        build_dataset(DataConfig(name="mnist"))


def test_digits_upsample_and_pad():
    img = torch.arange(64, dtype=torch.float64).reshape(1, 8, 8) % 17  # values 0..16
    x = digits_to_model_space(img, 16)
    assert x.shape == (1, 1, 16, 16)
    torch.testing.assert_close(x[0, 0, ::2, ::2], (img[0] / 8 - 1).float())  # nearest x2
    y = digits_to_model_space(img, 20)  # x2 then 2 pixels of background on each side
    assert y.shape == (1, 1, 20, 20) and (y[0, 0, :2] == -1).all()
    torch.testing.assert_close(y[0, 0, 2:18, 2:18], x[0, 0])
    with pytest.raises(ValueError, match="smaller than the native 8x8"):
        digits_to_model_space(img, 4)


def test_digits_dataset():
    d = build_dataset(DataConfig(name="digits", limit=50))
    assert len(d) == 50 and d.num_classes == 10 and d.model_shape == (1, 16, 16) and d.vae is None
    x, y = d.get_batch(torch.tensor([3, 4]), torch.tensor([True, False]))
    assert x.min() >= -1 and x.max() <= 1 and y.tolist() == [3, 4]
    x0, _ = d.get_batch(torch.tensor([3]))
    torch.testing.assert_close(x[0], x0[0].flip(-1))


def test_fashion_mnist_dataset_and_missing_path(tmp_path):
    d = build_dataset(DataConfig(name="fashion-mnist", limit=10))
    assert d.model_shape == (1, 32, 32) and d.num_classes == 10 and not d.default_flip
    x, y = d.get_batch(torch.arange(3))
    assert y.tolist() == [9, 0, 0]  # first labels of the training split
    assert x.shape == (3, 1, 32, 32) and (x[:, :, :2] == -1).all()  # 2 pixels of padding
    with pytest.raises(FileNotFoundError, match="--data-path"):
        build_dataset(DataConfig(name="fashion-mnist", path=str(tmp_path)))
