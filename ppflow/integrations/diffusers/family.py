"""What the PPFlow hook needs to know about one diffusers model family, and the registry of families.

A family says where the model's patch embedding, output projection and time embedding are, which forward
argument carries the timestep and how to turn a forward's inputs into coarse tokens and the output back. The
rest (stage choice, hooks, caches, adapter weights) is shared: adding a family is one module of this shape.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn


class Family:
    """Base of the per-family modules; subclasses fill the class attributes and the four conversions."""

    name: str = ""
    classes: tuple[str, ...] = ()  # diffusers class names this family handles (subclasses included)
    embed: str = ""  # path of the patch embedding (replaced in coarse stages)
    out: str = "proj_out"  # path of the output projection (replaced in coarse stages)
    temb: str = ""  # module whose (B, D) output gets the stage embedding in coarse stages
    blocks: tuple[str, ...] = ()  # prefixes of the transformer blocks (where the stage-gated LoRA may act)
    lora_targets: tuple[str, ...] = ()  # default LoRA targets: suffixes of linear layers inside the blocks
    unbatched: tuple[str, ...] = ()  # forward arguments without a batch dimension
    coarse_outputs: tuple[str, ...] = ("v",)
    inits: tuple[str, ...] = ("pooled",)  # coarse projection inits this family has; the first is its default
    positions: tuple[str, ...] = ("centre",)  # coarse-token position rules it has (HookConfig.positions); first: default
    separate_cfg: bool = True  # its pipelines run the unconditional pass as a call of its own (stage-level CFG)
    timestep_scale: float = 1.0  # the timestep argument is sigma times this (Wan, SD3: 1000)

    def matches(self, model: nn.Module) -> bool:
        return any(c.__name__ in self.classes for c in type(model).__mro__)

    def base_patch(self, model: nn.Module) -> tuple[int, ...]:
        """The model's own patch in latent pixels (2 or 3 axes)."""
        raise NotImplementedError

    def width(self, model: nn.Module) -> int:
        """Width of the time embedding the stage embedding is added to."""
        return model.get_submodule(self.temb_linear()).out_features

    def temb_linear(self) -> str:
        raise NotImplementedError

    def sigma(self, model: nn.Module, kw: dict) -> torch.Tensor:
        """(B,) the noise level the network is asked about, as a sigma in [0, 1]."""
        raise NotImplementedError

    def seq_len(self, model: nn.Module, kw: dict) -> int:
        """Fine image tokens of this forward (the resolution the pipeline's time shift depends on)."""
        raise NotImplementedError

    def coarsen(self, model: nn.Module, kw: dict, factors: tuple[int, ...]) -> tuple[dict, dict]:
        """Forward arguments for a coarse stage and what `refine` needs to map its output back."""
        raise NotImplementedError

    def refine(self, model: nn.Module, out: torch.Tensor, ctx: dict, coarse_output: str) -> torch.Tensor:
        """The coarse forward's output in the fine layout the caller expects."""
        raise NotImplementedError

    def make_embed(self, model: nn.Module, factors: tuple[int, ...], init: str) -> nn.Module:
        raise NotImplementedError

    def make_out(self, model: nn.Module, factors: tuple[int, ...], init: str) -> nn.Module:
        raise NotImplementedError

    def coarse_context(self, model: nn.Module, ctx: dict):
        """A context around the coarse forward, for models whose forward reads a size from an attribute."""
        return contextlib.nullcontext()

    def check(self, model: nn.Module, factors: tuple[int, ...]) -> None:
        """Raise if this model cannot run a stage with `factors` (e.g. a patch size the family does not handle)."""

    def bind(self, model: nn.Module, args: tuple, kwargs: dict) -> dict:
        """Positional and keyword arguments of the model's forward as one keyword dict."""
        if not args:
            return dict(kwargs)
        sig = inspect.signature(type(model).forward)
        bound = sig.bind(model, *args, **kwargs)
        out = dict(bound.arguments)
        out.pop("self", None)
        extra = out.pop("kwargs", None)  # a **kwargs parameter arrives as one entry
        return {**out, **(extra or {})}


FAMILIES: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    FAMILIES[cls.name] = cls
    return cls


def family_of(model: nn.Module, name: str | None = None) -> Family:
    """The family of `model` (or the one named); an unknown model is an error naming the supported ones."""
    if name is not None:
        if name not in FAMILIES:
            raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
        return FAMILIES[name]()
    for cls in FAMILIES.values():
        fam = cls()
        if fam.matches(model):
            return fam
    supported = ", ".join(c for f in FAMILIES.values() for c in f.classes)
    raise TypeError(f"PPFlow has no family for {type(model).__name__}; supported transformers: {supported}")
