"""Bad inputs and damaged files end in one line naming the culprit and a non-zero exit, never a traceback, and are
never accepted silently. A table of bad inputs across the commands (in-process `ppflow.cli.main`), then the
cases that need more than one call."""

import shutil

import pytest
import torch

from ppflow.cli import main as cli
from tests.reliability.conftest import write_images

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks --device cuda on a machine without CUDA")
QUIET = ["--threads", "1", "--progress", "false", "--tensorboard", "false", "--sample.every", "0"]
TRAIN = ["train", "--model", "PPF-tiny-2", "--data", "digits", "--batch-size", "16", "--max-steps", "1",
         "--out", "{tmp}/t", *QUIET]
SAMPLE = ["sample", "--ckpt", "{run}", "--num", "2", "--steps", "2", "--device", "cpu", "--out", "{tmp}/s.png",
          "--no-progress"]
EVAL = ["eval", "{run}", "fashion-mnist-test", "--num-samples", "2", "--steps", "2", "--device", "cpu",
        "--no-inception", "--classifier", "off", "--no-progress"]

def case(name: str, argv: list[str], culprit: str, marks=()):
    """One bad input: its arguments ({run}: a finished run, {bad}: the `bad` fixture, {tmp}: a scratch folder) and
    what the error line must name."""
    return pytest.param(argv, culprit, id=name, marks=marks)


CASES = [
    # sample: options
    case("sample-steps-0", [*SAMPLE, "--steps", "0"], "--steps"),
    case("sample-steps-negative", [*SAMPLE, "--steps", "-1"], "--steps"),
    case("sample-shift-0", [*SAMPLE, "--shift", "0"], "--shift"),
    case("sample-shift-negative", [*SAMPLE, "--shift", "-2"], "--shift"),
    case("sample-cfg-nan", [*SAMPLE, "--cfg", "nan"], "--cfg"),
    case("sample-cfg-inf", [*SAMPLE, "--cfg", "1,inf"], "--cfg"),
    case("sample-cfg-text", [*SAMPLE, "--cfg", "abc"], "--cfg"),
    case("sample-cfg-too-many", [*SAMPLE, "--cfg", "1,2,3"], "CFG scales"),
    case("sample-num-0", [*SAMPLE, "--num", "0"], "--num"),
    case("sample-input-size-negative", [*SAMPLE, "--input-size", "-32"], "--input-size"),
    case("sample-num-heads-0", [*SAMPLE, "--num-heads", "0"], "--num-heads"),
    case("sample-grid-max-0", [*SAMPLE, "--grid-max", "0"], "--grid-max"),
    case("sample-nrow-0", [*SAMPLE, "--nrow", "0"], "--nrow"),
    case("sample-atol-negative", [*SAMPLE, "--method", "dopri5", "--atol", "-1"], "--atol"),
    case("sample-last-step-size-1", [*SAMPLE, "--method", "sde", "--last-step-size", "1.5"], "--last-step-size"),
    case("sample-labels-out-of-range", [*SAMPLE, "--labels", "99"], "--labels"),
    case("sample-guidance-channels", [*SAMPLE, "--guidance-channels", "9"], "--guidance-channels"),
    case("sample-device-cuda", [*SAMPLE, "--device", "cuda"], "--device cuda", marks=NO_CUDA),
    case("sample-device-unknown", [*SAMPLE, "--device", "gpu0"], "--device"),
    case("sample-out-unwritable", [*SAMPLE, "--out", "/proc/ppflow/s.png"], "--out /proc/ppflow/s.png"),
    # sample: damaged or odd files
    case("sample-empty-weights", ["sample", "--ckpt", "{bad}/empty", "--out", "{tmp}/s.png"], "empty/model.safetensors"),
    case("sample-config-list", ["sample", "--ckpt", "{bad}/config-list", "--out", "{tmp}/s.png"],
     "config-list/config.json"),
    case("sample-config-invalid", ["sample", "--ckpt", "{bad}/config-invalid", "--out", "{tmp}/s.png"],
     "config-invalid/config.json"),
    case("sample-config-bad-value", ["sample", "--ckpt", "{bad}/config-bad-value", "--out", "{tmp}/s.png"],
     "config-bad-value/config.json"),
    case("sample-config-disagrees", ["sample", "--ckpt", "{bad}/config-disagrees", "--out", "{tmp}/s.png"],
     "config-disagrees"),
    case("sample-unloadable-vae", [*SAMPLE, "--vae", "{bad}/vae"], "/vae"),
    case("sample-not-a-checkpoint", ["sample", "--ckpt", "{bad}/not-a-checkpoint.pt", "--out", "{tmp}/s.png"],
     "not-a-checkpoint.pt"),
    # eval
    case("eval-cfg-nan", [*EVAL, "--cfg", "nan"], "--cfg"),
    case("eval-steps-0", [*EVAL, "--steps", "0"], "--steps"),
    case("eval-shift-0", [*EVAL, "--shift", "0"], "--shift"),
    case("eval-pr-k-0", [*EVAL, "--pr-k", "0"], "--pr-k"),
    case("eval-device-cuda", [*EVAL, "--device", "cuda"], "--device cuda", marks=NO_CUDA),
    case("eval-unloadable-vae", [*EVAL, "--vae", "{bad}/vae"], "/vae"),
    case("eval-truncated-jpeg", ["eval", "{bad}/images-first-bad", "{bad}/images", "--no-inception", "--classifier",
                             "off"], "000.jpg"),
    case("eval-missing-samples", ["eval", "{tmp}/nothing-here", "fashion-mnist-test"], "nothing-here"),
    # info
    case("info-empty-weights", ["info", "{bad}/empty"], "empty/model.safetensors"),
    case("info-truncated-weights", ["info", "{bad}/truncated"], "truncated/model.safetensors"),
    case("info-damaged-weights", ["info", "{bad}/flipped"], "flipped/model.safetensors is damaged"),
    case("info-config-disagrees", ["info", "{bad}/config-disagrees"], "config-disagrees/model.safetensors"),
    case("info-config-list", ["info", "{bad}/config-list"], "config-list/config.json"),
    case("info-config-invalid", ["info", "{bad}/config-invalid"], "config-invalid/config.json"),
    case("info-config-bytes", ["info", "{bad}/config-bytes"], "config-bytes/config.json"),
    case("info-cfg-text", ["info", "{run}", "--cfg", "abc"], "--cfg"),
    case("info-cfg-nan", ["info", "{run}", "--cfg", "nan"], "--cfg"),
    case("info-num-heads-0", ["info", "{run}", "--num-heads", "0"], "--num-heads"),
    case("info-not-a-checkpoint", ["info", "{bad}/not-a-checkpoint.pt"], "not-a-checkpoint.pt"),
    case("info-stored-object", ["info", "{bad}/object.pt"], "object.pt"),
    # convert / adapt
    case("convert-config-list", ["convert", "{bad}/config-list", "{tmp}/c"], "config-list/config.json"),
    case("convert-truncated-weights", ["convert", "{bad}/truncated", "{tmp}/c"], "truncated/model.safetensors"),
    case("convert-unwritable-output", ["convert", "{run}", "/proc/ppflow/c"], "/proc/ppflow/c"),
    case("convert-input-size-negative", ["convert", "{run}", "{tmp}/c", "--input-size", "-32"], "--input-size"),
    case("adapt-config-list", ["adapt", "--from", "{bad}/config-list", "--out", "{tmp}/a"], "config-list/config.json"),
    case("adapt-level-init-std-negative", ["adapt", "--from", "{run}", "--out", "{tmp}/a", "--level-init-std", "-1"],
     "--level-init-std"),
    # train
    case("train-device-cuda", [*TRAIN, "--device", "cuda"], "device cuda", marks=NO_CUDA),
    case("train-device-unknown", [*TRAIN, "--device", "cuda:abc"], "device 'cuda:abc'"),
    case("train-max-steps-0", [*TRAIN, "--max-steps", "0"], "max_steps 0"),
    case("train-yaml-syntax", ["train", "--config", "{bad}/bad.yaml"], "bad.yaml"),
    case("train-yaml-list", ["train", "--config", "{bad}/list.yaml"], "list.yaml"),
    case("train-resume-not-a-checkpoint", ["train", "--resume", "{bad}/not-a-checkpoint.pt"], "not-a-checkpoint.pt"),
    case("train-resume-stored-object", ["train", "--resume", "{bad}/object.pt"], "object.pt"),
    case("train-depth-negative", [*TRAIN, "--model.depth", "-1"], "model.depth"),
    case("train-hidden-size-0", [*TRAIN, "--model.hidden-size", "0"], "model.hidden_size"),
    case("train-image-size-negative", [*TRAIN, "--data.image-size", "-16"], "data.image_size"),
    case("train-lr-nan", [*TRAIN, "--optim.lr", "nan"], "optim.lr"),
    case("train-init-config-list", [*TRAIN, "--model.init", "{bad}/config-list"], "config-list/config.json"),
    case("train-unloadable-vae", [*TRAIN, "--data", "imagefolder", "--data.path", "{bad}/images", "--data.vae",
                              "{bad}/vae"], "/vae"),
    # bench / flops / extract-latents
    case("bench-latent-size-negative", ["bench", "sample", "--latent-size", "-32"], "--latent-size"),
    case("bench-batch-0", ["bench", "sample", "--batch", "0"], "--batch"),
    case("bench-device-unknown", ["bench", "sample", "--size", "tiny", "--device", "tpu"], "--device"),
    case("flops-latent-size-negative", ["flops", "--latent-size", "-32"], "--latent-size"),
    case("extract-latents-device-unknown", ["extract-latents", "--data-path", "{bad}/images", "--out", "{tmp}/l",
                                        "--device", "gpu"], "--device"),
    case("extract-latents-missing-folder", ["extract-latents", "--data-path", "{tmp}/nothing-here", "--out", "{tmp}/l"],
     "nothing-here"),
]


def run_cli(argv: list[str]) -> int:
    try:
        return cli(argv)
    except SystemExit as e:  # argparse: usage and one error line naming the option
        return e.code


@pytest.mark.parametrize(("argv", "culprit"), CASES)
def test_bad_input_is_one_line_naming_the_culprit(argv, culprit, run, bad, tmp_path, capsys):
    argv = [a.format(run=run, bad=bad, tmp=tmp_path) for a in argv]
    culprit = culprit.format(run=run, bad=bad, tmp=tmp_path)
    rc = run_cli(argv)
    out, err = capsys.readouterr()
    assert rc not in (0, None), f"accepted: {argv}\n{out}{err}"
    assert "Traceback" not in out + err, err
    message = [line for line in err.splitlines() if line.startswith("ppflow")]  # argparse prints usage first
    assert len(message) == 1, err
    assert culprit in message[0], message[0]
    assert "weights_only=False" not in err and "weights_only` set to `False`" not in err


def test_the_sweep_is_large():
    assert len(CASES) >= 40


def test_a_truncated_jpeg_in_training_is_skipped_and_named(bad, tmp_path, capsys):
    from tests.data.test_vae import tiny_vae_dir

    vae = tiny_vae_dir(tmp_path)
    images = tmp_path / "images"
    write_images(images, n=8, truncate="005.jpg")
    argv = ["train", "--model", "PPF-tiny-2", "--data", "imagefolder", "--data.path", str(images), "--data.vae",
            str(vae), "--data.image-size", "16", "--batch-size", "4", "--max-steps", "2", "--device", "cpu",
            "--out", str(tmp_path / "run"), *QUIET]
    assert cli(argv) == 0  # both steps read every image once: the bad one is met and skipped
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "005.jpg" in line]
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert warnings[0].startswith(f"ppflow: warning: cannot read image {images / 'c1' / '005.jpg'} (")
    assert "skipped" in warnings[0]


def test_a_truncated_jpeg_in_eval_is_named_and_not_skipped(bad, tmp_path, capsys, inception_weights):
    # the bad file is not the first one, so it is met while the Inception features are computed
    assert cli(["eval", str(bad / "images"), str(bad / "images-first-bad" / "c1"), "--no-sfid", "--no-pr",
                "--classifier", "off", "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ppflow eval: error: cannot read image {bad / 'images' / 'c1' / '003.jpg'} (") and \
        err.count("\n") == 1, err
    assert "it is not skipped" in err


def test_a_truncated_jpeg_stops_extract_latents_naming_it(bad, tmp_path, capsys):
    from tests.data.test_vae import tiny_vae_dir

    vae = tiny_vae_dir(tmp_path)
    # one worker process reads the images: the error must cross the process boundary as one line
    assert cli(["extract-latents", "--data-path", str(bad / "images"), "--out", str(tmp_path / "lat"), "--vae",
                str(vae), "--image-size", "16", "--num-workers", "1", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ppflow extract-latents: error: cannot read image {bad / 'images' / 'c1' / '003.jpg'} (")
    assert err.count("\n") == 1 and "does not skip images" in err and "Traceback" not in err, err


def test_info_and_loaders_check_the_config_against_the_tensors(bad, capsys):
    import ppflow

    assert cli(["info", str(bad / "config-disagrees")]) == 2  # info used to describe the config's 5 classes
    err = capsys.readouterr().err
    assert "does not match the model config" in err and "y_embedder.embedding_table.weight" in err, err
    with pytest.raises(ValueError, match="config-disagrees does not match the model config"):
        ppflow.load_model(bad / "config-disagrees")


def test_unhandled_bad_input_errors_are_one_line(monkeypatch, capsys):
    from ppflow import cli as cli_module
    from ppflow.commands import flops

    def fails(args):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(flops, "main", fails)
    assert cli_module.main(["flops"]) == 2
    assert capsys.readouterr().err == "ppflow flops: error: first line\n"


def test_resume_of_the_wrong_file_never_suggests_weights_only_false(bad, tmp_path, capsys):
    shutil.copy(bad / "object.pt", tmp_path / "object.pt")
    assert cli(["train", "--resume", str(tmp_path / "object.pt")]) == 2
    err = capsys.readouterr().err
    assert "weights_only" not in err and "does not unpickle" in err and err.count("\n") == 1, err
