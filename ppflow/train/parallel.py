"""Distributed training applied from outside the model: DDP, FSDP2, compile, activation checkpointing.

Launch with torchrun (single or multi node): the rendezvous comes from its environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this code created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(ValueError):
    """A --device that does not name a device this machine has."""


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The torch device of a --device value (auto | cpu | cuda | cuda:N | mps ...); DeviceError names the option."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: CUDA is not available on this machine (no GPU visible, or torch "
                              "built without CUDA); use --device cpu or auto")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        elif dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type in ("mps", "xpu"):
        backend = getattr(torch, dev.type, None) if dev.type == "xpu" else getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise DeviceError(f"--device {device}: {dev.type} is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise DeviceError(f"--device {device}: ppflow runs on cpu, cuda, mps or xpu, not {dev.type}")
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev, owns)


def require_group(mode: str, command: str = "ppflow train") -> None:
    """One line, not torch's "RANK expected", when `--parallel MODE` needs the process group only torchrun starts."""
    if not dist.is_initialized():
        raise ValueError(f"--parallel {mode} needs torchrun (e.g. torchrun --nproc_per_node 2 -m ppflow.cli "
                         f"{command.removeprefix('ppflow ')} ...); one process trains with --parallel none")


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce(values: list[float], info: DistInfo, op: str = "sum") -> list[float]:
    """Sum (or max) a list of floats over all processes (float64)."""
    if not info.distributed:
        return list(values)
    dev = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- model transforms
def _checkpointed_forward(block: nn.Module, forward, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass (state-dict keys unchanged)."""
    for block in model.blocks:
        block.forward = functools.partial(_checkpointed_forward, block, block.forward)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block in place (state-dict keys unchanged)."""
    for block in model.blocks:
        block.compile()


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused: bool) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def shard_fsdp(model: nn.Module, info: DistInfo) -> nn.Module:
    """FSDP2: `fully_shard` every transformer block, then the root (embedders, final layer)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # the model returns a slice of its output (the velocity channels); we never modify it in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def parallel_mode(requested: str, info: DistInfo) -> str:
    if requested == "auto":
        return "ddp" if info.distributed else "none"
    if requested in ("ddp", "fsdp") and not info.distributed:
        return "none"  # one process: nothing to wrap
    return requested


def parallelize(model: nn.Module, info: DistInfo, mode: str, compile: bool = False,
                grad_checkpointing: bool = False, find_unused: bool = True) -> nn.Module:
    """Apply checkpointing, compile and DDP/FSDP; returns the module to call in training."""
    if grad_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        compile_blocks(model)
    if mode == "ddp":
        return wrap_ddp(model, info, find_unused)
    if mode == "fsdp":
        return shard_fsdp(model, info)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
