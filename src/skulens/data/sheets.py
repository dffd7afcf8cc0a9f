"""Text cells of the CSV files people open in a spreadsheet (predictions, tags, counts, the stock export).

A cell that starts with = + - @ (or a tab or CR) is run as a formula by Excel, LibreOffice and Google Sheets: a
product named `=HYPERLINK(...)` or a photo file named so would run in the shop's spreadsheet. Such a cell is
written with a leading ', which spreadsheets show as text (OWASP's advice for CSV injection). Files skulens reads
back (manifests, label lists) are not written through here: their cells stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["spreadsheet_cell", "spreadsheet_row"]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str | None) -> str | None:
    """`text` as a spreadsheet opens it as text: a leading ' before a formula's first character."""
    return "'" + text if text and text.startswith(_FORMULA_STARTS) else text


def spreadsheet_row(cells: Iterable[Any]) -> list[Any]:
    """Every text cell of a row through `spreadsheet_cell`; numbers (and None) as they are."""
    return [spreadsheet_cell(c) if isinstance(c, str) else c for c in cells]
