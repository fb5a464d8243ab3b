"""`ppflow flux train`: caption folders and their cache, stage-stratified sigmas, LoRA/full steps, exact resume."""

import pytest
import torch
from PIL import Image

from ppflow.flux.captions import CaptionCache, cache_folder, load_encoders, scan_folder
from ppflow.flux.objective import train_sigmas
from ppflow.flux.train import train_flux
from ppflow.flux.train_config import FluxTrainConfig
from ppflow.flux.transformer import PPFluxTransformer
from ppflow.train.config import ConfigError
from tests.flux.conftest import tiny_components, tiny_flux
from tests.reliability.conftest import caption_folder

_folder = caption_folder  # images with same-named .txt captions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny FLUX pipeline folder (no transformer), a transformer folder, an image-caption folder and its cache."""
    tmp = tmp_path_factory.mktemp("flux_train")
    comps = tiny_components()
    from diffusers import FluxPipeline

    FluxPipeline(**{**comps, "transformer": None}).save_pretrained(tmp / "pipe")
    tiny_flux(in_channels=16).save_pretrained(tmp / "base")
    data = _folder(tmp / "data")
    cache = cache_folder(data, load_encoders(str(tmp / "pipe")), 32, max_sequence_length=8, progress=False)
    cache.save(tmp / "cache.safetensors")
    return tmp


def _cfg(tmp, out, **kw):
    cfg = FluxTrainConfig(batch_size=2, max_steps=4, log_every=1, save_every=2, device="cpu", progress=False)
    cfg.model.base, cfg.data.cache, cfg.data.resolution, cfg.out = str(tmp / "base"), str(tmp / "cache.safetensors"), \
        32, str(tmp / out)
    cfg.train.lora_rank, cfg.optim.lr = 4, 1e-3
    for k, v in kw.items():
        section, _, name = k.rpartition("__")
        setattr(getattr(cfg, section) if section else cfg, name, v)
    return cfg


def test_caption_folders_and_their_errors(tmp_path):
    items = scan_folder(_folder(tmp_path / "ok", 2))
    assert [c for _, c in items] == ["a red cat", "a blue dog"]
    meta = tmp_path / "meta"
    meta.mkdir()
    Image.new("RGB", (8, 8)).save(meta / "x.png")
    (meta / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "a cat"}\n')
    assert scan_folder(meta)[0][1] == "a cat"
    (meta / "metadata.jsonl").write_text('{"file_name": "x.png"}\n')
    with pytest.raises(ValueError, match="x.png.*no caption"):
        scan_folder(meta)
    (tmp_path / "ok" / "img1.txt").unlink()
    with pytest.raises(ValueError, match="img1.png has no caption"):
        scan_folder(tmp_path / "ok")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        scan_folder(tmp_path / "empty")
    bad = _folder(tmp_path / "bad", 1)
    (bad / "img0.png").write_bytes(b"not a png")
    from ppflow.flux.captions import load_image

    with pytest.raises(ValueError, match="cannot read image .*img0.png"):
        load_image(bad / "img0.png", 16)


@pytest.mark.parametrize("side", [256, 1024])
def test_stratified_sigmas_follow_the_inference_stage_rule(side):
    model = PPFluxTransformer.from_flux(tiny_flux(), "ppf2")
    L = (side // 16) ** 2
    draw = train_sigmas(model, 64, L, torch.Generator().manual_seed(0))
    assert torch.equal(draw.stage, model.stage_of(draw.sigma, L))  # the rule PPFluxPipeline samples with
    (b,) = model.sigma_boundaries(L)
    assert draw.stage.tolist() == [0] * 32 + [1] * 32  # span shares: half the unshifted sigmas are coarse
    assert (draw.sigma[:32] > b).all() and (draw.sigma[32:] <= b).all()
    assert b > 0.5  # the resolution shift moved the boundary (more coarse sigma at larger images)


def test_cache_is_used_lora_freezes_the_base_and_resume_is_exact(setup):
    tmp = setup
    assert CaptionCache.load(tmp / "cache.safetensors").latents.shape == (4, 4, 16, 16)
    straight = train_flux(_cfg(tmp, "lora"))  # no data.path / pipeline: the cache is used
    assert straight.step == 4 and len(straight.losses) == 4
    ckpt = torch.load(straight.checkpoint, weights_only=True)
    assert all("lora_" in k or not k.startswith("base.") for k in ckpt["model"])
    assert any("lora_" in k for k in ckpt["model"]) and "patch_embed.0.weight" in ckpt["model"]
    # the EMA folder is a PPFlux on the untouched base: base weights equal the base folder's
    tuned = PPFluxTransformer.from_pretrained(straight.ema_dir)
    ref = tiny_flux(in_channels=16)
    for k, v in ref.state_dict().items():
        key = k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        got = tuned.base.state_dict().get(k, tuned.base.state_dict().get(key))
        assert torch.equal(got, v), k
    part = train_flux(_cfg(tmp, "lora2"), overrides={"max_steps": 2})
    resumed = train_flux(resume=part.run_dir, overrides={"max_steps": 4})
    assert part.losses + resumed.losses == straight.losses
    assert (tmp / "lora2" / "metrics.csv").read_text().count("\n") == 5
    # a PPFlux folder as the start (model.ppflux): its LoRA and extras are loaded, not re-initialised
    more = train_flux(_cfg(tmp, "more", model__ppflux=str(straight.ema_dir)), overrides={"max_steps": 1})
    assert more.losses[0] < straight.losses[0]


def test_full_mode_trains_the_base_and_a_missing_cache_is_a_clear_error(setup):
    tmp = setup
    res = train_flux(_cfg(tmp, "full", train__mode="full", model__schedule="1:2x2"), overrides={"max_steps": 2})
    tuned = PPFluxTransformer.from_pretrained(res.ema_dir)
    assert not torch.equal(tuned.base.x_embedder.weight, tiny_flux(in_channels=16).x_embedder.weight)
    assert tuned.stage_embed.abs().sum() == 0  # one stage: exactly FLUX
    with pytest.raises(ConfigError, match="no cache .*data.pipeline"):
        train_flux(_cfg(tmp, "none", data__cache=str(tmp / "missing.safetensors"), data__path=str(tmp / "data")))


def test_fsdp2_and_gradient_checkpointing_runs_match_the_plain_run(setup, tmp_path):
    import torch.distributed as dist

    tmp = setup
    plain = train_flux(_cfg(tmp, "plain2", train__mode="full"), overrides={"max_steps": 2})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sharded = train_flux(_cfg(tmp, "fsdp2", train__mode="full"), overrides={"max_steps": 2, "parallel": "fsdp"})
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(sharded.losses, plain.losses)
    ckpt = train_flux(_cfg(tmp, "ckpt2", train__mode="full"), overrides={"max_steps": 2, "grad_checkpointing": True})
    torch.testing.assert_close(ckpt.losses, plain.losses)
    a, b = (PPFluxTransformer.from_pretrained(r.ema_dir) for r in (plain, sharded))
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)


def test_cache_command_and_bad_data_in_one_line(setup, tmp_path, capsys):
    from ppflow.cli import main

    tmp = setup
    args = ["flux", "cache", "--data.pipeline", str(tmp / "pipe"), "--data.resolution", "32",
            "--data.max-sequence-length", "8", "--device", "cpu"]
    assert main([*args, "--data.path", str(tmp / "data"), "--data.cache", str(tmp_path / "c.safetensors")]) == 0
    # two loads of the same VAE: equal weights, but safetensors may map them at different (unaligned) addresses,
    # and CPU BLAS/conv kernels round differently by alignment -- equal to float32 rounding, not bitwise
    torch.testing.assert_close(CaptionCache.load(tmp_path / "c.safetensors").latents,
                               CaptionCache.load(tmp / "cache.safetensors").latents, rtol=0, atol=1e-5)
    bad = _folder(tmp_path / "bad", 2)
    (bad / "img1.png").write_bytes(b"broken")
    capsys.readouterr()
    assert main([*args, "--data.path", str(bad), "--data.cache", str(tmp_path / "d.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read image" in err[0] and "img1.png" in err[0]


def _cli(tmp, out, steps, *extra):
    return ["flux", "train", "--model.base", str(tmp / "base"), "--data.cache", str(tmp / "cache.safetensors"),
            "--data.resolution", "32", "--train.lora-rank", "4", "--optim.lr", "1e-3", "--device", "cpu",
            "--batch-size", "4", "--max-steps", str(steps), "--log-every", "1", "--save-every", "2",
            "--progress", "false", "--tensorboard", "false", "--out", str(out), *extra]


@pytest.mark.slow
def test_flux_train_under_torchrun_equals_one_process_resumes_exactly_and_stops_on_sigterm(setup, tmp_path):
    from ppflow.train import load_checkpoint
    from tests import torchrun as tr

    tmp = setup
    two = tmp_path / "two"
    proc = tr.run(*_cli(tmp, two, 4))
    assert proc.stdout.count("done: step 4/4") == 1  # rank 0 speaks, once
    rows = tr.metrics(two)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]  # each row once
    assert load_checkpoint(two)["step"] == 4 and load_checkpoint(two)["world_size"] == 2
    # the logged loss is the mean over both ranks: one process with 2 accumulation steps cuts the same shards
    ref = train_flux(_cfg(tmp, "ref", grad_accum=2, batch_size=4))
    assert [float(r["loss"]) for r in rows] == pytest.approx([float(r["loss"]) for r in tr.metrics(ref.run_dir)],
                                                             rel=1e-5)
    # exact resume under torchrun: 2 steps, then on to 4, logs the rows of the straight run
    part = tmp_path / "part"
    tr.run(*_cli(tmp, part, 2))
    tr.run("flux", "train", "--resume", str(part), "--max-steps", "4")
    assert [r["loss"] for r in tr.metrics(part)] == [r["loss"] for r in rows]
    # SIGTERM to the launcher: both ranks stop at one step, within a step, with its checkpoint and row
    stop = tmp_path / "stop"
    out, seconds = tr.sigterm_after_rows(stop, 2, *_cli(tmp, stop, 100000))
    assert seconds < 25, (seconds, out[-3000:])
    step = load_checkpoint(stop)["step"]
    assert f"stopped by SIGTERM: step {step}/" in out and out.count("stopped by SIGTERM: step") == 1, out[-3000:]
    assert [int(r["step"]) for r in tr.metrics(stop)] == list(range(1, step + 1))


def test_sigterm_stops_flux_train_like_ppflow_train(setup, tmp_path):
    """Issue 27 #14: a SIGTERM exits 143 (128 + 15) with the stop line, not 130 and the Ctrl-C message."""
    import signal
    import subprocess
    import sys
    import time

    from tests import torchrun as tr

    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "ppflow.cli", *_cli(setup, out, 100000)], env=tr.env(),
                            cwd=tr.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not tr.metrics(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "ppflow flux train: stopped at step" in err and "--resume" in err and "Traceback" not in err
