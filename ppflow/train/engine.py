"""The training engine: one loop for every model family and objective; a family plugs in as a `Task`.

The engine owns the run: its folder and lock (rank 0 takes it, the other ranks wait for its verdict), resume and
fork, config.yaml, metrics rows reduced over ranks, TensorBoard, stop signals (every rank stops at the same step),
atomic verified checkpoints and the exported model folder, EMA, gradient accumulation, clipping and non-finite
checks. A `Task` says what differs: the data, the model and how it is parallelized, which parameters train, the
loss of a micro-batch, and how the EMA weights are exported. SiT/DiT training is `ppflow.train.sit.SiTTask`,
FLUX fine-tuning `ppflow.flux.train.FluxTask` (docs/architecture.md: adding a task).

Run folder (RUN_DIR = config.out): .lock, config.yaml, metrics.csv, checkpoints/last.pt (+ step-N.pt with
keep_every), the task's export folder ema/ (+ ema-N/), and the task's own extras (SiT: samples/), tb/.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import replace_folder
from . import checkpoint as ckpt_io
from .batches import BatchPlan, DataPosition, Layout, micro_batches
from .config import config_to_dict
from .parallel import DistInfo, all_reduce, barrier, broadcast_object
from .runlog import RunLog, Window
from .signals import StopSignals, signal_name
from .task import Task


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/inf; training stopped before applying that step."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run left behind."""

    run_dir: Path
    step: int  # optimizer steps done
    loss: float | None  # mean loss of the last logged window (all ranks)
    checkpoint: Path | None  # RUN_DIR/checkpoints/last.pt
    ema_dir: Path | None  # RUN_DIR/ema
    steps_per_sec: float  # training steps per second in this session (saving/sampling excluded)
    interrupted: bool  # stopped by Ctrl-C / SIGTERM (a checkpoint and a metrics row of the current step were written)
    metrics: Path  # RUN_DIR/metrics.csv
    model_config: Any  # the task's model description (SiT: ModelConfig)
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT / SIGTERM), if one did
    losses: list[float] = field(default_factory=list)  # this process's loss of every step of this session


@dataclass
class StepEvent:
    """Passed to callbacks after every optimizer step."""

    step: int
    loss: float  # this process's mean loss of the step
    lr: float
    model: nn.Module  # unwrapped training model
    ema: nn.Module
    run_dir: Path


class Engine:
    """One run's optimizer, data position and logs around a set-up task; `run()` trains until max_steps or a stop."""

    def __init__(self, task: Task, ckpt: dict | None, run_dir: Path, stops: StopSignals,
                 callbacks: Sequence[Callable[[StepEvent], None]] = (), copy_metrics: Path | None = None) -> None:
        cfg, info = task.cfg, task.info
        self.task, self.cfg, self.info, self.run_dir, self.stops = task, cfg, info, run_dir, stops
        self.callbacks = list(callbacks)
        self.log = main_log(info)
        groups = [g for g in task.param_groups() if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        self.opt = task.optimizer(groups)
        self.layout = Layout(cfg.batch_size, info.world_size, info.rank, cfg.grad_accum)
        self.plan = BatchPlan(len(task.data), cfg.batch_size, cfg.seed)
        self.step, self.pos, self.elapsed = 0, DataPosition(), 0.0
        self.window = Window(task.num_stages)
        if ckpt is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(task.raw, self.opt, ckpt["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
            self.step = int(ckpt["step"])
            self.pos = DataPosition(int(ckpt["data"]["epoch"]), int(ckpt["data"]["offset"]))
            self.elapsed = float(ckpt.get("elapsed", 0.0))
            if info.is_main:  # rank 0 alone carries an open window (it is reduced at every save)
                self.window.load(ckpt["log"])
            ckpt_io.set_rng_state(ckpt["rng"])
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda")
        self.runlog = None
        if info.is_main:
            partial = ckpt is not None and bool(ckpt.get("log", {}).get("steps"))
            self.runlog = RunLog(run_dir, task.num_stages, self.step, cfg.tensorboard, copy_metrics, partial)
        if ckpt is not None:
            self._note_layout_change(ckpt)
        self.last_checkpoint: Path | None = None
        self._saved_step = self.step
        self._updating = False
        self._stop = False
        self.last_loss: float | None = None
        self.losses: list[float] = []

    # ------------------------------------------------------------------ helpers
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
        cfg, task, S = self.cfg, self.task, self.task.num_stages
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        local_loss, step_sums, step_counts = 0.0, [0.0] * S, [0] * S
        for m in range(cfg.grad_accum):
            mb, pos = next(stream)
            assert mb.step == self.step, "data stream out of step"
            sync = task.mode != "ddp" or m == cfg.grad_accum - 1
            with (contextlib.nullcontext() if sync else task.model.no_sync()):
                loss, sums, counts = task.loss(mb, self.autocast)
                (loss / cfg.grad_accum).backward()
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
        task.ema.update(task.ema_source(), self.step)
        self.step += 1
        self.pos = pos
        self._updating = False
        self.losses.append(local_loss)
        return local_loss

    # ------------------------------------------------------------------ logging / saving
    def write_log(self, steps_per_sec: float, keep_window: bool = False) -> None:
        """One metrics.csv / TensorBoard row of the open window summed over ranks; `keep_window` (a stop off the
        log grid) keeps the window open, so it goes into the checkpoint and a resumed run logs it whole."""
        vals = all_reduce(self.window.pack(), self.info)
        k = self.task.num_stages
        sums, ns = vals[:k], vals[k:]
        self.last_loss = sum(sums) / max(1.0, sum(ns))
        if self.runlog is not None:
            try:
                self.runlog.row(self.step, sums, ns, self.window.grad_sum / max(1, self.window.steps),
                                self.lr_at(self.step - 1), steps_per_sec, self.cfg.batch_size, self.elapsed)
            except OSError as e:  # a full disk: the file keeps its earlier rows
                raise self.save_failure(e, self.runlog.metrics.path, []) from e
        if not keep_window:
            self.window = Window(k)

    def save(self) -> Path:
        """Write checkpoints/last.pt and the export folder ema/ (all processes call this; rank 0 writes)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        task = self.task
        model_sd, ema_sd = task.weights()
        opt_sd = get_optimizer_state_dict(task.raw, self.opt,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        self.window.unpack(all_reduce(self.window.pack(), self.info))  # rank 0 keeps the whole window
        if not self.info.is_main:
            self.window.unpack([0.0] * len(self.window.pack()))
        path = self.run_dir / ckpt_io.DIR / ckpt_io.LAST
        failure = None
        if self.info.is_main:
            state = {
                "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
                "config": {**config_to_dict(self.cfg), **task.saved_config()},
                "model": model_sd, "ema": ema_sd, "optimizer": opt_sd, "step": self.step,
                "data": {"epoch": self.pos.epoch, "offset": self.pos.offset},
                "rng": ckpt_io.rng_state(), "log": self.window.state(), "world_size": self.info.world_size,
                "elapsed": self.elapsed,
            }
            if task.kind is not None:
                state["kind"] = task.kind
            written = []
            try:
                ckpt_io.save_checkpoint(state, path)
                written.append(path)
                keep_every = getattr(self.cfg, "keep_every", 0)
                keep = keep_every and self.step % keep_every == 0
                if keep:
                    ckpt_io.save_checkpoint(state, path.with_name(f"step-{self.step:07d}.pt"))
                targets = [self.run_dir / "ema"] + ([self.run_dir / f"ema-{self.step:07d}"] if keep else [])
                for target in targets:
                    replace_folder(target, lambda folder, target=target: task.export(ema_sd, folder, target))
            except OSError as e:  # a full disk above all: the temporary files are gone, the old files stay
                failure = self.save_failure(e, path, written)
        failure = broadcast_object(failure, self.info) if self.info.distributed else failure
        if failure is not None:
            raise failure
        barrier(self.info)
        self.last_checkpoint, self._saved_step = path, self.step
        return path

    def save_failure(self, err: OSError, path: Path, written: list[Path], kept: str | None = None) -> OSError:
        """`err` (one line from save_error) plus what the run folder holds now and how to go on."""
        resumable = bool(written) or kept is not None or self.last_checkpoint is not None
        if kept is None and written:
            kept = (f"{path} holds step {self.step} (written before the failure); {self.run_dir / 'ema'} may hold "
                    "an older step until the run is resumed")
        elif kept is None and self.last_checkpoint is not None:
            kept = f"nothing was replaced: the last good checkpoint is {self.last_checkpoint} (step {self._saved_step})"
        elif kept is None:
            kept = "no checkpoint of this run exists yet"
        fix = (f"Free space (or move {self.run_dir} to a larger disk) and continue with {self.task.command} --resume "
               f"{self.run_dir}") if resumable else "Free space and start again"
        e = type(err)(f"{err}; training stopped at step {self.step}: {kept}. {fix}")
        e.errno = err.errno
        return e

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        cfg, info, task = self.cfg, self.info, self.task
        self.log(f"{task.command}: {task.describe()}; global batch {cfg.batch_size} = {info.world_size} "
                 f"process(es) x {cfg.grad_accum} x {self.layout.micro} ({info.device.type}, "
                 f"{'bf16 autocast' if self.bf16 else 'fp32'}, {task.mode}); run dir {self.run_dir}")
        if self.step >= cfg.max_steps:
            self.log(f"already at step {self.step} >= max_steps {cfg.max_steps}; nothing to do (raise --max-steps)")
        from tqdm import tqdm

        own_signals = self.stops.install()  # run_task installed them already; an Engine run on its own does it here
        bar = None
        start_step, session_time, window_time = self.step, 0.0, 0.0
        interrupted = False
        self._updating = False
        try:
            self.stops.check(self.run_dir)  # a signal while the task was built: stop before the first step
            self.stops.phase = "training"
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=task.command.split()[-1], unit="step",
                       dynamic_ncols=True, disable=not (info.is_main and cfg.progress), file=sys.stdout)
            stream = micro_batches(task.data, self.plan, self.layout, cfg.seed, task.flip, self.step, self.pos,
                                   task.num_workers)
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                try:
                    loss = self.train_step(stream)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    for cb in self.callbacks:
                        cb(StepEvent(self.step, loss, self.lr_at(self.step - 1), task.raw, task.ema.model,
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
                if info.distributed:  # every rank stops at the same step
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
                if not stop:
                    task.after_save(self, done)
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
            if self.runlog is not None:
                self.runlog.close()
        sps = (self.step - start_step) / session_time if session_time > 0 else 0.0
        ckpt = self.last_checkpoint
        ema_dir = self.run_dir / "ema" if ckpt is not None else None
        loss_txt = f"{self.last_loss:.4f}" if self.last_loss is not None else "n/a"
        how = "done"
        if interrupted:
            how = f"stopped by {signal_name(self.stops.signum)}" if self.stops.signum is not None else "interrupted"
        self.log(f"{how}: step {self.step}/{cfg.max_steps}, loss {loss_txt}, "
                 f"{sps:.2f} steps/s ({sps * cfg.batch_size:.1f} samples/s), {session_time:.1f} s training; "
                 f"checkpoint {ckpt}, EMA model {ema_dir}")
        return TrainResult(self.run_dir, self.step, self.last_loss, ckpt, ema_dir, sps, interrupted,
                           self.run_dir / "metrics.csv", task.model_config, self.stops.signum, self.losses)


def main_log(info: DistInfo) -> Callable[[str], None]:
    """print() for rank 0 that keeps a tqdm bar intact; other ranks stay silent."""

    def log(msg: str) -> None:
        if info.is_main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)

    return log
