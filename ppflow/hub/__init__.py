"""Where models come from besides local paths: known releases by name, and the Hugging Face Hub.

    ppflow.load_model("PPF-XL-2")             # a known release: fetched once into PPFLOW_HOME, hash-checked
    ppflow.load_model("org/repo", revision=)  # a ppflow folder on the Hub (huggingface_hub's cache)
    ppflow.hub.push.push_to_hub(model_or_run_dir, "org/repo")  # upload with a generated model card

ppflow.convert.load_model reads what these fetch; ppflow.hub.push sits above it (it converts what it uploads), so
this package's face does not import it.
"""

from .download import DownloadError, HashMismatchError, TruncatedDownloadError, fetch, verify_cached
from .hub import from_hub, is_hub_id, snapshot
from .registry import (
    RELEASES,
    Release,
    get_release,
    is_release_name,
    known_names,
    ppflow_home,
    register,
    release_overrides,
)

__all__ = [
    "RELEASES", "DownloadError", "HashMismatchError", "Release", "TruncatedDownloadError", "fetch", "from_hub",
    "get_release", "is_hub_id", "is_release_name", "known_names", "ppflow_home", "register", "release_overrides",
    "snapshot", "verify_cached",
]
