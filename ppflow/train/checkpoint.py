"""Training checkpoints: one `torch.save` dict that loads with `weights_only=True`.

Layout of `RUN_DIR/checkpoints/last.pt` (and `step-NNNNNNN.pt` copies):
    {"format": "ppflow-train", "version": 1,
     "config": resolved TrainConfig as plain types, with config["model_config"] = ModelConfig.to_dict(),
     "model": state dict, "ema": state dict,
     "optimizer": AdamW state dict keyed by parameter name (torch.distributed.checkpoint layout),
     "step": optimizer steps done,
     "data": {"epoch": int, "offset": int}  (position in the epoch's permutation, in samples),
     "rng": {"torch": uint8 tensor, "cuda": [uint8 tensors]},
     "log": running sums of the current logging window, "world_size": int, "elapsed": seconds,
     "sha256": content hash of every other entry (ppflow.io.content_sha256)}
Written atomically (ppflow.io): a crash mid-write keeps the previous file, and a failed write (a full disk:
DiskFullError, an OSError) removes the temporary file and leaves the previous one.
Loading recomputes the hash and refuses a damaged file (DamagedFileError) unless verify=False;
checkpoints without "sha256" (older ppflow) load unchecked.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io import (
    HASH_KEY,
    DamagedFileError,
    DiskFullError,
    one_line,
    refused_pickle,
    torch_save_atomic,
    verify_state,
    with_sha256,
)

__all__ = ["DIR", "FORMAT", "LAST", "VERSION", "DamagedFileError", "DiskFullError", "find_checkpoint",
           "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

FORMAT = "ppflow-train"
VERSION = 1
LAST = "last.pt"
DIR = "checkpoints"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save `state` plus its "sha256" to `path` atomically (an old "sha256" in `state` is recomputed).

    A failed write removes the temporary file, keeps the previous `path` and raises a one-line OSError
    (DiskFullError when the file system is full, with the free space and what the checkpoint needs).
    """
    return torch_save_atomic(with_sha256(state), path, "checkpoint")


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from a run folder (its checkpoints/last.pt) or a file path."""
    p = Path(path)
    if p.is_dir():
        candidate = p / DIR / LAST
        if not candidate.exists():
            raise FileNotFoundError(
                f"{p} has no {DIR}/{LAST}: it is not a ppflow run folder, or the run stopped before its first "
                "checkpoint (lower --save-every); pass the run folder or a checkpoint file to --resume"
            )
        return candidate
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist; pass a run folder or a .pt file to --resume")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    verify: bool = True) -> dict:
    """Read a ppflow training checkpoint (weights_only=True), checking its format tag and its SHA-256.

    `verify=False` skips the hash check (for a deliberately edited file). The returned dict has no "sha256".
    """
    p = find_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        refusal = refused_pickle(p, e)
        if refusal is not None:
            raise ValueError(f"could not read checkpoint: {refusal}") from e
        raise ValueError(f"could not read checkpoint {p} ({type(e).__name__}: {one_line(e)}): it is truncated, "
                         "damaged or not a ppflow training checkpoint; pass a run folder or its checkpoints/last.pt "
                         "(other weights start a new run with --model.init PATH)") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{p} is not a ppflow training checkpoint (no 'format': {FORMAT!r}); to start from "
                         "other weights use --model.init PATH instead of --resume")
    if verify:
        verify_state(state, p)
    state.pop(HASH_KEY, None)
    return state


def rng_state() -> dict:
    """Global torch RNG states as uint8 tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
