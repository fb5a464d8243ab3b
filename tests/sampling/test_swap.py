import pytest
import torch

from ppflow.models import create_model
from ppflow.models.flops import forward_flops
from ppflow.sampling import StageSwap, sample_model
from tests.conftest import randomize

KW = {"in_channels": 1, "num_classes": 10, "input_size": 16, "learn_sigma": False}


@pytest.fixture(scope="module")
def models():
    ppf = randomize(create_model("PPF-tiny-2", schedule="0.5:8x8,1:4x4", **KW), seed=1).eval()
    sit = randomize(create_model("SiT-tiny/4", schedule="1:4x4", **KW), seed=2).eval()
    return ppf, sit


def test_swap_of_one_model_samples_exactly_as_that_model(models):
    ppf, _ = models
    noise, y = torch.randn(5, 1, 16, 16), torch.arange(5)
    a = sample_model(ppf, noise, y, cfg_scales=[1.0, 2.0], steps=4, method="heun", full_output=True)
    b = sample_model(StageSwap([ppf, ppf]), noise, y, cfg_scales=[1.0, 2.0], steps=4, method="heun", full_output=True)
    assert torch.equal(a.x, b.x)
    assert a.forwards == b.forwards and a.flops == b.flops


def test_each_stage_is_served_by_its_member(models):
    ppf, sit = models
    swap = StageSwap([ppf, sit])
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    t = torch.tensor([0.2, 0.7, 0.5, 0.51])
    with torch.no_grad():
        v = swap(x, t, y)
        assert torch.equal(v[[0, 2]], ppf(x[[0, 2]], t[[0, 2]], y[[0, 2]]))  # t <= 0.5: PPF's coarse stage
        assert torch.allclose(v[[1, 3]], sit(x[[1, 3]], t[[1, 3]], y[[1, 3]]), atol=1e-6)  # fine range: the SiT
        pinned = swap(x, t, y, stage=1)
        assert torch.allclose(pinned, sit(x, t, y), atol=1e-6)


def test_flops_are_counted_per_member(models):
    ppf, sit = models
    out = sample_model(StageSwap([ppf, sit]), torch.randn(2, 1, 16, 16), torch.tensor([3, 4]), cfg_scales=[1.0, 2.0],
                       steps=4, method="euler", full_output=True)
    coarse, fine = forward_flops(ppf.config, 0, 16, 16), forward_flops(sit.config, 0, 16, 16)
    assert out.forwards == [4, 8]  # 2 steps x 2 samples coarse (no CFG), 2 steps x 2 samples x 2 passes fine
    assert out.flops["paper"] == 4 * coarse.paper + 8 * fine.paper


def test_members_must_cover_their_stage(models):
    ppf, sit = models
    with pytest.raises(ValueError, match="not inside one stage of model 0"):
        StageSwap([ppf, sit], schedule="0.75:8x8,1:4x4")
    with pytest.raises(ValueError, match="one per stage"):
        StageSwap([ppf])
    with pytest.raises(ValueError, match="needs a schedule"):
        StageSwap([sit, sit])
    other = create_model("SiT-tiny/4", schedule="1:4x4", **{**KW, "num_classes": 5})
    with pytest.raises(ValueError, match="class set"):
        StageSwap([ppf, other])
