"""Lists of images to run a batch job over: a Parquet or CSV manifest with a path column.

Relative paths are relative to the manifest's folder. Unlike a training catalogue's manifest, this is a list
of inputs like any other (a folder, a glob, paths on stdin): paths are not confined to the folder, and a path
that is missing becomes that image's error row downstream, not a failure of the whole list.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ._types import CatalogueError

__all__ = ["IMAGE_LIST_SUFFIXES", "is_image_list", "read_image_list"]

IMAGE_LIST_SUFFIXES = (".csv", ".parquet")
PATH_COLUMN = "path"


def is_image_list(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_LIST_SUFFIXES and p.is_file()


def read_image_list(manifest: str | os.PathLike, *, column: str = PATH_COLUMN) -> list[str]:
    """The image paths in `manifest`'s `column`, in file order; empty cells are skipped."""
    p = Path(manifest)
    raw = _parquet_column(p, column) if p.suffix.lower() == ".parquet" else _csv_column(p, column)
    paths = [v.strip() for v in raw if v and v.strip()]
    return [v if os.path.isabs(v) else str(p.parent / v) for v in paths]


def _csv_column(p: Path, column: str) -> list[str]:
    try:
        return _read_csv_column(p, column)
    except UnicodeDecodeError:
        from .encoding import not_utf8

        raise CatalogueError(f"{p}: {not_utf8(p)}") from None


def _read_csv_column(p: Path, column: str) -> list[str]:
    # utf-8-sig: spreadsheets save CSV with a byte-order mark that would otherwise glue onto "path".
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        names = {(n or "").strip().lower(): n for n in reader.fieldnames or []}
        if column.lower() not in names:
            raise CatalogueError(f"{p}: no {column!r} column (columns: {', '.join(names) or 'none'})")
        key = names[column.lower()]
        try:
            return [row[key] or "" for row in reader]
        except csv.Error as exc:
            raise CatalogueError(f"{p}: row {reader.line_num}: bad CSV ({exc})") from exc


def _parquet_column(p: Path, column: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"{p}: reading a Parquet list needs pyarrow: pip install 'skulens[ray]'") from exc
    names = pq.read_schema(p).names
    if column not in names:
        raise CatalogueError(f"{p}: no {column!r} column (columns: {', '.join(names)})")
    return [str(v) for v in pq.read_table(p, columns=[column]).column(column).to_pylist() if v is not None]
