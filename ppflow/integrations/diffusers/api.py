"""`apply` / `remove`: PPFlow on a diffusers pipeline or transformer, in place, the user's classes kept."""

from __future__ import annotations

import copy
import functools
import os

from torch import nn

from ...sampling.sigmas import FluxShift
from . import hook, scheduler
from .adapter import HookConfig, StageAdapter, fingerprint, is_adapter_folder, read_config
from .family import family_of
from .hub import fetch_adapter, is_adapter_ref

ATTR = "_ppflow_adapter"  # where a hooked transformer keeps its adapter (outside the module tree)
COPY = "__deepcopy__"  # copy.deepcopy looks it up on the instance: a hooked transformer copies with working hooks


def apply(target, schedule: str | os.PathLike = "ppf2", *, family: str | None = None, init: str = "",
          boundaries: str = "unshifted", coarse_output: str = "v", rank: int = 0, alpha: float = 0.0,
          targets=(), shift: FluxShift | None = None, coarse_cfg: bool | None = None, verify: bool = True,
          force: bool = False, revision: str | None = None, token: str | bool | None = None,
          positions: str = "") -> StageAdapter:
    """Add PPFlow to `target` (a diffusers pipeline with a `transformer`, or the transformer itself).

    `schedule` is a stage plan (`ppf2`, `0.5:4x4,1:2x2`, video `0.3:2x4x4,0.6:1x4x4,1:1x2x2`) for a fresh
    adapter, or a saved adapter: its folder or an 'org/name' hub id (`revision`, `token`; hub.push_adapter
    uploads one) (average/copy-initialised coarse projections, `init` '' = the family's default; `rank` > 0 adds a
    stage-gated LoRA), or the folder
    of a saved adapter (`StageAdapter.save_pretrained`), applied after checking that it was made for this
    base (`force=True` skips that check, `verify=False` the weights' SHA-256). A pipeline's scheduler gets the
    stage boundaries on its grid; `shift` (default: the pipeline scheduler's, else FLUX.1-dev's) is the time shift
    the 'unshifted' boundary rule follows. `coarse_cfg=False` is stage-level CFG (the paper's [1, s]): in coarse
    stages the pipeline's unconditional pass is answered by its conditional one without a forward (default: off
    for an adapter distilled with guidance, which already gives the guided velocity; else the pipeline's CFG runs
    in every stage). `positions` (fresh adapters): where coarse tokens sit for the model's RoPE, 'centre' of the
    fine tokens they cover (the default where the family has it) or 'grid' (HookConfig.positions). Returns the
    adapter (train it, save it, read `counts` and `skipped`).
    """
    transformer, pipe = _transformer(target)
    remove(target)
    if not is_adapter_folder(schedule) and is_adapter_ref(schedule):
        schedule = fetch_adapter(str(schedule), revision, token=token)  # a hub id: its folder in the Hub cache
    second = getattr(pipe, "transformer_2", None) if pipe is not None else None
    if second is not None:  # Wan 2.2: a low-noise expert beside the high-noise one
        return _apply_experts(pipe, transformer, second, schedule, family=family, init=init, boundaries=boundaries,
                              coarse_output=coarse_output, rank=rank, alpha=alpha, targets=targets, shift=shift,
                              coarse_cfg=coarse_cfg, verify=verify, force=force, revision=revision, token=token,
                              positions=positions)
    fam = family_of(transformer, family)
    shift = shift or _shift(pipe)
    if is_adapter_folder(schedule):
        config = read_config(schedule)
        if config.family and config.family != fam.name:
            raise ValueError(f"{schedule} is an adapter for {config.family} models, not for {type(transformer).__name__}")
        if not force and config.base_fingerprint and config.base_fingerprint != fingerprint(transformer, config.fingerprint_rule):
            raise ValueError(f"{schedule} was made for another base model (its fingerprint differs from this "
                             f"transformer's; it names base {config.base!r}). Load the base it was trained on, or "
                             "pass force=True to apply it anyway")
        adapter = StageAdapter(transformer, fam, config)
        adapter.load_weights(schedule, verify)
    else:
        config = HookConfig(family=fam.name, schedule=str(schedule), init=init, boundaries=boundaries,
                            shift=shift or FluxShift(), coarse_output=coarse_output, rank=rank, alpha=alpha,
                            targets=list(targets), base=_name(transformer), base_fingerprint=fingerprint(transformer),
                            positions=positions)
        adapter = StageAdapter(transformer, fam, config)
    adapter.requires_grad_(False)
    adapter.coarse_cfg = not config.guided if coarse_cfg is None else bool(coarse_cfg)
    if not adapter.coarse_cfg and not fam.separate_cfg:
        raise ValueError(f"coarse_cfg=False needs a pipeline that runs its unconditional pass as a call of its own "
                         f"(FLUX true CFG, Qwen-Image, Wan); {fam.name} pipelines batch it with the conditional one")
    transformer.__dict__[ATTR] = adapter
    hook.attach(transformer, adapter)
    transformer.__dict__[COPY] = functools.partial(_deepcopy_hooked, transformer)
    if pipe is not None and getattr(pipe, "scheduler", None) is not None:
        scheduler.patch(pipe.scheduler, adapter)
    return adapter


def _apply_experts(pipe, first: nn.Module, second: nn.Module, schedule, **options) -> StageAdapter:
    """A pipeline with two experts (Wan 2.2's `transformer` and `transformer_2`): a schedule hooks both, each with
    its own adapter (a step runs at its stage's patch size whichever expert the pipeline picks); a saved adapter
    goes on the expert it was made for (apply another one to `pipe.transformer_2` directly)."""
    if is_adapter_folder(schedule) and not options["force"]:
        config = read_config(schedule)
        for expert in (first, second):
            if not config.base_fingerprint or config.base_fingerprint == fingerprint(expert, config.fingerprint_rule):
                adapter = apply(expert, schedule, **options)
                break
        else:
            raise ValueError(f"{schedule} was made for neither expert of this pipeline (transformer, transformer_2: "
                             f"fingerprints differ; it names base {config.base!r}); pass force=True to put it on "
                             "`transformer` anyway")
    else:
        adapter = apply(first, schedule, **options)
        if not is_adapter_folder(schedule):  # a fresh schedule: each expert gets its own adapter
            apply(second, schedule, **options)
    if getattr(pipe, "scheduler", None) is not None:
        scheduler.patch(pipe.scheduler, adapter)
    return adapter


def remove(target) -> None:
    """Take PPFlow off `target` again (hooks and the scheduler patch); the model is as before `apply`."""
    transformer, pipe = _transformer(target)
    experts = [transformer, getattr(pipe, "transformer_2", None) if pipe is not None else None]
    for expert in filter(None, experts):
        expert.__dict__.pop(COPY, None)
        if expert.__dict__.pop(ATTR, None) is not None:
            hook.detach(expert)
    if pipe is not None:
        scheduler.unpatch(getattr(pipe, "scheduler", None))


def _deepcopy_hooked(module: nn.Module, memo: dict) -> nn.Module:
    """`copy.deepcopy` of a hooked transformer. diffusers' hooks do not survive a deep copy (the copy's forward
    would run the original model), so the unhooked model is copied with its adapter, then both are hooked."""
    adapter = module.__dict__[ATTR]
    del module.__dict__[COPY]  # the copy below must not call this again
    hook.detach(module)
    try:
        new = copy.deepcopy(module, memo)
    finally:
        hook.attach(module, adapter)
        module.__dict__[COPY] = functools.partial(_deepcopy_hooked, module)
    hook.attach(new, new.__dict__[ATTR])
    new.__dict__[COPY] = functools.partial(_deepcopy_hooked, new)
    return new


def adapter_of(target) -> StageAdapter | None:
    """The adapter `apply` put on `target`'s transformer, if any."""
    return _transformer(target)[0].__dict__.get(ATTR)


def _transformer(target) -> tuple[nn.Module, object | None]:
    if isinstance(target, nn.Module):
        return target, None
    transformer = getattr(target, "transformer", None) or getattr(target, "transformer_2", None)
    if transformer is None:
        raise ValueError(f"{type(target).__name__} has no transformer to add PPFlow to (built with transformer="
                         "None?); load the pipeline with its transformer, or apply PPFlow to the transformer itself")
    return transformer, target


def _shift(pipe) -> FluxShift | None:
    sched = getattr(pipe, "scheduler", None) if pipe is not None else None
    if sched is None:
        return None
    c = sched.config
    if "use_dynamic_shifting" in c or "base_shift" in c:
        return FluxShift.from_scheduler(sched)
    if c.get("use_flow_sigmas") or "flow_shift" in c:  # UniPC / DPM++ with flow sigmas (Wan)
        return FluxShift(dynamic=False, shift=float(c.get("flow_shift") or 1.0))
    return None


def _name(model: nn.Module) -> str:
    return str(getattr(model.config, "_name_or_path", "") or "")
