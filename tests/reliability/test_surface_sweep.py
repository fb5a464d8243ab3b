"""The surfaces added since the first sweep -- FLUX train / cache / demo, hub push / download, pipelines and
sample_model, extract-latents, eval caches, adapt, repro -- against bad inputs and damaged files: each case ends in
a non-zero exit (CLI, in process) or the named exception (Python API), no traceback, the culprit named, and every
file under the test's folders byte for byte as it was (SHA-256 of each before and after)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ppflow.cli import main as cli
from tests.reliability.conftest import caption_folder, flux_train_args, tree_hashes, write_images

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks --device cuda on a machine without CUDA")
FT = ["flux", "train", "--model.base", "{f}/base", "--data.cache", "{f}/cache.safetensors", "--data.resolution", "32",
      "--train.lora-rank", "4", "--device", "cpu", "--batch-size", "2", "--max-steps", "1", "--progress", "false",
      "--tensorboard", "false", "--out", "{out}/run"]
FC = ["flux", "cache", "--data.path", "{f}/data", "--data.pipeline", "{f}/pipe", "--data.cache", "{out}/c.safetensors",
      "--data.resolution", "32", "--data.max-sequence-length", "8", "--device", "cpu"]
EXTRACT = ["extract-latents", "--data-path", "{w}/images", "--out", "{out}/lat", "--vae", "{w}/no-vae",
           "--local-files-only", "--num-workers", "0", "--device", "cpu", "--no-progress"]
PUSH = ["push", "{w}/run", "org/x", "--dry-run", "{out}/dry"]


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """`argv` with `option`'s value replaced (or the option added)."""
    argv = list(argv)
    if option in argv:
        argv[argv.index(option) + 1] = value
        return argv
    return [*argv, option, value]


def c(name: str, argv: list[str], culprit: str, marks=()):
    """A CLI case: argv and what the one error line must name ({w}: the world folder, {f}: the FLUX parts, {out}: a
    folder for outputs, fresh per case)."""
    return pytest.param(argv, culprit, id=name, marks=marks)


CLI_CASES = [
    # flux train: data
    c("ft-cache-truncated", with_option(FT, "--data.cache", "{w}/cache-truncated.safetensors"),
      "cache-truncated.safetensors is not a ppflow flux cache"),
    c("ft-cache-pickled", with_option(FT, "--data.cache", "{w}/cache-pickled.safetensors"),
      "cache-pickled.safetensors is not a ppflow flux cache"),
    c("ft-cache-damaged", with_option(FT, "--data.cache", "{w}/cache-flipped.safetensors"),
      "cache-flipped.safetensors is damaged"),
    c("ft-cache-missing-no-path", with_option(FT, "--data.cache", "{w}/none.safetensors"), "none.safetensors"),
    c("ft-cache-is-a-folder-no-path", with_option(FT, "--data.cache", "{w}/dir.safetensors"), "dir.safetensors"),
    c("ft-cache-missing-no-pipeline", [*with_option(FT, "--data.cache", "{w}/none.safetensors"), "--data.path",
                                       "{f}/data"], "--data.pipeline"),
    c("ft-cache-folder-before-encoders", [*with_option(FT, "--data.cache", "{w}/dir.safetensors"), "--data.path",
                                          "{f}/data", "--data.pipeline", "{w}/no-pipe"], "dir.safetensors: it is a folder"),
    c("ft-cache-parent-file", [*with_option(FT, "--data.cache", "{w}/file/c.safetensors"), "--data.path", "{f}/data",
                               "--data.pipeline", "{w}/no-pipe"], "file is a file, not a folder"),
    c("ft-data-path-not-the-source", [*FT, "--data.path", "{w}/captions"], "not from --data.path {w}/captions"),
    c("ft-resolution-mismatch", with_option(FT, "--data.resolution", "64"), "cached at 32 px"),
    c("ft-build-bad-image", [*with_option(FT, "--data.cache", "{out}/new.safetensors"), "--data.path",
                             "{w}/cap-broken-image", "--data.pipeline", "{w}/no-pipe"], "img1.png"),
    c("ft-build-non-utf8-caption", [*with_option(FT, "--data.cache", "{out}/new.safetensors"), "--data.path",
                                    "{w}/cap-non-utf8", "--data.pipeline", "{w}/no-pipe"], "img0.txt is not UTF-8"),
    # flux train: model
    c("ft-base-missing", with_option(FT, "--model.base", "{w}/no-base"), "no-base"),
    c("ft-ppflux-truncated", [*FT, "--model.ppflux", "{w}/ppflux-truncated"], "ppflux-truncated/ppflux.safetensors"),
    c("ft-ppflux-damaged", [*FT, "--model.ppflux", "{w}/ppflux-flipped"], "ppflux-flipped/ppflux.safetensors is damaged"),
    c("ft-ppflux-schedule", [*FT, "--model.ppflux", "{w}/ppflux", "--model.schedule", "1:2x2"], "--model.schedule"),
    c("ft-parallel-fsdp-no-torchrun", [*FT, "--parallel", "fsdp"], "--parallel fsdp needs torchrun"),
    c("ft-device-cuda", with_option(FT, "--device", "cuda"), "cuda", marks=NO_CUDA),
    # flux train: options and run folders
    c("ft-max-steps-0", with_option(FT, "--max-steps", "0"), "max_steps"),
    c("ft-batch-0", with_option(FT, "--batch-size", "0"), "batch"),
    c("ft-lr-nan", [*FT, "--optim.lr", "nan"], "optim.lr"),
    c("ft-warmup-negative", [*FT, "--optim.warmup-steps", "-1"], "warmup"),
    c("ft-mode-unknown", [*FT, "--train.mode", "half"], "train.mode"),
    c("ft-lora-rank-0", with_option(FT, "--train.lora-rank", "0"), "lora"),
    c("ft-schedule-bad", [*FT, "--model.schedule", "0.5:3x3"], "schedule"),
    c("ft-out-parent-file", with_option(FT, "--out", "{w}/file/run"), "file"),
    c("ft-out-existing-run", with_option(FT, "--out", "{f}/run"), "--resume"),
    c("ft-resume-missing", ["flux", "train", "--resume", "{w}/no-run"], "no-run"),
    c("ft-resume-sit-run", ["flux", "train", "--resume", "{w}/run"], "ppflow train"),
    c("ft-resume-damaged-checkpoint", ["flux", "train", "--resume", "{w}/flux-run-flipped"], "last.pt"),
    # flux cache
    c("fc-data-missing", with_option(FC, "--data.path", "{w}/no-data"), "no-data"),
    c("fc-data-empty", with_option(FC, "--data.path", "{w}/cap-empty"), "cap-empty holds no images"),
    c("fc-caption-missing", with_option(FC, "--data.path", "{w}/cap-no-caption"), "img1.txt"),
    c("fc-caption-non-utf8", with_option(FC, "--data.path", "{w}/cap-non-utf8"), "img0.txt is not UTF-8"),
    c("fc-image-broken", with_option(FC, "--data.path", "{w}/cap-broken-image"), "img1.png"),
    c("fc-jsonl-bad-line", with_option(FC, "--data.path", "{w}/cap-bad-jsonl"), "metadata.jsonl line 1"),
    c("fc-jsonl-missing-file", with_option(FC, "--data.path", "{w}/cap-jsonl-missing"), "gone.png"),
    c("fc-cache-is-a-folder", with_option(FC, "--data.cache", "{w}/dir.safetensors"), "dir.safetensors"),
    c("fc-cache-parent-file", with_option(FC, "--data.cache", "{w}/file/c.safetensors"), "file is a file"),
    c("fc-sequence-too-long", with_option(FC, "--data.max-sequence-length", "100000"), "max_sequence_length 100000"),
    c("fc-sequence-0", with_option(FC, "--data.max-sequence-length", "0"), "--data.max-sequence-length"),
    c("fc-resolution-small", with_option(FC, "--data.resolution", "8"), "--data.resolution"),
    c("fc-batch-0", [*FC, "--batch-size", "0"], "--batch-size"),
    c("fc-pipeline-missing", with_option(FC, "--data.pipeline", "{w}/no-pipe"), "no-pipe"),
    c("flux-demo-steps-0", ["flux", "demo", "--base-steps", "0"], "--base-steps"),
    c("flux-demo-threads-0", ["flux", "demo", "--threads", "0"], "--threads"),
    # extract-latents
    c("el-out-is-the-images", with_option(EXTRACT, "--out", "{w}/images"), "{w}/images is not empty"),
    c("el-out-is-a-run", with_option(EXTRACT, "--out", "{w}/run"), "{w}/run is not empty"),
    c("el-out-other-cache", with_option(EXTRACT, "--out", "{w}/lat-other"), "latent cache of /elsewhere"),
    c("el-out-is-a-file", with_option(EXTRACT, "--out", "{w}/file"), "{w}/file: it is a file"),
    c("el-image-size-0", [*EXTRACT, "--image-size", "0"], "--image-size"),
    c("el-batch-0", [*EXTRACT, "--batch-size", "0"], "--batch-size"),
    c("el-shard-size-0", [*EXTRACT, "--shard-size", "0"], "--shard-size"),
    c("el-limit-0", [*EXTRACT, "--limit", "0"], "--limit"),
    c("el-data-missing", with_option(EXTRACT, "--data-path", "{w}/no-images"), "no-images"),
    c("el-vae-missing", EXTRACT, "no-vae"),
    c("el-bomb", with_option(with_option(EXTRACT, "--data-path", "{w}/bomb"), "--vae", "{w}/vae"), "900,000,000 pixels"),
    # eval and its caches
    c("eval-samples-missing", ["eval", "{w}/no-samples", "{w}/images", "--no-inception", "--classifier", "off"],
      "no-samples"),
    c("eval-samples-garbage-npz", ["eval", "{w}/garbage.npz", "{w}/images", "--no-inception", "--classifier", "off"],
      "garbage.npz"),
    c("eval-ref-missing", ["eval", "{w}/images", "{w}/no-ref", "--no-inception", "--classifier", "off"], "no-ref"),
    c("eval-cfg-nan", ["eval", "{w}/run", "{w}/images", "--cfg", "nan", "--no-inception", "--classifier", "off"],
      "--cfg 'nan': CFG scales must be finite"),
    c("eval-max-ref-0", ["eval", "{w}/images", "{w}/images", "--max-ref", "0"], "--max-ref"),
    # adapt
    c("adapt-out-is-from", ["adapt", "--from", "{w}/model", "--out", "{w}/model", "--force"], "model"),
    c("adapt-out-links-to-from", ["adapt", "--from", "{w}/model", "--out", "{w}/model-link", "--force"], "model"),
    c("adapt-out-existing-model", ["adapt", "--from", "{w}/model", "--out", "{w}/model-copy"], "--force"),
    c("adapt-from-missing", ["adapt", "--from", "{w}/no-model", "--out", "{out}/a"], "no-model"),
    c("adapt-from-truncated", ["adapt", "--from", "{w}/model-truncated", "--out", "{out}/a"],
      "model-truncated/model.safetensors"),
    c("adapt-from-a-pyramid-model", ["adapt", "--from", "{w}/model", "--out", "{out}/a"], "already has 2 stages"),
    c("adapt-level-std-negative", ["adapt", "--from", "{w}/model", "--out", "{out}/a", "--level-init-std", "-1"],
      "--level-init-std"),
    # hub: push, download
    c("push-dry-run-over-a-model", with_option(PUSH, "--dry-run", "{w}/model-copy"), "{w}/model-copy is not empty"),
    c("push-dry-run-other-source", with_option(PUSH, "--dry-run", "{w}/dry-of-other"), "not of {w}/run"),
    c("push-dry-run-into-a-file", with_option(PUSH, "--dry-run", "{w}/file"), "{w}/file: it is a file"),
    c("push-config-links-out", ["push", "{w}/run-link", "org/x", "--dry-run", "{out}/dry"], "config.yaml is a symbolic"),
    c("push-truncated-model", ["push", "{w}/model-truncated", "org/x", "--dry-run", "{out}/dry"],
      "model-truncated/model.safetensors"),
    c("push-damaged-model", ["push", "{w}/model-flipped", "org/x", "--dry-run", "{out}/dry"],
      "model-flipped/model.safetensors is damaged"),
    c("push-bad-repo-id", ["push", "{w}/run", "no slash", "--dry-run", "{out}/dry"], "no slash"),
    c("push-source-missing", ["push", "{w}/no-run", "org/x"], "no-run"),
    c("push-metric-bad", [*PUSH, "--metric", "fid"], "--metric 'fid'"),
    c("download-unknown", ["download", "PPF-QQ"], "PPF-QQ"),
    c("download-no-name", ["download"], "--list"),
    c("download-offline", ["download", "PPF-XL-2", "--no-progress"], "downloads are off"),
    # repro
    c("repro-steps-0", ["repro", "--steps", "0"], "--steps"),
    c("repro-num-eval-0", ["repro", "--num-eval", "0"], "--num-eval"),
    c("repro-threads-0", ["repro", "--threads", "0"], "--threads"),
    c("repro-searched-wrong-preset", ["repro", "--preset", "smoke", "--searched", "PPF-2=1:2x2"], "--searched"),
]


@pytest.fixture(scope="module")
def world(run, flux_parts, tmp_path_factory):
    """Odd and damaged files next to good ones (see the names); nothing here may change."""
    from ppflow.flux.transformer import WEIGHTS_NAME
    from tests.data.test_vae import tiny_vae_dir
    from tests.reliability.conftest import flip_middle
    from tests.reliability.test_command_side import flip_end
    from tests.reliability.test_nothing_lost import huge_png

    w = tmp_path_factory.mktemp("world")
    shutil.copytree(run, w / "run")
    shutil.copytree(run / "ema", w / "model")
    shutil.copytree(run / "ema", w / "model-copy")
    (w / "model-link").symlink_to(w / "model")
    for name, damage in (("model-truncated", lambda p: p.write_bytes(p.read_bytes()[:200])), ("model-flipped", flip_end)):
        shutil.copytree(run / "ema", w / name)
        damage(w / name / "model.safetensors")
    shutil.copytree(run, w / "run-link")
    (w / "secret.yaml").write_text("token: not-for-the-hub\n")
    (w / "run-link" / "config.yaml").unlink()
    (w / "run-link" / "config.yaml").symlink_to(w / "secret.yaml")
    (w / "dry-of-other").mkdir()
    (w / "dry-of-other" / ".ppflow-dry-run.json").write_text(json.dumps({"source": "/elsewhere/run"}))
    (w / "lat-other").mkdir()
    (w / "lat-other" / "extract.json").write_text(json.dumps({"source": "/elsewhere"}))
    write_images(w / "images", n=4)
    (w / "bomb" / "c0").mkdir(parents=True)
    huge_png(w / "bomb" / "c0" / "big.png")
    tiny_vae_dir(w)  # w/vae
    (w / "file").write_text("a file, not a folder\n")
    (w / "dir.safetensors").mkdir()
    (w / "garbage.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    # FLUX
    cache = flux_parts / "cache.safetensors"
    (w / "cache-truncated.safetensors").write_bytes(cache.read_bytes()[:300])
    torch.save({"latents": torch.zeros(2)}, w / "cache-pickled.safetensors")
    flip_end(shutil.copy(cache, w / "cache-flipped.safetensors"))
    ema = flux_parts / "run" / "ema"
    shutil.copytree(ema, w / "ppflux")
    for name, damage in (("ppflux-truncated", lambda p: p.write_bytes(p.read_bytes()[:200])),
                         ("ppflux-flipped", flip_end)):
        shutil.copytree(ema, w / name)
        damage(w / name / WEIGHTS_NAME)
    shutil.copytree(flux_parts / "run", w / "flux-run-flipped")
    flip_middle(w / "flux-run-flipped" / "checkpoints" / "last.pt")
    caption_folder(w / "captions", 2)
    (w / "cap-empty").mkdir()
    caption_folder(w / "cap-no-caption", 2)
    (w / "cap-no-caption" / "img1.txt").unlink()
    caption_folder(w / "cap-non-utf8", 2)
    (w / "cap-non-utf8" / "img0.txt").write_bytes(b"a caf\xe9 cat")
    caption_folder(w / "cap-broken-image", 2)
    (w / "cap-broken-image" / "img1.png").write_bytes(b"not a png")
    caption_folder(w / "cap-bad-jsonl", 1)
    (w / "cap-bad-jsonl" / "metadata.jsonl").write_text("{not json\n")
    caption_folder(w / "cap-jsonl-missing", 1)
    (w / "cap-jsonl-missing" / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "a cat"}\n')
    return w


def run_cli(argv: list[str]) -> int:
    try:
        return cli(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize(("argv", "culprit"), CLI_CASES)
def test_cli_case(argv, culprit, world, flux_parts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPFLOW_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PPFLOW_TRACEBACK", raising=False)
    fill = {"w": world, "f": flux_parts, "out": tmp_path / "out"}
    argv, culprit = [a.format(**fill) for a in argv], culprit.format(**fill)
    before = tree_hashes(world), tree_hashes(flux_parts)
    rc = run_cli(argv)
    out, err = capsys.readouterr()
    assert rc not in (0, None), f"accepted: {argv}\n{out}{err}"
    assert "Traceback" not in out + err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ppflow")]
    assert len(lines) == 1, err
    assert culprit in lines[0], lines[0]
    assert (tree_hashes(world), tree_hashes(flux_parts)) == before  # nothing written over, nothing removed
    outputs = tmp_path / "out"
    left = [p for p in outputs.rglob("*") if p.is_file()] if outputs.exists() else []
    assert all(p.name.endswith(".lock") for p in left), left  # no output beyond a run folder's lock


# ---------------------------------------------------------------- Python APIs: pipelines, sample_model, PPFlux
NAN, INF = float("nan"), float("inf")
SCALES = "CFG scales must be finite numbers"


def a(name: str, target: str, kwargs: dict, exc: type[BaseException], culprit: str):
    """An API case: `target` ('pipe' PPFlowPipeline, 'uncond' an unconditional one, 'sample' sample_model, 'flux'
    PPFluxPipeline, 'ppflux' PPFluxTransformer.from_pretrained) called with `kwargs`."""
    return pytest.param(target, kwargs, exc, culprit, id=name)


API_CASES = [
    a("pipe-guidance-nan", "pipe", {"guidance_scale": NAN}, ValueError, f"guidance_scale=nan: {SCALES}"),
    a("pipe-guidance-inf", "pipe", {"guidance_scale": INF}, ValueError, f"guidance_scale=inf: {SCALES}"),
    a("pipe-guidance-list-nan", "pipe", {"guidance_scale": [1.0, NAN]}, ValueError, "guidance_scale=[1.0, nan]"),
    a("pipe-guidance-text", "pipe", {"guidance_scale": "strong"}, ValueError, "guidance_scale='strong' is not a number"),
    a("pipe-guidance-too-many", "pipe", {"guidance_scale": [1.0, 2.0, 3.0]}, ValueError, "3 CFG scales"),
    a("pipe-steps-fraction", "pipe", {"num_inference_steps": 2.5}, ValueError, "num_inference_steps must be a whole"),
    a("pipe-steps-0", "pipe", {"num_inference_steps": 0}, ValueError, "num_inference_steps must be >= 1, got 0"),
    a("pipe-steps-text", "pipe", {"num_inference_steps": "4"}, ValueError, "num_inference_steps must be a whole"),
    a("pipe-steps-bool", "pipe", {"num_inference_steps": True}, ValueError, "num_inference_steps must be a whole"),
    a("pipe-height-odd", "pipe", {"height": 7}, ValueError, "latent 7x8 is not divisible by stage 0 patch"),
    a("pipe-width-0", "pipe", {"width": 0}, ValueError, "width must be >= 1, got 0"),
    a("pipe-height-fraction", "pipe", {"height": 8.5}, ValueError, "height must be a whole number"),
    a("pipe-label-out-of-range", "pipe", {"class_labels": [7]}, ValueError, "class indices in 0..2"),
    a("pipe-latents-shape", "pipe", {"latents": torch.zeros(1, 4, 4, 4)}, ValueError, "expected (1, 4, 8, 8)"),
    a("uncond-batch-0", "uncond", {"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    a("sample-cfg-nan", "sample", {"cfg_scales": NAN}, ValueError, f"guidance scale nan: {SCALES}"),
    a("sample-steps-fraction", "sample", {"steps": 2.5}, ValueError, "steps must be a whole number"),
    a("sample-steps-0", "sample", {"steps": 0}, ValueError, "steps must be >= 1, got 0"),
    a("sample-noise-odd", "sample", {"noise": torch.randn(1, 4, 6, 6)}, ValueError, "latent 6x6 is not divisible"),
    a("sample-noise-3d", "sample", {"noise": torch.randn(4, 8, 8)}, ValueError, "(N, C, H, W)"),
    a("flux-guidance-nan", "flux", {"guidance_scale": NAN}, ValueError, f"guidance_scale=nan: {SCALES}"),
    a("flux-true-cfg-inf", "flux", {"true_cfg_scale": INF}, ValueError, f"true_cfg_scale=inf: {SCALES}"),
    a("flux-guidance-per-stage-nan", "flux", {"guidance_scale": [3.5, NAN]}, ValueError, "guidance_scale=[3.5, nan]"),
    a("flux-guidance-wrong-count", "flux", {"guidance_scale": [1.0, 2.0, 3.0]}, ValueError, "3 values given for 2"),
    a("flux-steps-fraction", "flux", {"num_inference_steps": 2.5}, ValueError, "num_inference_steps must be a whole"),
    a("flux-steps-0", "flux", {"num_inference_steps": 0}, ValueError, "num_inference_steps must be >= 1, got 0"),
    a("flux-height-negative", "flux", {"height": -32}, ValueError, "height must be >= 1, got -32"),
    a("flux-width-fraction", "flux", {"width": 32.5}, ValueError, "width must be a whole number"),
    a("flux-images-per-prompt-0", "flux", {"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt must be"),
    a("ppflux-truncated", "ppflux", {"folder": "ppflux-truncated"}, ValueError, "ppflux-truncated/ppflux.safetensors"),
    a("ppflux-damaged", "ppflux", {"folder": "ppflux-flipped"}, ValueError, "ppflux.safetensors is damaged"),
    a("ppflux-base-deleted", "ppflux", {"folder": "ppflux-nobase"}, OSError, "no-such-base"),
]


@pytest.fixture(scope="module")
def apis(world):
    """The objects the API cases call: tiny models and pipelines built here."""
    from diffusers import FluxPipeline  # noqa: F401 (diffusers is needed by both pipelines)

    from ppflow.flux.pipeline import PPFluxPipeline
    from ppflow.flux.transformer import CONFIG_NAME, PPFluxTransformer
    from ppflow.models import create_model
    from ppflow.pipelines import PPFlowPipeline
    from ppflow.sampling import sample_model
    from tests.flux.conftest import tiny_components

    shutil.copytree(world / "ppflux", world / "ppflux-nobase")
    cfg_path = world / "ppflux-nobase" / CONFIG_NAME
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model": str(world / "no-such-base")}))
    model = create_model("PPF-tiny-2", input_size=8, num_classes=3, in_channels=4).eval()
    pipe = PPFlowPipeline.from_model(model, vae=None)
    uncond = PPFlowPipeline.from_model(create_model("PPF-tiny-2", input_size=8, num_classes=0, in_channels=1), vae=None)
    comps = tiny_components()
    flux = PPFluxPipeline(**{**comps, "transformer": PPFluxTransformer.from_flux(comps["transformer"], "ppf2")})
    for p in (pipe, uncond, flux):
        p.set_progress_bar_config(disable=True)
    flux_call = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 8,
                 "output_type": "latent"}
    return {
        "pipe": lambda **kw: pipe(**{"class_labels": [0], "num_inference_steps": 2, "output_type": "latent", **kw}),
        "uncond": lambda **kw: uncond(**{"num_inference_steps": 2, "output_type": "latent", **kw}),
        "sample": lambda **kw: sample_model(model, **{"noise": torch.randn(1, 4, 8, 8), "y": torch.tensor([0]),
                                                      "steps": 2, **kw}),
        "flux": lambda **kw: flux(**{**flux_call, **kw}),
        "ppflux": lambda folder: PPFluxTransformer.from_pretrained(world / folder),
    }


@pytest.mark.parametrize(("target", "kwargs", "exc", "culprit"), API_CASES)
def test_api_case(target, kwargs, exc, culprit, apis, world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = tree_hashes(world)
    with pytest.raises(exc) as info:
        apis[target](**kwargs)
    assert culprit in str(info.value), str(info.value)
    assert "\n" not in str(info.value).strip()  # one line
    assert tree_hashes(world) == before


def test_the_sweep_is_large():
    assert len(CLI_CASES) + len(API_CASES) >= 60


def test_a_pipeline_with_good_inputs_still_runs(apis):
    assert apis["pipe"](guidance_scale=[1.0, 2.0]).images.shape == (1, 4, 8, 8)
    assert torch.isfinite(apis["flux"](guidance_scale=[3.5, 2.0])[0]).all()


def test_the_culprits_are_real_flux_runs(flux_parts, tmp_path):
    """The sweep's good FLUX arguments train (so each failure is the case's own)."""
    assert cli(flux_train_args(flux_parts, tmp_path / "ok", 1)) == 0
