"""ppflow.io: a write either lands whole or leaves the old file (and no temporary file); folders swap whole."""

import errno
import hashlib

import pytest
import torch

from ppflow import io


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = io.write_text_atomic(tmp_path / "sub" / "a.txt", "new")  # parents are created
    assert path.read_text() == "new" and leftovers(path.parent) == []
    io.write_bytes_atomic(path, b"newer")
    assert path.read_bytes() == b"newer"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half_then_full(tmp):
        tmp.write_text("ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(io.DiskFullError, match=rf"^disk full: cannot write {path}: the notes need"):
        io.write_atomic(path, half_then_full, need=10, what="notes")
    assert path.read_text() == "old" and leftovers(tmp_path) == []

    def crash(tmp):  # not an OSError: re-raised as it is, still cleaned up
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.write_atomic(path, crash)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_save_error_is_one_line_and_says_what_failed(tmp_path):
    err = io.save_error(PermissionError(13, "Permission denied\nmore"), tmp_path / "x.pt", 0, "checkpoint")
    assert type(err) is OSError and str(err) == f"cannot write {tmp_path / 'x.pt'} (PermissionError: [Errno 13] " \
                                                  "Permission denied)"
    assert isinstance(io.save_error(RuntimeError("basic_ios: No space left"), tmp_path / "x", 0), io.DiskFullError)
    assert io.one_line(ValueError("\n  first \nsecond")) == "first" and io.one_line(ValueError()) == "ValueError"


def test_torch_and_safetensors_writes_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3).t()}  # not contiguous
    io.torch_save_atomic(io.with_sha256(state), tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    io.verify_state(loaded, tmp_path / "s.pt")
    io.save_safetensors_atomic(state, tmp_path / "w.safetensors", {io.HASH_KEY: io.content_sha256(state)})
    assert torch.equal(io.read_weights(tmp_path / "w.safetensors")["w"], state["w"])
    assert leftovers(tmp_path) == []
    loaded["w"][0, 0] = 7.0
    with pytest.raises(io.DamagedFileError, match="s.pt is damaged"):
        io.verify_state(loaded, tmp_path / "s.pt")


def test_replace_folder_swaps_whole_and_a_failure_keeps_the_old_one(tmp_path):
    target = tmp_path / "ema"
    io.replace_folder(target, lambda d: (d / "a").write_text("1"))
    io.replace_folder(target, lambda d: (d / "b").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b"]

    def fail(d):
        (d / "c").write_text("half")
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError, match="I/O error"):
        io.replace_folder(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ema"] and (target / "b").read_text() == "2"


def test_hashes(tmp_path):
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert io.sha256_file(tmp_path / "f", chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    a = {"x": torch.ones(2), "n": 1}
    assert io.content_sha256(a) == io.content_sha256({"n": 1, "x": torch.ones(2)})  # key order does not matter
    assert io.content_sha256(a) != io.content_sha256({"x": torch.ones(2, dtype=torch.float64), "n": 1})
