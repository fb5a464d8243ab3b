"""Stage-gated speed adapters: a frozen source backbone plus a LoRA that acts on coarse-stage tokens only.

A PPFlow model adapted from a one-stage SiT/DiT (convert.adaptation.adapt) keeps the source's blocks and, as its
finest stage, the source's projections. `add_stage_lora` freezes all of it and wraps the chosen linear layers of
the blocks in `GatedLoRA`: the low-rank update is added to the rows of coarse-stage tokens (or samples, for the
per-sample adaLN layers) and to no other row. Packed batches hold the coarse stages first, so "coarse rows" are a
leading slice that `PPFlowTransformer.forward` sets on the model's `StageGate`. A fine-stage forward computes no
LoRA at all and is the source model bit for bit. The trainable part (coarse projections, stage embeddings, LoRA)
is what an adapter folder holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io import (
    HASH_KEY,
    CheckpointError,
    content_sha256,
    one_line,
    replace_folder,
    save_safetensors_atomic,
    write_text_atomic,
)

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_TAG = "ppflow-adapter"
TOKEN_TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
SAMPLE_TARGETS = {"adaLN": "adaLN_modulation.1"}  # per-sample conditioning layers: gated by sample
TARGETS = (*TOKEN_TARGETS, *SAMPLE_TARGETS)


@dataclass
class AdapterConfig:
    """What an adapter adds to its base and which base it belongs to."""

    schedule: str = "ppf2"  # the PPFlow schedule; its finest stage is the base model itself
    rank: int = 16  # LoRA rank
    alpha: float = 16.0  # LoRA scale alpha / rank
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # block layers the LoRA adapts
    coarse_output: str = "v"  # what coarse stages emit (models/output.py)
    base: str = ""  # where the base came from (a folder or release name), for loading it again
    base_sha256: str = ""  # content hash of the base's weights: another base is refused
    method: str = "lora-distill"  # how it was trained (for the record)
    guided: float | None = None  # the CFG scale distilled into the coarse stage (sample it with CFG 1 there)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"adapter targets {unknown} are not among {list(TARGETS)}")
        if self.rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {self.rank}")


class StageGate:
    """How many leading rows of the current forward belong to coarse stages (set by the model's forward)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.samples = 0


class GatedLoRA(nn.Module):
    """`base(x)` plus `scale * B A x` on the gate's leading (coarse) rows; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, gate: StageGate, per_sample: bool) -> None:
        super().__init__()
        self.base, self.gate, self.per_sample = base, gate, per_sample
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self._merged: tuple[tuple, torch.Tensor] | None = None

    def merged_weight(self) -> torch.Tensor:
        """W + scale * B A, kept until one of the three changes (in-place updates bump their versions)."""
        key = (self.base.weight._version, self.lora_A._version, self.lora_B._version, self.base.weight.device)
        if self._merged is None or self._merged[0] != key:
            self._merged = (key, self.base.weight + self.scale * (self.lora_B @ self.lora_A))
        return self._merged[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.gate.samples if self.per_sample else self.gate.tokens
        if k == 0:
            return self.base(x)  # the fine stage: the source's layer, nothing more
        if k == x.shape[0] and not torch.is_grad_enabled():  # a coarse forward when sampling: one product
            return F.linear(x, self.merged_weight(), self.base.bias)
        y = self.base(x)  # (R, out)
        delta = (x[:k] @ self.lora_A.T) @ self.lora_B.T * self.scale  # (k, out)
        if k == x.shape[0]:
            return y + delta
        return torch.cat([y[:k] + delta, y[k:]], 0)  # (R, out): the fine rows untouched


def add_stage_lora(model: nn.Module, rank: int = 16, alpha: float = 16.0, targets=TARGETS) -> nn.Module:
    """Freeze `model` (an adapted PPFlowTransformer), wrap the target layers of every block in GatedLoRA and mark
    the adapter's parameters trainable: coarse projections, the stage embedding, the LoRA. Works in place."""
    if model.schedule.num_stages < 2:
        raise ValueError("a speed adapter needs a schedule with a coarse stage, e.g. ppf2")
    gate = StageGate()
    model.requires_grad_(False)
    for block in model.blocks:
        for name in targets:
            path = TOKEN_TARGETS.get(name) or SAMPLE_TARGETS[name]
            parent_path, _, leaf = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            base = getattr(parent, leaf)
            setattr(parent, leaf, GatedLoRA(base, rank, alpha, gate, per_sample=name in SAMPLE_TARGETS))
    model.stage_gate = gate
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name, model.schedule.num_stages))
    if model.level_embedder is not None:  # the finest stage's embedding stays the source's (zero)
        fine = model.schedule.num_stages - 1
        model.level_embedder.weight.register_hook(lambda g: g.index_fill(0, torch.tensor([fine], device=g.device), 0))
    return model


def is_adapter_param(name: str, num_stages: int) -> bool:
    """Coarse patchify/unpatchify, the stage embedding and LoRA matrices; never the finest stage's projections."""
    fine = num_stages - 1
    if "lora_" in name or name.startswith("level_embedder."):
        return True
    for prefix in ("x_embedder.", "final_layer.unpatchify."):
        if name.startswith(prefix):
            return int(name[len(prefix):].split(".")[0]) != fine
    return False


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (what an adapter folder stores), detached on the CPU."""
    n = model.schedule.num_stages
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if is_adapter_param(k, n)}


def save_adapter(model: nn.Module, config: AdapterConfig, directory: str | os.PathLike,
                 state: dict[str, torch.Tensor] | None = None) -> Path:
    """An adapter folder (adapter.safetensors with its SHA-256, adapter_config.json), written atomically."""
    state = adapter_state(model) if state is None else state

    def write(folder: Path) -> None:
        save_safetensors_atomic(state, folder / ADAPTER_WEIGHTS, {"format": ADAPTER_TAG, HASH_KEY: content_sha256(state)})
        write_adapter_config(config, folder)

    return replace_folder(directory, write)


def write_adapter_config(config: AdapterConfig, folder: str | os.PathLike) -> None:
    """`folder`/adapter_config.json, written atomically."""
    write_text_atomic(Path(folder) / ADAPTER_CONFIG, json.dumps({"format": ADAPTER_TAG, **asdict(config)}, indent=2),
                      "adapter config")


def read_adapter_config(folder: str | os.PathLike) -> AdapterConfig:
    """The AdapterConfig of an adapter folder; a damaged or foreign file is a CheckpointError naming it."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        meta = json.loads(path.read_text("utf-8"))
        meta.pop("format", None)
        return AdapterConfig(**meta)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read {path} ({one_line(e)}); the adapter folder is damaged or from another "
                              "tool: save it again") from None


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_size(model: nn.Module) -> tuple[int, float]:
    """(adapter parameters, their share of the base model's parameters)."""
    n = model.schedule.num_stages
    extra = sum(p.numel() for k, p in model.named_parameters() if is_adapter_param(k, n))
    base = sum(p.numel() for k, p in model.named_parameters() if not is_adapter_param(k, n))
    return extra, extra / base


def apply_adapter(source: nn.Module, config: AdapterConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """`source` (a one-stage PPFlowTransformer, left untouched) with the adapter tensors `state` on top: the
    model of `config.schedule` whose finest stage is `source` and whose coarse stages are the adapter's."""
    from .backbone import PPFlowTransformer

    if source.schedule.num_stages != 1:
        raise ValueError(f"an adapter applies to a one-stage SiT/DiT base, not a {source.schedule.num_stages}-stage "
                         "model")
    cfg = replace(source.config, schedule=config.schedule, level_embedding=None, level_init_std=0.0,
                  coarse_output=config.coarse_output, name="")
    with torch.device("meta"):
        model = PPFlowTransformer(cfg)
    fine = model.schedule.num_stages - 1
    plain = {k: v for k, v in state.items() if "lora_" not in k}
    for k, v in source.state_dict().items():  # the source's projections are the finest stage's
        for prefix in ("x_embedder.", "final_layer.unpatchify."):
            if k.startswith(prefix + "0."):
                k = f"{prefix}{fine}.{k[len(prefix) + 2:]}"
        plain[k] = v
    missing = sorted(set(model.state_dict()) - set(plain))
    if missing:
        raise ValueError(f"the adapter lacks {missing[:5]}: it was saved for another schedule or base")
    shapes = [k for k, v in model.state_dict().items() if plain[k].shape != v.shape]
    if shapes:
        raise ValueError(f"adapter tensors {shapes[:5]} do not fit this base: it belongs to another base size")
    model.load_state_dict({k: plain[k] for k in model.state_dict()}, strict=True, assign=True)
    add_stage_lora(model, config.rank, config.alpha, config.targets)
    lora = {k: v for k, v in state.items() if "lora_" in k}
    named = dict(model.named_parameters())
    expected = {k for k in named if "lora_" in k}
    if set(lora) != expected:
        raise ValueError(f"the adapter's LoRA tensors do not match rank {config.rank} / targets {config.targets}")
    with torch.no_grad():
        for k, v in lora.items():
            named[k].copy_(v)
    return model.train(source.training)
