"""What every trainer's config has (`ppflow train`, `ppflow flux train`): run options, optimizer and EMA sections.

A trainer's config extends RunConfig (redeclaring a field changes its default); `validate` checks any of them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


def _opt(default, help: str, **check):
    """A field with its help text and the checks `validate` applies: min=, below= (with min: [min, below)), choices=."""
    return field(default=default, metadata={"help": help, **check})


@dataclass
class OptimSection:
    """AdamW and the learning rate."""

    lr: float = _opt(1e-4, "learning rate (DiT/SiT: 1e-4, constant)")
    weight_decay: float = _opt(0.0, "AdamW weight decay (DiT/SiT: 0)")
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})
    eps: float = _opt(1e-8, "AdamW epsilon")
    grad_clip: float | None = _opt(1.0, "clip the global gradient norm to this value (none = no clipping)")
    warmup_steps: int = _opt(0, "linear learning-rate warm-up over this many steps (0 = none)", min=0)
    fused: bool | None = _opt(None, "AdamW's fused kernel: true | false | none = auto (fused when every parameter is "
                                    "a plain CPU/CUDA tensor, e.g. not FSDP-sharded; 3-4x faster update on CPU)")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant."""
        w = self.warmup_steps
        return self.lr * (min(1.0, (step + 1) / w) if w else 1.0)

    def adamw(self, params) -> torch.optim.AdamW:
        """The AdamW these settings describe (`fused` resolved for `params`)."""
        params = list(params)
        return torch.optim.AdamW(params, lr=self.lr, betas=tuple(self.betas), eps=self.eps,
                                 weight_decay=self.weight_decay, fused=use_fused_adamw(params, self.fused))


def use_fused_adamw(params, fused: bool | None = None) -> bool | None:
    """`fused`, or for None whether torch's fused AdamW takes `params` (plain float CPU/CUDA tensors, no DTensor)."""
    if fused is not None:
        return fused
    params = [p["params"] if isinstance(p, dict) else [p] for p in params]
    flat = [p for group in params for p in group]
    ok = all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
             for p in flat)
    return True if ok and flat else None


@dataclass
class EmaSection:
    """Exponential moving average of the weights (what sampling uses)."""

    decay: float = _opt(0.9999, "EMA decay per step (DiT/SiT: 0.9999; short runs want less, e.g. 0.999)", min=0,
                        below=1)
    warmup: bool = _opt(False, "use min(decay, (1 + step) / (10 + step)) so a short run's EMA does not keep "
                               "the random init (DiT/SiT: off)")


@dataclass
class RunConfig:
    """The options every trainer has (`ppflow train`, `ppflow flux train`); a trainer's config extends it."""

    optim: OptimSection = field(default_factory=OptimSection)
    ema: EmaSection = field(default_factory=EmaSection)
    out: str | None = _opt(None, "run folder (default: runs/<model>-<data>-<time>)")
    seed: int = _opt(0, "seed of initialization, data order and noise (per-rank streams are derived from it)")
    batch_size: int = _opt(256, "global batch size (all processes and accumulation steps together)", min=1)
    grad_accum: int = _opt(1, "micro-batches per optimizer step on each process", min=1)
    max_steps: int = _opt(400_000, "stop after this many optimizer steps", min=0)
    log_every: int = _opt(10, "steps between metrics.csv / TensorBoard rows", min=1)
    save_every: int = _opt(5_000, "steps between checkpoints (checkpoints/last.pt and ema/)", min=1)
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16",
                          choices=("auto", "fp32", "bf16"))
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice; 1 is often fastest for "
                                     "tiny models on a busy machine)", min=1)
    grad_checkpointing: bool = _opt(False, "recompute block activations in the backward pass (saves memory)")
    parallel: str = _opt("auto", "auto (DDP under torchrun) | none | ddp | fsdp (FSDP2 fully_shard per block)",
                         choices=("auto", "none", "ddp", "fsdp"))
    progress: bool = _opt(True, "show a tqdm progress bar")
    tensorboard: bool = _opt(True, "write TensorBoard scalars to RUN_DIR/tb (needs tensorboard)")

    def checks(self) -> list[tuple[bool, str]]:
        """(holds, message naming the option) for the checks beyond each field's own (`_opt`)."""
        o = self.optim
        return [
            (o.lr > 0, f"optim.lr must be positive, got {o.lr}"),
            (len(o.betas) == 2, f"optim.betas needs two values, got {o.betas}"),
            (o.grad_clip is None or o.grad_clip > 0, f"optim.grad_clip must be positive or none, got {o.grad_clip}"),
            (all(math.isfinite(v) for v in (o.lr, o.eps, o.weight_decay)),
             "optim.lr, optim.eps and optim.weight_decay must be finite numbers"),
        ]


def validate(cfg: RunConfig) -> None:
    """Value checks that types alone can't express (each field's, then `cfg.checks()`); errors name the option."""
    from .parallel import resolve_device

    problems = [*_field_problems(cfg), *(msg for ok, msg in cfg.checks() if not ok)]
    if problems:
        raise ConfigError(problems[0])
    try:
        resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(str(e).replace("--device", "device", 1)) from None


def _field_problems(cfg, prefix: str = ""):
    """Messages for the values outside what their fields declare (`_opt`'s min, below, choices)."""
    for f in dataclasses.fields(cfg):
        v, key, m = getattr(cfg, f.name), prefix + f.name, f.metadata
        if dataclasses.is_dataclass(v):
            yield from _field_problems(v, key + ".")
        elif "choices" in m and v not in m["choices"]:
            yield f"{key} {v!r} is not one of {m['choices']}"
        elif v is not None and "below" in m and not m["min"] <= v < m["below"]:
            yield f"{key} must be in [{m['min']}, {m['below']}), got {v}"
        elif v is not None and "min" in m and not v >= m["min"]:
            yield f"{key} must be >= {m['min']}, got {v}"
