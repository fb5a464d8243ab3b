"""PPFlow as a diffusers hook: `apply(pipe, "ppf2")` on an unmodified FLUX.1 / FLUX.2 / Qwen-Image / SD3.5 / Wan transformer.

The pipeline keeps its class and everything diffusers gives it; a forward whose timestep lies in a coarse
stage runs on fewer tokens. Families: flux.py, flux2.py, qwen.py, sd3.py, wan.py (one module each, see family.py).
"""

from . import flux, flux2, qwen, sd3, wan  # noqa: F401  (each family registers itself)
from .adapter import HookConfig, StageAdapter
from .family import FAMILIES, Family, family_of
from .stages import StagePlan

_API = ("adapter_of", "apply", "remove")  # they need diffusers' hooks: imported on first use (`--help` stays fast)


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["FAMILIES", "Family", "HookConfig", "StageAdapter", "StagePlan", "adapter_of", "apply", "family_of",
           "remove"]
