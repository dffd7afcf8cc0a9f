"""Attribute tables: ``label`` plus one column per attribute group, merged into every sample of a label.

A column of only yes/no cells is a flag (``organic``); any other column gives ``group=value``
attributes (``colour=green``), several values ``;``-separated.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import io
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ._checks import MAX_LISTED, attribute_cell
from ._types import CatalogueError, Sample
from .encoding import not_utf8

# Logged under the public module: that is the logger users know to configure.
logger = logging.getLogger("skulens.data.catalogue")


def attribute_table(
    layout: str, attributes_file: str | os.PathLike[str] | None, labels: Iterable[str] = ()
) -> dict[str, tuple[str, ...]]:
    """{label: attributes} from ``attributes_file``, else the bundled table for the Grocery Store dataset (its
    classes or some of them: a look-alike layout whose classes the table does not all know gets none, rather than
    Grocery Store's attributes for a "Banana" of its own), else {}."""
    if attributes_file is not None:
        table_path = Path(attributes_file)
        try:
            text = table_path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CatalogueError(
                f"{table_path}: cannot read attribute table ({exc.strerror or exc})"
            ) from exc
        except UnicodeDecodeError:
            raise CatalogueError(f"{table_path}: {not_utf8(table_path)}") from None
        return _parse_attribute_table(text, str(table_path))
    if layout == "grocery":
        bundled = _bundled_grocery_attributes()
        if bundled is not None:
            table = _parse_attribute_table(bundled, "bundled grocery_attributes.csv")
            unknown = sorted(set(labels) - set(table))
            if not unknown:
                return table
            logger.warning("the bundled Grocery Store attribute table is not used: %d class(es) are not Grocery "
                           "Store's (%s); give an attribute table of your own (attributes_file)", len(unknown),
                           ", ".join(unknown[:MAX_LISTED]))
    return {}


def _bundled_grocery_attributes() -> str | None:
    try:
        resource = importlib.resources.files("skulens.data") / "assets" / "grocery_attributes.csv"
        return resource.read_text(encoding="utf-8-sig") if resource.is_file() else None
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _parse_attribute_table(text: str, where: str) -> dict[str, tuple[str, ...]]:
    """``label`` + one column per group -> {label: ("organic", "colour=green", ...)}."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    if "label" not in header:
        raise CatalogueError(f"{where}: attribute table needs a 'label' column (found: {', '.join(header)})")
    reader.fieldnames = header
    rows = list(reader)
    groups = [name for name in header if name != "label"]
    boolean = {group for group in groups if _is_boolean_column(row.get(group) for row in rows)}
    table: dict[str, tuple[str, ...]] = {}
    for row in rows:
        label = (row.get("label") or "").strip()
        if not label:
            continue
        if label in table:
            raise CatalogueError(f"{where}: label {label!r} appears twice")
        table[label] = tuple(sorted(_row_attributes(row, groups, boolean)))
    return table


def _is_boolean_column(cells: Iterable[str | None]) -> bool:
    values = {value.lower() for cell in cells for value in attribute_cell(cell)}
    return bool(values) and values <= {"yes", "no"}


def _row_attributes(row: Mapping[str, str | None], groups: list[str], boolean: set[str]) -> Iterator[str]:
    for group in groups:
        values = attribute_cell(row.get(group))
        if group in boolean:
            if any(value.lower() == "yes" for value in values):
                yield group
        else:
            yield from (f"{group}={value}" for value in values)


def attach_attributes(
    splits: dict[str, list[Sample]], table: Mapping[str, tuple[str, ...]], source: Path
) -> dict[str, list[Sample]]:
    """Every sample gains its label's attributes; labels the table misses are logged, not refused."""
    if not table:
        return dict(splits)
    labels = {s.label for samples in splits.values() for s in samples}
    uncovered = sorted(labels - set(table))
    if uncovered:
        logger.warning(
            "%s: %d class(es) have no row in the attribute table and get no attributes: %s",
            source,
            len(uncovered),
            ", ".join(uncovered[:MAX_LISTED]),
        )
    ignored = sorted(set(table) - labels)
    if ignored:
        logger.debug("%s: attribute rows for unknown labels ignored: %s", source, ", ".join(ignored))
    return {
        name: [
            dataclasses.replace(s, attributes=tuple(sorted({*s.attributes, *table.get(s.label, ())})))
            for s in samples
        ]
        for name, samples in splits.items()
    }
