"""DiT, SiT and official PPFlow files load exactly: key-for-key round trips and forward equality
against the spec re-implementation in `reference.py`."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

import ppflow
from ppflow.convert.formats import CheckpointError, convert_file, export_state
from ppflow.sampling.guidance import guided_velocity
from tests.convert import reference as ref

TOL = {"atol": 2e-5, "rtol": 1e-5}  # float32 re-association between conv/linear and packed/dense paths


def save(tmp_path, obj, name):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        assert v.shape == b[k].shape, k
        if k.startswith("pos_embed"):
            torch.testing.assert_close(v, b[k], atol=1e-6, rtol=0)
        else:
            assert torch.equal(v, b[k]), k


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("stages, name, fmt", [(1, "DiT-tiny.pt", "dit"), (1, "SiT-tiny.pt", "sit"),
                                                (2, "PPF-tiny-2.pt", "ppflow-official"),
                                                (3, "PPF-tiny-3.pt", "ppflow-official")])
def test_key_for_key_round_trip(tmp_path, stages, name, fmt):
    sd = ref.random_state(stages)
    model = ppflow.load_model(save(tmp_path, sd, name))
    assert convert_file(tmp_path / name).format == fmt
    assert_same_state(export_state(model, fmt), sd)
    # and back through a save_pretrained folder
    model.save_pretrained(tmp_path / "folder")
    assert_same_state(export_state(ppflow.load_model(tmp_path / "folder"), fmt), sd)


def test_sizes_are_read_from_shapes(tmp_path):
    sd = ref.random_state(3, width=64, depth=3, channels=3, classes=5, grid=4, out_channels=3)
    m = ppflow.load_model(save(tmp_path, sd, "PPF-3.pt"))
    c = m.config
    assert (c.depth, c.hidden_size, c.num_heads, c.in_channels, c.num_classes) == (3, 64, 4, 3, 5)
    assert (c.learn_sigma, c.input_size, c.schedule, c.level_embedding) == (False, (8, 8), "ppf3", True)
    assert c.name == "" and c.time_map == "identity"
    sd = ref.random_state(1, grid=16)
    c = ppflow.load_model(save(tmp_path, sd, "SiT-tiny-2.pt")).config
    assert (c.input_size, c.schedule, c.learn_sigma, c.name) == ((32, 32), "1:2x2", True, "SiT-tiny/2")


# ------------------------------------------------------------- forward equality
def test_sit_forward_equals_reference(tmp_path):
    sd = ref.random_state(1)
    model = ppflow.load_model(save(tmp_path, sd, "SiT-tiny.pt")).eval()
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([0.0, 0.4, 1.0]), torch.tensor([1, 10, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, full_output=True), ref.forward(sd, x, t, y, heads=4), **TOL)


def test_dit_feeds_its_discrete_timestep_unless_told_otherwise(tmp_path):
    sd = ref.random_state(1)
    path = save(tmp_path, sd, "DiT-tiny.pt")
    model = ppflow.load_model(path).eval()
    assert model.config.time_map == "dit" and model.config.name == "DiT-tiny/2"
    t = torch.tensor([0.0, 0.25, 1.0])
    assert model.time_input(t)[[0, 2]].tolist() == [999.0, 0.0]  # t=0 noise is DiT step 999, t=1 data is step 0
    torch.testing.assert_close(model.time_input(t), 999 * (1 - t))
    x, y = torch.randn(3, 4, 16, 16), torch.tensor([1, 2, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, full_output=True),
                                   ref.forward(sd, x, model.time_input(t), y, heads=4), **TOL)
        raw = ppflow.load_model(path, time_map="identity").eval()
        torch.testing.assert_close(raw(x, t, y, full_output=True), ref.forward(sd, x, t, y, heads=4), **TOL)


@pytest.mark.parametrize("stages", [2, 3])
def test_official_forward_equals_reference(tmp_path, stages):
    sd = ref.random_state(stages)
    model = ppflow.load_model(save(tmp_path, sd, f"PPF-tiny-{stages}.pt")).eval()
    x, y = torch.randn(2, 4, 16, 16), torch.tensor([4, 10])
    # boundaries belong to the earlier stage, as in the official code
    times = [0.0, 0.3, 0.5, 0.5001, 0.75, 0.7501, 1.0]
    seen = set()
    with torch.no_grad():
        for tv in times:
            t = torch.full((2,), tv)
            seen.add(ref.official_stage(tv, stages))
            assert model.schedule.stage_of(t).tolist() == [ref.official_stage(tv, stages)] * 2
            torch.testing.assert_close(model(x, t, y, full_output=True), ref.forward(sd, x, t, y, heads=4), **TOL)
        # one mixed-stage batch: ppflow decides per sample, the reference per batch
        t = torch.tensor(times)
        xs, ys = torch.randn(len(times), 4, 16, 16), torch.arange(len(times))
        per = torch.cat([ref.forward(sd, xs[i : i + 1], t[i : i + 1], ys[i : i + 1], heads=4) for i in range(len(times))])
        torch.testing.assert_close(model(xs, t, ys, full_output=True), per, **TOL)
    assert seen == set(range(stages))


@pytest.mark.parametrize("stages, scales", [(2, [1.0, 3.0]), (3, [1.0, 3.5, 3.75])])
def test_official_cfg_equals_guided_velocity(tmp_path, stages, scales):
    sd = ref.random_state(stages)
    model = ppflow.load_model(save(tmp_path, sd, "official.pt"), format="ppflow-official").eval()
    z, y = torch.randn(3, 4, 16, 16), torch.tensor([0, 5, 9])
    with torch.no_grad():
        for tv in (0.2, 0.5, 0.7, 0.9):
            t = torch.full((3,), tv)
            ours = guided_velocity(model, z, t, y, cfg_scales=scales, guidance_channels=3)
            torch.testing.assert_close(ours, ref.official_cfg(sd, z, t, y, 10, scales, heads=4), **TOL)


# ------------------------------------------------------------ file variants
def test_training_checkpoints_load_ema_by_default(tmp_path):
    ema, raw = ref.random_state(1, seed=1), ref.random_state(1, seed=2)
    args = argparse.Namespace(model="SiT-XL/2", path_type="Linear", image_size=128, lr=1e-4)
    path = save(tmp_path, {"model": raw, "ema": ema, "opt": {"param_groups": []}, "args": args}, "0100000.pt")
    assert_same_state(export_state(ppflow.load_model(path), "sit"), ema)  # SiT from args, not the file name
    assert_same_state(export_state(ppflow.load_model(path, weights="model"), "sit"), raw)
    dit_args = argparse.Namespace(model="DiT-XL/2", image_size=128)
    path = save(tmp_path, {"model": raw, "ema": ema, "opt": {}, "args": dit_args}, "0200000.pt")
    assert ppflow.load_model(path).config.time_map == "dit"
    with pytest.raises(CheckpointError, match="weights="):
        ppflow.load_model(save(tmp_path, ema, "SiT-x.pt"), weights="model")


def test_training_checkpoint_without_args_or_optimizer(tmp_path):
    """{'model', 'ema'} (or 'ema' alone) without 'args': the layout DiT/SiT/official find_model accept."""
    ema, raw = ref.random_state(1, seed=1), ref.random_state(1, seed=2)
    path = save(tmp_path, {"model": raw, "ema": ema}, "SiT-tiny-2-train.pt")
    assert_same_state(export_state(ppflow.load_model(path), "sit"), ema)
    assert_same_state(export_state(ppflow.load_model(path, weights="model"), "sit"), raw)
    only = save(tmp_path, {"ema": ema}, "SiT-tiny-2-ema.pt")
    assert_same_state(export_state(ppflow.load_model(only), "sit"), ema)
    with pytest.raises(CheckpointError, match="model"):
        ppflow.load_model(only, weights="model")


def test_ppflow_training_checkpoint(tmp_path):
    model = ppflow.create_model("PPF-tiny-2", num_classes=10, input_size=16)
    ema = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    ckpt = {"format": "ppflow-train", "config": {"model_config": model.config.to_dict(), "lr": 1e-4},
            "model": model.state_dict(), "ema": ema, "optimizer": {}, "step": 7, "version": 1,
            "rng": {"torch": torch.get_rng_state()}, "data": {"epoch": 0, "offset": 3}}
    path = save(tmp_path, ckpt, "step7.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save(tmp_path, ckpt, "run/checkpoints/last.pt")
    assert ppflow.load_model(tmp_path / "run").config == model.config  # a run folder
    loaded = ppflow.load_model(path)
    assert loaded.config == model.config
    assert all(torch.equal(loaded.state_dict()[k], ema[k]) for k in ema)
    raw = ppflow.load_model(path, weights="model")
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in model.state_dict().items())
    assert ppflow.load_model(path, vae="some/vae").config.vae == "some/vae"
    assert loaded.x_embedder[0].proj.weight.requires_grad
    with pytest.raises(CheckpointError, match="weights='model'"):
        ppflow.load_model(save(tmp_path, {**ckpt, "ema": None}, "noema.pt"))


def test_safetensors_and_ddp_prefix(tmp_path):
    sd = ref.random_state(2)
    save_file(sd, str(tmp_path / "ppf.safetensors"))
    assert_same_state(export_state(ppflow.load_model(tmp_path / "ppf.safetensors"), "ppflow-official"), sd)
    wrapped = {"module." + k: v for k, v in sd.items()}
    assert_same_state(export_state(ppflow.load_model(save(tmp_path, wrapped, "w.pt")), "ppflow-official"), sd)


# ------------------------------------------------------------------- errors
def test_truncated_file(tmp_path):
    path = save(tmp_path, ref.random_state(2), "PPF.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ppflow.load_model(path)


def test_wrong_format(tmp_path):
    path = save(tmp_path, ref.random_state(2), "PPF-2.pt")
    with pytest.raises(CheckpointError, match="looks like a 'ppflow-official' checkpoint, not 'dit'"):
        ppflow.load_model(path, format="dit")
    with pytest.raises(CheckpointError, match="looks like a 'dit/sit' checkpoint, not 'ppflow-official'"):
        ppflow.load_model(save(tmp_path, ref.random_state(1), "SiT-g.pt"), format="ppflow-official")
    with pytest.raises(CheckpointError, match="match none of the formats"):
        ppflow.load_model(save(tmp_path, {"weight": torch.zeros(2)}, "other.pt"))
    with pytest.raises(CheckpointError, match="format='dit'.*format='sit'"):
        ppflow.load_model(save(tmp_path, ref.random_state(1), "model.pt"))  # DiT or SiT? the name doesn't say
    with pytest.raises(CheckpointError, match="bare ppflow state dict"):
        ppflow.load_model(save(tmp_path, ppflow.create_model("PPF-tiny-2").state_dict(), "bare.pt"))
    with pytest.raises(CheckpointError, match="unknown format"):
        ppflow.load_model(path, format="flux")


def test_wrong_size(tmp_path):
    path = save(tmp_path, ref.random_state(1), "SiT-a.pt")
    with pytest.raises(CheckpointError, match="hidden_size=768 was requested but the weights have hidden_size=64"):
        ppflow.load_model(path, hidden_size=768)
    sd = ref.random_state(1)
    sd["blocks.1.attn.qkv.weight"] = sd["blocks.1.attn.qkv.weight"][:100]
    with pytest.raises(CheckpointError, match=r"'blocks\.1\.attn\.qkv\.weight' has shape \(100, 64\).*\(192, 64\)"):
        ppflow.load_model(save(tmp_path, sd, "SiT-b.pt"))
    sd = ref.random_state(3)
    del sd["blocks.0.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"missing \['blocks\.0\.mlp\.fc2\.bias'\]"):
        ppflow.load_model(save(tmp_path, sd, "PPF-c.pt"))
    with pytest.raises(CheckpointError, match="Only the stage boundaries"):
        ppflow.load_model(save(tmp_path, ref.random_state(3), "PPF-d.pt"), schedule="ppf2")
    with pytest.raises(CheckpointError, match="ppflow adapt"):
        ppflow.load_model(path, schedule="ppf2")


def test_missing_heads_override(tmp_path):
    path = save(tmp_path, ref.random_state(1, width=48), "SiT-w48.pt")
    with pytest.raises(CheckpointError, match="num_heads=...") as e:
        ppflow.load_model(path)
    assert "width 48" in str(e.value)
    sd = torch.load(path, weights_only=True)
    model = ppflow.load_model(path, num_heads=4).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.8]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, full_output=True), ref.forward(sd, x, t, y, heads=4), **TOL)


def test_foreign_positional_table_is_checked(tmp_path):
    sd = ref.random_state(3)
    sd["pos_embed.1"] = sd["pos_embed.1"] + 0.01
    with pytest.raises(CheckpointError, match=r"'pos_embed\.1' differs"):
        ppflow.load_model(save(tmp_path, sd, "PPF-e.pt"))


def test_unsafe_pickles_are_refused(tmp_path):
    from collections import OrderedDict
    from fractions import Fraction

    path = save(tmp_path, {"model": OrderedDict(ref.random_state(1)), "args": Fraction(1, 3)}, "SiT-f.pt")
    with pytest.raises(CheckpointError, match="does not unpickle"):
        ppflow.load_model(path)
