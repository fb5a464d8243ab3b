"""Parallelism for a PPFluxTransformer, applied from outside: FSDP2 per FLUX block, then the root."""

from __future__ import annotations

import warnings

from torch import nn


def shard_ppflux(model: nn.Module, mesh=None) -> nn.Module:
    """`fully_shard` every double- and single-stream block of the base, then the whole PPFlux (extras, embedders).

    Stages unused in a step leave their projections' gradients None (FSDP2 handles that); DDP instead needs
    `find_unused_parameters=True` or one stage per micro-batch.
    """
    from torch.distributed.fsdp import fully_shard

    # FLUX blocks and the token ungrouping return views; nothing modifies them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in [*model.base.transformer_blocks, *model.base.single_transformer_blocks]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
