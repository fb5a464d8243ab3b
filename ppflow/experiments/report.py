"""Markdown + HTML reports: tables, images and the commands that reproduce them."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path


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
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(r) + " |" for r in rows]
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

    def write(self, directory: str | os.PathLike, stem: str = "report") -> Path:
        """Write `<stem>.md` and `<stem>.html` atomically; returns the markdown path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".md", self.markdown()), (".html", self.html())):
            tmp = directory / f"{stem}{suffix}.tmp"
            tmp.write_text(text)
            os.replace(tmp, directory / f"{stem}{suffix}")
        return directory / f"{stem}.md"


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
