"""Batched, sharded feature extraction: each torchrun rank takes a contiguous shard, results gathered in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dist
from .inception import InceptionV3, load_inception


def map_batches(fn: Callable[[np.ndarray], dict[str, torch.Tensor]], images, batch_size: int, desc: str = "",
                progress: bool = True, local: bool = False) -> dict[str, np.ndarray]:
    """Apply `fn` to batches of `images` (sliceable uint8 (N, H, W, C)) and concatenate each output in image order.
    Under torchrun every rank processes its shard of `images` and all ranks get everything back; with `local=True`
    the images already are this rank's shard (e.g. samples it generated) and the shards are concatenated in rank
    order."""
    start, stop = (0, len(images)) if local else dist.shard_range(len(images))
    outs: dict[str, list[torch.Tensor]] = {}
    bar = tqdm(total=stop - start, desc=desc, unit="img", disable=not progress or dist.rank() != 0)
    for i in range(start, stop, batch_size):
        batch = np.asarray(images[i: min(i + batch_size, stop)])
        for k, v in fn(batch).items():
            outs.setdefault(k, []).append(v.float())
        bar.update(len(batch))
    bar.close()
    cat = {k: torch.cat(v) for k, v in outs.items()}
    if dist.is_distributed():  # a rank with an empty shard learns the output names and shapes from the others
        layouts = [None] * dist.world_size()
        torch.distributed.all_gather_object(layouts, {k: tuple(v.shape[1:]) for k, v in cat.items()})
        layout = next((lay for lay in layouts if lay), {})
        cat = cat or {k: torch.zeros((0, *shape)) for k, shape in layout.items()}
    return {k: dist.gather_rows(v).cpu().numpy() for k, v in cat.items()}


@dataclass
class InceptionFeatures:
    """pool_3 features (N, 2048) for FID / precision / recall, spatial features (N, 2023) for sFID (or None)."""

    pool: np.ndarray
    spatial: np.ndarray | None = None


def inception_features(images, batch_size: int = 64, device: torch.device | str | None = None, spatial: bool = False,
                       network: InceptionV3 | None = None, progress: bool = True,
                       local: bool = False) -> InceptionFeatures:
    """Inception-v3 features of uint8 images (N, H, W[, C]) prepared as ADM does (TF bilinear resize to 299,
    gray repeated to RGB). Batched with a progress bar; sharded over torchrun ranks (see `map_batches`)."""
    if device is None:
        device = next(network.parameters()).device if network is not None else "cpu"
    net = network if network is not None else load_inception(device)

    def run(batch: np.ndarray) -> dict[str, torch.Tensor]:
        pool, sp = net.features(batch, spatial=spatial)
        return {"pool": pool} if sp is None else {"pool": pool, "spatial": sp}

    out = map_batches(run, images, batch_size, desc="Inception features", progress=progress, local=local)
    return InceptionFeatures(out["pool"], out.get("spatial"))
