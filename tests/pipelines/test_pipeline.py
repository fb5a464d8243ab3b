"""PPFlowPipeline: the diffusers pipeline gives exactly the images of ppflow's sampler + VAE decode, and
round-trips through save_pretrained / from_pretrained in diffusers' folder layout."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor

import ppflow
from ppflow.data.vae import LatentVAE
from ppflow.models import create_model
from ppflow.pipelines import PPFlowPipeline, PPFlowSampler, PPFlowTransformer2DModel
from ppflow.sampling import sample_model
from tests.conftest import randomize

LABELS = [0, 2, 1]
CFG = [1.0, 3.0]  # stage CFG: no guidance in the coarse stage


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                         norm_num_groups=4, sample_size=16).eval()


def tiny(in_channels: int = 4, num_classes: int = 3):
    return randomize(create_model("PPF-tiny-2", input_size=8, num_classes=num_classes, in_channels=in_channels)).eval()


def quiet(pipe: PPFlowPipeline) -> PPFlowPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(shape, seed: int = 0) -> torch.Tensor:
    return randn_tensor(shape, generator=torch.Generator().manual_seed(seed))


def test_equals_sample_model_plus_vae_decode_bit_for_bit(vae):
    model = tiny()
    pipe = quiet(PPFlowPipeline.from_model(model, vae, method="heun"))
    out = pipe(LABELS, num_inference_steps=6, guidance_scale=CFG, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    z = sample_model(model, noise((3, 4, 8, 8)), torch.tensor(LABELS), cfg_scales=CFG, method="heun", steps=6)
    ref = (LatentVAE(vae).decode(z) / 2 + 0.5).clamp(0, 1)
    assert out.shape == (3, 3, 16, 16) and torch.equal(out, ref)
    lat = pipe(LABELS, num_inference_steps=6, guidance_scale=CFG, latents=noise((3, 4, 8, 8)),
               output_type="latent").images
    assert torch.equal(lat, z)  # given noise instead of a generator: same trajectory


def test_pixel_model_and_output_types():
    model = tiny(in_channels=1)
    pipe = quiet(PPFlowPipeline.from_model(model, method="euler"))  # config.vae is None: a pixel model
    assert pipe.vae is None
    kw = {"num_inference_steps": 4, "guidance_scale": 2.0}
    pt = pipe(LABELS, generator=torch.Generator().manual_seed(1), output_type="pt", **kw).images
    x = sample_model(model, noise((3, 1, 8, 8), 1), torch.tensor(LABELS), cfg_scales=2.0, method="euler", steps=4)
    assert torch.equal(pt, (x.clamp(-1, 1) / 2 + 0.5).clamp(0, 1))
    np_images = pipe(LABELS, generator=torch.Generator().manual_seed(1), output_type="np", **kw).images
    assert np_images.shape == (3, 8, 8, 1) and (np_images == pt.permute(0, 2, 3, 1).numpy()).all()
    pil = pipe(LABELS, generator=torch.Generator().manual_seed(1), **kw).images
    assert len(pil) == 3 and pil[0].size == (8, 8) and pil[0].mode == "L"


def test_save_and_load_in_diffusers_layout(tmp_path, vae):
    pipe = quiet(PPFlowPipeline.from_model(tiny(), vae, method="euler", shift=2.0))
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "PPFlowPipeline"
    assert index["transformer"] == ["ppflow.pipelines.transformer", "PPFlowTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["ppflow.pipelines.sampler", "PPFlowSampler"]
    assert json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())["shift"] == 2.0

    loaded = quiet(PPFlowPipeline.from_pretrained(tmp_path / "pipe"))
    assert isinstance(loaded.transformer, PPFlowTransformer2DModel) and isinstance(loaded.scheduler, PPFlowSampler)
    kw = {"num_inference_steps": 4, "guidance_scale": CFG, "output_type": "pt"}
    a = pipe(LABELS, generator=torch.Generator().manual_seed(3), **kw).images
    b = loaded(LABELS, generator=torch.Generator().manual_seed(3), **kw).images
    assert torch.equal(a, b)
    # the transformer folder is an ordinary ppflow folder, hash-checked like any other
    plain = ppflow.load_model(str(tmp_path / "pipe" / "transformer"))
    assert type(plain) is ppflow.PPFlowTransformer
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in pipe.transformer.state_dict().items())


def test_from_pretrained_by_hub_id_offline(tmp_path):
    from tests.hub.conftest import add_to_hub_cache

    pipe = quiet(PPFlowPipeline.from_model(tiny(in_channels=1), method="euler"))
    pipe.save_pretrained(tmp_path / "pipe")
    add_to_hub_cache(tmp_path / "hf", "ppflow-test/pipe", tmp_path / "pipe", "e" * 40)
    loaded = quiet(PPFlowPipeline.from_pretrained("ppflow-test/pipe", cache_dir=tmp_path / "hf", local_files_only=True))
    kw = {"num_inference_steps": 3, "output_type": "pt"}
    assert torch.equal(pipe([1], generator=torch.Generator().manual_seed(5), **kw).images,
                       loaded([1], generator=torch.Generator().manual_seed(5), **kw).images)


def test_unconditional_sde_and_bad_inputs():
    pipe = quiet(PPFlowPipeline.from_model(tiny(num_classes=0, in_channels=1), method="sde"))
    a = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="pt").images
    b = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)  # the SDE noise comes from the generator too
    with pytest.raises(ValueError, match="unconditional"):
        pipe([1], num_inference_steps=2)
    cond = quiet(PPFlowPipeline.from_model(tiny(), method="euler"))
    for kwargs, msg in (({"class_labels": [3]}, r"class indices in 0\.\.2"), ({}, "pass class_labels"),
                        ({"class_labels": [0], "output_type": "jpg"}, "output_type"),
                        ({"class_labels": [0], "latents": torch.zeros(1, 4, 4, 4)}, "expected")):
        with pytest.raises(ValueError, match=msg):
            cond(num_inference_steps=2, **kwargs)


def test_transformer_component_from_a_hub_id(tmp_path, monkeypatch):
    from tests.hub.conftest import add_to_hub_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cache only, also on a machine with a network
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    add_to_hub_cache(tmp_path / "hf", "ppflow-test/m", tmp_path / "m", "f" * 40, refs=("main", "v1"))
    got = PPFlowTransformer2DModel.from_pretrained("ppflow-test/m", revision="v1", cache_dir=tmp_path / "hf")
    assert all(torch.equal(got.state_dict()[k], v) for k, v in model.state_dict().items())
