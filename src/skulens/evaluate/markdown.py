"""Markdown for the reports people open in a viewer (`evaluate`'s and `detect evaluate`'s report.md).

Class names, product labels and paths are data: a name holding `|` would split a table cell, and one holding
`<img src=x onerror=...>` would be live HTML in a viewer that passes HTML through. Cells are written as text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from urllib.parse import quote

__all__ = ["cell", "code", "link", "table"]


def cell(text: object) -> str:
    """`text` as one table cell (or inline text) a viewer shows as it is: no HTML, no cell split, one line."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table's lines, every cell through `cell`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def link(path: str) -> str:
    """A relative or absolute file path as a link target: percent-encoded (spaces, <, >, parentheses)."""
    return quote(path, safe="/:")


def code(text: object) -> str:
    """`text` as an inline code span (shown literally, HTML included), fenced by more backticks than it holds."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
