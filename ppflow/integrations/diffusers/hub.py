"""PPFlow adapters on the Hugging Face Hub, like LoRAs: `push_adapter(folder, "org/name")` uploads an adapter folder
with a model card; `apply(pipe, "org/name")` fetches one through huggingface_hub's cache (HF_HUB_OFFLINE=1: the
cache alone) and checks it against the base as a local folder is checked. huggingface_hub loads when called.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ...hub.hub import _hub_offline, is_hub_id
from ...hub.push import upload_folder
from ...io import CheckpointError, one_line
from .adapter import CONFIG, WEIGHTS, is_adapter_folder, read_config

CARD = "README.md"


def fetch_adapter(repo_id: str, revision: str | None = None, *, token: str | bool | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder (in huggingface_hub's cache) of the adapter in `repo_id` at `revision`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    at = f"{repo_id}@{revision or 'main'}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG, WEIGHTS],
                                        cache_dir=cache_dir, local_files_only=_hub_offline(), token=token))
    except (OSError, HFValidationError) as e:  # not found / not cached offline / network (OSError subclasses)
        raise CheckpointError(f"cannot fetch the PPFlow adapter {at} ({type(e).__name__}: {one_line(e)}); check the "
                              "name and revision, the login, or unset HF_HUB_OFFLINE once to fill the cache") from None
    if not is_adapter_folder(folder):
        raise CheckpointError(f"{at} holds no PPFlow adapter ({CONFIG} + {WEIGHTS}): push one with push_adapter")
    return folder


def is_adapter_ref(name: object) -> bool:
    """A local adapter folder or an 'org/name' hub id (schedules like 'ppf2' or '0.5:4x4,1:2x2' are neither)."""
    return is_adapter_folder(name) or (isinstance(name, str) and is_hub_id(name) and not Path(name).exists())


def model_card(folder: Path, repo_id: str) -> str:
    c = read_config(folder)
    size = (folder / WEIGHTS).stat().st_size
    meta = {"library_name": "ppflow", "tags": ["ppflow", "pyramidal-patchification", "diffusers", c.family]}
    if c.base and is_hub_id(c.base):
        meta["base_model"] = c.base
    return (f"---\n{json.dumps(meta)}\n---\n\n# {repo_id}\n\nA PPFlow speed adapter for a diffusers {c.family} "
            f"transformer ({c.base or 'base not recorded'}): schedule `{c.schedule}`, LoRA rank {c.rank}, made by "
            f"`{c.method}`; {size / 1e6:.2f} MB. The finest stage is the base itself.\n\n```python\n"
            f"import ppflow.integrations.diffusers as ppf\nppf.apply(pipe, \"{repo_id}\")  # pipe: your pipeline "
            "with the base model\n```\n")


def push_adapter(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                 token: str | bool | None = None, commit_message: str | None = None, api=None) -> str:
    """Upload an adapter folder (weights, config, a generated card) to `repo_id`; returns the commit URL."""
    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise ValueError(f"{folder} is not a PPFlow adapter folder ({CONFIG} + {WEIGHTS}; StageAdapter.save_pretrained "
                         "or a distillation run's ema/)")
    if not is_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub id of the form 'org/name'")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ppflow-adapter-") as tmp:
        upload = Path(tmp) / "upload"
        upload.mkdir()
        for name in (CONFIG, WEIGHTS):
            if (folder / name).is_symlink():
                raise ValueError(f"{folder / name} is a symbolic link: push the file itself")
            shutil.copyfile(folder / name, upload / name)
        (upload / CARD).write_text(model_card(folder, repo_id), encoding="utf-8")
        return upload_folder(api, upload, repo_id, revision=revision, private=private,
                             commit_message=commit_message or "ppflow: PPFlow adapter")
