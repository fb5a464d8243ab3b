"""Reading and writing checkpoints: ppflow's own folders plus one adapter per foreign format."""

from __future__ import annotations

import os

from ..models.backbone import PPFlowTransformer
from .native import is_pretrained_dir, load_pretrained, resolve_path, save_pretrained


def load_model(path: str | os.PathLike, format: str | None = None, *, weights: str | None = None,
               revision: str | None = None, **overrides) -> PPFlowTransformer:
    """Load any checkpoint ppflow understands.

    `path`: a `save_pretrained` folder, a ppflow training checkpoint or run folder, or a
    DiT / SiT / official PPFlow file (.pt / .pth / .safetensors). `format` forces an adapter
    ('ppflow', 'ppflow-train', 'dit', 'sit', 'ppflow-official'; default: detected from the keys). `weights` picks 'ema' (default) or
    'model' from a training checkpoint. `overrides` set config fields the weights cannot
    tell, e.g. `num_heads=4`, `time_map='identity'`, `input_size=64`, `vae=...`. Files ppflow wrote carry a
    SHA-256 that is checked on load (a damaged file raises DamagedFileError); `verify=False` loads a deliberate
    edit. A `path` that does not exist may name a known release (`"PPF-XL-2"`, fetched once into PPFLOW_HOME and
    hash-checked) or a Hugging Face Hub repo (`"org/repo"`, at `revision`); see ppflow.hub.
    """
    if isinstance(path, str) and not os.path.exists(path):
        from ..hub import load_remote

        model = load_remote(path, format=format, weights=weights, revision=revision, **overrides)
        if model is not None:
            return model
    if revision is not None:
        raise ValueError(f"revision={revision!r} applies to hub ids 'org/repo'; {path} is a local path")
    p = resolve_path(path, format)
    if format in (None, "ppflow") and is_pretrained_dir(p):
        if weights is not None:
            raise ValueError(f"{p} is a ppflow folder with one set of weights; drop weights=")
        return load_pretrained(p, **overrides)
    from .formats import load_file_checkpoint  # foreign formats and training checkpoints

    return load_file_checkpoint(p, format=format, weights=weights, **overrides)


from .adaptation import adapt  # after load_model, which adapt uses lazily

__all__ = ["adapt", "is_pretrained_dir", "load_model", "load_pretrained", "save_pretrained"]
