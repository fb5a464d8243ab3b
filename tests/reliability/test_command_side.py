"""Issue 27 at the commands: each defect reproduced with real files and the real CLI (in process), now refused in
one line with the culprit named, or said out loud, and nothing overwritten."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from ppflow.cli import main
from ppflow.io import check_output_folder
from tests.reliability.conftest import caption_folder, flux_train_args, tree_hashes


def flip_end(path, n: int = 4) -> None:
    """Invert `n` bytes near the end of a file: tensor data of a safetensors file, never its header."""
    data = bytearray(path.read_bytes())
    data[-2 * n:-n] = bytes(b ^ 0xFF for b in data[-2 * n:-n])
    path.write_bytes(bytes(data))


def one_error_line(capsys, prefix: str) -> str:
    """The last stderr line, checked: starts with `prefix`, no traceback anywhere."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(prefix), err
    return line


# ---------------------------------------------------------------- FLUX cache and train
def test_a_bad_cache_path_is_refused_before_the_encoders_load(flux_parts, tmp_path, capsys):
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "file").write_text("")
    missing = str(tmp_path / "no-such-pipeline")  # loading it would fail: the path must be checked first
    argv = ["flux", "cache", "--data.path", str(flux_parts / "data"), "--data.pipeline", missing, "--device", "cpu"]
    assert main([*argv, "--data.cache", str(tmp_path / "dir.safetensors")]) == 2
    assert "dir.safetensors: it is a folder" in one_error_line(capsys, "ppflow flux cache: error: cannot write")
    train = flux_train_args(flux_parts, tmp_path / "run", 1)
    train[train.index("--data.cache") + 1] = str(tmp_path / "file" / "c.safetensors")
    assert main([*train, "--data.path", str(flux_parts / "data"), "--data.pipeline", missing]) == 2
    assert "file is a file, not a folder" in one_error_line(capsys, "ppflow flux train: error: cannot write")
    assert not any((tmp_path / "dir.safetensors").iterdir()) and (tmp_path / "file").read_text() == ""


def test_no_verify_reaches_the_ppflux_folder_and_the_cache(flux_parts, tmp_path, capsys):
    from ppflow.flux.transformer import WEIGHTS_NAME

    shutil.copytree(flux_parts / "run" / "ema", tmp_path / "ppflux")
    flip_end(tmp_path / "ppflux" / WEIGHTS_NAME)
    argv = flux_train_args(flux_parts, tmp_path / "a", 1, "--model.ppflux", str(tmp_path / "ppflux"))
    assert main(argv) == 2
    line = one_error_line(capsys, "ppflow flux train: error: ")
    assert f"{tmp_path / 'ppflux' / WEIGHTS_NAME} is damaged" in line and "--no-verify" in line
    assert main([*argv, "--no-verify"]) == 0

    cache = tmp_path / "cache.safetensors"
    shutil.copy(flux_parts / "cache.safetensors", cache)
    flip_end(cache)
    argv = flux_train_args(flux_parts, tmp_path / "b", 1)
    argv[argv.index("--data.cache") + 1] = str(cache)
    assert main(argv) == 2
    assert f"{cache} is damaged" in one_error_line(capsys, "ppflow flux train: error: ")
    assert main([*argv, "--no-verify"]) == 0


def test_a_cache_of_another_folder_than_data_path_is_refused(flux_parts, tmp_path, capsys):
    new = caption_folder(tmp_path / "new", 2)
    before = tree_hashes(flux_parts)
    assert main([*flux_train_args(flux_parts, tmp_path / "run", 1), "--data.path", str(new)]) == 2
    line = one_error_line(capsys, "ppflow flux train: error: ")
    assert f"was cached from {flux_parts / 'data'}, not from --data.path {new}" in line
    assert "ppflow flux cache --data.path" in line  # how to rebuild
    assert not (tmp_path / "run" / "checkpoints").exists() and tree_hashes(flux_parts) == before
    # the folder it was cached from is accepted
    assert main([*flux_train_args(flux_parts, tmp_path / "run", 1), "--data.path", str(flux_parts / "data")]) == 0


def test_a_resume_on_another_cache_says_what_changed(flux_parts, tmp_path, capsys):
    run = shutil.copytree(flux_parts / "run", tmp_path / "run")
    other = shutil.copy(flux_parts / "cache.safetensors", tmp_path / "other.safetensors")
    assert main(["flux", "train", "--resume", str(run), "--max-steps", "3"]) == 0
    assert "data.cache changed" not in capsys.readouterr().out  # the same cache: nothing to say
    assert main(["flux", "train", "--resume", str(run), "--max-steps", "4", "--data.cache", str(other)]) == 0
    out = capsys.readouterr().out
    notes = [ln for ln in out.splitlines() if "data.cache changed" in ln]
    assert len(notes) == 1 and f"{flux_parts / 'cache.safetensors'} -> {other}" in notes[0]


def test_a_resume_already_past_max_steps_has_nothing_to_do(flux_parts, tmp_path, capsys):
    run = shutil.copytree(flux_parts / "run", tmp_path / "run")  # at step 2
    before = tree_hashes(run / "checkpoints"), tree_hashes(run / "ema")
    assert main(["flux", "train", "--resume", str(run), "--max-steps", "1"]) == 0
    out, err = capsys.readouterr()
    assert "already at step 2 >= max_steps 1; nothing to do" in out + err and "Traceback" not in err
    assert (tree_hashes(run / "checkpoints"), tree_hashes(run / "ema")) == before  # the weights untouched


def test_fsdp_without_torchrun_is_one_line_and_one_process_still_trains(flux_parts, tmp_path, capsys):
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert main(flux_train_args(flux_parts, tmp_path / "run", 1, "--parallel", "fsdp")) == 2
    line = one_error_line(capsys, "ppflow flux train: error: --parallel fsdp needs torchrun (e.g. torchrun ")
    assert "-m ppflow.cli flux train" in line
    # ppflow train: --parallel ddp / fsdp in one process trains as before (nothing to wrap)
    assert main(["train", "--model.name", "PPF-tiny-2", "--parallel", "ddp", "--max-steps", "1", "--batch-size", "8",
                 "--sample.every", "0", "--progress", "false", "--tensorboard", "false",
                 "--out", str(tmp_path / "sit")]) == 0


# ---------------------------------------------------------------- push --dry-run, extract-latents --out
def test_push_dry_run_never_writes_over_another_folder(run, tmp_path, capsys):
    model = shutil.copytree(run / "ema", tmp_path / "model")  # somebody's model folder
    (model / "notes.txt").write_text("mine")
    before = tree_hashes(tmp_path)
    assert main(["push", str(run), "org/x", "--dry-run", str(model)]) == 2
    line = one_error_line(capsys, f"ppflow push: error: {model} is not empty")
    assert "--force" in line and tree_hashes(tmp_path) == before
    dry = tmp_path / "dry"
    assert main(["push", str(run), "org/x", "--dry-run", str(dry)]) == 0
    assert main(["push", str(run), "org/x", "--dry-run", str(dry)]) == 0  # the same source again: rewritten
    other = shutil.copytree(run, tmp_path / "other-run")
    assert main(["push", str(other), "org/x", "--dry-run", str(dry)]) == 2
    assert f"holds a dry run of {run}, not of {other}" in one_error_line(capsys, "ppflow push: error: ")
    assert main(["push", str(run), "org/x", "--dry-run", str(model), "--force"]) == 0  # asked for


def test_extract_latents_out_into_its_images_or_a_run_folder_needs_force(run, tmp_path, capsys):
    from tests.reliability.conftest import write_images

    write_images(tmp_path / "images", n=4)
    before = tree_hashes(tmp_path)
    argv = ["extract-latents", "--data-path", str(tmp_path / "images"), "--vae", str(tmp_path / "no-vae"),
            "--local-files-only", "--num-workers", "0", "--device", "cpu"]
    for out in (tmp_path / "images", run):
        run_before = tree_hashes(run)
        assert main([*argv, "--out", str(out)]) == 2
        line = one_error_line(capsys, f"ppflow extract-latents: error: {out} is not empty")
        assert "--force (or another --out)" in line
        assert tree_hashes(tmp_path) == before and tree_hashes(run) == run_before


def test_output_folder_check_passes_our_own_files(tmp_path):
    from ppflow.data.latents import EXTRACT_INFO, is_shard

    out = tmp_path / "lat"
    out.mkdir()
    (out / "latents-00000.npy").write_bytes(b"")
    (out / "labels-00000.npy").write_bytes(b"")
    check_output_folder(out, own=is_shard, marker=EXTRACT_INFO, source="/imgs")  # an interrupted extraction
    (out / EXTRACT_INFO).write_text(json.dumps({"source": "/imgs"}))
    check_output_folder(out, own=is_shard, marker=EXTRACT_INFO, source="/imgs")  # a finished one, same images
    with pytest.raises(FileExistsError, match="holds a latent cache of /imgs, not of /other"):
        check_output_folder(out, own=is_shard, marker=EXTRACT_INFO, source="/other", what="latent cache")
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="it is a file"):
        check_output_folder(tmp_path / "f")


# ---------------------------------------------------------------- Python APIs validate like the CLI
def test_pipelines_and_sample_model_validate_like_the_cli(capsys):
    from ppflow.models import create_model
    from ppflow.pipelines import PPFlowPipeline
    from ppflow.sampling import sample_model

    assert main(["flops", "--model", "PPF-tiny-2", "--cfg", "nan"]) == 2
    cli_text = capsys.readouterr().err.split(": ", 3)[-1].strip()
    assert cli_text == "CFG scales must be finite numbers, e.g. 1 (no guidance) or 4"
    model = create_model("PPF-tiny-2", input_size=8, num_classes=3, in_channels=4).eval()
    pipe = PPFlowPipeline.from_model(model, vae=None)
    pipe.set_progress_bar_config(disable=True)
    for kw, msg in (({"guidance_scale": float("nan")}, f"guidance_scale=nan: {cli_text}"),
                    ({"guidance_scale": [1.0, float("inf")]}, f"guidance_scale=[1.0, inf]: {cli_text}"),
                    ({"guidance_scale": "x"}, "guidance_scale='x' is not a number"),
                    ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number >= 1, got 2.5"),
                    ({"num_inference_steps": 0}, "num_inference_steps must be >= 1, got 0"),
                    ({"height": 7}, "latent 7x8 is not divisible by stage 0 patch 4x4"),
                    ({"width": -8}, "width must be >= 1, got -8")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            pipe([0], output_type="latent", **kw)
    z = torch.randn(1, 4, 8, 8)
    for kw, msg in (({"cfg_scales": float("nan")}, f"guidance scale nan: {cli_text}"),
                    ({"steps": 2.5}, "steps must be a whole number")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            sample_model(model, z, torch.tensor([0]), **kw)
    with pytest.raises(ValueError, match="not divisible by stage 0 patch"):
        sample_model(model, torch.randn(1, 4, 6, 6), torch.tensor([0]), steps=2)
