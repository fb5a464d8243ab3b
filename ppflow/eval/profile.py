"""Held-out flow-matching loss as a function of t: where along the noise axis a model loses quality.

Every model sees exactly the same draws: per t-bin a fixed t (uniform inside the bin), noise and label
for every held-out image, so curves of different models differ only by the models. The irreducible
part of the loss is large at both ends of [0, 1] (data variance at t=0, noise variance at t=1), so
compare models by the excess (difference or ratio per bin), not by the total.

For a model trained with `flow.time_sampling all_t`, `all_stages=True` adds one curve per patch size
at every t (the stage pinned), the input of a schedule search.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..flow.path import linear_path


@dataclass
class LossProfile:
    """Mean held-out loss per t-bin of several curves on the same draws."""

    edges: list[float]  # bin edges, len(bins) + 1
    curves: dict[str, list[float]]  # curve name -> mean loss per bin
    boundaries: dict[str, list[float]] = field(default_factory=dict)  # model label -> its stage boundaries
    samples_per_bin: int = 0

    @property
    def centers(self) -> list[float]:
        return [(a + b) / 2 for a, b in zip(self.edges[:-1], self.edges[1:])]

    def ratio(self, name: str, reference: str) -> list[float]:
        """Per-bin loss of `name` over that of `reference`."""
        return [a / b if b > 0 else float("nan") for a, b in zip(self.curves[name], self.curves[reference])]

    def mean(self, name: str, lo: float = 0.0, hi: float = 1.0) -> float:
        """Mean loss of a curve over the bins inside [lo, hi] (bins weighted by width)."""
        rows = [(b - a, v) for a, b, v in zip(self.edges[:-1], self.edges[1:], self.curves[name])
                if a >= lo - 1e-9 and b <= hi + 1e-9]
        width = sum(w for w, _ in rows)
        return sum(w * v for w, v in rows) / width if width else float("nan")

    def to_dict(self) -> dict:
        return {"bin_edges": self.edges, "samples_per_bin": self.samples_per_bin,
                "boundaries": self.boundaries, "loss": self.curves}

    @classmethod
    def from_dict(cls, d: dict) -> LossProfile:
        """The inverse of `to_dict` (a profile.json)."""
        return cls(list(d["bin_edges"]), {k: list(v) for k, v in d["loss"].items()}, dict(d.get("boundaries", {})),
                   int(d.get("samples_per_bin", 0)))

    def write(self, out: str | os.PathLike, title: str = "held-out loss per noise level") -> dict[str, Path]:
        """profile.csv, profile.json, profile.png (loss) and, with two or more curves, profile_ratio.png."""
        from ..utils.plots import line_plot

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "profile.csv", "json": out / "profile.json", "plot": out / "profile.png"}
        with open(paths["csv"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_start", "t_end", *self.curves])
            for i, (a, b) in enumerate(zip(self.edges[:-1], self.edges[1:])):
                w.writerow([f"{a:g}", f"{b:g}", *(f"{v[i]:.6g}" for v in self.curves.values())])
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        marks = sorted({b for v in self.boundaries.values() for b in v})
        series = {k: (self.centers, v) for k, v in self.curves.items()}
        line_plot(series, paths["plot"], title=f"{title} (dashed: stage boundaries)", xlabel="t (0 = noise, 1 = data)",
                  ylabel="velocity MSE", log_y=True, vlines=marks)
        names = list(self.curves)
        if len(names) > 1:
            ref = names[0]
            ratios = {f"{k} / {ref}": (self.centers, self.ratio(k, ref)) for k in names[1:]}
            paths["ratio"] = out / "profile_ratio.png"
            line_plot(ratios, paths["ratio"], title=f"loss relative to {ref} (dashed: stage boundaries)",
                      xlabel="t (0 = noise, 1 = data)", ylabel="loss ratio", vlines=marks)
        return paths


def _stages_of(model) -> list[tuple[str, int]]:
    sched = getattr(model, "schedule", None)
    if sched is None:
        return []
    return [(f"{s.patch[0]}x{s.patch[1]}", i) for i, s in enumerate(sched.stages)]


@torch.no_grad()
def loss_profile(
    models: Mapping[str, Callable],
    x1: torch.Tensor,
    y: torch.Tensor | None = None,
    bins: int = 20,
    seed: int = 0,
    batch_size: int = 256,
    all_stages: bool = False,
    progress: bool = False,
) -> LossProfile:
    """Held-out loss per t-bin of each `model(x, t, y, **cond) -> v` on images `x1` (N, C, H, W), labels `y` (N,).

    Bin k holds every image once, at t drawn uniformly in [k/bins, (k+1)/bins) with fixed noise (seeded by
    `seed` and k). A model picks its stage from t; with `all_stages` each multi-stage model also gets one
    curve per patch size with the stage pinned (`label [4x4]`).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if len(x1) == 0:
        raise ValueError("loss_profile needs at least one held-out image")
    edges = [k / bins for k in range(bins + 1)]
    runs: list[tuple[str, Callable, int | None]] = []
    bounds: dict[str, list[float]] = {}
    for label, model in models.items():
        runs.append((label, model, None))
        sched = getattr(model, "schedule", None)
        if sched is not None and sched.num_stages > 1:
            bounds[label] = list(sched.boundaries)
            if all_stages:
                runs += [(f"{label} [{patch}]", model, s) for patch, s in _stages_of(model)]
    curves = {name: [0.0] * bins for name, _, _ in runs}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=bins * len(runs), desc="loss profile", unit="bin", leave=False)
    for k in range(bins):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        t = edges[k] + (edges[k + 1] - edges[k]) * torch.rand(len(x1), generator=g)  # (N,) in the bin
        noise = torch.randn(x1.shape, generator=g)  # (N, C, H, W)
        for name, model, stage in runs:
            total = 0.0
            for i in range(0, len(x1), batch_size):
                xb = x1[i:i + batch_size]
                tb, nb = t[i:i + batch_size].to(xb.device), noise[i:i + batch_size].to(xb.device)
                path = linear_path(xb, nb, tb)
                yb = None if y is None else y[i:i + batch_size].to(xb.device)
                kw = {} if stage is None else {"stage": stage}
                v = model(path.x_t, tb, yb, **kw)  # (n, C, H, W)
                total += float((v.float() - path.target.float()).square().mean(dim=(1, 2, 3)).sum())
            curves[name][k] = total / len(x1)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return LossProfile(edges, curves, bounds, len(x1))
