"""Pyramid schedules: which patch size serves which part of the time axis.

Time convention (SiT): t=0 is pure noise, t=1 is data. Stages are ordered from
noisiest (coarsest patches) to cleanest. A t equal to a boundary belongs to the
earlier, noisier stage, as in the official PPFlow code (`t <= 0.5 -> stage 0`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

Patch = tuple[int, int]


class ScheduleError(ValueError):
    """A pyramid schedule (or its use with a latent size) breaks a rule."""


@dataclass(frozen=True)
class Stage:
    """One stage: the time range (t_start, t_end] and its patch size (rows, cols)."""

    t_start: float
    t_end: float
    patch: Patch

    @property
    def span(self) -> float:
        return self.t_end - self.t_start


PRESETS: dict[str, str] = {
    "sit": "1:2x2",
    "ppf2": "0.5:4x4,1:2x2",
    "ppf3": "0.5:4x4,0.75:2x4,1:2x2",
}


@dataclass(frozen=True)
class PyramidSchedule:
    """Ordered stages covering [0, 1] contiguously, noisiest first."""

    stages: tuple[Stage, ...]
    base_patch: Patch = (2, 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "base_patch", tuple(int(v) for v in self.base_patch))
        self.validate()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_string(cls, spec: str, base_patch: Patch | None = None) -> PyramidSchedule:
        """Parse a preset name or `t_end:ph x pw,...`, e.g. `0.5:4x4,0.75:2x4,1:2x2`.

        The base patch defaults to the last (finest) stage's patch.
        """
        spec = spec.strip()
        if spec in PRESETS:
            spec = PRESETS[spec]
        stages, start = [], 0.0
        for item in spec.split(","):
            m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*:\s*(\d+)\s*x\s*(\d+)\s*", item)
            if not m:
                raise ScheduleError(
                    f"cannot parse schedule item {item!r} in {spec!r}: write stages as "
                    f"'t_end:ROWSxCOLS' separated by commas, e.g. '0.5:4x4,1:2x2', "
                    f"or use a preset ({', '.join(PRESETS)})"
                )
            end = float(m.group(1))
            stages.append(Stage(start, end, (int(m.group(2)), int(m.group(3)))))
            start = end
        base = base_patch if base_patch is not None else stages[-1].patch
        return cls(tuple(stages), base)

    @classmethod
    def from_config(cls, value: str | dict | PyramidSchedule) -> PyramidSchedule:
        """Accept a schedule string, a `to_dict()` dict, or a schedule."""
        if isinstance(value, PyramidSchedule):
            return value
        if isinstance(value, str):
            return cls.from_string(value)
        stages = tuple(Stage(float(s["t_start"]), float(s["t_end"]), tuple(s["patch"])) for s in value["stages"])
        return cls(stages, tuple(value.get("base_patch", stages[-1].patch)))

    @classmethod
    def for_base(cls, value: str | dict | PyramidSchedule, base: Patch) -> PyramidSchedule:
        """`value`, where a preset name (ppf2, ppf3) is scaled to a model whose finest patch is `base` (ppf2 on a
        4x4-patch model: 0.5:8x8,1:4x4); anything else as given."""
        sched = cls.from_config(value)
        if not (isinstance(value, str) and value.strip() in PRESETS) or tuple(base) == sched.base_patch:
            return sched
        fh, fw = base[0] // sched.base_patch[0], base[1] // sched.base_patch[1]
        if fh * sched.base_patch[0] != base[0] or fw * sched.base_patch[1] != base[1]:
            return sched  # not a multiple: the caller's base-patch check names the problem
        stages = tuple(Stage(s.t_start, s.t_end, (s.patch[0] * fh, s.patch[1] * fw)) for s in sched.stages)
        return cls(stages, tuple(base))

    def to_dict(self) -> dict:
        return {
            "stages": [{"t_start": s.t_start, "t_end": s.t_end, "patch": list(s.patch)} for s in self.stages],
            "base_patch": list(self.base_patch),
        }

    def to_string(self) -> str:
        return ",".join(f"{s.t_end:g}:{s.patch[0]}x{s.patch[1]}" for s in self.stages)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        if not self.stages:
            raise ScheduleError("a schedule needs at least one stage, e.g. '1:2x2'")
        bh, bw = self.base_patch
        if bh < 1 or bw < 1:
            raise ScheduleError(f"base patch {self.base_patch} must be positive")
        if self.stages[0].t_start != 0.0:
            raise ScheduleError(f"the first stage must start at t=0, got {self.stages[0].t_start}")
        if self.stages[-1].t_end != 1.0:
            raise ScheduleError(
                f"the last stage must end at t=1 (data), got {self.stages[-1].t_end}; "
                "stages must cover [0, 1]"
            )
        for i, s in enumerate(self.stages):
            if not (0.0 <= s.t_start <= 1.0 and 0.0 <= s.t_end <= 1.0):
                raise ScheduleError(f"stage {i} range ({s.t_start}, {s.t_end}] is outside [0, 1]")
            if not s.t_end > s.t_start:
                raise ScheduleError(
                    f"stage {i} boundary {s.t_end} is not greater than the previous one {s.t_start}: "
                    "boundaries must be strictly increasing"
                )
            if i > 0:
                prev = self.stages[i - 1].t_end
                if s.t_start > prev:
                    raise ScheduleError(f"gap between stage {i - 1} (ends {prev}) and stage {i} (starts {s.t_start})")
                if s.t_start < prev:
                    raise ScheduleError(f"stage {i} (starts {s.t_start}) overlaps stage {i - 1} (ends {prev})")
            ph, pw = s.patch
            if ph < 1 or pw < 1 or ph % bh or pw % bw:
                raise ScheduleError(
                    f"stage {i} patch {ph}x{pw} is not a multiple of the base patch {bh}x{bw}; "
                    "every stage patch must be a whole number of base patches"
                )

    def check_latent(self, height: int, width: int) -> None:
        """Raise if a latent of this size cannot be cut into every stage's patches."""
        for i, s in enumerate(self.stages):
            if height % s.patch[0] or width % s.patch[1]:
                raise ScheduleError(
                    f"latent {height}x{width} is not divisible by stage {i} patch {s.patch[0]}x{s.patch[1]}; "
                    "choose an image size whose latent is a multiple of every stage patch, or change the schedule"
                )

    # --------------------------------------------------------------------- query
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Interior stage boundaries (excluding 0 and 1)."""
        return tuple(s.t_end for s in self.stages[:-1])

    @property
    def patches(self) -> tuple[Patch, ...]:
        return tuple(s.patch for s in self.stages)

    def factors(self, stage: int) -> Patch:
        """How many base patches a stage's patch spans, (rows, cols)."""
        ph, pw = self.stages[stage].patch
        return ph // self.base_patch[0], pw // self.base_patch[1]

    def stage_of(self, t: torch.Tensor | float) -> torch.Tensor:
        """Stage index per sample; a boundary value belongs to the earlier stage."""
        t = torch.as_tensor(t, dtype=torch.float64 if not torch.is_tensor(t) else None)
        bounds = torch.tensor(self.boundaries, dtype=t.dtype, device=t.device)
        # right=False: index i with bounds[i-1] < t <= bounds[i]
        return torch.searchsorted(bounds, t.contiguous(), right=False)

    def tokens(self, stage: int, height: int, width: int) -> int:
        ph, pw = self.stages[stage].patch
        return (height // ph) * (width // pw)

    def __str__(self) -> str:
        return self.to_string()
