"""Minimal line plots drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..io import write_atomic

# ten distinguishable colours (a search's verify plot has up to ~9 series); more series reuse them
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-3-5 ticks between 10**lo and 10**hi (log10 units in, values out)."""
    ticks = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 3, 5)]
    inside = [t for t in ticks if lo <= math.log10(t) <= hi]
    return inside if len(inside) >= 2 else [10**lo, 10**hi]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (720, 440),
    log_y: bool = False,
    vlines: Sequence[float] = (),
) -> Path:
    """Draw named (xs, ys) series on shared axes and save a PNG; `vlines`: dashed vertical markers at these x."""
    W, H = size
    left, right, top, bottom = 70, 20, 36, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pts = {k: [(float(x), float(y)) for x, y in zip(*v) if math.isfinite(float(y)) and (not log_y or y > 0)]
           for k, v in series.items()}
    xs = [x for v in pts.values() for x, _ in v] or [0.0, 1.0]
    ys = [math.log10(y) if log_y else y for v in pts.values() for _, y in v] or [0.0, 1.0]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def px(x: float, y: float) -> tuple[float, float]:
        yv = math.log10(y) if log_y else y
        return (left + (x - x0) / (x1 - x0) * (W - left - right), top + (1 - (yv - y0) / (y1 - y0)) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for tx in _nice_ticks(x0, x1):
        X, _ = px(tx, 10 ** y0 if log_y else y0)
        d.line([X, H - bottom, X, H - bottom + 4], fill="black")
        d.text((X - 12, H - bottom + 6), _fmt(tx), fill="black", font=font)
    for ty in _log_ticks(y0, y1) if log_y else _nice_ticks(y0, y1):
        _, Y = px(x0, ty)
        d.line([left - 4, Y, left, Y], fill="black")
        d.line([left, Y, W - right, Y], fill=(230, 230, 230))
        d.text((4, Y - 6), _fmt(ty), fill="black", font=font)
    for vx in vlines:
        if x0 <= vx <= x1:
            X, _ = px(vx, 10 ** y0 if log_y else y0)
            for y in range(top, H - bottom, 8):
                d.line([X, y, X, min(y + 4, H - bottom)], fill=(120, 120, 120))
    for i, (name, p) in enumerate(pts.items()):
        color = COLORS[i % len(COLORS)]
        if len(p) > 1:
            d.line([px(x, y) for x, y in p], fill=color, width=2)
        elif p:
            X, Y = px(*p[0])
            d.ellipse([X - 2, Y - 2, X + 2, Y + 2], fill=color)
        d.rectangle([W - right - 150, top + 8 + 16 * i, W - right - 138, top + 18 + 16 * i], fill=color)
        d.text((W - right - 132, top + 6 + 16 * i), name, fill="black", font=font)
    d.text((left, 10), title, fill="black", font=font)
    d.text(((W - len(xlabel) * 6) / 2, H - 18), xlabel, fill="black", font=font)
    d.text((4, top - 16), ylabel, fill="black", font=font)
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"), W * H * 3, "plot")
