"""Starting a training run: `run_task(TaskClass, config | resume=RUN)` under one process or torchrun.

Resolves the config (a new run, a resume, or a fork into another --out), takes the run folder's lock on rank 0
(the other ranks wait for its verdict), builds the task and hands it to the engine.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..io import save_error
from . import checkpoint as ckpt_io
from .config import ConfigError, apply_overrides, config_from_dict, save_config
from .engine import Engine, StepEvent, TrainResult, main_log
from .lock import RunLock, RunLockedError, lock_run
from .parallel import broadcast_object, cleanup, init_distributed
from .signals import StopSignals
from .task import Task


def run_task(task_cls: type[Task], config=None, *, resume: str | os.PathLike | None = None,
             overrides: dict | None = None, callbacks: Sequence[Callable[[StepEvent], None]] = (),
             verify: bool = True) -> TrainResult:
    """Train `task_cls` from `config` (its config dataclass or a plain dict), or continue the run in `resume` (a run
    folder or checkpoint file) with `overrides` ({'max_steps': 20}) amending its saved config.

    The same under torchrun (DDP / FSDP): rank 0 alone writes files, holding RUN_DIR/.lock for the whole run (a
    second writer gets RunLockedError on every rank). `verify=False` loads a checkpoint or init weights whose
    SHA-256 does not match (a deliberate edit).

    SIGINT / SIGTERM: during training, the current step finishes, its metrics row and a checkpoint are written and
    the result says `interrupted`; during start-up, TrainingInterrupted (a KeyboardInterrupt) is raised before the
    first step. The previous signal handlers are back when this returns or raises. A failed save (a full disk)
    stops the run with a one-line OSError; the previous checkpoint stays and no temporary file is left.
    """
    stops = StopSignals()  # SIGINT/SIGTERM from here on: a stop request (start-up: stop before the first step)
    stops.install()
    try:
        return _run(task_cls, config, resume, overrides, callbacks, verify, stops)
    finally:
        stops.restore()  # on every exit path: a later signal reaches the handler it reached before


def _run(task_cls: type[Task], config, resume, overrides, callbacks, verify, stops: StopSignals) -> TrainResult:
    ckpt, copy_metrics, loaded, path = None, None, None, None
    if resume is not None:
        if config is not None:
            raise ConfigError("pass either a config or resume=RUN_DIR (whose saved config is used), not both")
        path = ckpt_io.find_checkpoint(resume)
        loaded = _file_id(path)
        ckpt = ckpt_io.load_checkpoint(path, verify=verify)
        if ckpt.get("kind") != task_cls.kind:
            other = "ppflow flux train" if ckpt.get("kind") == "ppflux" else "ppflow train"
            raise ConfigError(f"{path} is a {other} checkpoint, not a {task_cls.command} one: resume it with "
                              f"{other} --resume")
        cfg = config_from_dict(ckpt["config"], task_cls.config_cls)
        run_dir = path.parent.parent if path.parent.name == ckpt_io.DIR else Path(cfg.out)
        given_out = (overrides or {}).get("out")
        cfg = apply_overrides(cfg, overrides or {})
        if given_out is None:
            cfg.out = str(run_dir)
        elif Path(given_out).resolve() != run_dir.resolve():
            copy_metrics = run_dir / "metrics.csv"  # a fork: start from the old run's rows
    else:
        if isinstance(config, dict):
            cfg = config_from_dict(config, task_cls.config_cls)
        else:
            cfg = dataclasses.replace(config) if config is not None else task_cls.config_cls()
        if overrides:
            cfg = apply_overrides(cfg, overrides)
    task_cls.validate(cfg)
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
            cfg.out = broadcast_object(task_cls.default_out(cfg), info)
        run_dir = Path(cfg.out)
        if ckpt is None:
            _check_unused(run_dir)
        if info.device.type == "cuda" and getattr(cfg, "tf32", True):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        refused = None
        if info.is_main:  # the only writer: lock the folder, then re-check it (a run may have just finished)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                refused = save_error(e, run_dir, 0, "run folder")
            try:
                if refused is None:
                    lock = lock_run(run_dir)
                    if ckpt is None:
                        _check_unused(run_dir)
                    elif path.resolve().is_relative_to(run_dir.resolve()) and _file_id(path) != loaded:
                        raise RunLockedError(f"{path} was rewritten by another {task_cls.command} on {run_dir} while "
                                             "this one started; run the command again to continue from the new "
                                             "checkpoint")
            except (RunLockedError, ConfigError) as e:
                refused = e
        refused = broadcast_object(refused, info)  # every rank stops on rank 0's refusal
        if refused is not None:
            raise refused
        stops.check(run_dir)
        task = task_cls(cfg, info)
        task.setup(ckpt, verify, main_log(info))
        engine = Engine(task, ckpt, run_dir, stops, callbacks, copy_metrics)
        stops.log = engine.log
        if ckpt is not None:
            engine.last_checkpoint = path
        if info.is_main:
            try:
                save_config(cfg, run_dir / "config.yaml", task.saved_config())
            except OSError as e:
                raise engine.save_failure(e, run_dir / "config.yaml", []) from e
        return engine.run()
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
