"""Caption folders and their cache under hostile files (issue 27): every problem is one error naming the file,
found before the encoders run."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ppflow.flux.captions import CaptionCache, cache_folder, check_images, scan_folder
from tests.flux.conftest import tiny_components


def _folder(root, n=2, size=40):
    root.mkdir()
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(["a red cat", "a blue dog"][i % 2])
    return root


def huge_png(path, side=30000):
    """A valid PNG header of a side x side grayscale image (a few bytes on disk: what a decompression bomb is)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    from diffusers import FluxPipeline

    folder = tmp_path_factory.mktemp("captions") / "pipe"
    FluxPipeline(**{**tiny_components(), "transformer": None}).save_pretrained(folder)
    return folder


def test_a_caption_file_that_is_not_utf8_is_named(tmp_path):
    data = _folder(tmp_path / "data")
    (data / "img1.txt").write_bytes("une photo d'un chat \xe9t\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"img1.txt is not UTF-8 text \(byte 20"):
        scan_folder(data)
    (data / "img1.txt").write_text("a cat")
    (data / "metadata.jsonl").write_bytes(b'{"file_name": "img0.png", "text": "\xff"}\n')
    with pytest.raises(ValueError, match="metadata.jsonl is not UTF-8 text"):
        scan_folder(data)


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path):
    from ppflow.data.imagefolder import UnreadableImageError, load_image
    from ppflow.eval.sources import ImageFolder

    data = _folder(tmp_path / "data")
    huge_png(data / "img1.png")
    with pytest.raises(ValueError, match=r"cannot read image .*img1.png \(900,000,000 pixels, more than .* PIL opens"):
        check_images(scan_folder(data))
    with pytest.raises(UnreadableImageError, match=r"img1.png \(900,000,000 pixels.*downscale it"):
        load_image(data / "img1.png", 32)  # what extract-latents reads images with
    with pytest.raises(ValueError, match=r"img1.png \(900,000,000 pixels"):
        ImageFolder(data)[0:2]  # eval's image folders


def test_a_truncated_or_pickled_cache_names_the_file(tmp_path):
    cache = CaptionCache(torch.randn(2, 4, 4, 4), torch.randn(2, 3, 8), torch.randn(2, 8), ["a", "b"], {"resolution": 32})
    path = cache.save(tmp_path / "c.safetensors")
    assert torch.equal(CaptionCache.load(path).latents, cache.latents)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"c.safetensors is not a ppflow flux cache .*delete it and build it again"):
        CaptionCache.load(path)
    torch.save({"latents": torch.zeros(2)}, path)  # a pickle under the cache's name
    with pytest.raises(ValueError, match="c.safetensors is not a ppflow flux cache"):
        CaptionCache.load(path)


def test_flux_train_on_a_truncated_cache_is_one_line(tmp_path, capsys):
    from ppflow.cli import main

    path = CaptionCache(torch.randn(2, 4, 4, 4), torch.randn(2, 3, 8), torch.randn(2, 8), ["a", "b"]).save(
        tmp_path / "c.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    assert main(["flux", "train", "--model.base", str(tmp_path / "base"), "--data.cache", str(path),
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path} is not a ppflow flux cache" in err[0]


def test_an_unwritable_cache_path_fails_before_any_image_is_encoded(tmp_path):
    data = _folder(tmp_path / "data")
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "file").write_text("")
    # pipeline=None: reaching the encoders would be an AttributeError; the path is checked first
    with pytest.raises(IsADirectoryError, match="dir.safetensors: it is a folder"):
        cache_folder(data, None, 32, out=tmp_path / "dir.safetensors")
    with pytest.raises(NotADirectoryError, match=r"file/c.safetensors: .*file is a file, not a folder"):
        cache_folder(data, None, 32, out=tmp_path / "file" / "c.safetensors")


def test_a_sequence_length_beyond_the_tokenizer_is_refused_before_encoding(pipe_dir, tmp_path, capsys):
    from ppflow.cli import main

    data = _folder(tmp_path / "data")
    argv = ["flux", "cache", "--data.pipeline", str(pipe_dir), "--data.path", str(data), "--data.resolution", "32",
            "--data.cache", str(tmp_path / "c.safetensors"), "--device", "cpu"]
    assert main([*argv, "--data.max-sequence-length", "100000"]) == 2
    err = capsys.readouterr().err  # (diffusers' loading bars, then the error)
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("ppflow flux cache: error: max_sequence_length 100000")
    assert "at most 16" in last
    assert not (tmp_path / "c.safetensors").exists()
    assert main([*argv, "--data.max-sequence-length", "8"]) == 0
