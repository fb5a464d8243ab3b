"""PPFlow adapters on the Hub like LoRAs: push (the upload recorded), apply by hub id from a pre-filled cache."""

import pytest
import torch

from ppflow.integrations.diffusers import apply
from ppflow.integrations.diffusers.hub import push_adapter
from ppflow.io import CheckpointError
from tests.flux.conftest import flux_inputs, tiny_flux
from tests.hub.conftest import add_to_hub_cache
from tests.hub.test_hub import RecordingApi

REPO = "ppflow-test/flux-adapter"


@pytest.fixture
def adapter_folder(tmp_path):
    model = tiny_flux()
    adapter = apply(model, "ppf2", rank=2)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.01)
        want = model(**flux_inputs(sigma=0.9))[0]
    adapter.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", want


def test_push_uploads_the_adapter_with_a_card_and_apply_reads_it_by_hub_id(adapter_folder, tmp_path, monkeypatch):
    folder, want = adapter_folder
    api = RecordingApi(tmp_path / "uploaded")
    url = push_adapter(folder, REPO, revision="exp", api=api)
    assert url.endswith("/commit/0") and [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    uploaded = tmp_path / "uploaded"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "ppflow_adapter.json", "ppflow_adapter.safetensors"]
    assert f'ppf.apply(pipe, "{REPO}")' in (uploaded / "README.md").read_text()
    cache = tmp_path / "hf"
    add_to_hub_cache(cache, REPO, uploaded, "c" * 40)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # as HF_HUB_CACHE set at start
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_flux()
    apply(model, REPO)
    with torch.no_grad():
        torch.testing.assert_close(model(**flux_inputs(sigma=0.9))[0], want, rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="cannot fetch the PPFlow adapter ppflow-test/missing"):
        apply(tiny_flux(), "ppflow-test/missing")
    with pytest.raises(ValueError, match="not a PPFlow adapter folder"):
        push_adapter(tmp_path, REPO, api=api)


def test_an_adapter_applies_on_its_base_loaded_in_any_dtype_and_old_folders_keep_the_exact_rule(
        adapter_folder, tmp_path):
    import json

    from ppflow.integrations.diffusers.adapter import fingerprint

    folder, _ = adapter_folder
    base = tiny_flux()  # fp32 weights with values bf16 cannot hold
    prints = {fingerprint(base.to(dtype)) for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float32)}
    assert len(prints) == 1  # one checkpoint, one fingerprint, whatever dtype it was loaded in
    assert fingerprint(tiny_flux(), "exact") != fingerprint(tiny_flux().to(torch.bfloat16), "exact")
    assert fingerprint(tiny_flux(seed=1)) != fingerprint(tiny_flux())
    apply(tiny_flux().to(torch.bfloat16), folder)  # the fp32-trained adapter on the bf16 base
    old = json.loads((folder / "ppflow_adapter.json").read_text())
    old.pop("fingerprint_rule")
    old["base_fingerprint"] = fingerprint(tiny_flux(), "exact")  # what a folder saved before the rule holds
    (folder / "ppflow_adapter.json").write_text(json.dumps(old))
    apply(tiny_flux(), folder)
    with pytest.raises(ValueError, match="another base model"):
        apply(tiny_flux().to(torch.bfloat16), folder)  # the exact rule sees the rounding
