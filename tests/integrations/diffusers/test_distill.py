"""Data-free distillation of a PPFlow adapter on a diffusers FLUX from its own recorded calls (training engine)."""

import pytest
import torch

from ppflow.flux.bench import denoise
from ppflow.integrations.diffusers import apply, remove
from ppflow.integrations.diffusers.distill import (
    AdapterSection,
    DistillConfig,
    distill,
    load_calls,
    record_calls,
    save_calls,
)
from tests.flux.conftest import flux_inputs, tiny_flux


def _sampler(model, steps=6, batch=2, seed=0):
    kw = flux_inputs(batch=batch, seed=seed)
    cond = {k: kw[k] for k in ("encoder_hidden_states", "pooled_projections", "img_ids", "txt_ids", "guidance")}
    sigmas = [1 - i / steps for i in range(steps)] + [0.0]
    return lambda: denoise(model, kw["hidden_states"], sigmas, None, cond, (8, 8))


@pytest.fixture
def recorded(tmp_path):
    base = tiny_flux()
    base.save_pretrained(tmp_path / "base")
    calls = []
    for seed in range(2):
        calls += record_calls(base, _sampler(base, seed=seed), "ppf2")
    save_calls(calls, tmp_path / "calls.safetensors", {"seeds": 2})
    return tmp_path, calls


def test_recorded_calls_are_the_teachers_coarse_forwards(recorded):
    tmp_path, calls = recorded
    assert len(calls) == 2 * 3  # 6 Euler steps from sigma 1: sigma 1, 5/6, 4/6 lie above the 0.5 boundary (shifted)
    loaded, meta = load_calls(tmp_path / "calls.safetensors")
    assert meta == {"seeds": 2} and len(loaded) == len(calls)
    kw, out = calls[1]
    with torch.no_grad():
        torch.testing.assert_close(tiny_flux()(**kw, return_dict=False)[0], out, rtol=0, atol=0)  # target = teacher
        for (a, x), (b, y) in zip(calls, loaded, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and torch.equal(x, y)
    with pytest.raises(ValueError, match="plain model"):
        model = tiny_flux()
        apply(model, "ppf2")
        record_calls(model, lambda: None)


def test_recording_can_stop_the_sampler_after_the_coarse_range():
    base = tiny_flux()
    forwards = []
    h = base.register_forward_pre_hook(lambda m, a: forwards.append(1))
    full = record_calls(base, _sampler(base), "ppf2")
    n_full = len(forwards)
    forwards.clear()
    early = record_calls(base, _sampler(base), "ppf2", stop_after_coarse=True)
    h.remove()
    assert len(early) == len(full) == 3 and n_full == 6 and len(forwards) == 3 + 1  # one fine forward, then stop
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full, early, strict=True))


def _config(tmp_path, name, steps):
    cfg = DistillConfig(out=str(tmp_path / name), max_steps=steps, batch_size=2, save_every=5, log_every=1,
                        device="cpu", progress=False, tensorboard=False,
                        adapter=AdapterSection(base=str(tmp_path / "base"), calls=str(tmp_path / "calls.safetensors"),
                                               rank=2))
    cfg.optim.lr = 3e-3
    return cfg


def test_distillation_lowers_the_loss_resumes_exactly_and_exports_an_adapter(recorded):
    from ppflow.io import read_weights

    tmp_path, _calls = recorded
    result = distill(_config(tmp_path, "straight", 10))
    assert result.step == 10 and result.losses[-1] < result.losses[0]
    distill(_config(tmp_path, "halves", 5))
    resumed = distill(resume=tmp_path / "halves", overrides={"max_steps": 10})
    want = read_weights(result.ema_dir / "ppflow_adapter.safetensors")
    got = read_weights(resumed.ema_dir / "ppflow_adapter.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)  # exact resume
    model = tiny_flux()
    adapter = apply(model, result.ema_dir)  # the exported adapter applies on the plain base
    assert adapter.config.rank == 2 and adapter.config.base == str(tmp_path / "base")
    with torch.no_grad():
        fine = flux_inputs(sigma=0.2)
        assert torch.equal(model(**fine)[0], tiny_flux()(**fine)[0])  # the fine stage is the base
        remove(model)


def test_flux_adapt_records_the_users_pipeline_on_prompts_and_distils_an_adapter(tmp_path, capsys):
    """`ppflow flux adapt`: the user's saved pipeline samples a prompts file (no images), its coarse-stage calls
    are recorded once into the run, distilled, and RUN/ema applies on the pipeline; --resume reuses the calls."""
    from diffusers import FluxPipeline

    from ppflow.cli import main
    from ppflow.integrations.diffusers.distill import load_calls
    from tests.flux.conftest import tiny_components

    FluxPipeline(**tiny_components()).save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("# class prompts\na photo of a cat\n\na photo of a dog\nred grass\n")
    run = tmp_path / "run"
    argv = ["flux", "adapt", "--adapter.pipeline", str(tmp_path / "pipe"), "--adapter.prompts",
            str(tmp_path / "prompts.txt"), "--adapter.record-steps", "4,6", "--adapter.record-batch", "2",
            "--adapter.height", "32", "--adapter.width", "32", "--adapter.record-kwargs", "{max_sequence_length: 8}",
            "--adapter.rank", "2", "--batch-size", "1", "--max-steps", "2", "--device", "cpu", "--progress", "false",
            "--tensorboard", "false", "--out", str(run)]
    assert main(argv) == 0
    calls, meta = load_calls(run / "teacher-calls.safetensors")
    # 3 prompts in batches of 2: 2 prompts at 4 steps (2 coarse), then 1 at 6 steps (3 coarse)
    assert [kw["hidden_states"].shape[0] for kw, _ in calls] == [2, 2, 1, 1, 1]
    assert meta["pipeline"] == str(tmp_path / "pipe") and meta["prompts"] == 3 and meta["shift"]["dynamic"]
    assert f"adapter: {run / 'ema'}" in capsys.readouterr().out
    stamp = (run / "teacher-calls.safetensors").stat().st_mtime_ns
    assert main(["flux", "adapt", "--resume", str(run), "--max-steps", "3"]) == 0
    assert (run / "teacher-calls.safetensors").stat().st_mtime_ns == stamp  # recorded once
    pipe = FluxPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    adapter = apply(pipe, run / "ema")
    assert adapter.config.base == str(tmp_path / "pipe")
    out = pipe(prompt="a photo of a cat", height=32, width=32, num_inference_steps=4, max_sequence_length=8,
               output_type="latent").images
    assert torch.isfinite(out).all() and adapter.counts == {0: 2, 1: 2}


def test_flux_adapt_without_prompts_or_calls_says_what_to_give(tmp_path, capsys):
    from ppflow.cli import main

    assert main(["flux", "adapt", "--adapter.pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppflow flux adapt: error: ") and "--adapter.prompts" in err and err.count("\n") == 1
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    from ppflow.integrations.diffusers.distill import read_prompts
    from ppflow.train.config import ConfigError

    with pytest.raises(ConfigError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")


def test_a_hub_id_base_loads_the_transformer_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from ppflow.integrations.diffusers.distill import load_transformer
    from tests.hub.conftest import add_to_hub_cache

    tiny_flux().save_pretrained(tmp_path / "pipe" / "transformer")  # a pipeline repo's transformer subfolder
    add_to_hub_cache(tmp_path / "hf", "ppflow-test/tiny-flux", tmp_path / "pipe", "e" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_transformer("ppflow-test/tiny-flux")
    want = tiny_flux().state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_a_bf16_base_trains_an_fp32_adapter_under_autocast_that_applies_on_the_fp32_base(recorded):
    from ppflow.train.config import ConfigError

    tmp_path, _calls = recorded
    cfg = _config(tmp_path, "bf16", 3)
    cfg.precision, cfg.adapter.base_dtype = "bf16", "bf16"
    result = distill(cfg)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    from ppflow.io import read_weights

    weights = read_weights(result.ema_dir / "ppflow_adapter.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # the adapter trained in fp32
    model = tiny_flux()
    apply(model, result.ema_dir)
    with torch.no_grad():
        assert torch.isfinite(model(**flux_inputs(sigma=0.9))[0]).all()
    cfg = _config(tmp_path, "bad", 1)
    cfg.adapter.base_dtype = "bf16"  # precision auto on CPU: no autocast
    with pytest.raises(ConfigError, match="--precision bf16"):
        distill(cfg)


def test_guided_calls_fold_each_conditional_unconditional_pair_into_one_guided_target():
    from ppflow.integrations.diffusers.distill import guided_calls
    from ppflow.train.config import ConfigError

    x, y, t = torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.tensor([0.8])
    c, u, alone = torch.full((1, 4, 3), 2.0), torch.full((1, 4, 3), 1.0), torch.full((1, 4, 3), 5.0)
    calls = [({"hidden_states": x, "timestep": t, "text": torch.ones(1)}, c),
             ({"hidden_states": x, "timestep": t, "text": torch.zeros(1)}, u),  # the same step: its unconditional pass
             ({"hidden_states": y, "timestep": t}, alone)]  # a step without CFG
    out = guided_calls(calls, 3.0)
    assert len(out) == 2 and out[0][0] is calls[0][0] and out[1][0] is calls[2][0]
    assert torch.equal(out[0][1], torch.full((1, 4, 3), 4.0)) and torch.equal(out[1][1], alone)  # 1 + 3 (2 - 1)
    with pytest.raises(ConfigError, match="no \\(conditional, unconditional\\) pair"):
        guided_calls(calls[1:], 3.0)


def test_a_guided_adapter_is_saved_as_guided_and_applied_without_coarse_unconditional_passes(tmp_path):
    from ppflow.integrations.diffusers import adapter_of

    base = tiny_flux()
    base.save_pretrained(tmp_path / "base")
    kw = {k: v for k, v in flux_inputs(batch=2, seed=0).items() if k != "return_dict"}
    sig = kw["timestep"]
    calls = []
    with torch.no_grad():
        for s in (1.0, 0.9):
            step = {**kw, "timestep": torch.full_like(sig, s)}
            calls.append((step, base(**step, return_dict=False)[0]))
            plain = {**step, "encoder_hidden_states": torch.zeros_like(kw["encoder_hidden_states"])}
            calls.append((plain, base(**plain, return_dict=False)[0]))
    save_calls(calls, tmp_path / "calls.safetensors")
    cfg = _config(tmp_path, "guided", 2)
    cfg.adapter.guided = 2.0
    result = distill(cfg)
    model = tiny_flux()
    adapter = apply(model, result.ema_dir)
    assert adapter.config.guided == 2.0 and adapter.coarse_cfg is False and adapter_of(model) is adapter
