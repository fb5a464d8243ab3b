"""ppflow's own format: a folder with `model.safetensors` + `config.json`.

Every tensor file ppflow writes carries a SHA-256 of its contents (`content_sha256`): in the
safetensors metadata of `model.safetensors` (key "sha256") and as the "sha256" entry of a
training checkpoint. Loaders recompute it and refuse a file that changed after it was written
(`DamagedFileError`) unless called with `verify=False`; files without a hash (other projects,
older ppflow) load unchecked.

Writes go through a temporary file; when one fails (a full disk above all) the temporary file is removed,
the previous file stays, and the error is one line (`save_error`: DiskFullError names the folder, the free
space and what the file needs). `config.json` is read through `read_config`, whose errors name the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..models.backbone import ModelConfig, PPFlowTransformer
from .keymap import CheckpointError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_TAG = "ppflow"
HASH_KEY = "sha256"  # safetensors metadata key / training checkpoint entry


class DamagedFileError(CheckpointError):
    """A file's contents no longer match the hash ppflow stored when it wrote the file."""


class DiskFullError(OSError):
    """A write failed because the file system is full (or over quota); the previous file is untouched."""


# ---------------------------------------------------------------- failed writes
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
    text = str(err)
    # torch.save reports a full disk as "basic_ios::clear" / "file write failed", safetensors as "code: 28"
    return bool(re.search(r"No space left|StorageFull|[Dd]isk quota|code: 28\b", text))


def one_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (at most 200 characters), or its type name."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(err).__name__


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


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    """Write `text` through `path`.tmp + os.replace; a failure removes the temporary file (see save_error)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise save_error(e, path, len(text.encode()), what) from e
    return path


def refused_pickle(path: str | os.PathLike, err: BaseException) -> CheckpointError | None:
    """The one-line refusal for a `torch.load(weights_only=True)` failure on a stored Python object (None for other
    failures). Never suggests weights_only=False: ppflow does not run pickled code."""
    import pickle

    m = re.search(r"GLOBAL (\S+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
    if m is None:
        return None
    return CheckpointError(
        f"{path} stores a Python object of type {m.group(1)}, which ppflow does not unpickle (loading never runs "
        "pickled code). If the file comes from a source you trust, save its tensors as a plain state dict or a "
        "safetensors file with the code that wrote it, and load that"
    )


# ---------------------------------------------------------------- config.json
def read_config(path: str | os.PathLike) -> dict:
    """The JSON object in `path` (a model folder's config.json); unreadable bytes, invalid JSON or anything but an
    object raise CheckpointError naming the file."""
    path = Path(path)
    fix = "restore it from a backup, or write it again (ppflow convert / save_pretrained)"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); it is damaged: {fix}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({one_line(e)})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {fix}") \
            from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, not an object of model settings "
                              f"({{\"depth\": ..., \"hidden_size\": ...}}); {fix}")
    return cfg


def _is_int(v, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ModelConfig field -> (check of a value, what a valid value is)
_FIELD_CHECKS = {
    "depth": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "hidden_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "num_heads": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "in_channels": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "num_classes": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "input_size": (lambda v: _is_int(v, 1) or (isinstance(v, (list, tuple)) and len(v) == 2
                                               and all(_is_int(x, 1) for x in v)), "a size >= 1 or [height, width]"),
    "mlp_ratio": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "level_init_std": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "learn_sigma": (lambda v: isinstance(v, bool), "true or false"),
    "level_embedding": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "time_map": (lambda v: isinstance(v, str), "a string"),
    "coarse_output": (lambda v: isinstance(v, str), "a string"),
    "name": (lambda v: isinstance(v, str), "a string"),
    "vae": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "schedule": (lambda v: isinstance(v, (str, dict)), "a string such as 'ppf2' or '0.5:4x4,1:2x2'"),
}


def model_field_problem(key: str, value: object) -> str | None:
    """What is wrong with one ModelConfig field value (wrong type or out of range), or None."""
    check = _FIELD_CHECKS.get(key)
    if check is None or check[0](value):
        return None
    return f"{key} must be {check[1]}, got {value!r}"


def model_config_from_dict(cfg: object, source: str | os.PathLike) -> ModelConfig:
    """A ModelConfig from plain data read from `source`; every problem is a CheckpointError naming `source`."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: the model config is a {type(cfg).__name__}, not a mapping of settings")
    cfg = {k: v for k, v in cfg.items() if k != "format"}
    for k, v in cfg.items():
        problem = model_field_problem(k, v)
        if problem:
            raise CheckpointError(f"{source}: {problem}")
    if isinstance(cfg.get("schedule"), dict):
        cfg["schedule"] = json.dumps(cfg["schedule"])
    try:
        return ModelConfig.from_dict(cfg)
    except (ValueError, TypeError, KeyError) as e:  # ScheduleError, unknown keys, heads not dividing the width
        raise CheckpointError(f"{source}: {one_line(e)}") from None


# ---------------------------------------------------------------- content hashes
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


def read_weights(path: str | os.PathLike, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the "sha256" in its metadata when it has one."""
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
    return state


def save_pretrained(model: PPFlowTransformer, directory: str | os.PathLike) -> Path:
    """Write weights (with their SHA-256 in the metadata) and config atomically into `directory`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise save_error(e, directory, 0, "model folder") from e
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    try:
        save_file(state, str(tmp), metadata={"format": FORMAT_TAG, HASH_KEY: content_sha256(state)})
        os.replace(tmp, directory / WEIGHTS)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        remove_quietly(tmp)
        raise save_error(e, directory / WEIGHTS, state_nbytes(state), "weights file") from e
    write_text_atomic(directory / CONFIG, json.dumps({"format": FORMAT_TAG, **model.config.to_dict()}, indent=2),
                      "model config")
    return directory


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG).exists() and (p / WEIGHTS).exists()


def resolve_path(path: str | os.PathLike, format: str | None = None) -> Path:
    """Where a checkpoint path points: a folder's `model.safetensors` -> the folder; a `ppflow train`
    run folder -> its `checkpoints/last.pt`; anything else as given."""
    p = Path(path)
    if not p.exists():
        from ..hub import remote_path  # a release name (its verified file) or a hub id (its cached snapshot)

        remote = remote_path(str(path))
        if remote is not None:
            return remote
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file() and p.name == WEIGHTS and (p.parent / CONFIG).exists() and format in (None, FORMAT_TAG):
        return p.parent
    if p.is_dir() and not is_pretrained_dir(p) and (p / "checkpoints" / "last.pt").is_file():
        return p / "checkpoints" / "last.pt"
    return p


def load_pretrained(directory: str | os.PathLike, *, verify: bool = True, **overrides) -> PPFlowTransformer:
    """Read a `save_pretrained` folder; `overrides` replace config fields.

    `verify=False` skips the check of the weights against their stored SHA-256 (for deliberate edits).
    """
    directory = Path(directory)
    cfg = read_config(directory / CONFIG)
    cfg.pop("format", None)
    cfg.update(overrides)
    model = PPFlowTransformer(model_config_from_dict(cfg, directory / CONFIG))
    state = read_weights(directory / WEIGHTS, verify=verify)
    load_state_strict(model, state, source=str(directory))
    return model


def load_state_strict(model: torch.nn.Module, state: dict, source: str, assign: bool = False) -> None:
    """Load a state dict, reporting missing/unexpected keys and shape mismatches by name.

    `assign=True` adopts the given tensors as parameters (for a model built on the meta device).
    """
    check_state_shapes(model, state, source)
    model.load_state_dict(state, assign=assign)


def check_state_shapes(model: torch.nn.Module, state: dict, source: str) -> None:
    """ValueError naming `source` and the first mismatches when `state`'s keys or shapes differ from the model's
    (works on a model built on the meta device: only shapes are compared)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}. Check that the config (size, schedule, channels, classes) "
            "is the one the weights were saved with."
        )
