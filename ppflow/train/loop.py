"""The training loop: `train(config) -> TrainResult`, single process or under torchrun.

Run folder layout (RUN_DIR = config.out):
    .lock                       "pid host" of the run writing the folder (flock held by rank 0 while it runs)
    config.yaml                 resolved config (+ model_config)
    metrics.csv                 step, loss, loss_stage<k>..., grad_norm, lr, steps_per_sec, samples_per_sec, elapsed_s
    checkpoints/last.pt         latest training checkpoint (see ppflow.train.checkpoint for its keys)
    checkpoints/step-NNNNNNN.pt kept copies (keep_every)
    ema/                        latest EMA weights as a save_pretrained folder (ppflow.load_model reads it)
    ema-NNNNNNN/                kept EMA folders (keep_every)
    samples/step-NNNNNNN.png    sample grids from the EMA model
    tb/                         TensorBoard scalars
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..convert.native import remove_quietly, save_error
from ..data import TrainData, build_dataset
from ..flow import drop_labels, flow_matching_loss, sample_times
from ..models.backbone import ModelConfig, PPFlowTransformer
from ..models.registry import create_config
from ..models.schedule import ScheduleError
from . import checkpoint as ckpt_io
from .batches import BatchPlan, DataPosition, Layout, derive_seed, generator, micro_batches
from .config import ConfigError, TrainConfig, apply_overrides, config_from_dict, config_to_dict, save_config, validate
from .ema import EMA
from .lock import RunLock, RunLockedError, lock_run
from .parallel import (
    DistInfo,
    all_reduce,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    parallel_mode,
    parallelize,
    unwrap,
)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf; training stopped before applying that step."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived while `train()` was starting up: it stopped before its first step.

    A KeyboardInterrupt, so callers that stop on Ctrl-C stop on it too; `signum` is the signal.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """SIGINT and SIGTERM turned into a stop request for the duration of one `train()` call.

    `install()` saves the current handlers and `restore()` puts them back (train() calls it on every exit
    path, so a later signal reaches whatever handled it before: a SIGTERM after train() returned still
    terminates the process). The first signal is recorded; the handler of that signal then reverts to
    the default, so sending it again aborts at once. Outside the main thread nothing is installed.
    """

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.signum: int | None = None
        self.phase = "start-up"  # or "training"
        self.log = log
        self._old: dict[int, object] = {}

    def install(self) -> bool:
        """Take over SIGINT/SIGTERM (False when already installed or not in the main thread)."""
        if self._old:
            return False
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals keep their handlers
            self.restore()
            return False
        return True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send it again"
        if self.phase == "training":
            self.log(f"received {_signal_name(signum)}: saving a checkpoint after this step ({again} to abort)")
        else:
            self.log(f"received {_signal_name(signum)} during start-up: stopping before the first step ({again} "
                     "to abort)")

    def check(self, run_dir: Path | str | None = None) -> None:
        """Raise TrainingInterrupted if a signal arrived during start-up."""
        if self.signum is not None:
            where = f" on {run_dir}" if run_dir is not None else ""
            raise TrainingInterrupted(f"stopped by {_signal_name(self.signum)} during start-up{where}, before the "
                                      "first step: nothing was trained and no checkpoint was written by this call",
                                      self.signum)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run left behind."""

    run_dir: Path
    step: int  # optimizer steps done
    loss: float | None  # mean loss of the last logged window
    checkpoint: Path | None  # RUN_DIR/checkpoints/last.pt
    ema_dir: Path | None  # RUN_DIR/ema
    steps_per_sec: float  # training steps per second in this session (saving/sampling excluded)
    interrupted: bool  # stopped by Ctrl-C / SIGTERM (a checkpoint and a metrics row of the current step were written)
    metrics: Path  # RUN_DIR/metrics.csv
    model_config: ModelConfig
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT / SIGTERM), if one did


@dataclass
class StepEvent:
    """Passed to callbacks after every optimizer step."""

    step: int
    loss: float  # this process's mean loss of the step
    lr: float
    model: torch.nn.Module  # unwrapped training model
    ema: torch.nn.Module
    run_dir: Path


# ---------------------------------------------------------------------------- model config
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


# ---------------------------------------------------------------------------- logging
class Window:
    """Running sums between two log rows (per-sample losses by stage, grad norms, steps)."""

    def __init__(self, num_stages: int) -> None:
        self.stage_sum = [0.0] * num_stages
        self.stage_n = [0] * num_stages
        self.grad_sum = 0.0
        self.steps = 0

    def add(self, sums: list[float], counts: list[int]) -> None:
        self.stage_sum = [a + b for a, b in zip(self.stage_sum, sums)]
        self.stage_n = [a + b for a, b in zip(self.stage_n, counts)]

    def pack(self) -> list[float]:
        return [*self.stage_sum, *map(float, self.stage_n)]

    def unpack(self, values: list[float]) -> None:
        k = len(self.stage_sum)
        self.stage_sum, self.stage_n = list(values[:k]), [round(v) for v in values[k:]]

    def state(self) -> dict:
        return {"stage_sum": list(self.stage_sum), "stage_n": list(self.stage_n), "grad_sum": self.grad_sum,
                "steps": self.steps}

    def load(self, state: dict) -> None:
        self.stage_sum, self.stage_n = list(state["stage_sum"]), list(state["stage_n"])
        self.grad_sum, self.steps = state["grad_sum"], state["steps"]


class MetricsFile:
    """metrics.csv: one row per logged step; rows after a resumed step are dropped first.

    A stop (Ctrl-C, SIGTERM) writes a row for the steps since the last one even off the --log-every grid, and
    keeps that window in the checkpoint; a run resumed from it drops that row (`drop_last_partial`) and logs
    the full window at the next grid step, so its rows equal those of a run that was never stopped.
    """

    def __init__(self, path: Path, num_stages: int, start_step: int, copy_from: Path | None = None,
                 drop_last_partial: bool = False) -> None:
        self.path = path
        self.fields = ["step", "loss", *[f"loss_stage{k}" for k in range(num_stages)], "grad_norm", "lr",
                       "steps_per_sec", "samples_per_sec", "elapsed_s"]
        rows = []
        src = copy_from if copy_from is not None and copy_from.exists() else path
        if src.exists():
            with open(src, newline="") as f:
                rows = [r for r in csv.DictReader(f) if _row_step(r) is not None and _row_step(r) <= start_step]
        if drop_last_partial and rows and _row_step(rows[-1]) == start_step:
            rows.pop()
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, path)
        except OSError as e:
            remove_quietly(tmp)
            raise save_error(e, path, 200 * (len(rows) + 1), "metrics file") from e

    def write(self, row: dict) -> None:
        """Append one row; a failed write (a full disk) truncates the file back to its previous rows."""
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            raise save_error(e, self.path, 200, "metrics row") from e


def _row_step(row: dict) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):  # a row cut short (e.g. by a crash mid-write)
        return None


def _tensorboard(run_dir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step else None)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Holds one run's state; `run()` trains until max_steps, a stop signal, or an error."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, ckpt: dict | None, run_dir: Path,
                 callbacks: Sequence[Callable[[StepEvent], None]] = (), copy_metrics: Path | None = None,
                 verify: bool = True, stops: StopSignals | None = None) -> None:
        self.cfg, self.info, self.run_dir, self.callbacks = cfg, info, run_dir, list(callbacks)
        self.stops = stops if stops is not None else StopSignals(self.log)
        dev = info.device
        self.data = build_dataset(cfg.data).to(dev)
        self.flip = cfg.data.random_flip if cfg.data.random_flip is not None else self.data.default_flip
        raw = build_model(cfg, self.data, ckpt, verify)
        self.mc = raw.config
        self.schedule = raw.schedule
        self.ema = EMA(raw, cfg.ema.decay, cfg.ema.warmup)
        if ckpt is not None:
            from ..convert.native import load_state_strict

            load_state_strict(raw, ckpt["model"], source="checkpoint 'model'")
            load_state_strict(self.ema.model, ckpt["ema"], source="checkpoint 'ema'")
        raw.to(dev)
        self.ema.model.to(dev)

        self.layout = Layout(cfg.batch_size, info.world_size, info.rank, cfg.grad_accum)
        self.mode = parallel_mode(cfg.parallel, info)
        from ..flow.time_sampling import stage_shares

        shares = stage_shares(self.schedule, cfg.flow.shares, cfg.flow.density, cfg.flow.logit_mean,
                              cfg.flow.logit_std)
        may_skip = cfg.flow.time_sampling == "iid" or any(math.floor(self.layout.micro * s) == 0 for s in shares)
        self.model = parallelize(raw, info, self.mode, cfg.compile, cfg.grad_checkpointing,
                                 find_unused=self.schedule.num_stages > 1 and may_skip)
        if self.mode == "fsdp":
            from .parallel import shard_fsdp

            shard_fsdp(self.ema.model, info)
        self.raw = unwrap(self.model)
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        o = cfg.optim
        self.opt = o.adamw(self.params)
        self.step = 0
        self.pos = DataPosition()
        self.window = Window(self.schedule.num_stages)
        self.elapsed = 0.0
        if ckpt is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.raw, self.opt, ckpt["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
            self.step = int(ckpt["step"])
            self.pos = DataPosition(int(ckpt["data"]["epoch"]), int(ckpt["data"]["offset"]))
            self.elapsed = float(ckpt.get("elapsed", 0.0))
            if info.is_main:
                self.window.load(ckpt["log"])
            ckpt_io.set_rng_state(ckpt["rng"])
        self.plan = BatchPlan(len(self.data), cfg.batch_size, cfg.seed)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
        self.metrics = None
        self.tb = None
        if info.is_main:
            partial = ckpt is not None and bool(ckpt.get("log", {}).get("steps"))
            self.metrics = MetricsFile(run_dir / "metrics.csv", self.schedule.num_stages, self.step, copy_metrics,
                                       drop_last_partial=partial)
            if cfg.tensorboard:
                self.tb = _tensorboard(run_dir, self.step)
        if ckpt is not None:
            self._note_layout_change(ckpt)
        self.last_checkpoint: Path | None = None
        self._saved_step = self.step
        self._updating = False
        self._stop = False
        self.last_loss: float | None = None
        self.decoder = None
        self.grid_failed = False

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if self.info.is_main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)

    def lr_at(self, step: int) -> float:
        return self.cfg.optim.lr_at(step)

    def autocast(self):
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def stop_requested(self) -> bool:
        return self.stops.requested or self._stop

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self._stop = bool(value)

    def _note_layout_change(self, ckpt: dict) -> None:
        """One line when the resumed run cuts its batches into another number of shards than the checkpoint's run
        (world size x accumulation): the weights, optimizer and data position carry over exactly, the trajectory
        does not (batches.py: every shard draws its own noise and times)."""
        old_world = int(ckpt.get("world_size", 1))
        old_accum = int(ckpt.get("config", {}).get("grad_accum", self.cfg.grad_accum))
        old, new = old_world * old_accum, self.info.world_size * self.cfg.grad_accum
        if old == new:
            return
        same = f"--grad-accum {old // self.info.world_size}" if old % self.info.world_size == 0 else None
        self.log(f"note: this run was written by {old_world} process(es) x {old_accum} accumulation step(s) and "
                 f"resumes on {self.info.world_size} x {self.cfg.grad_accum}: each step's batch is now cut into {new} "
                 f"micro-batches instead of {old}, with other noise and times, so the losses will differ from the "
                 f"original run's from step {self.step + 1} on (weights, optimizer and data position carry over)"
                 + (f"; to follow the original trajectory resume with {same}" if same else ""))

    # ------------------------------------------------------------------ one step
    def train_step(self, stream) -> float:
        cfg, dev = self.cfg, self.info.device
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        local_loss = 0.0
        step_sums, step_counts = [0.0] * self.schedule.num_stages, [0] * self.schedule.num_stages
        for m in range(cfg.grad_accum):
            mb, pos = next(stream)
            assert mb.step == self.step, "data stream out of step"
            seed, step, shard = cfg.seed, mb.step, mb.shard
            x = self.data.encode(mb.x.to(dev, non_blocking=True), generator(seed, step, shard, "encode", dev))
            ts = sample_times(self.schedule, len(x), generator(seed, step, shard, "time"), cfg.flow.time_sampling,
                              cfg.flow.shares, cfg.flow.density, cfg.flow.logit_mean, cfg.flow.logit_std,
                              cfg.flow.stage_margin)
            noise = torch.randn(x.shape, generator=generator(seed, step, shard, "noise", dev), device=dev)
            y = None
            if self.mc.num_classes > 0:
                y = drop_labels(self.raw, mb.y.to(dev), cfg.flow.label_dropout,
                                generator(seed, step, shard, "labels", dev))
            sync = self.mode != "ddp" or m == cfg.grad_accum - 1
            with (contextlib.nullcontext() if sync else self.model.no_sync()):
                with self.autocast():
                    out = flow_matching_loss(self.model, x, ts.t.to(dev), ts.stage.to(dev), y, noise)
                (out.loss / cfg.grad_accum).backward()
            sums, counts = out.stage_sums(self.schedule.num_stages)
            step_sums = [a + b for a, b in zip(step_sums, sums)]
            step_counts = [a + b for a, b in zip(step_counts, counts)]
            local_loss += sum(sums) / max(1, sum(counts)) / cfg.grad_accum
        for p in self.params:  # stages absent from this batch still take an (all-zero-gradient) AdamW step
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not (math.isfinite(norm) and math.isfinite(local_loss)):
            self.opt.zero_grad(set_to_none=True)
            last = f"{self.last_checkpoint} (step {self._saved_step})" if self.last_checkpoint else "none yet"
            raise NonFiniteLossError(
                f"loss became non-finite at step {self.step + 1} (loss {local_loss:.4g}, gradient norm {norm:.4g}); "
                f"training stopped before applying it. Last good checkpoint: {last}. Lower --optim.lr, keep "
                "--optim.grad-clip, add --optim.warmup-steps, or check the data for NaN/inf values"
            )
        self._updating = True
        self.window.add(step_sums, step_counts)
        self.window.grad_sum += norm
        self.window.steps += 1
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.raw, self.step)
        self.step += 1
        self.pos = pos
        self._updating = False
        return local_loss

    # ------------------------------------------------------------------ logging / saving
    def write_log(self, steps_per_sec: float, keep_window: bool = False) -> None:
        """One metrics.csv / TensorBoard row for the open window; `keep_window` (a stop off the log grid) keeps
        the window open, so it goes into the checkpoint and a resumed run logs it whole at the next grid step."""
        vals = all_reduce(self.window.pack(), self.info)
        k = self.schedule.num_stages
        sums, ns = vals[:k], vals[k:]
        steps = max(1, self.window.steps)
        loss = sum(sums) / max(1.0, sum(ns))
        self.last_loss = loss
        if self.info.is_main:
            row = {"step": self.step, "loss": repr(loss), "grad_norm": repr(self.window.grad_sum / steps),
                   "lr": repr(self.lr_at(self.step - 1)), "steps_per_sec": f"{steps_per_sec:.4f}",
                   "samples_per_sec": f"{steps_per_sec * self.cfg.batch_size:.2f}", "elapsed_s": f"{self.elapsed:.2f}"}
            for s in range(k):
                row[f"loss_stage{s}"] = repr(sums[s] / ns[s]) if ns[s] else ""
            try:
                self.metrics.write(row)
            except OSError as e:  # a full disk: the file keeps its earlier rows
                raise self._save_failure(e, self.metrics.path, []) from e
            if self.tb is not None:
                for key in ("loss", "grad_norm", "lr", "steps_per_sec"):
                    self.tb.add_scalar(f"train/{key}", float(row[key]), self.step)
                for s in range(k):
                    if ns[s]:
                        self.tb.add_scalar(f"train/loss_stage{s}", sums[s] / ns[s], self.step)
        if not keep_window:
            self.window = Window(k)

    def _full_state(self, module: torch.nn.Module) -> dict:
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def save(self) -> Path:
        """Write checkpoints/last.pt and ema/ (all processes call this; rank 0 writes)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        model_sd = self._full_state(self.raw)
        ema_sd = self._full_state(self.ema.model)
        opt_sd = get_optimizer_state_dict(self.raw, self.opt,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        self.window.unpack(all_reduce(self.window.pack(), self.info))  # rank 0 keeps the whole window
        if not self.info.is_main:
            self.window.unpack([0.0] * len(self.window.pack()))
        path = self.run_dir / ckpt_io.DIR / ckpt_io.LAST
        failure = None
        if self.info.is_main:
            state = {
                "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
                "config": {**config_to_dict(self.cfg), "model_config": self.mc.to_dict()},
                "model": model_sd, "ema": ema_sd, "optimizer": opt_sd, "step": self.step,
                "data": {"epoch": self.pos.epoch, "offset": self.pos.offset},
                "rng": ckpt_io.rng_state(), "log": self.window.state(), "world_size": self.info.world_size,
                "elapsed": self.elapsed,
            }
            written = []
            try:
                ckpt_io.save_checkpoint(state, path)
                written.append(path)
                keep = self.cfg.keep_every and self.step % self.cfg.keep_every == 0
                if keep:
                    ckpt_io.save_checkpoint(state, path.with_name(f"step-{self.step:07d}.pt"))
                ema_model = self.ema.model if self.mode != "fsdp" else self._cpu_model(ema_sd)
                _export(ema_model, self.run_dir / "ema")
                if keep:
                    _export(ema_model, self.run_dir / f"ema-{self.step:07d}")
            except OSError as e:  # a full disk above all: the temporary files are gone, the old files stay
                failure = self._save_failure(e, path, written)
        failure = broadcast_object(failure, self.info) if self.info.distributed else failure
        if failure is not None:
            raise failure
        barrier(self.info)
        self.last_checkpoint, self._saved_step = path, self.step
        return path

    def _save_failure(self, err: OSError, path: Path, written: list[Path], kept: str | None = None) -> OSError:
        """`err` (one line from save_error) plus what the run folder holds now and how to go on."""
        resumable = bool(written) or kept is not None or self.last_checkpoint is not None
        if kept is None and written:
            kept = (f"{path} holds step {self.step} (written before the failure); {self.run_dir / 'ema'} may hold "
                    "an older step until the run is resumed")
        elif kept is None and self.last_checkpoint is not None:
            kept = f"nothing was replaced: the last good checkpoint is {self.last_checkpoint} (step {self._saved_step})"
        elif kept is None:
            kept = "no checkpoint of this run exists yet"
        fix = (f"Free space (or move {self.run_dir} to a larger disk) and continue with ppflow train --resume "
               f"{self.run_dir}") if resumable else "Free space and start again"
        e = type(err)(f"{err}; training stopped at step {self.step}: {kept}. {fix}")
        e.errno = err.errno
        return e

    def _cpu_model(self, state: dict) -> PPFlowTransformer:
        m = PPFlowTransformer(self.mc)
        m.load_state_dict(state)
        return m

    def sample_grid(self) -> None:
        """PNG grid from the EMA model (fixed noise and labels, so grids are comparable across steps)."""
        if self.grid_failed or not (self.info.is_main or self.mode == "fsdp"):
            return
        try:
            from ..sampling import sample_model
        except ImportError:  # pragma: no cover - sampling is part of the package
            self.grid_failed = True
            return
        from ..utils.images import save_grid

        sc, dev = self.cfg.sample, self.info.device
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "grid"))
        noise = torch.randn(sc.count, self.mc.in_channels, *self.mc.input_size, generator=g).to(dev)
        y = (torch.arange(sc.count) % self.mc.num_classes).to(dev) if self.mc.num_classes else None
        cfg_scale = sc.cfg_scale if y is not None else 1.0
        with torch.no_grad(), self.autocast():
            x = sample_model(self.ema.model, noise, y, cfg_scales=cfg_scale, method=sc.method, steps=sc.steps)
        if self.mode == "fsdp":
            self.ema.model.reshard()  # FSDP2 keeps the root's parameters gathered after a forward
        x = x.float()
        if self.mc.vae:
            x = self._decode(x)
            if x is None:
                return
        if self.info.is_main:
            target = self.run_dir / "samples" / f"step-{self.step:07d}.png"
            try:
                path = save_grid(x, target, scale=max(1, 128 // x.shape[-1]))
            except OSError as e:
                remove_quietly(target)  # no truncated PNG
                err = save_error(e, target, x.numel() * 4, "sample grid")
                raise self._save_failure(err, target, [], kept=f"the checkpoint of step {self.step} is saved") from e
            if self.tb is not None:
                import numpy as np
                from PIL import Image

                self.tb.add_image("samples", np.asarray(Image.open(path).convert("RGB")), self.step,
                                  dataformats="HWC")

    def _decode(self, z: torch.Tensor) -> torch.Tensor | None:
        if self.decoder is None:
            enc = getattr(self.data, "encoder", None)
            try:
                if enc is None:
                    from ..data.vae import load_vae

                    enc = load_vae(self.mc.vae, device=self.info.device)
            except (OSError, ImportError) as e:
                self.log(f"sample grids disabled: cannot load the VAE {self.mc.vae!r} to decode latents ({e})")
                self.grid_failed = True
                return None
            self.decoder = enc
        return self.decoder.decode(z)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        sample_every = cfg.save_every if cfg.sample.every is None else cfg.sample.every
        n_params = sum(p.numel() for p in self.raw.parameters())  # DTensor numel is the global size
        dev = f"{info.device.type}, {'bf16 autocast' if self.bf16 else 'fp32'}"
        name = self.mc.name or (f"the model of {cfg.model.init}" if cfg.model.init else cfg.model.name)
        self.log(f"ppflow train: {name} ({n_params / 1e6:.2f}M params, schedule "
                 f"{self.schedule}) on {self.data.describe()}; global batch {cfg.batch_size} = {info.world_size} "
                 f"process(es) x {cfg.grad_accum} x {self.layout.micro} ({dev}, {self.mode}); run dir {self.run_dir}")
        if self.step >= cfg.max_steps:
            self.log(f"already at step {self.step} >= max_steps {cfg.max_steps}; nothing to do (raise --max-steps)")
        from tqdm import tqdm

        own_signals = self.stops.install()  # train() installed them already; a Trainer run on its own does it here
        bar = None
        start_step, session_time, window_time = self.step, 0.0, 0.0
        interrupted = False
        self._updating = False
        try:
            self.stops.check(self.run_dir)  # a signal while the trainer was built: stop before the first step
            self.stops.phase = "training"
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       disable=not (info.is_main and cfg.progress), file=sys.stdout)
            stream = micro_batches(self.data, self.plan, self.layout, cfg.seed, self.flip, self.step, self.pos,
                                   cfg.data.num_workers)
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                try:
                    loss = self.train_step(stream)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    for cb in self.callbacks:
                        cb(StepEvent(self.step, loss, self.lr_at(self.step - 1), self.raw, self.ema.model,
                                     self.run_dir))
                except KeyboardInterrupt:
                    if self._updating or info.distributed:
                        raise  # weights may be half-updated: keep the last checkpoint
                    self.opt.zero_grad(set_to_none=True)  # drop the unfinished step
                    self.stop_requested = True
                    self.log(f"interrupted: saving a checkpoint of step {self.step}")
                dt = time.perf_counter() - t0
                session_time += dt
                window_time += dt
                self.elapsed += dt
                stop = self.stop_requested
                if info.distributed:
                    stop = bool(all_reduce([float(stop)], info, op="max")[0])
                done = self.step >= cfg.max_steps
                on_grid = self.step % cfg.log_every == 0 or done
                # a stop off the log grid writes its row too, and keeps the window open in the checkpoint so a
                # resumed run logs the same rows as one never stopped (MetricsFile drops this row on resume)
                if self.window.steps and (on_grid or stop):
                    self.write_log(self.window.steps / window_time if window_time > 0 else 0.0,
                                   keep_window=not on_grid)
                    window_time = 0.0
                if self.step % cfg.save_every == 0 or done or stop:
                    self.save()
                if sample_every and (self.step % sample_every == 0 or done) and not stop:
                    self.sample_grid()
                if stop:
                    interrupted = True
                    break
            # a signal during the last save or grid: the run is complete, but the caller must hear of the stop
            interrupted = interrupted or self.stop_requested
        finally:
            if bar is not None:
                bar.close()
            if own_signals:
                self.stops.restore()
            if self.tb is not None:
                self.tb.flush()
                self.tb.close()
        sps = (self.step - start_step) / session_time if session_time > 0 else 0.0
        ckpt = self.last_checkpoint
        ema_dir = self.run_dir / "ema" if ckpt is not None else None
        loss_txt = f"{self.last_loss:.4f}" if self.last_loss is not None else "n/a"
        how = "done"
        if interrupted:
            how = f"stopped by {_signal_name(self.stops.signum)}" if self.stops.signum is not None else "interrupted"
        self.log(f"{how}: step {self.step}/{cfg.max_steps}, loss {loss_txt}, "
                 f"{sps:.2f} steps/s ({sps * cfg.batch_size:.1f} samples/s), {session_time:.1f} s training; "
                 f"checkpoint {ckpt}, EMA model {ema_dir}")
        return TrainResult(self.run_dir, self.step, self.last_loss, ckpt, ema_dir, sps, interrupted,
                           self.run_dir / "metrics.csv", self.mc, self.stops.signum)


def _export(model: PPFlowTransformer, target: Path) -> None:
    """save_pretrained into `target`, replacing an existing folder (old one removed only after the new is there)."""
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        model.save_pretrained(tmp)
    except OSError:
        remove_quietly(tmp)  # no half-written .NAME.tmp folder stays behind
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------------------- entry point
def _default_out(cfg: TrainConfig) -> str:
    name = cfg.model.name.replace("/", "-")
    return str(Path("runs") / f"{name}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def train(
    config: TrainConfig | dict | None = None,
    *,
    resume: str | os.PathLike | None = None,
    overrides: dict | None = None,
    callbacks: Sequence[Callable[[StepEvent], None]] = (),
    verify: bool = True,
) -> TrainResult:
    """Train from `config` (a TrainConfig or plain dict), or continue the run in `resume` (a run folder or
    checkpoint file) with `overrides` ({'max_steps': 20}) amending its saved config.

    Works the same under torchrun (DDP / FSDP); only rank 0 writes files, holding RUN_DIR/.lock for the
    whole run (a second writer gets RunLockedError). `verify=False` loads a resumed checkpoint or
    `model.init` weights whose SHA-256 does not match (a deliberate edit).

    SIGINT / SIGTERM: during training, the current step finishes, its metrics row and a checkpoint are
    written and the result says `interrupted`; during start-up, TrainingInterrupted (a KeyboardInterrupt)
    is raised before the first step. The previous signal handlers are back when train() returns or raises.
    A failed save (a full disk: DiskFullError) stops the run with a one-line OSError; the previous
    checkpoint stays and no temporary file is left.
    """
    stops = StopSignals()  # SIGINT/SIGTERM from here on: a stop request (start-up: stop before the first step)
    stops.install()
    try:
        return _train(config, resume, overrides, callbacks, verify, stops)
    finally:
        stops.restore()  # on every exit path: a later signal reaches the handler it reached before


def _train(config, resume, overrides, callbacks, verify, stops: StopSignals) -> TrainResult:
    ckpt, copy_metrics, loaded = None, None, None
    if resume is not None:
        if config is not None:
            raise ConfigError("pass either a config or resume=RUN_DIR (whose saved config is used), not both")
        path = ckpt_io.find_checkpoint(resume)
        loaded = _file_id(path)
        ckpt = ckpt_io.load_checkpoint(path, verify=verify)
        cfg = config_from_dict(ckpt["config"])
        run_dir = path.parent.parent if path.parent.name == ckpt_io.DIR else Path(cfg.out)
        given_out = (overrides or {}).get("out")
        cfg = apply_overrides(cfg, overrides or {})
        if given_out is None:
            cfg.out = str(run_dir)
        elif Path(given_out).resolve() != run_dir.resolve():
            copy_metrics = run_dir / "metrics.csv"  # a fork: start from the old run's rows
    else:
        cfg = config_from_dict(config) if isinstance(config, dict) else dataclasses.replace(config or TrainConfig())
        if overrides:
            cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    if ckpt is None and cfg.max_steps == 0:
        raise ConfigError("max_steps 0 on a new run trains nothing and writes no checkpoint; give --max-steps N "
                          "with N >= 1 (to write an untrained model, use ppflow.create_model(...).save_pretrained)")
    stops.check(cfg.out)

    info = init_distributed(cfg.device)
    old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    old_threads = torch.get_num_threads()
    lock: RunLock | None = None
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.out is None:
            cfg.out = broadcast_object(_default_out(cfg), info)
        run_dir = Path(cfg.out)
        if ckpt is None:
            _check_unused(run_dir)
        if info.device.type == "cuda" and cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        refused = None
        if info.is_main:  # the only writer: lock the folder, then re-check it (a run may have just finished)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise save_error(e, run_dir, 0, "run folder") from e
            try:
                lock = lock_run(run_dir)
                if ckpt is None:
                    _check_unused(run_dir)
                elif path.resolve().is_relative_to(run_dir.resolve()) and _file_id(path) != loaded:
                    raise RunLockedError(f"{path} was rewritten by another ppflow train on {run_dir} while this one "
                                         "started; run the command again to continue from the new checkpoint")
            except (RunLockedError, ConfigError) as e:
                refused = e
        refused = broadcast_object(refused, info)  # every rank stops on rank 0's refusal
        if refused is not None:
            raise refused
        stops.check(run_dir)
        trainer = Trainer(cfg, info, ckpt, run_dir, callbacks, copy_metrics, verify, stops)
        stops.log = trainer.log
        if ckpt is not None:
            trainer.last_checkpoint = path
        if info.is_main:
            try:
                save_config(cfg, run_dir / "config.yaml", {"model_config": trainer.mc.to_dict()})
            except OSError as e:
                raise trainer._save_failure(e, run_dir / "config.yaml", []) from e
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32
        torch.set_num_threads(old_threads)
        cleanup(info)


def _file_id(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _check_unused(run_dir: Path) -> None:
    """A fresh run must not overwrite a folder that holds one."""
    if (run_dir / ckpt_io.DIR / ckpt_io.LAST).exists():
        raise ConfigError(f"{run_dir} already holds a run ({ckpt_io.DIR}/{ckpt_io.LAST}); continue it with "
                          f"--resume {run_dir} or choose another --out")
