import torch

import ppflow
from tests.conftest import randomize


def test_save_pretrained_round_trip(tmp_path):
    model = randomize(ppflow.create_model("PPF-tiny-3", num_classes=10, input_size=16)).eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    back = ppflow.load_model(tmp_path / "m").eval()
    assert back.config == model.config
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([0.1, 0.6, 0.9]), torch.tensor([1, 2, 3])
    assert torch.equal(back(x, t, y), model(x, t, y))


def test_load_missing_path_is_clear(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="does not exist"):
        ppflow.load_model(tmp_path / "nope")
