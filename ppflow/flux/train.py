"""`train_flux(config)`: fine-tune a FLUX transformer into PPFlux (or FLUX-ft, a one-stage schedule).

A thin FLUX loop over ppflow.train's pieces: data order and per-(step, shard) generators (batches.py), the
run lock, atomic hash-checked checkpoints, EMA, metrics.csv windows, stop signals, and FSDP2 per FLUX block.
Only the trainable parameters are checkpointed and averaged (LoRA: adapters + PPFlow extras; the base is
referenced by model.base), so a LoRA run of a 12B FLUX stays small. Run folder: config.yaml, metrics.csv,
checkpoints/last.pt, ema/ (a PPFlux folder: `PPFluxTransformer.from_pretrained(RUN/ema)`).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..train import checkpoint as ckpt_io
from ..train.batches import BatchPlan, DataPosition, Layout, derive_seed, generator, micro_batches
from ..train.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, save_config
from ..train.ema import EMA
from ..train.lock import lock_run
from ..train.loop import MetricsFile, StopSignals, Window
from ..train.parallel import cleanup, init_distributed
from .captions import CaptionCache
from .objective import flux_loss, train_sigmas
from .train_config import FluxTrainConfig, validate_flux

KIND = "ppflux"  # checkpoint "kind": a `ppflow flux train` run (ppflow train's have none)


@dataclass
class FluxTrainResult:
    run_dir: Path
    step: int
    loss: float | None  # mean loss of the last logged window
    losses: list[float]  # loss of every step of this session (tests compare runs with them)
    checkpoint: Path | None
    ema_dir: Path | None
    steps_per_sec: float
    interrupted: bool


def load_data(cfg: FluxTrainConfig, log=print) -> CaptionCache:
    """The cache when present; else cache data.path with data.pipeline's encoders into data.cache first."""
    d = cfg.data
    if d.cache and Path(d.cache).is_file():
        cache = CaptionCache.load(d.cache)
        res = cache.meta.get("resolution")
        if res is not None and res != d.resolution:
            raise ConfigError(f"{d.cache} was cached at {res} px, not data.resolution {d.resolution}: pass "
                              f"--data.resolution {res} or cache again into another file")
        return cache
    if not d.path:
        raise FileNotFoundError(f"cache {d.cache} does not exist and no --data.path folder is given to build it")
    if not d.pipeline:
        raise ConfigError(f"no cache at {d.cache}: pass --data.pipeline FLUX_PIPELINE (its VAE and text encoders) "
                          "or build it first with ppflow flux cache")
    from .captions import cache_folder, check_images, load_encoders, scan_folder

    check_images(scan_folder(d.path))  # bad data fails before the encoders load
    log(f"caching {d.path} with the encoders of {d.pipeline} into {d.cache}")
    pipe = load_encoders(d.pipeline, "cuda" if torch.cuda.is_available() else "cpu")
    cache = cache_folder(d.path, pipe, d.resolution, d.max_sequence_length)
    if d.cache:
        cache.save(d.cache)
    return cache


def build_ppflux(cfg: FluxTrainConfig):
    """The PPFluxTransformer to train, with its trainable parameters marked (LoRA or full)."""
    from diffusers import FluxTransformer2DModel

    from .transformer import PPFluxTransformer

    m = cfg.model
    if m.base is None:
        raise ConfigError("model.base is not set: pass --model.base FLUX_TRANSFORMER (folder or hub id)")
    sub = {"subfolder": m.subfolder} if m.subfolder else {}
    base = FluxTransformer2DModel.from_pretrained(m.base, torch_dtype=getattr(torch, m.dtype), **sub)
    if m.ppflux:
        model = PPFluxTransformer.from_pretrained(m.ppflux, base=base)
        if model.ppflow_config.schedule != m.schedule:
            raise ConfigError(f"{m.ppflux} has schedule {model.ppflow_config.schedule!r}, not model.schedule "
                              f"{m.schedule!r}; pass --model.schedule {model.ppflow_config.schedule}")
    else:
        model = PPFluxTransformer.from_flux(base, m.schedule, m.init, boundaries=m.boundaries,
                                            coarse_output=m.coarse_output)
    model.ppflow_config.base_model, model.ppflow_config.base_subfolder = m.base, m.subfolder
    t = cfg.train
    if t.mode == "lora":
        from peft import LoraConfig

        base.requires_grad_(False)
        if not getattr(base, "peft_config", None):
            with torch.random.fork_rng(devices=[]):  # LoRA A matrices: random, from the run's seed
                torch.manual_seed(derive_seed(cfg.seed, "init"))
                base.add_adapter(LoraConfig(r=t.lora_rank, lora_alpha=t.lora_alpha,
                                            target_modules=list(t.lora_targets), init_lora_weights=True))
        for name, p in base.named_parameters():
            p.requires_grad_("lora_" in name)
    else:
        model.requires_grad_(True)
    for p in [*model.patch_embed.parameters(), *model.proj.parameters()]:
        p.requires_grad_(True)  # the PPFlow projections are always trained in full
    # one stage: the stage embedding is one more bias next to FLUX's own; keep the baseline exactly FLUX
    model.stage_embed.requires_grad_(model.schedule.num_stages > 1)
    for p in model.parameters():  # a bfloat16 base: the trained weights (and so AdamW's states) stay float32
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


class FluxTrainer:
    """One run's state; `run()` trains until max_steps or a stop signal."""

    def __init__(self, cfg: FluxTrainConfig, ckpt: dict | None, run_dir: Path, stops: StopSignals):
        self.cfg, self.run_dir, self.stops = cfg, run_dir, stops
        self.info = init_distributed(cfg.device)
        dev = self.info.device
        self.data = load_data(cfg, self.log)
        raw = build_ppflux(cfg)
        self.names = [n for n, p in raw.named_parameters() if p.requires_grad]
        if ckpt is not None:
            from ..convert.native import load_state_strict

            state = {**raw.state_dict(), **ckpt["model"]}
            load_state_strict(raw, state, source="checkpoint 'model'")
        raw.to(dev)
        self.mode = "fsdp" if cfg.parallel == "fsdp" or (cfg.parallel == "auto" and self.info.distributed) else "none"
        if self.info.distributed and self.mode != "fsdp":
            raise ConfigError("several processes need --parallel fsdp (FSDP2 per FLUX block)")
        if cfg.grad_checkpointing:
            raw.base.enable_gradient_checkpointing()
        if self.mode == "fsdp":
            from .parallel import shard_ppflux

            shard_ppflux(raw)
        self.model = raw
        named = dict(raw.named_parameters())
        self.params = torch.nn.ParameterList([named[n] for n in self.names])
        self.ema = EMA(self.params, cfg.ema.decay, cfg.ema.warmup)
        o = cfg.optim
        if cfg.train.eight_bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise ConfigError("train.eight_bit_adam needs bitsandbytes (pip install bitsandbytes)") from None
            opt_cls = bnb.optim.AdamW8bit
        else:
            opt_cls = torch.optim.AdamW
        extra = [not n.startswith("base.") for n in self.names]  # PPFlow projections + stage embedding
        groups = [{"params": [p for p, e in zip(self.params, extra) if e is x], "lr_scale": scale}
                  for x, scale in ((False, 1.0), (True, cfg.train.extras_lr_scale))]
        self.opt = opt_cls([g for g in groups if g["params"]], lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                           weight_decay=o.weight_decay)
        self.layout = Layout(cfg.batch_size, self.info.world_size, self.info.rank, cfg.grad_accum)
        self.plan = BatchPlan(len(self.data), cfg.batch_size, cfg.seed)
        self.step, self.pos, self.elapsed = 0, DataPosition(), 0.0
        S = raw.schedule.num_stages
        self.window = Window(S)
        if ckpt is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.opt, ckpt["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
            with torch.no_grad():
                for e, n in zip(self.ema.model, self.names):
                    e.copy_(ckpt["ema"][n])
            self.step = int(ckpt["step"])
            self.pos = DataPosition(int(ckpt["data"]["epoch"]), int(ckpt["data"]["offset"]))
            self.elapsed = float(ckpt.get("elapsed", 0.0))
            self.window.load(ckpt["log"])
            ckpt_io.set_rng_state(ckpt["rng"])
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
        self.metrics = self.tb = None
        if self.info.is_main:
            if cfg.tensorboard:
                from ..train.loop import _tensorboard

                self.tb = _tensorboard(run_dir, self.step)
            self.metrics = MetricsFile(run_dir / "metrics.csv", S, self.step,
                                       drop_last_partial=ckpt is not None and bool(ckpt["log"]["steps"]))
        lat = self.data.latents
        C, H, W = lat.shape[1:]
        if H % 2 or W % 2:
            raise ConfigError(f"cached latents are {H}x{W}: FLUX packs 2x2 latent pixels; cache an even size")
        self.grid, self.channels = (H // 2, W // 2), C
        raw.schedule.check_latent(H, W)
        from diffusers import FluxPipeline

        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, H // 2, W // 2, dev, torch.float32)  # (L, 3)
        self.txt_ids = torch.zeros(self.data.prompt_embeds.shape[1], 3, device=dev)  # (T, 3)
        self.last_loss, self.last_checkpoint, self.losses = None, None, []

    def log(self, msg: str) -> None:
        if self.info.is_main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stdout)

    def lr_at(self, step: int) -> float:
        return self.cfg.optim.lr_at(step)

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        B, C, H, W = z.shape
        z = z.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, 2, 2)
        return z.reshape(B, (H // 2) * (W // 2), C * 4)  # (B, L, 4C), FluxPipeline._pack_latents

    def train_step(self, stream) -> float:
        cfg, dev, f = self.cfg, self.info.device, self.cfg.flow
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step) * g["lr_scale"]
        S = self.model.schedule.num_stages
        step_loss, sums, counts = 0.0, [0.0] * S, [0] * S
        L = self.grid[0] * self.grid[1]
        for _ in range(cfg.grad_accum):
            mb, pos = next(stream)
            seed, step, shard = cfg.seed, mb.step, mb.shard
            x0 = self.pack(mb.x.to(dev))  # (B, L, 4C)
            idx = mb.y
            draw = train_sigmas(self.model, len(x0), L, generator(seed, step, shard, "time"), f.time_sampling,
                                f.density, f.logit_mean, f.logit_std, f.shares, f.shift)
            noise = torch.randn(x0.shape, generator=generator(seed, step, shard, "noise"), dtype=x0.dtype).to(dev)
            guidance = (torch.full((len(x0),), f.guidance, device=dev)
                        if self.model.config.guidance_embeds else None)
            cond = {"encoder_hidden_states": self.data.prompt_embeds[idx].to(dev),
                    "pooled_projections": self.data.pooled[idx].to(dev), "img_ids": self.img_ids,
                    "txt_ids": self.txt_ids, "guidance": guidance}
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss, s_sums, s_counts = flux_loss(self.model, x0, noise, draw, cond, self.grid)
            (loss / cfg.grad_accum).backward()
            step_loss += float(loss.detach()) / cfg.grad_accum
            sums = [a + b for a, b in zip(sums, s_sums)]
            counts = [a + b for a, b in zip(counts, s_counts)]
        for p in self.params:  # a stage absent from this batch still takes an (all-zero-gradient) step
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(list(self.params), clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not (math.isfinite(norm) and math.isfinite(step_loss)):
            raise FloatingPointError(f"loss became non-finite at step {self.step + 1} (loss {step_loss:.4g}, grad "
                                     f"norm {norm:.4g}); lower --optim.lr or check the cache for NaN values")
        self.window.add(sums, counts)
        self.window.grad_sum += norm
        self.window.steps += 1
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.params, self.step)
        self.step += 1
        self.pos = pos
        self.losses.append(step_loss)
        return step_loss

    def write_log(self, steps_per_sec: float) -> None:
        w, S = self.window, self.model.schedule.num_stages
        loss = sum(w.stage_sum) / max(1, sum(w.stage_n))
        self.last_loss = loss
        if self.metrics is not None:
            row = {"step": self.step, "loss": repr(loss), "grad_norm": repr(w.grad_sum / max(1, w.steps)),
                   "lr": repr(self.lr_at(self.step - 1)), "steps_per_sec": f"{steps_per_sec:.4f}",
                   "samples_per_sec": f"{steps_per_sec * self.cfg.batch_size:.2f}", "elapsed_s": f"{self.elapsed:.2f}"}
            for s in range(S):
                row[f"loss_stage{s}"] = repr(w.stage_sum[s] / w.stage_n[s]) if w.stage_n[s] else ""
            self.metrics.write(row)
            if self.tb is not None:
                for key in ("loss", "grad_norm", "lr"):
                    self.tb.add_scalar(f"train/{key}", float(row[key]), self.step)
                for s in range(S):
                    if w.stage_n[s]:
                        self.tb.add_scalar(f"train/loss_stage{s}", w.stage_sum[s] / w.stage_n[s], self.step)
        self.window = Window(S)

    def _full(self, tensors) -> list[torch.Tensor]:
        return [(t.full_tensor() if hasattr(t, "full_tensor") else t).detach().to("cpu", copy=True) for t in tensors]

    def save(self) -> Path:
        """checkpoints/last.pt (trainable weights, EMA, optimizer, data position, RNG) and ema/ (a PPFlux folder)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opt_sd = get_optimizer_state_dict(self.model, self.opt,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        model_sd = dict(zip(self.names, self._full(self.params)))
        ema_sd = dict(zip(self.names, self._full(self.ema.model)))
        path = self.run_dir / ckpt_io.DIR / ckpt_io.LAST
        if self.info.is_main:
            state = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "kind": KIND,
                     "config": config_to_dict(self.cfg), "model": model_sd, "ema": ema_sd,
                     "optimizer": opt_sd, "step": self.step,
                     "data": {"epoch": self.pos.epoch, "offset": self.pos.offset}, "rng": ckpt_io.rng_state(),
                     "log": self.window.state(), "world_size": self.info.world_size, "elapsed": self.elapsed}
            ckpt_io.save_checkpoint(state, path)
            self.export(ema_sd, self.run_dir / "ema")
        self.last_checkpoint = path
        return path

    def export(self, weights: dict[str, torch.Tensor], target: Path) -> None:
        """A PPFlux folder with `weights` (EMA) in place: extras + LoRA referencing model.base, or (full) + the base."""
        from ..train.loop import _export

        model = self._cpu_copy(weights)
        full = self.cfg.train.mode == "full"

        class _Folder:  # _export's atomic replace of a folder around our save_pretrained
            def save_pretrained(_, folder):
                folder = Path(folder)
                if full:
                    model.base.save_pretrained(folder / "transformer")
                    model.save_pretrained(folder, base_model=str((target / "transformer").resolve()))
                else:
                    model.save_pretrained(folder, base_model=self.cfg.model.base,
                                          base_subfolder=self.cfg.model.subfolder)

        _export(_Folder(), target)

    def _cpu_copy(self, weights: dict[str, torch.Tensor]):
        if self.mode == "fsdp":  # a fresh unsharded model with the EMA weights
            model = build_ppflux(self.cfg)
        else:
            model = copy.deepcopy(self.model).cpu()
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in weights.items():
                named[n].copy_(v)
        return model

    def run(self) -> FluxTrainResult:
        cfg = self.cfg
        from tqdm import tqdm

        n = sum(p.numel() for p in self.params)
        self.log(f"ppflow flux train: {cfg.train.mode} fine-tune, schedule {self.model.schedule}, {n / 1e6:.3f}M "
                 f"trainable parameters, {len(self.data)} cached images, global batch {cfg.batch_size}; run dir "
                 f"{self.run_dir}")
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="flux train", unit="step", file=sys.stdout,
                   disable=not (self.info.is_main and cfg.progress))
        stream = micro_batches(self.data, self.plan, self.layout, cfg.seed, False, self.step, self.pos)
        session, window_time, start, stopped = 0.0, 0.0, self.step, False
        self.stops.phase = "training"
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                loss = self.train_step(stream)
                dt = time.perf_counter() - t0
                session, window_time, self.elapsed = session + dt, window_time + dt, self.elapsed + dt
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                done, stopped = self.step >= cfg.max_steps, self.stops.requested
                if self.step % cfg.log_every == 0 or done:
                    self.write_log(self.window.steps / window_time if window_time else 0.0)
                    window_time = 0.0
                if self.step % cfg.save_every == 0 or done or stopped:
                    self.save()
                if stopped:
                    break
        finally:
            bar.close()
            if self.tb is not None:
                self.tb.close()
        sps = (self.step - start) / session if session else 0.0
        ema = self.run_dir / "ema" if self.last_checkpoint else None
        return FluxTrainResult(self.run_dir, self.step, self.last_loss, self.losses, self.last_checkpoint, ema, sps,
                               stopped)


def train_flux(config: FluxTrainConfig | dict | None = None, *, resume: str | os.PathLike | None = None,
               overrides: dict | None = None) -> FluxTrainResult:
    """Train from `config`, or continue the run in `resume` with `overrides` amending its saved config."""
    ckpt = None
    if resume is not None:
        path = ckpt_io.find_checkpoint(resume)
        ckpt = ckpt_io.load_checkpoint(path)
        if ckpt.get("kind") != KIND:
            raise ConfigError(f"{path} is a ppflow train checkpoint, not a ppflow flux train one: resume it with "
                              "ppflow train --resume")
        cfg = config_from_dict(ckpt["config"], FluxTrainConfig)
        cfg.out = str(path.parent.parent)
    else:
        cfg = config_from_dict(config, FluxTrainConfig) if isinstance(config, dict) else copy.deepcopy(
            config or FluxTrainConfig())
    cfg = apply_overrides(cfg, overrides or {})
    validate_flux(cfg)
    if cfg.out is None:
        cfg.out = str(Path("runs") / f"flux-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(cfg.out)
    if ckpt is None and (run_dir / ckpt_io.DIR / ckpt_io.LAST).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    stops = StopSignals()
    stops.install()
    old_threads = torch.get_num_threads()
    lock = lock_run(run_dir)
    trainer = None
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        trainer = FluxTrainer(cfg, ckpt, run_dir, stops)
        if trainer.info.is_main:
            save_config(cfg, run_dir / "config.yaml")
        return trainer.run()
    finally:
        lock.release()
        stops.restore()
        torch.set_num_threads(old_threads)
        if trainer is not None:
            cleanup(trainer.info)
