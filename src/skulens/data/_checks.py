"""Reading and checking what a dataset's text files say: cells, path strings, and that listed images exist."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ._types import CatalogueError

MAX_LISTED = 5  # missing files named in an error; the count covers the rest


def cell(record: Mapping[str, object], key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value).strip()


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
