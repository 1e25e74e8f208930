"""A report's document: blocks rendered to Markdown and to self-contained HTML.

`Document` collects headings, paragraphs, tables, preformatted text and figures;
`markdown()` links the figures as PNG files under `report_files/`, `html()` embeds the
same PNGs as base64 data URIs, so the page is self-contained.
"""

from __future__ import annotations

import base64
import html
import math
import re
import shutil
from pathlib import Path

from kmnist_lab import plots

FIG_DIR = "report_files"


class Document:
    """An ordered list of blocks rendered to Markdown and to HTML."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.blocks: list[tuple] = []
        self._names: set[str] = set()

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, rows))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def _new_file(self, name: str, suffix: str = ".png") -> Path:
        """A fresh path `report_files/<name><suffix>` (name made safe and unique)."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        while name in self._names:
            name += "_"
        self._names.add(name)
        folder = self.out_dir / FIG_DIR
        folder.mkdir(exist_ok=True)
        return folder / f"{name}{suffix}"

    def figure(self, fig, name: str, caption: str) -> None:
        """Saves a matplotlib Figure as `report_files/<name>.png` and adds it."""
        self.blocks.append(("img", plots.save(fig, self._new_file(name)), caption))

    def image(self, path: Path, caption: str, name: str | None = None) -> None:
        """Adds an existing PNG (e.g. a search's figures), copied next to the report
        (as `report_files/<name>`, default the file's own name) when it lies outside the
        report's folder, so the report can be moved."""
        path = Path(path)
        try:
            path.resolve().relative_to(self.out_dir.resolve())
        except ValueError:
            copy = self._new_file(name or path.stem, path.suffix)
            path = Path(shutil.copyfile(path, copy))
        self.blocks.append(("img", path, caption))

    def remove_stale_files(self) -> list[Path]:
        """Deletes the files in `report_files/` that this report does not show (figures
        of an earlier report of the folder); returns them."""
        folder = self.out_dir / FIG_DIR
        shown = {Path(block[1]).resolve() for block in self.blocks if block[0] == "img"}
        stale = [
            p for p in (folder.iterdir() if folder.is_dir() else ()) if p.resolve() not in shown
        ]
        for path in stale:
            if path.is_file():
                path.unlink()
        return stale

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "pre":
                out.append(f"```\n{block[1].rstrip()}\n```")
            elif kind == "table":
                headers, rows = block[1], block[2]
                lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "img":
                path, caption = block[1], block[2]
                out.append(f"![{caption}]({_relative(path, self.out_dir)})\n\n*{caption}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(block[1])}</pre>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
                rows = "".join(
                    "<tr>"
                    + "".join(f"<td>{_inline(_cell(c, markdown=False))}</td>" for c in row)
                    + "</tr>"
                    for row in block[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
                cap = html.escape(block[2])
                body.append(
                    f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{cap}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #555; font-size: 0.9em; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head><body>
{body}
</body></html>
"""


def _inline(text: str) -> str:
    """Escapes HTML, then renders `code` and **bold** (the Markdown we write)."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _cell(value, markdown: bool = True) -> str:
    """A table cell's text; in Markdown a `|` is escaped (it would split the row), in HTML
    it is kept as it is."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|") if markdown else str(value)


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_uri()
