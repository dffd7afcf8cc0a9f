"""Reading and checking what a dataset's text files say: cells, path strings, and that listed images exist."""

from __future__ import annotations

import csv
import difflib
import logging
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from ._types import CatalogueError

MAX_LISTED = 5  # missing files named in an error; the count covers the rest

logger = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def read_csv_table(handle: IO[str], path: Path, *, required: Sequence[str], known: Sequence[str],
                   quiet: Sequence[str] = ()) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header (stripped, lower-case) and the rows of a catalogue's CSV, each with its line number.

    Refused, naming the row: a quote left open (csv's strict mode; without it every row after a stray `"` became
    one cell, read in silence), a row with more or fewer cells than columns (an unquoted comma shifted the cells
    after it), a column named twice (the last copy was read). A column skulens does not read is said once, and
    refused when it looks like a misspelt one it reads ("spilt": every photo went to train)."""
    reader = csv.DictReader(handle, strict=True)
    try:
        header = [name.strip().lower() for name in reader.fieldnames or []]
    except csv.Error as exc:
        raise CatalogueError(f"{path}: row 1: bad CSV ({exc})") from None
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise CatalogueError(f"{path}: column {twice[0]!r} is named twice in the header")
    require_columns(path, [h for h in header if h], required)
    check_columns(path, [h for h in header if h and h not in quiet], known)  # quiet: unread, and known to be
    reader.fieldnames = header
    rows = []
    try:
        for row in reader:
            extra = row.get(None)
            if extra is not None and not any(v.strip() for v in extra):  # a trailing comma or two: empty cells
                del row[None]
            if None in row or None in row.values():
                cells = len(header) + len(row.get(None) or ()) - sum(v is None for v in row.values())
                fix = ("quote a cell that holds a comma" if cells > len(header)
                       else "give every column a cell (an empty one is two commas in a row)")
                raise CatalogueError(f"{path}: row {reader.line_num}: {cells} cell(s) for {len(header)} "
                                     f"columns ({', '.join(header)}); {fix}")
            row.pop("", None)  # an unnamed column (a trailing comma in the header)
            rows.append((reader.line_num, dict(row)))
    except csv.Error as exc:  # the row after the last one read is where it went wrong (line_num is past it)
        start = rows[-1][0] + 1 if rows else 2
        hint = "; a cell there opens a quote that is never closed" if "end of data" in str(exc) else ""
        raise CatalogueError(f"{path}: row {start}: bad CSV ({exc}){hint}") from None
    return header, rows


def require_columns(path: Path, present: Iterable[str], required: Sequence[str]) -> None:
    """CatalogueError naming the `required` columns that are not `present` (a CSV header, a JSONL file's keys)."""
    present = sorted(set(present))
    missing = [name for name in required if name not in present]
    if missing:
        raise CatalogueError(f"{path}: missing required column(s) {', '.join(missing)} "
                             f"(found: {', '.join(present) or 'none'})")


def check_columns(path: Path, columns: Iterable[str], known: Sequence[str]) -> None:
    """Columns skulens does not read: refused when close to one it reads (a typo), else said once."""
    unread = sorted(set(columns) - set(known))
    for name in unread:
        # a typo is about as long as the name it misspells ("spilt", "descripton"); "label_id", "subtitle" or
        # "test" are columns of their own, named in the warning below
        close = [k for k in difflib.get_close_matches(name, known, n=1, cutoff=0.8) if abs(len(k) - len(name)) <= 1]
        if close:
            raise CatalogueError(f"{path}: column {name!r} is not one skulens reads; did you mean {close[0]!r}? "
                                 f"(columns: {', '.join(known)})")
    if unread:
        logger.warning("%s: column(s) %s not read (skulens reads %s)", path, ", ".join(unread), ", ".join(known))


def one_line_cell(value: str, name: str, where: str) -> str:
    """A name-like cell (a path, label, split) holds no line break or control character: one there is a quote
    left open across rows, or a NUL that would name a file nothing can open."""
    if _CONTROL.search(value):
        raise CatalogueError(f"{where}: the {name} cell holds a line break or control character "
                             f"({value[:40]!r}); a quote left open?")
    return value


def label_key(label: str) -> str:
    """What two labels meant as one class share: Unicode form (NFC), case, runs of spaces, and characters that show
    nothing (a zero-width space made "Granny-Smith\u200b" a second Granny-Smith, splitting its stock)."""
    shown = "".join(ch for ch in unicodedata.normalize("NFC", label) if unicodedata.category(ch) != "Cf")
    return " ".join(shown.casefold().split())


def is_unprintable(ch: str) -> bool:
    """A control character (C0, DEL, C1) or a format character (zero-width spaces and joiners, bidi overrides:
    invisible, or showing a name reversed)."""
    return unicodedata.category(ch) in ("Cc", "Cf")


def unprintable(text: str) -> str | None:
    """The first character of `text` a name must not hold (`is_unprintable`), as U+XXXX; else None."""
    return next((f"U+{ord(ch):04X}" for ch in text if is_unprintable(ch)), None)


def refuse_lookalike_labels(source: Path, labels: Iterable[str]) -> None:
    """Two spellings of one class ('Milk' and 'milk'; 'Café' typed two ways) would be two classes that split
    its photos and compete for them."""
    groups: dict[str, set[str]] = defaultdict(set)
    for label in labels:
        groups[label_key(label)].add(label)
    clashes = [sorted(g) for g in groups.values() if len(g) > 1]
    if clashes:
        listed = "; ".join(" / ".join(repr(x) for x in g) for g in clashes[:MAX_LISTED])
        raise CatalogueError(f"{source}: labels that differ only in case, spaces or Unicode form would be "
                             f"separate classes: {listed}; spell each class one way")


def cell(record: Mapping[str, object], key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value).strip()


def text_value(record: Mapping[str, object], key: str, where: str) -> str:
    """A JSON record's string cell: a number, list or null-like value is refused, not turned into a class
    named "7.0" or "['Milk', 'Bread']"."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CatalogueError(f"{where}: {key!r} must be a string, got {type(value).__name__} {value!r}"[:300])
    return value.strip()


def attribute_cell(value: object) -> list[str]:
    # JSONL may give a real list; CSV gives "a;b;c".
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    return [str(item).strip() for item in items if str(item).strip()]


def inside_root(raw: str, root: Path, root_real: Path, where: str) -> Path:
    """Absolute path for the path string ``raw``; refuses a string that points outside the root.

    The check is on the string (`..`, an absolute path elsewhere): a manifest line is text anyone may
    write. Symlinks on disk are not resolved for it: a link under the root was made by whoever owns the
    catalogue folder (a dataset assembled from a data store by links is common), and who can make one
    could as well copy the file. An absolute path is accepted when it names a place under the root,
    spelled either through the root as given or through its resolved location.
    """
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    candidate = Path(os.path.normpath(candidate))
    base = Path(os.path.normpath(root.absolute()))
    if not (Path(os.path.normpath(candidate.absolute())).is_relative_to(base) or candidate.is_relative_to(root_real)):
        raise CatalogueError(f"{where}: path {raw!r} escapes dataset root {root}")
    return candidate


def require_files(located: Iterable[tuple[str, Path]], where: Path) -> None:
    """Every ``(place, path)`` names an existing file, or one error lists the first few that do not."""
    missing = [(place, path) for place, path in located if not path.is_file()]
    if missing:
        listed = "; ".join(
            f"{place}: {path}" if place != str(path) else str(path) for place, path in missing[:MAX_LISTED]
        )
        more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        raise CatalogueError(f"{where}: {len(missing)} image file(s) missing: {listed}{more}")
