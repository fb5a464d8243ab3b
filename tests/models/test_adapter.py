"""Stage-gated speed adapters: the fine stage is the source bit for bit, the LoRA acts on coarse rows only, packed
mixed-stage batches equal separate forwards, and an adapter folder round-trips with its hash and its base's."""

import pytest
import torch

import ppflow
from ppflow.convert.load import load_adapter
from ppflow.io import CheckpointError, DamagedFileError
from ppflow.models.adapter import AdapterConfig, adapter_size, adapter_state, add_stage_lora, save_adapter
from tests.conftest import randomize


def _source(seed=0):
    src = ppflow.create_model("SiT-tiny/2", input_size=16, num_classes=10)
    return randomize(src, seed=seed).eval()


def _adapter(src, schedule="ppf2", seed=1):
    model = add_stage_lora(ppflow.adapt(src, schedule, coarse_output="noise_skip"), rank=4, alpha=4.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained adapter: every adapter tensor non-zero (the fine level row stays 0)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.level_embedder.weight[-1].zero_()
    return model.eval()


def _inputs(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_fine_stage_is_the_source_bit_for_bit_and_the_coarse_stage_is_adapted():
    src = _source()
    model = _adapter(src)
    x, y = _inputs()
    t_fine, t_coarse = torch.full((6,), 0.8), torch.full((6,), 0.3)
    with torch.no_grad():
        assert torch.equal(model(x, t_fine, y, full_output=True), src(x, t_fine, y, full_output=True))
        assert model.stage_gate.tokens == 0  # no LoRA computed in the fine stage
        coarse = model(x, t_coarse, y)
        assert model.stage_gate.tokens == 6 * 16 and model.stage_gate.samples == 6  # 4x4 tokens of 16x16 at 4x4
        for m in model.modules():  # the same model with the LoRA switched off differs on the coarse stage
            if hasattr(m, "lora_B"):
                m.lora_B.zero_()
        assert not torch.allclose(model(x, t_coarse, y), coarse)


def test_per_token_gating_in_a_packed_mixed_batch_equals_separate_forwards():
    model = _adapter(_source(), "ppf3")
    x, y = _inputs()
    t = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.95, 0.7])  # stages 2, 0, 1, 0, 2, 1 mixed in one packed batch
    with torch.no_grad():
        packed = model(x, t, y)
        for i in range(6):
            alone = model(x[i:i + 1], t[i:i + 1], y[i:i + 1])
            torch.testing.assert_close(packed[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_only_the_adapter_trains_and_the_fine_stage_embedding_stays_zero():
    src = _source()
    model = add_stage_lora(ppflow.adapt(src, "ppf2"), rank=4)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state(model))
    assert "x_embedder.1.proj.weight" not in trainable and "x_embedder.0.proj.weight" in trainable
    assert all("lora_" in k or k.startswith(("x_embedder.0", "final_layer.unpatchify.0", "level_embedder"))
               for k in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = _inputs()
    model(x, torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), y).square().mean().backward()
    opt.step()
    assert torch.count_nonzero(model.level_embedder.weight[-1]) == 0  # mixed batch: the fine row got no update
    assert torch.count_nonzero(model.level_embedder.weight[0]) > 0
    extra, share = adapter_size(model)
    assert extra == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert share == pytest.approx(extra / sum(p.numel() for p in src.parameters()))


def test_an_adapter_folder_round_trips_with_its_hash_and_refuses_another_base(tmp_path):
    src = _source()
    src.save_pretrained(tmp_path / "base")
    model = _adapter(src)
    cfg = AdapterConfig(schedule="ppf2", rank=4, alpha=4.0, coarse_output="noise_skip", base="../base",
                        base_sha256=ppflow.io.content_sha256(src.state_dict()))
    save_adapter(model, cfg, tmp_path / "ad")
    loaded = ppflow.load_model(tmp_path / "ad").eval()  # the base found beside the folder by its relative path
    x, y = _inputs()
    t = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
    with pytest.raises(CheckpointError, match="SHA-256.*check_base=False"):
        load_adapter(tmp_path / "ad", base=_source(seed=5))
    load_adapter(tmp_path / "ad", base=_source(seed=5), check_base=False)
    weights = tmp_path / "ad" / "adapter.safetensors"
    from safetensors.torch import load_file, save_file

    from ppflow.io import HASH_KEY

    state = load_file(weights)
    state["level_embedder.weight"] = state["level_embedder.weight"] + 1
    with open(weights, "rb") as f:  # a tampered file keeps its old hash record
        import json
        import struct

        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    save_file(state, weights, metadata=meta)
    assert HASH_KEY in meta
    with pytest.raises(DamagedFileError):
        ppflow.load_model(tmp_path / "ad")
