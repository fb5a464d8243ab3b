from pathlib import Path

import pytest
import torch

from ppflow.train import TrainConfig, train


def tiny_cfg(out, **kw) -> TrainConfig:
    """PPF-tiny-2 on digits, batch 8, one step, no grids or TensorBoard."""
    kw = {"batch_size": 8, "max_steps": 1, "save_every": 100, "progress": False, "tensorboard": False, **kw}
    cfg = TrainConfig(out=str(out), **kw)
    cfg.model.name, cfg.sample.every = "PPF-tiny-2", 0
    return cfg


def flip_middle(path, n: int = 4) -> None:
    """Invert `n` bytes in the middle of the file, in place (a disk or copy error)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i:i + n] = bytes(b ^ 0xFF for b in data[i:i + n])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step training run (checkpoints/last.pt + ema/); copy it before changing it."""
    torch.set_num_threads(1)
    return train(tiny_cfg(tmp_path_factory.mktemp("rel") / "run", max_steps=2, log_every=1)).run_dir


def write_images(folder, n: int = 8, size: int = 16, truncate: str | None = None, classes: int = 2) -> list:
    """`folder/<class>/<i>.jpg` RGB JPEGs (n in all); the file named `truncate` is cut to half its bytes."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = folder / f"c{i % classes}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()
        path.write_bytes(data[: len(data) // 2] if path.name == truncate else data)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def bad(run, tmp_path_factory):
    """Damaged or odd files next to a good run (see the names), for the one-line-error tests."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("bad")

    def model(name, weights=None, config=None):
        shutil.copytree(run / "ema", d / name)
        if weights is not None:
            (d / name / "model.safetensors").write_bytes(weights((d / name / "model.safetensors").read_bytes()))
        if config is not None:
            cfg = json.loads((d / name / "config.json").read_text())
            (d / name / "config.json").write_bytes(config(cfg))

    model("empty", weights=lambda b: b"")
    model("truncated", weights=lambda b: b[: len(b) // 2])
    model("flipped", weights=lambda b: b[: len(b) // 2] + bytes(x ^ 0xFF for x in b[len(b) // 2: len(b) // 2 + 4])
          + b[len(b) // 2 + 4:])
    model("config-list", config=lambda c: b"[1, 2, 3]")
    model("config-invalid", config=lambda c: b'{"depth": 2,')
    model("config-bytes", config=lambda c: b"\xff\xfe\x00\x81 not text")
    model("config-disagrees", config=lambda c: json.dumps({**c, "num_classes": 5}).encode())
    model("config-bad-value", config=lambda c: json.dumps({**c, "depth": "two"}).encode())
    (d / "not-a-checkpoint.pt").write_bytes(b"this is a text file, not a checkpoint\n")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["log"] = Path(d)  # an object weights_only=True refuses to build
    torch.save(state, d / "object.pt")
    (d / "vae").mkdir()
    (d / "vae" / "config.json").write_text("{}")  # a VAE folder without weights
    (d / "bad.yaml").write_text("model: [PPF-tiny-2\n  data: digits\n")
    (d / "list.yaml").write_text("- batch_size\n- 16\n")
    write_images(d / "images", truncate="003.jpg")
    write_images(d / "images-first-bad", truncate="000.jpg")
    return d


# ---------------------------------------------------------------- FLUX: tiny parts built here (no downloads)
def caption_folder(root, n: int = 4, size: int = 40):
    """`root/img{i}.png` with same-named .txt captions."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(["a red cat", "a blue dog"][i % 2])
    return root


@pytest.fixture(scope="session")
def flux_parts(tmp_path_factory):
    """A tiny FLUX pipeline folder (pipe/, no transformer), a transformer folder (base/), an image-caption folder
    (data/), its cache (cache.safetensors) and a 2-step LoRA run on it (run/, its ema/ a PPFlux folder)."""
    pytest.importorskip("diffusers")
    from diffusers import FluxPipeline

    from ppflow.cli import main
    from ppflow.flux.captions import cache_folder, load_encoders
    from tests.flux.conftest import tiny_components, tiny_flux

    tmp = tmp_path_factory.mktemp("flux_parts")
    FluxPipeline(**{**tiny_components(), "transformer": None}).save_pretrained(tmp / "pipe")
    tiny_flux(in_channels=16).save_pretrained(tmp / "base")
    cache_folder(caption_folder(tmp / "data"), load_encoders(str(tmp / "pipe")), 32, max_sequence_length=8,
                 progress=False, out=tmp / "cache.safetensors")
    assert main(flux_train_args(tmp, tmp / "run", 2)) == 0
    return tmp


def flux_train_args(tmp, out, steps: int, *extra) -> list[str]:
    """`ppflow flux train` argv: LoRA rank 4 on flux_parts' base and cache, batch 2, CPU, no logs to speak of."""
    return ["flux", "train", "--model.base", str(tmp / "base"), "--data.cache", str(tmp / "cache.safetensors"),
            "--data.resolution", "32", "--train.lora-rank", "4", "--device", "cpu", "--batch-size", "2",
            "--max-steps", str(steps), "--save-every", "2", "--progress", "false", "--tensorboard", "false",
            "--out", str(out), *extra]


def tree_hashes(root) -> dict[str, str]:
    """SHA-256 of every file under `root` (symlinks by their target path): compare before and after a command."""
    import hashlib
    import os

    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = ("-> " + os.readlink(p)) if p.is_symlink() else \
                hashlib.sha256(p.read_bytes()).hexdigest()
    return out
