"""Data-free distillation of a PPFlow adapter on a diffusers transformer, from the teacher's own recorded calls.

The teacher is the plain model; its training signal is what it computes while sampling. `record_calls` runs any
sampler (the user's pipeline, or a plain Euler loop) with a recorder on the transformer and keeps, for every
forward whose timestep falls in a coarse stage, its inputs and its output: data-free (prompts only), with
whatever guidance, conditioning and positions the pipeline passes, for any family. The file they are saved in
(`save_calls`, SHA-256 checked) is the data of `DistillTask`, a task of the training engine: the student is
the same transformer with the PPFlow hook, only the adapter trains, and its loss is the mean squared error to the
teacher's output at the same inputs. RUN/ema is an adapter folder that `apply(pipe, RUN/ema)` loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Self

import torch

from ...hub.hub import is_hub_id
from ...io import HASH_KEY, content_sha256, read_safetensors, save_safetensors_atomic
from ...sampling.sigmas import FluxShift
from ...train.batches import derive_seed
from ...train.config import ConfigError
from ...train.ema import EMA
from ...train.engine import TrainResult
from ...train.launch import run_task
from ...train.task import Task
from .adapter import HookConfig, StageAdapter
from .api import ATTR, apply
from .distill_config import AdapterSection, DistillConfig  # noqa: F401  (the task and its config)
from .family import family_of

KIND = "diffusers-adapter"
CALLS_FORMAT = "ppflow-teacher-calls"


# ---------------------------------------------------------------- recording
class CallRecorder:
    """Records (tensor kwargs, output) of every forward of `model` for which `keep(kwargs)` is true."""

    def __init__(self, model: torch.nn.Module, keep: Callable[[dict], bool] | None = None) -> None:
        self.model, self.keep, self.calls, self._handle = model, keep, [], None
        self.family = family_of(model)

    def __enter__(self) -> Self:
        def hook(module, args, kwargs, output):
            kw = self.family.bind(module, args, kwargs)
            if self.keep is not None and not self.keep(kw):
                return
            out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            self.calls.append(({k: v.detach().cpu().clone() for k, v in kw.items() if torch.is_tensor(v)},
                               out.detach().cpu().clone()))

        self._handle = self.model.register_forward_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


class _CoarseRangeDone(Exception):
    """Raised inside the sampler at its first fine-stage forward when `stop_after_coarse` is set."""


def record_calls(model: torch.nn.Module, run: Callable[[], object], schedule: str = "ppf2", *,
                 boundaries: str = "unshifted", shift: FluxShift | None = None,
                 stop_after_coarse: bool = False) -> list[tuple[dict, torch.Tensor]]:
    """Run `run()` (any sampler calling the plain `model`) and keep the calls that `schedule` puts in a coarse
    stage: (tensor inputs, output) each. `model` must not carry the PPFlow hook (the teacher is the plain model).
    `stop_after_coarse`: end the sampler at its first fine-stage forward once coarse calls were recorded (the rest
    of the trajectory is not needed; about half the teacher's cost with a ppf2 grid); `run` must let the
    exception through."""
    if model.__dict__.get(ATTR) is not None:
        raise ValueError("the model carries the PPFlow hook: record the teacher on the plain model (remove(model))")
    fam = family_of(model)
    adapter = StageAdapter(model, fam, HookConfig(family=fam.name, schedule=schedule, boundaries=boundaries,
                                                  shift=shift or FluxShift()))  # for its stage rule only
    fine = adapter.plan.num_stages - 1
    recorded = []

    def coarse(kw: dict) -> bool:
        keep = max(adapter.stages_of(model, kw)) < fine
        if not keep and stop_after_coarse and any(recorded):
            raise _CoarseRangeDone
        recorded.append(keep)
        return keep

    with torch.no_grad(), CallRecorder(model, coarse) as rec:
        try:
            run()
        except _CoarseRangeDone:
            pass
    return rec.calls


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a text file, one per line (blank lines and lines starting with '#' skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the prompts file {path} ({type(e).__name__}: {e}): give a UTF-8 text file "
                          "with one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"{path} holds no prompt: write one prompt per line")
    return prompts


def record_pipeline(pipe, prompts: list[str], schedule: str, steps: list[int], batch: int, seed: int, *,
                    boundaries: str = "unshifted", shift: FluxShift | None = None, call_kwargs: dict | None = None,
                    log: Callable[[str], None] | None = None) -> list[tuple[dict, torch.Tensor]]:
    """The coarse-stage calls of `pipe` (the user's own diffusers pipeline, plain) sampling `prompts`, `batch` at a
    time, with step counts cycling through `steps` (varied noise levels), seeded noise, latents out; each call of
    the pipeline stops at its first fine-stage forward."""
    calls = []
    chunks = [prompts[i: i + batch] for i in range(0, len(prompts), batch)]
    for j, chunk in enumerate(chunks):
        n = steps[j % len(steps)]
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "record", j))
        run = (lambda chunk=chunk, n=n, gen=gen: pipe(prompt=chunk, num_inference_steps=n, generator=gen,
                                                     output_type="latent", **(call_kwargs or {})))
        calls += record_calls(pipe.transformer, run, schedule, boundaries=boundaries, shift=shift,
                              stop_after_coarse=True)
        if log is not None and (j + 1 == len(chunks) or (j + 1) % max(1, len(chunks) // 10) == 0):
            log(f"recorded the teacher on {min(len(prompts), (j + 1) * batch)}/{len(prompts)} prompts "
                f"({len(calls)} coarse-stage calls)")
    return calls


def guided_calls(calls: list[tuple[dict, torch.Tensor]], scale: float) -> list[tuple[dict, torch.Tensor]]:
    """The calls with CFG at `scale` folded into the conditional ones: a call followed by one on the same latents
    and timestep is a (conditional, unconditional) pair (diffusers pipelines with a separate unconditional pass run
    it second) whose conditional call gets the target u + scale (c - u); the unconditional call is dropped. A call
    without a partner (a step run without CFG) keeps its own output."""
    out, i, pairs = [], 0, 0
    while i < len(calls):
        kw, c = calls[i]
        if i + 1 < len(calls) and _same_step(kw, calls[i + 1][0]):
            u = calls[i + 1][1].float()
            out.append((kw, (u + scale * (c.float() - u)).to(c.dtype)))
            i, pairs = i + 2, pairs + 1
        else:
            out.append((kw, c))
            i += 1
    if not pairs:
        raise ConfigError(f"adapter.guided {scale}: no (conditional, unconditional) pair among the {len(calls)} "
                          "recorded calls; record the teacher with the pipeline's CFG on (guidance_scale > 1)")
    return out


def _same_step(a: dict, b: dict) -> bool:
    keys = [k for k in ("hidden_states", "timestep") if k in a and k in b]
    return "hidden_states" in keys and all(torch.equal(a[k], b[k]) for k in keys)


def save_calls(calls: list[tuple[dict, torch.Tensor]], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """One safetensors file; a tensor shared by several calls (prompt embeddings) is stored once."""
    unique, index, layout = {}, {}, []
    for kw, out in calls:
        entry = {}
        for k, v in [*kw.items(), ("__output__", out)]:
            key = (v.data_ptr(), tuple(v.shape), v.dtype)
            if key not in index or not torch.equal(unique[index[key]], v):
                index[key] = f"t{len(unique)}"
                unique[index[key]] = v.contiguous()
            entry[k] = index[key]
        layout.append(entry)
    body = {"format": CALLS_FORMAT, "layout": json.dumps(layout), "meta": json.dumps(meta or {})}
    return save_safetensors_atomic(unique, path, {**body, HASH_KEY: content_sha256(unique)})


def load_calls(path: str | os.PathLike, verify: bool = True) -> tuple[list[tuple[dict, torch.Tensor]], dict]:
    tensors, metadata = read_safetensors(path, verify)
    if metadata.get("format") != CALLS_FORMAT:
        raise ValueError(f"{path} is not a file of recorded teacher calls (format {metadata.get('format')!r})")
    calls = []
    for entry in json.loads(metadata["layout"]):
        kw = {k: tensors[v] for k, v in entry.items() if k != "__output__"}
        calls.append((kw, tensors[entry["__output__"]]))
    return calls, json.loads(metadata.get("meta", "{}"))


# ---------------------------------------------------------------- the task
class Calls:
    """The engine's data: one row per recorded call (get_batch returns call indices)."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __len__(self) -> int:
        return len(self.calls)

    def get_batch(self, idx: torch.Tensor, flips=None) -> tuple[torch.Tensor, torch.Tensor]:
        return idx, idx


def load_transformer(base: str, **kwargs) -> torch.nn.Module:
    """A diffusers transformer folder (its config.json names the class) or a pipeline's `transformer` subfolder."""
    import diffusers

    path = Path(base)
    if not path.exists() and is_hub_id(base):  # the pipeline's transformer in the Hugging Face cache
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(base, allow_patterns=["transformer/*"]))
    sub = {}
    if (path / "transformer" / "config.json").is_file() and not (path / "config.json").is_file():
        sub = {"subfolder": "transformer"}
    cfg_file = (path / sub.get("subfolder", "") / "config.json") if path.exists() else None
    if cfg_file is None or not cfg_file.is_file():
        raise ConfigError(f"{base} has no config.json: give the folder of a diffusers transformer (save_pretrained)")
    name = json.loads(cfg_file.read_text("utf-8")).get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError(f"{cfg_file} names class {name!r}, which diffusers does not have")
    return cls.from_pretrained(str(path), **sub, **kwargs).eval()


class DistillTask(Task):
    """The PPFlow hook on a frozen diffusers transformer; the adapter learns the teacher's recorded outputs."""

    command = "ppflow.integrations.diffusers.distill"
    kind = KIND
    config_cls = DistillConfig
    run_name = staticmethod(lambda cfg: "diffusers-adapter")

    def setup(self, ckpt: dict | None, verify: bool, log: Callable[[str], None]) -> None:
        cfg, a, dev = self.cfg, self.cfg.adapter, self.info.device
        if self.info.distributed:
            raise ConfigError("diffusers adapter distillation runs on one process for now (the adapter is small: "
                              "use one GPU)")
        calls_path = a.calls or str(Path(cfg.out) / "teacher-calls.safetensors")
        if not Path(calls_path).exists():
            self._record(calls_path, log)
        calls, meta = load_calls(calls_path, verify)
        if a.guided is not None:
            calls = guided_calls(calls, a.guided)
        shift = FluxShift(**(a.shift or meta.get("shift") or {}))  # the recording pipeline's, unless given
        dtype = self.base_dtype()
        self.transformer = load_transformer(a.base or a.pipeline, torch_dtype=dtype).to(dev)
        self.transformer.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # LoRA A matrices: random, from the run's seed
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            try:
                self.adapter = apply(self.transformer, a.schedule, rank=a.rank, alpha=a.alpha, targets=a.targets,
                                     coarse_output=a.coarse_output, boundaries=a.boundaries, shift=shift,
                                     positions=a.positions)
            except ValueError as e:
                raise ConfigError(f"adapter: {e}") from None
        self.adapter.config.base, self.adapter.config.guided = a.base or a.pipeline, a.guided
        self.adapter.float().requires_grad_(True)  # trained in fp32 beside a bf16/fp16 base (autocast mixes them)
        self.raw = self.model = self.adapter
        self.num_stages = self.adapter.plan.num_stages
        self.names = [n for n, _ in self.adapter.named_parameters()]
        if ckpt is not None:
            self.adapter.load_state_dict(ckpt["model"])
        self.params = torch.nn.ParameterList(list(self.adapter.parameters()))
        self.ema = EMA(self.params, cfg.ema.decay, cfg.ema.warmup)
        if ckpt is not None:
            self.ema.load_full([ckpt["ema"][n] for n in self.names])
        if not calls:
            raise ConfigError(f"{calls_path} holds no calls: record the teacher with steps in the coarse stages")
        self.data = Calls(calls)
        fine = self.num_stages - 1
        self.call_stage = []
        for kw, _ in calls:
            stages = self.adapter.stages_of(self.transformer, kw)
            if max(stages) >= fine or len(set(stages)) > 1:
                raise ConfigError(f"{calls_path} holds calls outside one coarse stage of schedule {a.schedule!r}: record "
                                  "the teacher with this schedule's boundaries")
            self.call_stage.append(stages[0])
        log(f"{len(calls)} teacher calls from {calls_path}")

    def _record(self, path: str, log: Callable[[str], None]) -> None:
        """Record the teacher's coarse-stage calls with the user's pipeline on the prompts file into `path`."""
        a, dev = self.cfg.adapter, self.info.device
        if a.pipeline is None or a.prompts is None:
            raise ConfigError(f"the teacher calls file {path} does not exist: record it first (record_calls + "
                              "save_calls), or give --adapter.pipeline and --adapter.prompts to record it here")
        from diffusers import DiffusionPipeline

        from .api import _shift

        prompts = read_prompts(a.prompts)
        dtype = self.base_dtype()
        log(f"recording the teacher: {a.pipeline} on {len(prompts)} prompts from {a.prompts}, "
            f"steps {a.record_steps}, stopping each run at its first fine-stage step")
        pipe = DiffusionPipeline.from_pretrained(a.pipeline, dtype=dtype).to(dev)
        pipe.set_progress_bar_config(disable=not self.cfg.progress)
        shift = FluxShift(**a.shift) if a.shift else (_shift(pipe) or FluxShift())
        options = {**a.record_kwargs, "guidance_scale": a.guidance, "height": a.height, "width": a.width}
        calls = record_pipeline(pipe, prompts, a.schedule, a.record_steps, a.record_batch, self.cfg.seed,
                                boundaries=a.boundaries, shift=shift, log=log,
                                call_kwargs={k: v for k, v in options.items() if v is not None or k in a.record_kwargs})
        if not calls:
            raise ConfigError(f"no step of {a.pipeline} at steps {a.record_steps} fell in a coarse stage of "
                              f"{a.schedule!r}: give more --adapter.record-steps")
        save_calls(calls, path, {"pipeline": a.pipeline, "prompts": len(prompts), "shift": asdict(shift)})

    def base_dtype(self) -> torch.dtype:
        """The frozen base's dtype (AdapterSection.base_dtype); a half-precision base needs autocast."""
        name, p = self.cfg.adapter.base_dtype, self.cfg.precision
        autocast = p == "bf16" or (p == "auto" and self.info.device.type == "cuda")  # the engine's rule
        if name == "auto":
            name = "bf16" if autocast else "fp32"
        if name != "fp32" and not autocast:
            raise ConfigError(f"adapter.base_dtype {name} runs the fp32 adapter beside a {name} base under bf16 "
                              f"autocast, which precision {p} on {self.info.device.type} does not use: give "
                              "--precision bf16, or adapter.base_dtype fp32")
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.params), "lr_scale": 1.0}]

    def ema_source(self) -> torch.nn.Module:
        return self.params

    def loss(self, mb, autocast):
        dev = self.info.device
        total, sums, counts = 0.0, [0.0] * self.num_stages, [0] * self.num_stages
        idx = mb.x.tolist()
        for i in idx:
            kw, target = self.data.calls[i]
            dtype = self.transformer.dtype  # the recorded inputs in the base's dtype, as its pipeline passes them
            kw = {k: v.to(dev, dtype) if v.is_floating_point() else v.to(dev) for k, v in kw.items()}
            with autocast():
                out = self.transformer(**kw, return_dict=False)[0]
            per = (out.float() - target.to(dev).float()).square().flatten(1).mean(1)  # (B,)
            total = total + per.mean() / len(idx)
            s = self.call_stage[i]
            sums[s] += float(per.detach().sum())
            counts[s] += len(per)
        return total, sums, counts

    def weights(self) -> tuple[dict, dict]:
        model = {n: p.detach().to("cpu", copy=True) for n, p in zip(self.names, self.params)}
        ema = {n: p.detach().to("cpu", copy=True) for n, p in zip(self.names, self.ema.model)}
        return model, ema

    def export(self, ema_state: dict, folder: Path, target: Path) -> None:
        self.adapter.save_pretrained(folder, state=ema_state)

    def describe(self) -> str:
        n, share = self.adapter.size(self.transformer)
        a = self.cfg.adapter
        return (f"PPFlow adapter for {a.base or a.pipeline} ({type(self.transformer).__name__}; {n / 1e6:.3f}M parameters, "
                f"{100 * share:.1f}% of the base; schedule {a.schedule}, LoRA rank {a.rank}), distilled data-free "
                f"from {len(self.data)} recorded teacher calls" + (f", guided {a.guided}" if a.guided else ""))


def distill(config: DistillConfig | dict | None = None, *, resume: str | os.PathLike | None = None,
            overrides: dict | None = None, verify: bool = True) -> TrainResult:
    """Train the adapter of `config` (or continue the run in `resume`); RUN/ema is the adapter folder."""
    return run_task(DistillTask, config, resume=resume, overrides=overrides, verify=verify)
