"""Stage plans for diffusers models: which latent patch serves which part of the noise axis, in 2D or 3D.

A plan is written like a ppflow schedule, in t = 1 - sigma and latent pixels: `0.5:4x4,1:2x2` for images,
`0.3:2x4x4,0.6:1x4x4,1:1x2x2` (frames x rows x cols) for video. Presets (ppf2, ppf3, and the video ones
below) are scaled to the family's base patch. The finest stage must be the model's own patch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ...models.schedule import PRESETS, PyramidSchedule, ScheduleError
from ...sampling.sigmas import FluxShift, stage_of_sigma, time_shift

VIDEO_PRESETS = {  # in multiples of the base patch (frames, rows, cols)
    "ppf2-video": "0.5:2x2x2,1:1x1x1",  # 8x fewer tokens in the noisier half
    "ppf3-video": "0.3:2x2x2,0.6:1x2x2,1:1x1x1",  # (2,4,4) -> (1,4,4) -> (1,2,2) on Wan's (1,2,2)
}
BOUNDARY_RULES = ("unshifted", "sigma")


@dataclass(frozen=True)
class StagePlan:
    """Stages noisiest first: where each ends in t and how many base tokens one of its tokens covers per axis."""

    ends: tuple[float, ...]  # t_end per stage, the last is 1.0
    factors: tuple[tuple[int, ...], ...]  # per stage, one factor per latent axis (2 or 3)
    spec: str  # as written by the user (kept for configs)

    @classmethod
    def parse(cls, spec: str, base_patch: tuple[int, ...]) -> StagePlan:
        """`spec` (preset or items) for a model whose own patch is `base_patch` (2 or 3 axes, latent pixels)."""
        spec = str(spec).strip()
        dims = len(base_patch)
        if spec in VIDEO_PRESETS:
            if dims != 3:
                raise ScheduleError(f"{spec} is a video schedule; this model is 2D: use ppf2 or ppf3")
            items = _items(VIDEO_PRESETS[spec], 3)
            return cls._build([(t, tuple(f)) for t, f in items], spec)
        if spec in PRESETS or not any(len(p) == 3 for _, p in _items(spec, None)):
            base2 = tuple(base_patch[-2:])
            sched = PyramidSchedule.for_base(spec, base2)
            if tuple(sched.base_patch) != base2 or sched.stages[-1].patch != base2:
                raise ScheduleError(f"schedule {spec!r}: its finest patch {sched.stages[-1].patch} must be the "
                                    f"model's own patch {base2[0]}x{base2[1]} (latent pixels)")
            lead = (1,) * (dims - 2)
            return cls._build([(s.t_end, lead + sched.factors(i)) for i, s in enumerate(sched.stages)], spec)
        if dims != 3:
            raise ScheduleError(f"schedule {spec!r} has frame patches but this model is 2D: write 't:ROWSxCOLS'")
        stages = []
        for t, patch in _items(spec, 3):
            if any(p % b for p, b in zip(patch, base_patch, strict=True)):
                raise ScheduleError(f"stage patch {'x'.join(map(str, patch))} is not a multiple of the model's "
                                    f"patch {'x'.join(map(str, base_patch))}")
            stages.append((t, tuple(p // b for p, b in zip(patch, base_patch, strict=True))))
        return cls._build(stages, spec)

    @classmethod
    def _build(cls, stages: list, spec: str) -> StagePlan:
        ends = tuple(float(t) for t, _ in stages)
        if ends[-1] != 1.0 or any(b <= a for a, b in zip((0.0, *ends), ends, strict=False)) or ends[0] <= 0:
            raise ScheduleError(f"schedule {spec!r}: stage ends must increase strictly in (0, 1] and end at 1")
        if any(f != 1 for f in stages[-1][1]):
            raise ScheduleError(f"schedule {spec!r}: the finest stage must be the model's own patch")
        return cls(ends, tuple(tuple(int(v) for v in f) for _, f in stages), spec)

    @property
    def num_stages(self) -> int:
        return len(self.ends)

    @property
    def coarse(self) -> bool:
        return self.num_stages > 1

    def tokens(self, stage: int) -> int:
        """Base tokens per token of `stage` (the token count divides by it)."""
        return math.prod(self.factors[stage])

    def unshifted_boundaries(self) -> tuple[float, ...]:
        """Interior boundaries as unshifted sigmas (1 - t_end), descending."""
        return tuple(1.0 - t for t in self.ends[:-1])

    def sigma_boundaries(self, rule: str, shift: FluxShift, seq_len: int, mu: float | None = None
                         ) -> tuple[float, ...]:
        """Boundaries in the sigma the network receives; `unshifted`: mapped through the time shift `mu` of the
        pipeline's grid, else the resolution's (`shift`)."""
        if rule not in BOUNDARY_RULES:
            raise ValueError(f"unknown boundary rule {rule!r}; choose one of {BOUNDARY_RULES}")
        raw = self.unshifted_boundaries()
        if rule == "sigma":
            return raw
        mu = shift.mu(seq_len) if mu is None else mu
        return tuple(time_shift(mu, s) for s in raw)

    def stage_of(self, sigma: torch.Tensor, rule: str, shift: FluxShift, seq_len: int, mu: float | None = None
                 ) -> list[int]:
        """Stage per sample from the network's sigma (a sigma on a boundary belongs to the finer stage)."""
        return stage_of_sigma(sigma, self.sigma_boundaries(rule, shift, seq_len, mu)).tolist()


def _items(spec: str, dims: int | None) -> list[tuple[float, tuple[int, ...]]]:
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*:\s*(\d+(?:\s*x\s*\d+)+)\s*", item)
        if not m:
            raise ScheduleError(f"cannot parse schedule item {item!r} in {spec!r}: write 't_end:ROWSxCOLS' (images) "
                                "or 't_end:FRAMESxROWSxCOLS' (video), comma-separated, or a preset "
                                f"({', '.join([*PRESETS, *VIDEO_PRESETS])})")
        patch = tuple(int(v) for v in m.group(2).replace(" ", "").split("x"))
        if dims is not None and len(patch) != dims:
            raise ScheduleError(f"schedule item {item!r}: give {dims} sizes (frames x rows x cols)")
        out.append((float(m.group(1)), patch))
    return out
