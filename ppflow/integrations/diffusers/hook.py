"""The PPFlow hook: diffusers `ModelHook`s that run a stage's forward on fewer tokens.

`PPFlowHook` sits on the transformer. Per forward it reads the stage from the timestep the pipeline passes,
and in a coarse stage it hands the model coarse tokens (`Family.coarsen`), lets small hooks on the patch
embedding, output projection, time embedding and LoRA target layers swap in the stage's parameters, and maps
the output back (`Family.refine`). The finest stage calls the model as it is: the plain diffusers forward, bit
for bit. The model stays the user's class; its state dict, save/load and LoRA keys do not change.

Caches: diffusers' cache hooks keep tensors of one token count. Each stage gets its own cache context
(`name/ppflow-stageS`), and hooks that keep state without contexts (PAB, FasterCache) are reset when the stage
changes, so no cached tensor crosses the switch. The hook is stateful: a pipeline's end-of-call reset clears it.

Stage-level CFG (`coarse_cfg=False`, the paper's CFG [1, s]): in a coarse stage a forward that repeats the last
one's latents (the same tensor, unchanged) and timestep is the pipeline's unconditional pass; it gets the
conditional output back without running, so the pipeline's guidance `u + s (c - u)` gives `c` there.

Context parallelism (diffusers' `enable_parallelism`): apply PPFlow after it. The hook then wraps the sequence
split, so coarse tokens are split and the coarse output layers gather like the model's own output projection.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from .adapter import Active

HOOK = "ppflow"
PART_HOOK = "ppflow_part"  # the small hooks on embedding / projection / time embedding / LoRA layers


class PPFlowHook(ModelHook):
    """On the transformer: stage choice, coarse inputs and outputs, per-stage cache state."""

    _is_stateful = True

    def __init__(self, adapter) -> None:
        super().__init__()
        self.adapter = adapter
        self.last_stage: int | None = None
        self.last_call: tuple | None = None  # (latents, their version, timestep, output) of the last coarse forward

    def new_forward(self, module, *args, **kwargs):
        ad = self.adapter
        if ad.passive and not ad.engaged:  # PPFluxTransformer's base called directly: the plain model
            return self.fn_ref.original_forward(*args, **kwargs)
        refresh_parts(module, ad)
        kw = ad.family.bind(module, args, kwargs)
        stages = ad.stages_of(module, kw)
        if ad.plan.coarse:
            check_outermost(module)
        if len(set(stages)) > 1:
            return self._run_mixed(module, stages, kw)
        stage = stages[0]
        if ad.coarse_cfg or stage == ad.plan.num_stages - 1:
            return self._run(module, stage, kw)
        answer = self._unconditional_pass(kw)
        if answer is not None:  # stage-level CFG: the unconditional pass of a coarse step costs nothing
            ad.skipped += kw["hidden_states"].shape[0]
            return answer
        out = self._run(module, stage, kw)
        x, t = kw["hidden_states"], kw.get("timestep")
        self.last_call = (x, x._version, None if t is None else t.detach().clone(), out)
        return out

    def _unconditional_pass(self, kw: dict):
        """The last coarse forward's output when this call repeats its latents and timestep (a pipeline's
        unconditional pass, which follows the conditional one with the same latents), else None."""
        if self.last_call is None:
            return None
        x, version, t, out = self.last_call
        now = kw.get("timestep")
        same_t = (t is None and now is None) or (t is not None and now is not None and t.shape == now.shape
                                                 and torch.equal(t, now.detach().to(t.device, t.dtype)))
        if kw["hidden_states"] is not x or x._version != version or not same_t:
            return None
        self.last_call = None
        return _map_sample(_copy_output(out), torch.clone)

    def _run(self, module, stage: int, kw: dict):
        ad = self.adapter
        B = kw["hidden_states"].shape[0]
        if not torch.compiler.is_compiling():  # Python bookkeeping: a compiled forward would recompile per count
            ad.count(stage, B)
        self._switch(module, stage)
        if ad.stage_guidance is not None and kw.get("guidance") is not None:  # (B,) distilled guidance
            kw = {**kw, "guidance": torch.full_like(kw["guidance"], ad.stage_guidance[stage])}
        if stage == ad.plan.num_stages - 1:  # the finest stage is the model itself (fine_embed: plus its row)
            ad.active.embed = stage if ad.config.fine_embed else None
            try:
                with self._stage_context(module, stage):
                    return self.fn_ref.original_forward(**kw)
            finally:
                ad.active.embed = None
        factors = ad.plan.factors[stage]
        ad.place(kw["hidden_states"])
        ckw, ctx = ad.family.coarsen(module, kw, factors, **({"grid": ad.pin_grid} if ad.pin_grid else {}))
        ctx["positions"] = ad.config.positions
        ad.active.stage = ad.active.embed = stage
        try:
            with self._stage_context(module, stage), ad.family.coarse_context(module, ctx):
                out = self.fn_ref.original_forward(**ckw)
        finally:
            ad.active.stage = ad.active.embed = None
        return _map_sample(out, lambda x: ad.family.refine(module, x, ctx, ad.config.coarse_output))

    def _run_mixed(self, module, stages: list[int], kw: dict):
        """A batch whose samples sit in different stages (training): one forward per stage, in stage order."""
        B = kw["hidden_states"].shape[0]
        unbatched = self.adapter.family.unbatched
        out, result = None, None
        for s in sorted(set(stages)):
            idx = torch.tensor([i for i, v in enumerate(stages) if v == s], device=kw["hidden_states"].device)
            sub = {k: (v.index_select(0, idx) if torch.is_tensor(v) and k not in unbatched and v.ndim > 0
                       and v.shape[0] == B else v) for k, v in kw.items()}
            res = self._run(module, s, sub)
            x = _sample(res)
            if out is None:
                out, result = x.new_empty((B, *x.shape[1:])), res
            out[idx] = x
        return _map_sample(result, lambda _: out)

    def _switch(self, module, stage: int) -> None:
        """Reset context-free stateful hooks (PAB, FasterCache) when the stage changes (not traced by
        torch.compile: the caches are Python state, and a compiled forward keeps one graph per stage)."""
        if torch.compiler.is_compiling():
            return
        if stage != self.last_stage:
            self.last_call = None
        if self.last_stage is not None and stage != self.last_stage:
            for hook, owner in _stateful_hooks(module):
                if hook is not self and not _has_state_manager(hook):
                    hook.reset_state(owner)
        self.last_stage = stage

    @contextlib.contextmanager
    def _stage_context(self, module, stage: int):
        """Give context-keyed cache hooks a per-stage context name for this forward."""
        if not self.adapter.plan.coarse or torch.compiler.is_compiling():
            yield
            return
        managers = [m for hook, _ in _stateful_hooks(module) for m in vars(hook).values()
                    if isinstance(m, StateManager) and m._context is not None]
        saved = [m._context for m in managers]
        for m, ctx in zip(managers, saved, strict=True):
            m.set_context(dataclasses.replace(ctx, name=f"{ctx.name}/ppflow-stage{stage}"))
        try:
            yield
        finally:
            for m, ctx in zip(managers, saved, strict=True):
                m.set_context(ctx)

    def reset_state(self, module):
        self.last_stage, self.last_call = None, None
        self.adapter.grid_mu = None  # the call's grid is over
        return module


class SwapHook(ModelHook):
    """On the patch embedding or output projection: the coarse stage's own layer while a coarse stage runs."""

    def __init__(self, active: Active, layers) -> None:
        super().__init__()
        self.active, self.layers = active, layers

    def new_forward(self, module, *args, **kwargs):
        s = self.active.stage
        if s is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.layers[str(s)](*args, **kwargs)


class StageEmbedHook(ModelHook):
    """On the time embedding: adds the running stage's learned embedding (B, D) to its output. The table is read
    from the adapter at every call (FSDP2 swaps parameters on the module that registers them)."""

    def __init__(self, active: Active, adapter) -> None:
        super().__init__()
        self.active, self.adapter = active, adapter

    def post_forward(self, module, output):
        s = self.active.embed
        if s is None:
            return output
        row = self.adapter.table()[s]  # (D,)
        if isinstance(output, tuple):  # e.g. Wan's condition embedder: temb first
            return (output[0] + row.to(output[0].dtype), *output[1:])
        return output + row.to(output.dtype)


class LoRAHook(ModelHook):
    """On a linear layer of the blocks: `layer(x) + scale * B A x` in coarse stages, `layer(x)` otherwise."""

    def __init__(self, active: Active, lora) -> None:
        super().__init__()
        self.active, self.lora = active, lora

    def new_forward(self, module, x, *args, **kwargs):
        y = self.fn_ref.original_forward(x, *args, **kwargs)
        if self.active.stage is None:
            return y
        return y + self.lora(x).to(y.dtype)


def _sample(output) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    return output["sample"] if hasattr(output, "keys") and "sample" in output else output


def _copy_output(output):
    """A shallow copy of a model output (tuple, ModelOutput or tensor), so `_map_sample` leaves the original."""
    if isinstance(output, tuple) or torch.is_tensor(output):
        return output
    return type(output)(**output)


def _map_sample(output, fn):
    """Apply `fn` to a model output's sample, keeping its type (tuple, Transformer2DModelOutput or tensor)."""
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    if torch.is_tensor(output):
        return fn(output)
    output["sample"] = fn(output["sample"])
    return output


def _stateful_hooks(module):
    """(hook, module it sits on) for every stateful hook on `module` and its submodules, through the registry list
    diffusers caches for `_set_cache_context` (invalidated by enable_cache / disable_cache and by `attach`)."""
    root = HookRegistry.check_if_exists_or_initialize(module)
    for registry in (root, *root._get_child_registries()):
        for name in registry._hook_order:
            hook = registry.hooks[name]
            if hook._is_stateful:
                yield hook, registry._module_ref


def _has_state_manager(hook) -> bool:
    return any(isinstance(v, StateManager) for v in vars(hook).values())


def attach(module, adapter) -> None:
    """Register the PPFlow hooks of `adapter` on `module` (a diffusers transformer)."""
    _attach_parts(module, adapter)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(PPFlowHook(adapter), HOOK)
    registry.invalidate_child_registries_cache()


def _attach_parts(module, adapter) -> None:
    fam, active = adapter.family, adapter.active
    if adapter.plan.coarse:
        HookRegistry.check_if_exists_or_initialize(module.get_submodule(fam.embed)).register_hook(
            SwapHook(active, adapter.embed), PART_HOOK)
        HookRegistry.check_if_exists_or_initialize(module.get_submodule(fam.out)).register_hook(
            SwapHook(active, adapter.out), PART_HOOK)
        HookRegistry.check_if_exists_or_initialize(module.get_submodule(fam.temb)).register_hook(
            StageEmbedHook(active, adapter), PART_HOOK)
        for path, lora in adapter.lora_layers():
            HookRegistry.check_if_exists_or_initialize(module.get_submodule(path)).register_hook(
                LoRAHook(active, lora), PART_HOOK)
        _gather_coarse_outputs(module, adapter)


def refresh_parts(module, adapter) -> None:
    """Move the part hooks onto the layers the model calls now: a LoRA loaded after `apply` (peft) wraps the
    patch embedding or output projection in a new module, and the hook on the wrapped one would mix coarse
    outputs with the LoRA's fine-stage delta."""
    if not adapter.plan.coarse:
        return
    fam = adapter.family
    if all(PART_HOOK in getattr(getattr(module.get_submodule(p), "_diffusers_hook", None), "hooks", ())
           for p in (fam.embed, fam.out)):
        return
    _detach_parts(module)
    _attach_parts(module, adapter)
    HookRegistry.check_if_exists_or_initialize(module).invalidate_child_registries_cache()


def _context_parallel(module):
    config = getattr(module, "_parallel_config", None)
    return getattr(config, "context_parallel_config", None) if config is not None else None


def _gather_coarse_outputs(module, adapter) -> None:
    """Under diffusers' context parallelism the output projection gathers the sequence shards; the coarse stages'
    own output layers get the same gather (the hook itself sits outside the split: it sees the whole grid)."""
    cp = _context_parallel(module)
    plan = (getattr(module, "_cp_plan", None) or {}).get(adapter.family.out)
    if cp is None or plan is None:
        return
    from diffusers.hooks.context_parallel import ContextParallelGatherHook

    for layer in adapter.out.values():
        HookRegistry.check_if_exists_or_initialize(layer).register_hook(
            ContextParallelGatherHook(list(plan) if isinstance(plan, (list, tuple)) else [plan], cp), PART_HOOK)


def check_outermost(module) -> None:
    """The PPFlow hook must wrap the context-parallel split (it regroups the whole token grid)."""
    if _context_parallel(module) is None:
        return
    order = HookRegistry.check_if_exists_or_initialize(module)._hook_order
    if order and order[-1] != HOOK:
        raise RuntimeError("context parallelism was enabled after ppflow's apply: call "
                           "transformer.enable_parallelism(...) first and apply PPFlow after it (the PPFlow hook must "
                           "see the whole token grid, outside the sequence split)")


def detach(module) -> None:
    """Remove every PPFlow hook from `module` and its submodules."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.remove_hook(HOOK, recurse=False)
    _detach_parts(module)
    registry.invalidate_child_registries_cache()


def _detach_parts(module) -> None:
    for _, m in module.named_modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None and PART_HOOK in reg.hooks:
            reg.remove_hook(PART_HOOK, recurse=False)
