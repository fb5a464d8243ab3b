"""Where models come from besides local paths: known releases by name, and the Hugging Face Hub.

    ppflow.load_model("PPF-XL-2")             # a known release: fetched once into PPFLOW_HOME, hash-checked
    ppflow.load_model("org/repo", revision=)  # a ppflow folder on the Hub (huggingface_hub's cache)
    push_to_hub(model_or_run_dir, "org/repo") # upload with a generated model card
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .download import DownloadError, HashMismatchError, TruncatedDownloadError, fetch, verify_cached
from .hub import build_upload_folder, from_hub, is_hub_id, model_card, push_to_hub, snapshot
from .registry import RELEASES, Release, get_release, is_release_name, known_names, ppflow_home, register


def load_remote(name: str, *, format: str | None = None, weights: str | None = None, revision: str | None = None,
                **overrides):
    """The model a release name or hub id stands for, or None when `name` is neither (used by load_model)."""
    if is_release_name(name):
        if revision is not None:
            raise ValueError(f"{name!r} is a release name (one file); revision= applies to hub ids 'org/repo'")
        release = get_release(name)
        path = fetch(release, progress=sys.stderr.isatty())
        from ..convert.formats import load_file_checkpoint

        return load_file_checkpoint(path, format=format or release.format, weights=weights,
                                    **{**release.overrides, **overrides})
    if is_hub_id(name) and not Path(name.split("/")[0]).exists():  # "runs/typo" is a missing local path
        if weights is not None or format not in (None, "ppflow"):
            raise ValueError(f"{name} is a hub repo holding a ppflow folder: drop format= / weights=")
        return from_hub(name, revision, **overrides)
    return None


def remote_path(name: str) -> Path | None:
    """Local path standing for a release name (its verified file) or a hub id (the cached snapshot folder at main),
    None for anything else; how the commands' checkpoint arguments take names (see convert.native.resolve_path)."""
    if is_release_name(name):
        return fetch(name, progress=sys.stderr.isatty())
    if is_hub_id(name) and not Path(name.split("/")[0]).exists():
        return snapshot(name)
    return None


def release_overrides(name: str | os.PathLike) -> dict:
    """Config fields a release's registry entry sets (e.g. its VAE); {} for anything but a release name."""
    name = str(name)
    return dict(get_release(name).overrides) if not Path(name).exists() and is_release_name(name) else {}


__all__ = [
    "RELEASES", "DownloadError", "HashMismatchError", "Release", "TruncatedDownloadError", "build_upload_folder",
    "fetch", "from_hub", "get_release", "is_hub_id", "is_release_name", "known_names", "load_remote", "model_card",
    "ppflow_home", "push_to_hub", "register", "release_overrides", "remote_path", "snapshot", "verify_cached",
]
