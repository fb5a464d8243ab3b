"""Reading from the Hugging Face Hub: `from_hub("org/repo")` reads a ppflow folder through huggingface_hub's cache
(uploading is ppflow.hub.push).

A hub repo holds a ppflow folder (config.json + model.safetensors, the SHA-256 of the tensors in its metadata) at
its root, or a PPFlowPipeline folder whose `transformer/` is one, or a speed adapter folder (adapter_config.json +
adapter.safetensors; ppflow.load_model applies it on the base it names). Only those files are fetched. `revision` pins a
branch, tag or commit; with HF_HUB_OFFLINE=1 (read when called, not only at import) the cache alone is used.
huggingface_hub is imported when a function here is called, never at import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..io import CheckpointError, DamagedFileError
from ..models.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir
from ..models.backbone import CONFIG, WEIGHTS, PPFlowTransformer
from ..models.pretrained import is_pretrained_dir, load_pretrained

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
TRANSFORMER = "transformer"  # the pipeline's subfolder holding the model
PATTERNS = [CONFIG, WEIGHTS, f"{TRANSFORMER}/{CONFIG}", f"{TRANSFORMER}/{WEIGHTS}", ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def is_hub_id(name: object) -> bool:
    """'org/repo' (one slash, hub characters), the form of a hub model id."""
    return isinstance(name, str) and bool(HUB_ID.match(name)) and not name.endswith((".pt", ".pth", ".safetensors"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot(repo_id: str, revision: str | None = None, *, cache_dir: str | os.PathLike | None = None,
             local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """Folder (in huggingface_hub's cache) holding the ppflow model of `repo_id` at `revision`."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("loading from the Hub needs huggingface_hub: pip install 'ppflow[hub]'") from None
    offline = _hub_offline() if local_files_only is None else local_files_only
    at = f"{repo_id}@{revision or 'main'}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=PATTERNS, cache_dir=cache_dir,
                                        local_files_only=offline, token=token))
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}: give a branch, tag or commit it has") \
            from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id} is not a model repo on the Hub (or it is private: log in with "
                              "`hf auth login` or pass token=)") from None
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise CheckpointError(f"{at} is not in the Hugging Face cache and {how}: load it once online "
                              "(or unset HF_HUB_OFFLINE), or give a local folder") from None
    except HFValidationError as e:
        raise CheckpointError(f"{repo_id!r} is not a valid hub id ({str(e).splitlines()[0]})") from None
    except OSError as e:  # connection errors the library did not turn into a cache look-up
        raise CheckpointError(f"cannot fetch {at} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for sub in (folder, folder / TRANSFORMER):
        if is_pretrained_dir(sub) or is_adapter_dir(sub):
            return sub
    have = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    raise CheckpointError(f"{at} holds no ppflow model ({CONFIG} + {WEIGHTS} at its root or in {TRANSFORMER}/, "
                          f"or a speed adapter: {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}; "
                          f"cached files: {have or 'none'}): push one with ppflow push, or load the repo's files "
                          "by path")


def from_hub(repo_id: str, revision: str | None = None, *, cache_dir: str | os.PathLike | None = None,
             local_files_only: bool | None = None, token: str | bool | None = None, verify: bool = True,
             **overrides) -> PPFlowTransformer:
    """A ppflow model from the Hub (`revision`: branch, tag or commit; `overrides`: config fields)."""
    folder = snapshot(repo_id, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    try:
        return load_pretrained(folder, verify=verify, **overrides)
    except DamagedFileError:
        raise DamagedFileError(f"the cached copy of {repo_id}@{revision or 'main'} ({folder}) is damaged: its "
                               "tensors no longer match the SHA-256 stored when they were written. Delete it "
                               "(`hf cache rm` or remove that snapshot's blobs) and load it again online") from None
