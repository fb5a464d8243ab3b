"""`train_flux(config)`: fine-tune a FLUX transformer into PPFlux (or FLUX-ft, a one-stage schedule).

`FluxTask` is a task of the training engine (ppflow.train.engine), which owns the run folder, lock, resume, logs,
signals, checkpoints and EMA. The task adds the cached latents and text embeddings, the PPFluxTransformer with
LoRA or full training, FSDP2 per FLUX block, FLUX's flow-matching loss in sigma, and the export. Only the
trainable parameters are checkpointed and averaged (LoRA: adapters + PPFlow extras; the base is referenced by
model.base), so a LoRA run of a 12B FLUX stays small. Run folder: config.yaml, metrics.csv, checkpoints/last.pt,
ema/ (a PPFlux folder: `PPFluxTransformer.from_pretrained(RUN/ema)`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..io import check_writable
from ..models.pretrained import load_state_strict
from ..train.batches import derive_seed, generator
from ..train.config import ConfigError
from ..train.ema import EMA
from ..train.engine import TrainResult
from ..train.launch import run_task
from ..train.parallel import require_group
from ..train.task import Task
from .captions import CaptionCache
from .objective import flux_loss, train_sigmas
from .train_config import FluxTrainConfig

KIND = "ppflux"  # checkpoint "kind": a `ppflow flux train` run (ppflow train's have none)
FluxTrainResult = TrainResult  # the name earlier releases returned


def load_data(cfg: FluxTrainConfig, log=print, verify: bool = True) -> CaptionCache:
    """The cache when present (checked against data.path, the folder it must have been built from); else cache
    data.path with data.pipeline's encoders into data.cache first (data.cache checked before the encoders load)."""
    d = cfg.data
    if d.cache and Path(d.cache).is_file():
        cache = CaptionCache.load(d.cache, verify=verify)
        res, source = cache.meta.get("resolution"), cache.meta.get("source")
        if res is not None and res != d.resolution:
            raise ConfigError(f"{d.cache} was cached at {res} px, not data.resolution {d.resolution}: pass "
                              f"--data.resolution {res} or cache again into another file")
        if d.path and source and Path(d.path).is_dir() and Path(source) != Path(d.path).resolve():
            raise ConfigError(f"{d.cache} was cached from {source}, not from --data.path {Path(d.path).resolve()}: "
                              "training would ignore the new folder. Build its cache into another file (ppflow flux "
                              f"cache --data.path {d.path} --data.pipeline FLUX --data.cache NEW.safetensors, or "
                              f"delete {d.cache} to rebuild it) or drop --data.path to train on the cache as it is")
        return cache
    if not d.path:
        raise FileNotFoundError(f"cache {d.cache} does not exist and no --data.path folder is given to build it")
    if not d.pipeline:
        raise ConfigError(f"no cache at {d.cache}: pass --data.pipeline FLUX_PIPELINE (its VAE and text encoders) "
                          "or build it first with ppflow flux cache")
    from .captions import cache_folder, check_images, load_encoders, scan_folder

    if d.cache:
        check_writable(d.cache, "cache")  # a bad --data.cache or bad data fails before the encoders load
    check_images(scan_folder(d.path))
    log(f"caching {d.path} with the encoders of {d.pipeline} into {d.cache}")
    pipe = load_encoders(d.pipeline, "cuda" if torch.cuda.is_available() else "cpu")
    return cache_folder(d.path, pipe, d.resolution, d.max_sequence_length, out=d.cache)


def data_change(old: dict, cfg: FluxTrainConfig, cache: CaptionCache) -> str | None:
    """One line when a resumed run reads another cache than the one its checkpoint was trained on (None: same)."""
    was, now = old.get("cache"), cfg.data.cache
    if not was or not now or Path(was).resolve() == Path(now).resolve():
        return None
    return (f"note: data.cache changed on resume: {was} -> {now} ({len(cache)} images from "
            f"{cache.meta.get('source', 'an unknown folder')}); training continues on the new data at the saved data "
            "position (epoch and offset)")


def build_ppflux(cfg: FluxTrainConfig, verify: bool = True):
    """The PPFluxTransformer to train, with its trainable parameters marked (LoRA or full); `verify`: check
    model.ppflux's weights against their stored SHA-256."""
    from diffusers import FluxTransformer2DModel

    from .transformer import PPFluxTransformer

    m = cfg.model
    if m.base is None:
        raise ConfigError("model.base is not set: pass --model.base FLUX_TRANSFORMER (folder or hub id)")
    sub = {"subfolder": m.subfolder} if m.subfolder else {}
    base = FluxTransformer2DModel.from_pretrained(m.base, torch_dtype=getattr(torch, m.dtype), **sub)
    if m.ppflux:
        model = PPFluxTransformer.from_pretrained(m.ppflux, base=base, verify=verify)
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


class FluxTask(Task):
    """A PPFluxTransformer (LoRA on a frozen FLUX base, or full) trained with FLUX flow matching in sigma."""

    command = "ppflow flux train"
    kind = KIND
    config_cls = FluxTrainConfig

    run_name = staticmethod(lambda cfg: "flux")

    def setup(self, ckpt: dict | None, verify: bool, log: Callable[[str], None]) -> None:
        cfg, info = self.cfg, self.info
        dev, self.verify = info.device, verify
        self.data = self.rank0_first(lambda: load_data(cfg, log, verify))  # rank 0 may write the cache
        if ckpt is not None and info.is_main and (note := data_change(ckpt["config"].get("data", {}), cfg, self.data)):
            log(note)
        raw = build_ppflux(cfg, verify)
        self.names = [n for n, p in raw.named_parameters() if p.requires_grad]
        if ckpt is not None:
            load_state_strict(raw, {**raw.state_dict(), **ckpt["model"]}, source="checkpoint 'model'")
        raw.to(dev)
        self.mode = "fsdp" if cfg.parallel == "fsdp" or (cfg.parallel == "auto" and info.distributed) else "none"
        if info.distributed and self.mode != "fsdp":
            raise ConfigError("several processes need --parallel fsdp (FSDP2 per FLUX block)")
        if cfg.grad_checkpointing:
            raw.base.enable_gradient_checkpointing()
        if self.mode == "fsdp":
            from .parallel import shard_ppflux

            require_group("fsdp", self.command)
            shard_ppflux(raw)
        self.raw = self.model = raw
        named = dict(raw.named_parameters())
        self.params = torch.nn.ParameterList([named[n] for n in self.names])
        self.ema = EMA(self.params, cfg.ema.decay, cfg.ema.warmup)
        if ckpt is not None:
            self.ema.load_full([ckpt["ema"][n] for n in self.names])
        self.schedule = raw.schedule
        self.num_stages = raw.schedule.num_stages
        self.model_config = raw.ppflow_config
        C, H, W = self.data.latents.shape[1:]
        if H % 2 or W % 2:
            raise ConfigError(f"cached latents are {H}x{W}: FLUX packs 2x2 latent pixels; cache an even size")
        self.grid, self.channels = (H // 2, W // 2), C
        raw.schedule.check_latent(H, W)
        from diffusers import FluxPipeline

        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, H // 2, W // 2, dev, torch.float32)  # (L, 3)
        self.txt_ids = torch.zeros(self.data.prompt_embeds.shape[1], 3, device=dev)  # (T, 3)

    def param_groups(self) -> list[dict]:
        extra = [not n.startswith("base.") for n in self.names]  # PPFlow projections + stage embedding
        return [{"params": [p for p, e in zip(self.params, extra) if e is x], "lr_scale": scale}
                for x, scale in ((False, 1.0), (True, self.cfg.train.extras_lr_scale))]

    def optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        if not self.cfg.train.eight_bit_adam:
            return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("train.eight_bit_adam needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def ema_source(self) -> torch.nn.Module:
        return self.params

    def loss(self, mb, autocast):
        cfg, dev, f = self.cfg, self.info.device, self.cfg.flow
        seed, step, shard = cfg.seed, mb.step, mb.shard
        x0 = pack(mb.x.to(dev))  # (B, L, 4C)
        idx = mb.y
        L = self.grid[0] * self.grid[1]
        draw = train_sigmas(self.raw, len(x0), L, generator(seed, step, shard, "time"), f.time_sampling, f.density,
                            f.logit_mean, f.logit_std, f.shares, f.shift)
        noise = torch.randn(x0.shape, generator=generator(seed, step, shard, "noise"), dtype=x0.dtype).to(dev)
        guidance = torch.full((len(x0),), f.guidance, device=dev) if self.raw.config.guidance_embeds else None
        cond = {"encoder_hidden_states": self.data.prompt_embeds[idx].to(dev),
                "pooled_projections": self.data.pooled[idx].to(dev), "img_ids": self.img_ids,
                "txt_ids": self.txt_ids, "guidance": guidance}
        with autocast():
            return flux_loss(self.model, x0, noise, draw, cond, self.grid)

    def weights(self) -> tuple[dict, dict]:
        def full(tensors):
            return [(t.full_tensor() if hasattr(t, "full_tensor") else t).detach().to("cpu", copy=True)
                    for t in tensors]

        return dict(zip(self.names, full(self.params))), dict(zip(self.names, full(self.ema.model)))

    def export(self, ema_state: dict, folder: Path, target: Path) -> None:
        """A PPFlux folder with the EMA weights in place: extras + LoRA referencing model.base, or (full) + the base."""
        model = build_ppflux(self.cfg, self.verify) if self.mode == "fsdp" else copy.deepcopy(self.raw).cpu()
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in ema_state.items():
                named[n].copy_(v)
        if self.cfg.train.mode == "full":
            model.base.save_pretrained(folder / "transformer")
            model.save_pretrained(folder, base_model=str((target / "transformer").resolve()))
        else:
            model.save_pretrained(folder, base_model=self.cfg.model.base, base_subfolder=self.cfg.model.subfolder)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.params)
        return (f"{self.cfg.train.mode} fine-tune, schedule {self.schedule}, {n / 1e6:.3f}M trainable parameters, "
                f"{len(self.data)} cached images")


def pack(z: torch.Tensor) -> torch.Tensor:
    """FluxPipeline._pack_latents: (B, C, H, W) -> (B, H/2 * W/2, 4C)."""
    B, C, H, W = z.shape
    z = z.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, 2, 2)
    return z.reshape(B, (H // 2) * (W // 2), C * 4)  # (B, L, 4C)


def train_flux(config: FluxTrainConfig | dict | None = None, *, resume: str | os.PathLike | None = None,
               overrides: dict | None = None, verify: bool = True) -> TrainResult:
    """Train from `config`, or continue the run in `resume` with `overrides` amending its saved config."""
    return run_task(FluxTask, config, resume=resume, overrides=overrides, verify=verify)
