"""SiT / DiT / PPFlow training as a task of the engine: `train(config) -> TrainResult`, single process or torchrun.

The task adds to ppflow.train.engine: the image/latent dataset, the PPFlowTransformer (from scratch, from
`model.init`, or from the checkpoint), DDP/FSDP2 around it, the stage-stratified flow-matching loss of a
micro-batch, the EMA model exported as a save_pretrained folder (ema/, ppflow.load_model reads it), and PNG sample
grids from the EMA model (samples/step-NNNNNNN.png).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data import TrainData, build_dataset
from ..flow import drop_labels, flow_matching_loss, sample_times
from ..flow.time_sampling import stage_shares
from ..io import remove_quietly, save_error
from ..models.backbone import ModelConfig, PPFlowTransformer
from ..models.pretrained import load_state_strict
from ..models.registry import create_config
from ..models.schedule import ScheduleError
from .batches import Layout, derive_seed, generator
from .config import ConfigError, TrainConfig
from .ema import EMA
from .engine import Engine, StepEvent, TrainResult
from .launch import run_task
from .parallel import parallel_mode, parallelize, shard_fsdp, unwrap
from .task import Task


def _model_fields_from_data(data: TrainData) -> dict:
    c, h, w = data.model_shape
    return {"in_channels": c, "input_size": (h, w), "num_classes": data.num_classes, "vae": data.vae}


def _check_against_data(mc: ModelConfig, data: TrainData, what: str) -> None:
    c, h, w = data.model_shape
    if mc.in_channels != c or tuple(mc.input_size) != (h, w):
        raise ConfigError(
            f"{what} expects {mc.in_channels}x{mc.input_size[0]}x{mc.input_size[1]} inputs but {data.name} gives "
            f"{c}x{h}x{w}; use matching data (--data.image-size) or another model"
        )
    if mc.num_classes not in (0, data.num_classes):
        raise ConfigError(f"{what} has {mc.num_classes} classes but {data.name} has {data.num_classes}; "
                          "use --model.num-classes 0 (unconditional) or matching data")
    try:
        mc.get_schedule().check_latent(h, w)
    except ScheduleError as e:
        raise ConfigError(f"{what}: {e}") from None


def resolve_model_config(cfg: TrainConfig, data: TrainData) -> ModelConfig:
    """ModelConfig of a fresh model: the named size + the data's shape/classes + user overrides."""
    fields = _model_fields_from_data(data)
    user = dict(cfg.model.overrides)
    for k in ("in_channels", "input_size"):
        if k in user:
            given = tuple(user[k]) if isinstance(user[k], (list, tuple)) else user[k]
            want = fields[k] if k == "in_channels" or not isinstance(given, int) else fields[k][0]
            if given != want and not (k == "input_size" and isinstance(given, int) and fields[k] == (given, given)):
                raise ConfigError(f"--model.{k.replace('_', '-')} {user[k]} contradicts the data ({data.name} gives "
                                  f"{fields[k]}); drop the option: pixel/latent shapes come from the data")
            del user[k]
    if user.get("num_classes", data.num_classes) not in (0, data.num_classes):
        raise ConfigError(f"--model.num-classes {user['num_classes']}: {data.name} has {data.num_classes} classes; "
                          "use 0 for an unconditional model or drop the option")
    fields.update(user)
    try:
        return create_config(cfg.model.name, **fields)
    except ScheduleError as e:
        _, h, w = data.model_shape
        raise ConfigError(f"{e} (the data gives {h}x{w} model inputs; set --data.image-size or --model.schedule)") \
            from None
    except TypeError as e:
        raise ConfigError(f"bad model option: {e}") from None


def _config_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    out = []
    for k in da:
        if k == "name":
            continue
        va, vb = da[k], db[k]
        if k == "schedule":
            va, vb = a.get_schedule().to_string(), b.get_schedule().to_string()
        if va != vb:
            out.append(f"{k} (checkpoint {va!r}, config {vb!r})")
    return out


def build_model(cfg: TrainConfig, data: TrainData, ckpt: dict | None, verify: bool = True) -> PPFlowTransformer:
    """The (unwrapped, CPU) model: from the checkpoint's config on resume, `model.init` (hash-checked unless
    `verify=False`), or from scratch."""
    if ckpt is not None:
        mc = ModelConfig.from_dict(ckpt["config"]["model_config"])
        _check_against_data(mc, data, "the checkpoint's model")
        if not cfg.model.init:
            diff = _config_diff(mc, resolve_model_config(cfg, data))
            if diff:
                raise ConfigError(f"the checkpoint's model differs from the config in {'; '.join(diff)}; resume with "
                                  "the run's own settings, or start a new run from it with --model.init CHECKPOINT")
        model = PPFlowTransformer(mc)
    elif cfg.model.init:
        from ..convert import load_model

        model = load_model(cfg.model.init, format=cfg.model.init_format, verify=verify, **cfg.model.overrides)
        model.config.vae = model.config.vae or data.vae
        _check_against_data(model.config, data, f"the model in {cfg.model.init}")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            model = PPFlowTransformer(resolve_model_config(cfg, data))
    return model


class SiTTask(Task):
    """A PPFlowTransformer (any schedule; one stage = the SiT/DiT baseline) trained with stage-stratified flow
    matching."""

    command = "ppflow train"
    kind = None
    config_cls = TrainConfig

    @staticmethod
    def run_name(cfg: TrainConfig) -> str:
        return f"{cfg.model.name.replace('/', '-')}-{cfg.data.name}"

    def setup(self, ckpt: dict | None, verify: bool, log: Callable[[str], None]) -> None:
        cfg, info = self.cfg, self.info
        dev = info.device
        self.data = build_dataset(cfg.data).to(dev)
        self.flip = cfg.data.random_flip if cfg.data.random_flip is not None else self.data.default_flip
        self.num_workers = cfg.data.num_workers
        raw = build_model(cfg, self.data, ckpt, verify)
        self.mc = self.model_config = raw.config
        self.schedule = raw.schedule
        self.num_stages = self.schedule.num_stages
        self.ema = EMA(raw, cfg.ema.decay, cfg.ema.warmup)
        if ckpt is not None:
            load_state_strict(raw, ckpt["model"], source="checkpoint 'model'")
            load_state_strict(self.ema.model, ckpt["ema"], source="checkpoint 'ema'")
        raw.to(dev)
        self.ema.model.to(dev)
        self.mode = parallel_mode(cfg.parallel, info)
        micro = Layout(cfg.batch_size, info.world_size, info.rank, cfg.grad_accum).micro  # (an error if it won't split)
        shares = stage_shares(self.schedule, cfg.flow.shares, cfg.flow.density, cfg.flow.logit_mean,
                              cfg.flow.logit_std)
        may_skip = cfg.flow.time_sampling == "iid" or any(math.floor(micro * s) == 0 for s in shares)
        self.model = parallelize(raw, info, self.mode, cfg.compile, cfg.grad_checkpointing,
                                 find_unused=self.num_stages > 1 and may_skip)
        if self.mode == "fsdp":
            shard_fsdp(self.ema.model, info)
        self.raw = unwrap(self.model)
        self.decoder = None
        self.grid_failed = False

    def loss(self, mb, autocast):
        cfg, dev, f = self.cfg, self.info.device, self.cfg.flow
        seed, step, shard = cfg.seed, mb.step, mb.shard
        x = self.data.encode(mb.x.to(dev, non_blocking=True), generator(seed, step, shard, "encode", dev))
        ts = sample_times(self.schedule, len(x), generator(seed, step, shard, "time"), f.time_sampling, f.shares,
                          f.density, f.logit_mean, f.logit_std, f.stage_margin)
        noise = torch.randn(x.shape, generator=generator(seed, step, shard, "noise", dev), device=dev)
        y = None
        if self.mc.num_classes > 0:
            y = drop_labels(self.raw, mb.y.to(dev), f.label_dropout, generator(seed, step, shard, "labels", dev))
        with autocast():
            out = flow_matching_loss(self.model, x, ts.t.to(dev), ts.stage.to(dev), y, noise)
        sums, counts = out.stage_sums(self.num_stages)
        return out.loss, sums, counts

    def _full_state(self, module: torch.nn.Module) -> dict:
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def weights(self) -> tuple[dict, dict]:
        return self._full_state(self.raw), self._full_state(self.ema.model)

    def export(self, ema_state: dict, folder: Path, target: Path) -> None:
        if self.mode == "fsdp":
            model = PPFlowTransformer(self.mc)
            model.load_state_dict(ema_state)
        else:
            model = self.ema.model
        model.save_pretrained(folder)

    def saved_config(self) -> dict:
        return {"model_config": self.mc.to_dict()}

    def describe(self) -> str:
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.raw.parameters())  # DTensor numel is the global size
        name = self.mc.name or (f"the model of {cfg.model.init}" if cfg.model.init else cfg.model.name)
        return (f"{name} ({n_params / 1e6:.2f}M params, schedule {self.schedule}) on {self.data.describe()}")

    def ema_model(self) -> torch.nn.Module:
        """The model with the EMA weights (what grids sample)."""
        return self.ema.model

    def after_save(self, engine: Engine, done: bool) -> None:
        every = self.cfg.save_every if self.cfg.sample.every is None else self.cfg.sample.every
        if every and (engine.step % every == 0 or done):
            self.sample_grid(engine)

    def sample_grid(self, engine: Engine) -> None:
        """PNG grid from the EMA model (fixed noise and labels, so grids are comparable across steps)."""
        if self.grid_failed or not (self.info.is_main or self.mode == "fsdp"):
            return
        from ..sampling import sample_model
        from ..utils.images import save_grid

        sc, dev = self.cfg.sample, self.info.device
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "grid"))
        noise = torch.randn(sc.count, self.mc.in_channels, *self.mc.input_size, generator=g).to(dev)
        y = (torch.arange(sc.count) % self.mc.num_classes).to(dev) if self.mc.num_classes else None
        cfg_scale = sc.cfg_scale if y is not None else 1.0
        with torch.no_grad(), engine.autocast():
            x = sample_model(self.ema_model(), noise, y, cfg_scales=cfg_scale, method=sc.method, steps=sc.steps)
        if self.mode == "fsdp":
            self.ema.model.reshard()  # FSDP2 keeps the root's parameters gathered after a forward
        x = x.float()
        if self.mc.vae:
            x = self._decode(x, engine)
            if x is None:
                return
        if self.info.is_main:
            target = engine.run_dir / "samples" / f"step-{engine.step:07d}.png"
            try:
                path = save_grid(x, target, scale=max(1, 128 // x.shape[-1]))
            except OSError as e:
                remove_quietly(target)  # no truncated PNG
                err = save_error(e, target, x.numel() * 4, "sample grid")
                raise engine.save_failure(err, target, [], kept=f"the checkpoint of step {engine.step} is saved") from e
            tb = engine.runlog.tb if engine.runlog is not None else None
            if tb is not None:
                import numpy as np
                from PIL import Image

                tb.add_image("samples", np.asarray(Image.open(path).convert("RGB")), engine.step,
                                  dataformats="HWC")

    def _decode(self, z: torch.Tensor, engine: Engine) -> torch.Tensor | None:
        if self.decoder is None:
            enc = getattr(self.data, "encoder", None)
            try:
                if enc is None:
                    from ..data.vae import load_vae

                    enc = load_vae(self.mc.vae, device=self.info.device)
            except (OSError, ImportError) as e:
                engine.log(f"sample grids disabled: cannot load the VAE {self.mc.vae!r} to decode latents ({e})")
                self.grid_failed = True
                return None
            self.decoder = enc
        return self.decoder.decode(z)


def train(config: TrainConfig | dict | None = None, *, resume: str | os.PathLike | None = None,
          overrides: dict | None = None, callbacks: Sequence[Callable[[StepEvent], None]] = (),
          verify: bool = True) -> TrainResult:
    """Train from `config` (a TrainConfig or plain dict), or continue the run in `resume` (a run folder or
    checkpoint file) with `overrides` ({'max_steps': 20}) amending its saved config (engine.run_task)."""
    return run_task(SiTTask, config, resume=resume, overrides=overrides, callbacks=callbacks, verify=verify)
