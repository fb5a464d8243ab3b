"""`FlowTask`: train a diffusers transformer from scratch or further with flow matching, on cached tensors.

A task of the training engine for families whose pipelines pass the noisy latent and text states straight to the
transformer (Wan today): x_sigma = (1 - sigma) x0 + sigma noise, target noise - x0 (the flow-matching velocity in
diffusers' sigma convention), sigma uniform in [0, 1]; the timestep is sigma x 1000. The data file holds `latents`
(N, C, F, H, W) and `text` (N, T, D) (`save_flow_data`); `model.text_dropout` trains the unconditional input
(zero text states) for classifier-free guidance. RUN/ema is a diffusers folder (`save_pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...io import HASH_KEY, content_sha256, read_safetensors, save_safetensors_atomic
from ...train.batches import generator
from ...train.config import ConfigError
from ...train.ema import EMA
from ...train.engine import TrainResult
from ...train.launch import run_task
from ...train.run_config import RunConfig, _opt
from ...train.task import Task
from .distill import load_transformer

KIND = "diffusers-flow"


def save_flow_data(latents: torch.Tensor, text: torch.Tensor, path: str | os.PathLike) -> Path:
    state = {"latents": latents.contiguous(), "text": text.contiguous()}
    return save_safetensors_atomic(state, path, {"format": "ppflow-flow-data", HASH_KEY: content_sha256(state)})


class FlowData:
    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        tensors, meta = read_safetensors(path, verify)
        if meta.get("format") != "ppflow-flow-data":
            raise ConfigError(f"{path} is not a flow-data file (save_flow_data)")
        self.latents, self.text = tensors["latents"], tensors["text"]

    def __len__(self) -> int:
        return len(self.latents)

    def get_batch(self, idx: torch.Tensor, flips=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latents[idx], idx


@dataclass
class ModelSection:
    init: str | None = _opt(None, "folder of the diffusers transformer to train (e.g. a fresh save_pretrained)")
    data: str | None = _opt(None, "flow-data file: latents and text states (save_flow_data)")
    text_dropout: float = _opt(0.0, "share of samples trained with zero text states (for classifier-free guidance)",
                               min=0.0, below=1.0)


@dataclass
class FlowConfig(RunConfig):
    model: ModelSection = field(default_factory=ModelSection)

    def checks(self) -> list[tuple[bool, str]]:
        m = self.model
        return [*super().checks(), (m.init is not None, "model.init is not set: the transformer folder"),
                (m.data is not None, "model.data is not set: the flow-data file")]


class FlowTask(Task):
    command = "ppflow.integrations.diffusers.train"
    kind = KIND
    config_cls = FlowConfig
    run_name = staticmethod(lambda cfg: "flow")

    def setup(self, ckpt: dict | None, verify: bool, log: Callable[[str], None]) -> None:
        cfg, dev = self.cfg, self.info.device
        if self.info.distributed:
            raise ConfigError("FlowTask runs on one process for now")
        self.raw = self.model = load_transformer(cfg.model.init).train().to(dev)
        if ckpt is not None:
            self.raw.load_state_dict(ckpt["model"])
        self.ema = EMA(self.raw, cfg.ema.decay, cfg.ema.warmup)
        if ckpt is not None:
            self.ema.load_full(list(ckpt["ema"].values()))
        self.data = FlowData(cfg.model.data, verify)
        self.num_stages = 1

    def loss(self, mb, autocast):
        dev, seed = self.info.device, self.cfg.seed
        x0 = mb.x.to(dev)  # (B, C, F, H, W)
        text = self.data.text[mb.y].to(dev)  # (B, T, D)
        if self.cfg.model.text_dropout:
            drop = self.cfg.model.text_dropout
            keep = torch.rand(len(text), generator=generator(seed, mb.step, mb.shard, "labels")) >= drop  # (B,)
            text = text * keep.to(dev, text.dtype).view(-1, 1, 1)  # dropped: zeros, the unconditional input
        sigma = torch.rand(len(x0), generator=generator(seed, mb.step, mb.shard, "time")).to(dev)  # (B,)
        noise = torch.randn(x0.shape, generator=generator(seed, mb.step, mb.shard, "noise")).to(dev)
        s = sigma.view(-1, *[1] * (x0.ndim - 1))
        x_t = (1 - s) * x0 + s * noise
        with autocast():
            out = self.model(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=text,
                             return_dict=False)[0]
        per = (out.float() - (noise - x0)).square().flatten(1).mean(1)  # (B,)
        return per.mean(), [float(per.detach().sum())], [len(per)]

    def weights(self) -> tuple[dict, dict]:
        model = {k: v.detach().to("cpu", copy=True) for k, v in self.raw.state_dict().items()}
        ema = {n: p.detach().to("cpu", copy=True) for n, p in self.ema.model.named_parameters()}
        return model, ema

    def export(self, ema_state: dict, folder: Path, target: Path) -> None:
        model = load_transformer(self.cfg.model.init)
        state = model.state_dict()
        state.update(ema_state)
        model.load_state_dict(state)
        model.save_pretrained(folder)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.raw.parameters())
        return f"{type(self.raw).__name__} ({n / 1e6:.3f}M parameters), flow matching on {len(self.data)} samples"


def train_flow(config: FlowConfig | dict | None = None, *, resume: str | os.PathLike | None = None,
               overrides: dict | None = None, verify: bool = True) -> TrainResult:
    return run_task(FlowTask, config, resume=resume, overrides=overrides, verify=verify)

