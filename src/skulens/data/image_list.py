"""Lists of images to run a batch job over: a Parquet or CSV manifest with a path column.

Relative paths are relative to the manifest's folder. Unlike a training catalogue's manifest, this is a list
of inputs like any other (a folder, a glob, paths on stdin): paths are not confined to the folder, and a path
that is missing becomes that image's error row downstream, not a failure of the whole list.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ._types import IMAGE_SUFFIXES, UNREAD_PHOTO_SUFFIXES, CatalogueError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_LIST_SUFFIXES", "folder_images", "is_image_list", "non_utf8_names", "read_image_list", "walk_images"]

IMAGE_LIST_SUFFIXES = (".csv", ".parquet")
PATH_COLUMN = "path"


def walk_images(root: Path) -> Iterator[Path]:
    """The image file names under the folder `root`, recursively, in no set order; hidden files and folders left
    out (macOS's ._x.jpg is no photo). Sub-folders that are symbolic links are walked, as torchvision's
    ImageFolder does (os.walk followlinks=True); a folder reached twice (a link cycle) is walked once."""
    walked: set[Path] = set()
    unread: list[Path] = []
    for top, dirs, files in os.walk(root, followlinks=True):
        real = Path(top).resolve()
        if real in walked:
            dirs.clear()
            continue
        walked.add(real)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        yield from (Path(top, name) for name in files
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."))
        unread += [Path(top, name) for name in files
                   if Path(name).suffix.lower() in UNREAD_PHOTO_SUFFIXES and not name.startswith(".")]
    if unread:  # an iPhone's HEIC photos were skipped without a word
        logger.warning("%s: %d photo(s) in formats skulens does not read were left out (e.g. %s): convert them to "
                       "JPEG or PNG", root, len(unread), unread[0])


def folder_images(root: Path) -> Iterator[Path]:
    """The image files under the folder `root` (:func:`walk_images`, less broken links): what a folder of photos
    means to every command that takes one."""
    return (f for f in walk_images(root) if f.is_file())


def non_utf8_names(paths: Iterable[str | os.PathLike]) -> str | None:
    """None when every path is valid UTF-8; else a message naming the ones that are not.

    A name from an old camera or a zip made on Windows may be Latin-1 ("caf\\xe9.jpg"). Python keeps such bytes
    as lone surrogates, which no result can hold: a CSV or JSON file, a Parquet column, a database row. Found
    when the inputs are listed, before any work, rather than as a traceback partway through the results."""
    bad = []
    for path in paths:
        name = os.fspath(path)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(name).decode("utf-8", "backslashreplace"))
    if not bad:
        return None
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return (f"{len(bad)} file name(s) not in UTF-8, which the results cannot hold: {shown}; rename them "
            "(e.g. convmv -f latin1 -t utf-8 -r --notest FOLDER)")


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
        reader = csv.DictReader(f, strict=True)  # a quote left open: an error, not rows swallowed
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
    import pyarrow as pa

    try:
        names = pq.read_schema(p).names
        if column not in names:
            raise CatalogueError(f"{p}: no {column!r} column (columns: {', '.join(names)})")
        values = pq.read_table(p, columns=[column]).column(column).to_pylist()
    except pa.ArrowException as exc:  # a torn or foreign file: a pyarrow traceback before
        raise CatalogueError(f"{p}: not a readable Parquet file ({str(exc)[:200]})") from None
    return [str(v) for v in values if v is not None]
