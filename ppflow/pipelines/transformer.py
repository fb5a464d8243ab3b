"""The ppflow transformer as a diffusers component: a PPFlowTransformer that is also a `ModelMixin`.

diffusers saves and loads pipeline components through `save_pretrained` / `from_pretrained` of a diffusers base
class found in the component's module; this subclass keeps ppflow's own folder format (config.json +
model.safetensors with the SHA-256 of the tensors), so a pipeline's `transformer/` is an ordinary ppflow folder
that `ppflow.load_model` reads too.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import ModelMixin

from ..convert.load import load_model
from ..models.backbone import PPFlowTransformer
from ..models.pretrained import load_pretrained


class PPFlowTransformer2DModel(PPFlowTransformer, ModelMixin):
    """PPFlowTransformer with diffusers' component interface (`device`, `dtype`, pipeline save/load)."""

    @classmethod
    def from_model(cls, model: PPFlowTransformer) -> PPFlowTransformer2DModel:
        """The same model (same config, weights shared, not copied) as a pipeline component."""
        if isinstance(model, cls):
            return model
        if not isinstance(model, PPFlowTransformer):
            raise TypeError(f"expected a PPFlowTransformer, got {type(model).__name__} (a StageSwap cannot be saved "
                            "as one pipeline component)")
        with torch.device("meta"):
            out = cls(model.config)
        out.load_state_dict(model.state_dict(), assign=True)
        return out.train(model.training)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, verify: bool = True, torch_dtype=None,
                        **kwargs) -> PPFlowTransformer2DModel:
        """Read a ppflow folder, or anything `ppflow.load_model` takes (a hub id at `revision=`, a release name);
        diffusers' loading options such as device_map are not used."""
        if Path(directory).is_dir():
            model = cls.from_model(load_pretrained(directory, verify=verify))
        else:
            hub = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "token") if kwargs.get(k) is not None}
            model = cls.from_model(load_model(str(directory), verify=verify, revision=kwargs.get("revision"), **hub))
        return model.to(torch_dtype) if torch_dtype is not None else model

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> Path:
        """Write config.json + model.safetensors (ppflow's format; diffusers' save options are not used)."""
        return PPFlowTransformer.save_pretrained(self, directory)
