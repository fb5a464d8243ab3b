"""Speed-adapter distillation: a stage-gated adapter on a frozen SiT/DiT learns the source's own velocity.

`AdaptTask` is a task of the training engine. The student is the source adapted to a PPFlow schedule with a
stage-gated LoRA (models/adapter.py); the teacher is the same weights in the finest stage, where the adapter is
off (no second copy in memory). At a coarse-stage (x_t, t, label) the target is the teacher's full-resolution
velocity -- with `guided`, its CFG-guided velocity, so the conditional coarse stage needs no unconditional pass
when sampling -- optionally mixed with the flow-matching target. x_t comes from data and noise, or (`data_free`)
from the teacher's own ODE trajectories (train/teacher.py). Only the adapter trains, is averaged and is saved:
RUN/ema is an adapter folder that `ppflow.load_model` applies on the base.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..convert import load_model
from ..convert.adaptation import adapt
from ..data import build_dataset
from ..flow import drop_labels
from ..flow.time_sampling import sample_times
from ..io import content_sha256
from ..models.adapter import TARGETS, AdapterConfig, add_stage_lora, is_adapter_param, save_adapter
from ..models.backbone import ModelConfig
from ..models.flops import forward_flops
from ..models.output import OUTPUTS
from ..sampling.guidance import guided_velocity
from .batches import derive_seed, generator
from .config import ConfigError, OptimSection, TrainConfig, _opt
from .ema import EMA
from .engine import TrainResult
from .launch import run_task
from .parallel import parallel_mode, parallelize, unwrap
from .sit import SiTTask
from .teacher import teacher_states

KIND = "adapter"
TEACHERS = ("cache", "forward")
STAGE_SAMPLING = ("schedule", "all")


@dataclass
class AdapterSection:
    """The speed adapter and how it is distilled from its source (model.init)."""

    schedule: str = _opt("ppf2", "PPFlow schedule; its finest stage is the source itself")
    rank: int = _opt(8, "LoRA rank (8: the FID of rank 16 / 32 at half / a quarter of the size, docs/adaptation.md)",
                     min=1)
    alpha: float | None = _opt(None, "LoRA alpha (scale alpha / rank; none: the rank, scale 1 -- as ppflow adapt)")
    targets: list[str] = field(default_factory=lambda: list(TARGETS), metadata={
        "help": f"block layers the LoRA adapts: {', '.join(TARGETS)}"})
    coarse_output: str = _opt("noise_skip", "what coarse stages emit: v | noise_skip | x | snr (models/output.py)",
                              choices=OUTPUTS)
    data_free: bool = _opt(True, "x_t from the teacher's own ODE trajectories (no dataset); false: from data")
    guided: float | None = _opt(None, "distil the teacher's CFG-guided velocity at this scale into the conditional "
                                      "coarse stage (sample it with CFG 1 there: no unconditional pass)")
    mix: float = _opt(0.0, "with data: share of the flow-matching target (x1 - x0) in the target (1: the flow-matching "
                           "target alone, no teacher forward and none counted: a LoRA fine-tune on data)")
    teacher: str = _opt("cache", "data-free targets: cache (the cached teacher velocities at the trajectories' step "
                                 "times: no teacher forward while training) | forward (any coarse t, the teacher "
                                 "evaluated there: one or two full-resolution forwards per sample)",
                           choices=TEACHERS)
    trajectories: int = _opt(256, "data-free: teacher trajectories in the cache", min=1)
    trajectory_steps: int = _opt(8, "data-free: Euler steps of a trajectory over the coarse range", min=1)
    trajectory_cfg: float | None = _opt(None, "data-free: CFG scale of the trajectories (default: guided, else 1)")
    cache: str | None = _opt(None, "data-free: teacher-state cache file (default RUN/teacher-states.safetensors)")
    finish_steps: int = _opt(0, "data-free: Euler steps (same CFG) continuing each cached trajectory from the coarse "
                                "range's end to t = 1; its endpoint, a teacher sample, is the x1 of sample_mix "
                                "(0: none; counted in the cache's compute)", min=0)
    sample_mix: float = _opt(0.0, "data-free: share of each batch trained on the flow-matching target x1 - x0 at "
                                  "x_t = t x1 + (1 - t) x0, with x1 the trajectory's cached teacher sample "
                                  "(finish_steps), x0 fresh noise and t anywhere in the coarse range: synthetic "
                                  "data, no dataset; the rest of the batch distils the cached velocities (measured on SiT: "
                                  "worse than distillation, docs/adaptation.md)")
    time_power: float = _opt(1.0, "data-free, cache: the cached step k (of K) a sample trains is drawn with "
                                  "P(k <= j) = ((j + 1) / (K + 1))^time_power: 1 uniform, 2 favours the states near "
                                  "the switch (where the loss profile is worst; measured on SiT: no gain)", min=0.1)
    rollout: int = _opt(0, "data-free, cache: unroll the student for this many Euler steps of the cached grid (its "
                           "own conditional and unconditional forwards, CFG trajectory_cfg) from a cached state and "
                           "match the teacher's cached states on the way, in velocity units, gradients through the "
                           "whole unroll; plus the conditional and unconditional targets at the start. 0: the "
                           "one-state loss. A step costs 2 x rollout student forwards per sample (measured on SiT at +5%: the fewer "
                           "steps cost more than the unroll gains)", min=0)
    stage_sampling: str = _opt("schedule", "schedule: a state trains the stage its t lies in | all: a random coarse "
                                           "stage at every t (the probe of `ppflow schedule search --score distill`)",
                               choices=STAGE_SAMPLING)


@dataclass
class AdaptConfig(TrainConfig):
    """A speed-adapter distillation run: the run options of `ppflow train` plus the adapter section."""

    adapter: AdapterSection = field(default_factory=AdapterSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=3e-3))  # adapters: 3e-3 (measured)

    def checks(self) -> list[tuple[bool, str]]:
        a = self.adapter
        return [*super().checks(),
                (self.model.init is not None, "model.init is not set: give the SiT/DiT to convert (--from MODEL)"),
                (set(a.targets) <= set(TARGETS), f"adapter.targets {a.targets} must be among {list(TARGETS)}"),
                (a.guided is None or (math.isfinite(a.guided) and a.guided >= 1),
                 f"adapter.guided must be a CFG scale >= 1, got {a.guided}"),
                (0.0 <= a.mix <= 1.0 and (a.mix == 0 or not a.data_free),
                 f"adapter.mix {a.mix} must be in [0, 1], and 0 with data_free (there is no x1 to mix)"),
                (a.guided is None or a.mix < 1,
                 ("adapter.guided distils the teacher's guided velocity, but adapter.mix 1 trains on the data's "
                  "flow-matching target alone (no teacher; `ppflow adapt --data` defaults to it): drop --guided, "
                  "or give --mix below 1")),
                (0.0 <= a.sample_mix <= 1.0 and (a.sample_mix == 0 or (
                    a.data_free and a.teacher == "cache" and a.finish_steps > 0 and a.guided is None
                    and a.stage_sampling == "schedule")),
                 (f"adapter.sample_mix {a.sample_mix} must be in [0, 1]; above 0 it needs the data-free cache with "
                  "teacher samples (adapter.data_free true, adapter.teacher cache, adapter.finish_steps > 0), no "
                  "adapter.guided and stage_sampling schedule")),
                (a.rollout == 0 or (a.data_free and a.teacher == "cache" and a.guided is None and a.sample_mix == 0
                                    and a.stage_sampling == "schedule" and a.rollout <= a.trajectory_steps),
                 (f"adapter.rollout {a.rollout} needs the data-free cache (adapter.data_free true, adapter.teacher "
                  "cache), no adapter.guided or sample_mix, stage_sampling schedule, and at most "
                  f"adapter.trajectory_steps ({a.trajectory_steps}) steps")),
                (a.stage_sampling == "schedule" or (a.data_free and a.teacher == "cache"),
                 ("adapter.stage_sampling all needs the data-free teacher cache (adapter.data_free true, "
                  "adapter.teacher cache)"))]


class AdaptTask(SiTTask):
    """Distil a stage-gated speed adapter from its frozen source."""

    command = "ppflow adapt"
    kind = KIND
    config_cls = AdaptConfig

    run_name = staticmethod(lambda cfg: "adapter")

    def setup(self, ckpt: dict | None, verify: bool, log: Callable[[str], None]) -> None:
        cfg, info, a = self.cfg, self.info, self.cfg.adapter
        dev = info.device
        source = load_model(cfg.model.init, format=cfg.model.init_format, verify=verify)
        if source.schedule.num_stages != 1:
            raise ConfigError(f"{cfg.model.init} has {source.schedule.num_stages} stages: a speed adapter starts from "
                              "a one-stage SiT/DiT")
        self.base_sha256 = content_sha256(source.state_dict())
        try:
            with torch.random.fork_rng(devices=[]):  # LoRA A matrices: random, from the run's seed
                torch.manual_seed(derive_seed(cfg.seed, "init"))
                raw = add_stage_lora(adapt(source, a.schedule, coarse_output=a.coarse_output), a.rank,
                                     a.alpha if a.alpha is not None else float(a.rank), a.targets)
        except ValueError as e:
            raise ConfigError(f"adapter: {e}") from None
        del source
        self.mc = self.model_config = raw.config
        self.schedule, self.num_stages = raw.schedule, raw.schedule.num_stages
        self.fine = self.num_stages - 1
        self.names = [n for n, p in raw.named_parameters() if p.requires_grad]
        if ckpt is not None:
            named = dict(raw.named_parameters())
            with torch.no_grad():
                for n in self.names:
                    named[n].copy_(ckpt["model"][n])
        raw.to(dev)
        self.mode = parallel_mode(cfg.parallel, info)
        if self.mode == "fsdp":
            raise ConfigError("an adapter trains a few parameters on a frozen base: use --parallel ddp (or auto)")
        self.model = parallelize(raw, info, self.mode, cfg.compile, cfg.grad_checkpointing, find_unused=True)
        self.raw = unwrap(self.model)
        named = dict(self.raw.named_parameters())
        self.params = torch.nn.ParameterList([named[n] for n in self.names])
        self.ema = EMA(self.params, cfg.ema.decay, cfg.ema.warmup)
        if ckpt is not None:
            self.ema.load_full([ckpt["ema"][n] for n in self.names])
        self.t_end = self.schedule.stages[self.fine - 1].t_end  # the coarse range is [0, t_end]
        spans = [s.t_end - s.t_start for s in self.schedule.stages[:-1]]
        self.shares = [*(w / sum(spans) for w in spans), 0.0]
        self.decoder, self.grid_failed = None, False
        self.data = self._load_data(log)
        self.flip = (not a.data_free) and (cfg.data.random_flip if cfg.data.random_flip is not None
                                          else self.data.default_flip)
        self.num_workers = 0 if a.data_free else cfg.data.num_workers

    def _load_data(self, log: Callable[[str], None]):
        """The dataset, or (data-free) the teacher-state cache, built by rank 0 first."""
        cfg, a = self.cfg, self.cfg.adapter
        if not a.data_free:
            return build_dataset(cfg.data).to(self.info.device)
        path = a.cache or str(Path(cfg.out) / "teacher-states.safetensors")
        scale = a.trajectory_cfg if a.trajectory_cfg is not None else (a.guided or 1.0)
        return self.rank0_first(lambda: teacher_states(
            self.raw, self.base_sha256, path, a.trajectories, a.trajectory_steps, self.t_end, scale, cfg.seed,
            (self.mc.in_channels, *self.mc.input_size), self.mc.num_classes, self.fine, log,
            finish_steps=a.finish_steps))

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.params), "lr_scale": 1.0}]

    def ema_source(self) -> torch.nn.Module:
        return self.params

    def loss(self, mb, autocast):
        cfg, dev, a = self.cfg, self.info.device, self.cfg.adapter
        seed, step, shard = cfg.seed, mb.step, mb.shard
        if a.data_free and a.teacher == "cache":
            return self._cached_loss(mb, autocast)
        ts = sample_times(self.schedule, len(mb.x), generator(seed, step, shard, "time"), "stratified", self.shares)
        t, stage = ts.t.to(dev), ts.stage.to(dev)
        x1 = noise = None
        if a.data_free:
            states, _, _ = self.data.split(mb.x.to(dev))
            x_t = self.data.state_at(states, t)  # (n, C, H, W) on the teacher's trajectory
        else:
            x1 = self.data.encode(mb.x.to(dev), generator(seed, step, shard, "encode", dev))
            noise = torch.randn(x1.shape, generator=generator(seed, step, shard, "noise", dev), device=dev)
            x_t = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * noise
        y = None
        if self.mc.num_classes > 0:
            y = mb.y.to(dev)
            if a.guided is None:  # the coarse stage keeps its unconditional branch for CFG
                y = drop_labels(self.raw, y, cfg.flow.label_dropout, generator(seed, step, shard, "labels", dev))
        if a.mix == 1:  # the flow-matching target alone: no teacher forward
            target = x1 - noise
        else:
            with autocast():
                target = self.teacher(x_t, t, y).float()
            if a.mix:
                target = (1 - a.mix) * target + a.mix * (x1 - noise)
        return self._student_loss(x_t, t, y, stage, target, autocast)

    def _cached_loss(self, mb, autocast):
        """Targets from the cache: a random step k of each trajectory, its state, and the teacher's velocity there
        (conditional; unconditional for a dropped label; their CFG mix at adapter.guided)."""
        cfg, dev, a = self.cfg, self.info.device, self.cfg.adapter
        states, cond, uncond = self.data.split(mb.x.to(dev))
        n, K = len(states), self.data.steps
        if a.rollout:
            return self._rollout_loss(mb, states, cond, uncond, autocast)
        k = cache_steps(n, K, a.time_power, generator(cfg.seed, mb.step, mb.shard, "time")).to(dev)  # (n,)
        rows = torch.arange(n, device=dev)
        t = self.data.grid.to(dev)[k]  # (n,)
        x_t, c, u = states[rows, k], cond[rows, k], uncond[rows, k]  # (n, C, H, W) each
        y = None
        if self.mc.num_classes > 0:
            y = mb.y.to(dev)
            if a.guided is None:
                y = drop_labels(self.raw, y, cfg.flow.label_dropout,
                                generator(cfg.seed, mb.step, mb.shard, "labels", dev))
                target = torch.where((y == self.raw.null_label).view(-1, 1, 1, 1), u, c)
            else:
                target = u + a.guided * (c - u)
        else:
            target = c
        stage = self.schedule.stage_of(t)
        if a.sample_mix:  # flow matching on the trajectories' endpoints (teacher samples) for a share of the batch
            x1 = self.data.samples_of(mb.x.to(dev))  # (n, C, H, W)
            x0 = torch.randn(x1.shape, generator=generator(cfg.seed, mb.step, mb.shard, "noise", dev), device=dev)
            tf = sample_times(self.schedule, n, generator(cfg.seed, mb.step, mb.shard, "encode"), "stratified",
                              self.shares).t.to(dev)  # (n,) anywhere in the coarse range
            tf = tf[torch.randperm(n, generator=generator(cfg.seed, mb.step, mb.shard, "stage")).to(dev)]
            pick = torch.rand(n, generator=generator(cfg.seed, mb.step, mb.shard, "flip")).to(dev) < a.sample_mix
            tv = tf.view(-1, 1, 1, 1)
            x_t = torch.where(pick.view(-1, 1, 1, 1), tv * x1 + (1 - tv) * x0, x_t)
            target = torch.where(pick.view(-1, 1, 1, 1), x1 - x0, target)
            t = torch.where(pick, tf, t)
            stage = self.schedule.stage_of(t)
        if a.stage_sampling == "all":  # a schedule-search probe: every coarse stage at every cached t
            stage = torch.randint(0, self.fine, (n,), generator=generator(cfg.seed, mb.step, mb.shard, "stage")).to(dev)
        return self._student_loss(x_t, t, y, stage, target, autocast)

    def _rollout_loss(self, mb, states, cond, uncond, autocast):
        """The student unrolled for adapter.rollout Euler steps of the cache's grid from a random cached state k0,
        CFG-guided at the trajectories' scale like the teacher's trajectory: per sample, the mean over steps j of
        |x_hat_{k0+j+1} - x_{k0+j+1}|^2 / ((j + 1) dt)^2 (the first is the guided velocity error), plus the mean of
        the conditional and unconditional velocity errors at x_{k0}."""
        cfg, dev, a = self.cfg, self.info.device, self.cfg.adapter
        n, K, m = len(states), self.data.steps, a.rollout
        scale = a.trajectory_cfg if a.trajectory_cfg is not None else 1.0
        grid = self.data.grid.to(dev)
        rows = torch.arange(n, device=dev)
        k0 = torch.randint(0, K - m + 1, (n,), generator=generator(cfg.seed, mb.step, mb.shard, "time")).to(dev)
        y = mb.y.to(dev) if self.mc.num_classes > 0 else None
        both = None if y is None else torch.cat([y, torch.full_like(y, self.raw.null_label)])
        x, local, roll = states[rows, k0], 0.0, 0.0
        stage0 = self.schedule.stage_of(grid[k0])
        for j in range(m):
            k = k0 + j
            t, stage = grid[k], self.schedule.stage_of(grid[k])
            with autocast():
                if y is None:
                    c = u = self.model(x, t, None, stage).float()
                else:
                    out = self.model(torch.cat([x, x]), torch.cat([t, t]), both, torch.cat([stage, stage])).float()
                    c, u = out[:n], out[n:]  # (n, C, H, W) each
            if j == 0:
                local = ((c - cond[rows, k]).square().mean(dim=(1, 2, 3))
                         + (u - uncond[rows, k]).square().mean(dim=(1, 2, 3))) / 2  # (n,)
            dt = (grid[k + 1] - grid[k]).view(-1, 1, 1, 1)
            x = x + dt * (u + scale * (c - u))
            roll = roll + ((x - states[rows, k + 1]) / ((j + 1) * dt)).square().mean(dim=(1, 2, 3)) / m
        per_sample = local + roll  # (n,)
        sums = torch.zeros(self.num_stages, dtype=torch.float64, device=dev).index_add_(0, stage0,
                                                                                        per_sample.detach().double())
        counts = torch.bincount(stage0, minlength=self.num_stages)
        return per_sample.mean(), sums.tolist(), counts.tolist()

    def _student_loss(self, x_t, t, y, stage, target, autocast):
        with autocast():
            pred = self.model(x_t, t, y, stage)  # (n, C, H, W)
        per_sample = (pred.float() - target.float()).square().mean(dim=(1, 2, 3))  # (n,)
        sums = torch.zeros(self.num_stages, dtype=torch.float64, device=x_t.device).index_add_(0, stage, per_sample.double())
        counts = torch.bincount(stage, minlength=self.num_stages)
        return per_sample.mean(), sums.tolist(), counts.tolist()

    @torch.no_grad()
    def teacher(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The target velocity: the source's (the same weights in the finest stage, adapter off), CFG-guided at
        `adapter.guided` for labelled samples when set."""
        return guided_velocity(self.raw, x_t, t, y, self.cfg.adapter.guided or 1.0, stage=self.fine)

    def weights(self) -> tuple[dict, dict]:
        def full(ts):
            return [t.detach().to("cpu", copy=True) for t in ts]

        return dict(zip(self.names, full(self.params))), dict(zip(self.names, full(self.ema.model)))

    def adapter_config(self) -> AdapterConfig:
        a = self.cfg.adapter
        init = self.cfg.model.init
        base = str(Path(init).resolve()) if Path(init).exists() else init
        alpha = a.alpha if a.alpha is not None else float(a.rank)
        return AdapterConfig(schedule=self.schedule.to_string(), rank=a.rank, alpha=alpha, targets=list(a.targets),
                             coarse_output=a.coarse_output, base=base, base_sha256=self.base_sha256,
                             method="lora-distill" + ("-data-free" if a.data_free else ""), guided=a.guided)

    def export(self, ema_state: dict, folder: Path, target: Path) -> None:
        save_adapter(self.raw, self.adapter_config(), folder, state=ema_state)

    def ema_model(self) -> torch.nn.Module:
        model = copy.deepcopy(self.raw)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, e in zip(self.names, self.ema.model):
                named[n].copy_(e)
        return model.eval()

    def saved_config(self) -> dict:
        return {}

    def describe(self) -> str:
        n = sum(p.numel() for p in self.params)
        base = sum(p.numel() for k, p in self.raw.named_parameters() if not is_adapter_param(k, self.num_stages))
        a = self.cfg.adapter
        how = ("distilled data-free" if a.data_free else
               f"{'trained by flow matching' if a.mix >= 1 else 'distilled'} on {self.data.describe()}")
        return (f"speed adapter for {self.cfg.model.init} ({n / 1e6:.3f}M parameters, {100 * n / base:.1f}% of the "
                f"base; schedule {self.schedule}, LoRA rank {a.rank}), {how}"
                + (f", guided {a.guided}" if a.guided else ""))


def cache_steps(n: int, steps: int, power: float, generator: torch.Generator) -> torch.Tensor:
    """n cached step indices k in [0, steps] with P(k <= j) = ((j + 1) / (steps + 1))^power (1: uniform)."""
    if power == 1:
        return torch.randint(0, steps + 1, (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return ((steps + 1) * u ** (1 / power)).long().clamp(0, steps)  # the inverse CDF


def conversion_flops(config: ModelConfig, a: AdapterSection, batch: int, steps: int) -> dict:
    """Training FLOPs of a conversion (matrix products; backward = 2x forward as in models.flops.train_flops):
    per step and sample, the student's coarse forward and backward (2 x rollout of them with a rollout), plus the teacher's full-resolution forward
    (two with `guided`) unless the targets come from the cache or are the flow-matching target alone (mix 1); once, a data-free cache's trajectories (a
    conditional and an unconditional forward per state, and per finish step after the first)."""
    sched = config.get_schedule()
    fine = forward_flops(config, sched.num_stages - 1).total
    spans = [s.t_end - s.t_start for s in sched.stages[:-1]]
    coarse = sum(w * forward_flops(config, s).total for s, w in enumerate(spans)) / sum(spans)
    no_teacher = (a.data_free and a.teacher == "cache") or (not a.data_free and a.mix == 1)
    teacher = 0 if no_teacher else fine * (2 if a.guided not in (None, 1.0) else 1)
    step = batch * (teacher + 3 * coarse * (2 * a.rollout if a.rollout else 1))
    evaluations = a.trajectory_steps + 1 + max(a.finish_steps - 1, 0)  # per trajectory (the first finish step reuses)
    cache = a.trajectories * evaluations * fine * (2 if config.num_classes else 1) if a.data_free else 0
    return {"step": step, "cache": cache, "total": steps * step + cache, "source_step_per_sample": 3 * fine}


def adapt_train(config: AdaptConfig | dict | None = None, *, resume: str | os.PathLike | None = None,
                overrides: dict | None = None, verify: bool = True) -> TrainResult:
    """Distil a speed adapter from `config.model.init` (or continue the run in `resume`)."""
    return run_task(AdaptTask, config, resume=resume, overrides=overrides, verify=verify)
