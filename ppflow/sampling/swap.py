"""Stage swap: one model per stage of a pyramid, called like one PPFlow model.

`StageSwap([ppf, sit])` samples the coarse range with a PPFlow model's coarse stage and the fine range with an
untouched SiT; it attributes a quality gap to a stage, and accelerates an existing SiT with only a coarse-stage
model. Each member runs its own stage for the composite stage's t range; forward counts and FLOPs are counted per
composite stage from the member that ran it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.schedule import PyramidSchedule


class StageSwap(nn.Module):
    """`swap(x, t, y, stage=None) -> velocity`: stage s of `schedule` is served by `models[s]`.

    `schedule` defaults to the schedule of the first member with more than one stage. Every member's stage
    that serves composite stage s must cover that stage's t range (a one-stage model covers all of [0, 1]).
    """

    def __init__(self, models: Sequence[nn.Module], schedule: PyramidSchedule | str | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("StageSwap needs one model per stage")
        self.members = nn.ModuleList(models)
        if schedule is None:
            multi = [m.schedule for m in models if m.schedule.num_stages > 1]
            if not multi:
                raise ValueError("StageSwap of one-stage models needs a schedule, e.g. '0.5:8x8,1:4x4'")
            schedule = multi[0]
        self.schedule = PyramidSchedule.from_config(schedule)
        if len(models) != self.schedule.num_stages:
            raise ValueError(f"{len(models)} models given for the {self.schedule.num_stages} stages of "
                             f"{self.schedule.to_string()}; give exactly one per stage, noisiest first")
        self.inner: list[int] = []
        for s, (stage, m) in enumerate(zip(self.schedule.stages, models)):
            k = int(m.schedule.stage_of((stage.t_start + stage.t_end) / 2))
            own = m.schedule.stages[k]
            if not (own.t_start <= stage.t_start + 1e-9 and stage.t_end <= own.t_end + 1e-9):
                raise ValueError(
                    f"stage {s} ({stage.t_start:g}, {stage.t_end:g}] is not inside one stage of model {s} "
                    f"({m.schedule.to_string()}); choose a model whose stages cover that range")
            self.inner.append(k)
        nulls = {m.null_label for m in models}
        if len(nulls) != 1:
            raise ValueError(f"the models disagree on the class set (null labels {sorted(map(str, nulls))}); "
                             "all stages must be trained on the same classes")
        shapes = {(m.config.in_channels, tuple(m.config.input_size)) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"the models expect different inputs {sorted(shapes)}; stages must share the latent")
        self.config = models[0].config

    @property
    def null_label(self) -> int | None:
        return self.members[0].null_label

    def stage_flops(self, stage: int, height: int, width: int):
        """Analytic FLOPs of one forward in composite stage `stage` (the member's own stage)."""
        from ..models.flops import forward_flops

        return forward_flops(self.members[stage].config, self.inner[stage], height, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None,
                stage: torch.Tensor | int | None = None) -> torch.Tensor:
        """Velocity (N, C, H, W) of x (N, C, H, W) at t (N,), each sample from its stage's member."""
        N = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(N)  # (N,)
        if stage is None:
            stage = self.schedule.stage_of(t)
        stage = torch.as_tensor(stage, device=x.device, dtype=torch.long).expand(N)  # (N,)
        present = torch.unique(stage).tolist()
        if len(present) == 1:
            s = present[0]
            return self.members[s](x, t, y, stage=self.inner[s])  # (N, C, H, W)
        out = torch.empty_like(x)
        for s in present:
            idx = (stage == s).nonzero().squeeze(1)  # (n,)
            ys = None if y is None else y.index_select(0, idx)
            out.index_copy_(0, idx, self.members[s](x.index_select(0, idx), t.index_select(0, idx), ys,
                                                    stage=self.inner[s]))  # (n, C, H, W) into (N, C, H, W)
        return out
