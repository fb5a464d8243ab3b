"""The one report writer: markdown (+ HTML, + JSON) from text, tables, images and the commands that reproduce them."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import write_text_atomic


@dataclass
class Report:
    """A report built from sections of text, tables, images and code blocks."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        self.blocks.append(("table", (header, [[_cell(v) for v in r] for r in rows])))

    def image(self, path: str, caption: str = "") -> None:
        self.blocks.append(("img", (path, caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, v in self.blocks:
            if kind == "h2":
                out += [f"## {v}", ""]
            elif kind == "p":
                out += [v, ""]
            elif kind == "table":
                header, rows = v
                out.append(_md_row(header))
                out.append("|" + "---|" * len(header))
                out += [_md_row(r) for r in rows]
                out.append("")
            elif kind == "img":
                path, caption = v
                out += [f"![{caption}]({path})", "", f"*{caption}*" if caption else "", ""]
            elif kind == "code":
                out += ["```bash", v.rstrip(), "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>",
               ("<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
               "th{background:#f4f4f4}pre{background:#f6f8fa;padding:1em;overflow-x:auto}"
               "img{max-width:100%;image-rendering:pixelated}figcaption{color:#555}</style></head><body>"),
               f"<h1>{esc(self.title)}</h1>"]
        for kind, v in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{esc(v)}</h2>")
            elif kind == "p":
                out.append(f"<p>{esc(v)}</p>")
            elif kind == "table":
                header, rows = v
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            elif kind == "img":
                path, caption = v
                out.append(f"<figure><img src='{esc(path)}'><figcaption>{esc(caption)}</figcaption></figure>")
            elif kind == "code":
                out.append(f"<pre>{esc(v)}</pre>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, directory: str | os.PathLike, stem: str = "report", html: bool = True, data: dict | None = None,
              data_name: str | None = None) -> Path:
        """Write `<stem>.md`, `<stem>.html` (unless html=False) and `data` as JSON (`data_name`, default `<stem>.json`)
        atomically; returns the markdown path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {f"{stem}.md": self.markdown()}
        if html:
            files[f"{stem}.html"] = self.html()
        if data is not None:
            files[data_name or f"{stem}.json"] = json.dumps(data, indent=2)
        for name, text in files.items():
            write_text_atomic(directory / name, text)
        return directory / f"{stem}.md"


def _md_row(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def format_scales(v: list[float] | None) -> str | None:
    return None if v is None else "[" + ", ".join(f"{x:g}" for x in v) + "]"


def millions(n: int | None) -> float | None:
    return None if n is None else n / 1e6


def plain_json(v):
    return json.loads(json.dumps(v, default=str))


def hardware() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def side_by_side(panels: list[tuple[str, np.ndarray]], scale: int = 1, gap: int = 16) -> np.ndarray:
    """Place captioned uint8 (H, W, C) panels next to each other on a white canvas."""
    imgs = [np.kron(a, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else a for _, a in panels]
    h = max(a.shape[0] for a in imgs)
    w = sum(a.shape[1] for a in imgs) + gap * (len(imgs) + 1)
    top = 20
    canvas = Image.new("RGB", (w, h + top + gap), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = gap
    for (caption, _), a in zip(panels, imgs):
        rgb = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
        canvas.paste(Image.fromarray(rgb), (x, top))
        draw.text((x, 4), caption, fill="black", font=font)
        x += a.shape[1] + gap
    return np.asarray(canvas)
