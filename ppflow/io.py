"""Files on disk: atomic writes, atomic folder swaps, content hashes and one-line errors for failed writes.

A write goes to a temporary sibling (`.NAME.PID.tmp`), is flushed to disk (fsync) and moved over the target with
os.replace, so a reader sees the old file or the new one, never half of one. When a write fails the temporary
file is removed, the previous file stays, and the error is one line (`save_error`: DiskFullError names the
folder, the free space and what the file needs).

Every tensor file ppflow writes carries a SHA-256 of its contents (`content_sha256`): in the safetensors metadata
(key "sha256") or as the "sha256" entry of a torch.save dict. Loaders recompute it and refuse a file that changed
after it was written (`DamagedFileError`) unless called with `verify=False`; files without a hash load unchecked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

HASH_KEY = "sha256"  # safetensors metadata key / torch.save dict entry
CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as the requested/detected format."""


class DamagedFileError(CheckpointError):
    """A file's contents no longer match the hash ppflow stored when it wrote the file."""


class DiskFullError(OSError):
    """A write failed because the file system is full (or over quota); the previous file is untouched."""


# ---------------------------------------------------------------- failed writes
def one_line(err: BaseException, limit: int | None = 200) -> str:
    """The first non-empty line of an exception's message (at most `limit` characters), or its type name."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(err).__name__


def _mb(n: float | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent), or None if unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def state_nbytes(obj: object) -> int:
    """Bytes of all tensors in a nest of dicts / lists (what a file holding `obj` needs, give or take headers)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def _is_disk_full(err: BaseException) -> bool:
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    # torch.save reports a full disk as "basic_ios::clear" / "file write failed", safetensors as "code: 28"
    return bool(re.search(r"No space left|StorageFull|[Dd]isk quota|code: 28\b", str(err)))


def save_error(err: BaseException, target: str | os.PathLike, need: int, what: str = "file") -> OSError:
    """A one-line OSError for a failed write of `target` (about `need` bytes): DiskFullError when the disk is full
    (by errno, by the message, or because less than `need` is free), else an OSError quoting the cause."""
    target = Path(target)
    free = free_bytes(target.parent)
    if _is_disk_full(err) or (free is not None and free < need):
        e = DiskFullError(f"disk full: cannot write {target}: the {what} needs about {_mb(need)} and the file system "
                          f"of {target.parent} has {_mb(free)} free")
        e.errno = errno.ENOSPC
        return e
    return OSError(f"cannot write {target} ({type(err).__name__}: {one_line(err)})")


def remove_quietly(path: str | os.PathLike) -> None:
    """Delete a (temporary) file or folder if it exists; errors are ignored (we are already failing)."""
    p = Path(path)
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


# ---------------------------------------------------------------- atomic writes
def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], need: int = 0,
                 what: str = "file") -> Path:
    """Run `write(tmp)` on a temporary sibling of `path`, fsync it and move it over `path` (parents are created).

    Any failure removes the temporary file and keeps the previous `path`; OSError (and the RuntimeError /
    SafetensorError that torch.save / safetensors raise for a full disk) become `save_error(..., need, what)`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        remove_quietly(tmp)
        if isinstance(e, (OSError, RuntimeError, SafetensorError)):
            raise save_error(e, path, need, what) from e
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    """Write `text` atomically (see write_atomic)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text), len(text.encode()), what)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    """Write `data` atomically (see write_atomic)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), len(data), what)


def torch_save_atomic(obj: object, path: str | os.PathLike, what: str = "file") -> Path:
    """torch.save `obj` atomically (see write_atomic)."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp), state_nbytes(obj), what)


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None,
                            what: str = "weights file") -> Path:
    """Write tensors (made contiguous, on the CPU) as a safetensors file atomically (see write_atomic)."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata), state_nbytes(state), what)


def replace_folder(target: str | os.PathLike, write: Callable[[Path], object],
                   keep: Callable[[str], bool] | None = None) -> Path:
    """Run `write(tmp)` on an empty temporary sibling folder (`.NAME.tmp`), then swap it in for `target`.

    `keep(name)`: entries of the old folder that `write` did not create and `keep` accepts are carried over
    (hard links, copies where links fail). The old folder is renamed to `.NAME.old` and removed only after the
    new one is in place; a failed write removes the temporary folder and leaves `target` as it was.
    """
    target = Path(target)
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if keep is not None and target.is_dir():
            for entry in target.iterdir():
                if keep(entry.name) and not (tmp / entry.name).exists():
                    _carry(entry, tmp / entry.name)
    except BaseException:
        remove_quietly(tmp)  # no half-written .NAME.tmp folder stays behind
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a file, a symlink or a folder tree into a new folder."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def check_writable(path: str | os.PathLike, what: str = "file") -> Path:
    """Fail now, not after hours of work, when `path` cannot be written as a file: it is a folder, a parent is a
    file, or the nearest existing parent is not writable. OSError naming the path and the fix."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the {what} {path}: it is a folder; give a file name (e.g. "
                                f"{path / 'cache.safetensors'})")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write the {what} {path}: {parent} is a file, not a folder; choose another "
                                 "path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the {what} {path}: {parent} is not writable; choose another path")
    return path


def check_output_folder(folder: str | os.PathLike, *, force: bool = False, marker: str | None = None,
                        source: str | None = None, own: Callable[[str], bool] | None = None, what: str = "output",
                        option: str = "--force") -> Path:
    """Refuse to write into `folder` when it holds files ppflow did not write there for `source`.

    Passes: a missing or empty folder, any folder with `force`, one whose `marker` JSON file records `source` as its
    "source" (an earlier run of the same command), and one whose entries are all `own(name)` (the command's own
    files, e.g. the shards of an interrupted run). Otherwise FileExistsError naming the folder and the fix.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write the {what} folder {folder}: it is a file; choose a folder")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if force or not entries:
        return folder
    if marker is not None and (folder / marker).is_file():
        try:
            recorded = json.loads((folder / marker).read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            recorded = None  # unreadable: not ours
        if recorded == source:
            return folder
        why = f"it holds a {what} of {recorded}, not of {source}" if recorded else f"its {marker} is not ppflow's"
    elif own is not None and all(own(name) for name in entries):
        return folder
    else:
        why = f"it holds {len(entries)} entries that are not a {what} (e.g. {', '.join(entries[:3])})"
    raise FileExistsError(f"{folder} is not empty: {why}; ppflow does not write over them: choose a new or empty "
                          f"folder, or pass {option} to write into it anyway")


def check_inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "folder") -> Path:
    """`path` (resolved) when it lies inside `root` (resolved); CheckpointError naming it when a symbolic link
    leads out of the folder."""
    path, root = Path(path), Path(root)
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise CheckpointError(f"{path} is a symbolic link to {real}, outside the {what} {root}: ppflow never reads "
                              "files from outside the folder it was given; copy the file into the folder instead "
                              "of linking it")
    return real


# ---------------------------------------------------------------- content hashes
def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_sha256(obj: object) -> str:
    """SHA-256 (hex) of a nest of dicts / lists / tuples holding tensors and plain values.

    Covers every tensor's key path, dtype, shape and raw bytes, and every plain value
    (str, int, float, bool, None); dict entries are visited in sorted key order, so the
    hash does not depend on insertion order or on where the tensors live.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{str(t.dtype)[6:]}{list(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device)):
        text = repr(obj).encode()
        h.update(f"{type(obj).__name__}{len(text)}:".encode())
        h.update(text)
    else:
        raise TypeError(f"content_sha256: cannot hash a {type(obj).__name__}; store tensors and plain values only")


def check_sha256(obj: object, expected: str, path: str | os.PathLike, what: str = "file") -> None:
    """Raise DamagedFileError naming `path` when `content_sha256(obj)` is not `expected`."""
    if content_sha256(obj) != expected:
        raise DamagedFileError(
            f"{path} is damaged: its contents do not match the SHA-256 ppflow stored when it wrote the {what}, so "
            "it changed after saving (disk or copy error, or an edit). Restore it from a backup or an earlier "
            "copy (a run keeps checkpoints/step-*.pt and ema-*/ with --keep-every); if you changed it on purpose, "
            "load it with verify=False (CLI: --no-verify)"
        )


def with_sha256(state: dict) -> dict:
    """A copy of `state` (a torch.save dict) with a "sha256" entry hashing every other entry."""
    body = {k: v for k, v in state.items() if k != HASH_KEY}
    return {**body, HASH_KEY: content_sha256(body)}


def verify_state(state: dict, path: str | os.PathLike) -> None:
    """Check a dict written through `with_sha256` against its "sha256" entry (no entry: nothing to check)."""
    stored = state.get(HASH_KEY)
    if isinstance(stored, str):
        check_sha256({k: v for k, v in state.items() if k != HASH_KEY}, stored, path, "checkpoint")


# ---------------------------------------------------------------- safe reads
def read_weights(path: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the "sha256" in its metadata when it has one."""
    return read_safetensors(path, verify)[0]


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None,
                 what: str = "weights file") -> Path:
    """save_safetensors_atomic with the SHA-256 of the tensors in the metadata (read_weights verifies it)."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return save_safetensors_atomic(state, path, {**(metadata or {}), HASH_KEY: content_sha256(state)}, what)


def read_safetensors(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file; CheckpointError naming it when it is not a complete one,
    DamagedFileError when the tensors no longer match the "sha256" in its metadata (unless `verify=False`)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # bad header, truncated data, I/O error
        reason = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot read {path}: it is not a complete safetensors file ({type(e).__name__}: "
                              f"{reason}). If it was downloaded or copied, it is probably truncated: fetch it again "
                              "or restore it from a backup") from e
    if verify and HASH_KEY in meta:
        check_sha256(state, meta[HASH_KEY], path, "weights")
    return state, meta


def refused_pickle(path: str | os.PathLike, err: BaseException) -> CheckpointError | None:
    """The one-line refusal for a `torch.load(weights_only=True)` failure on a stored Python object (None for other
    failures). Never suggests weights_only=False: ppflow does not run pickled code."""
    m = re.search(r"GLOBAL (\S+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
    if m is None:
        return None
    return CheckpointError(
        f"{path} stores a Python object of type {m.group(1)}, which ppflow does not unpickle (loading never runs "
        "pickled code). If the file comes from a source you trust, save its tensors as a plain state dict or a "
        "safetensors file with the code that wrote it, and load that"
    )
