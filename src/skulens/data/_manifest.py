"""The manifest layout: one ``.csv`` / ``.jsonl`` file listing images and their labels.

Columns ``path,label`` and optionally ``split``, ``coarse_label``, ``attributes`` (``;``-separated),
``title`` and ``text``.

Every path string must stay inside the manifest's folder: a manifest is data a stranger may hand us.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from ._checks import (
    MAX_LISTED,
    attribute_cell,
    cell,
    check_columns,
    inside_root,
    one_line_cell,
    read_csv_table,
    require_columns,
    require_files,
    text_value,
)
from ._types import SPLIT_ORDER, CatalogueError, Loaded, Sample, split_name
from .encoding import not_utf8

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


def load_manifest(manifest: Path) -> Loaded:
    root = manifest.parent
    root_real = root.resolve()
    try:
        records = _read_jsonl(manifest) if manifest.suffix.lower() == ".jsonl" else _read_csv(manifest)
    except UnicodeDecodeError:
        raise CatalogueError(f"{manifest}: {not_utf8(manifest)}") from None
    if not records:
        raise CatalogueError(f"{manifest}: no rows")
    splits: dict[str, list[Sample]] = defaultdict(list)
    hierarchy: dict[str, str] = {}
    located: list[tuple[str, Path]] = []
    first_row: dict[Path, str] = {}
    for where, record in records:
        split, sample = _manifest_sample(manifest, root, root_real, where, record)
        if split not in SPLIT_ORDER:  # a typo ("vaild") would be a split nothing reads, its labels still classes
            raise CatalogueError(f"{manifest}: {where}: unknown split {cell(record, 'split')!r} (one of "
                                 f"{', '.join(SPLIT_ORDER)}, or empty for train)")
        if sample.path in first_row:  # two labels for one photo, or one photo in train and val (a leak)
            raise CatalogueError(f"{manifest}: {where}: {cell(record, 'path')!r} is listed already "
                                 f"({first_row[sample.path]})")
        first_row[sample.path] = where
        if sample.coarse_label is not None:
            _add_to_hierarchy(hierarchy, sample.label, sample.coarse_label, f"{manifest}: {where}")
        splits[split].append(sample)
        located.append((where, sample.path))
    require_files(located, manifest)
    splits = dict(splits)
    if hierarchy:
        splits = _fill_coarse_labels(splits, hierarchy, manifest)
    return Loaded(root=root, layout="manifest", splits=splits, hierarchy=hierarchy)


REQUIRED = ("path", "label")
COLUMNS = (*REQUIRED, "split", "coarse_label", "attributes", "title", "text")
# What `skulens suggest-labels` writes beside them for the person labelling: read by people, not by skulens
SUGGESTION_COLUMNS = ("rank", "guess", "confidence", "margin")
_NAME_CELLS = ("path", "label", "split", "coarse_label")


def _read_csv(manifest: Path) -> list[tuple[str, dict[str, object]]]:
    # utf-8-sig: spreadsheets save CSV with a byte-order mark that would otherwise glue onto "path".
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        _, rows = read_csv_table(handle, manifest, required=REQUIRED, known=COLUMNS,
                                 quiet=SUGGESTION_COLUMNS)
    return [(f"row {line}", row) for line, row in rows]


def _read_jsonl(manifest: Path) -> list[tuple[str, dict[str, object]]]:
    records: list[tuple[str, dict[str, object]]] = []
    with manifest.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CatalogueError(f"{manifest}: line {number}: invalid JSON ({exc.msg})") from exc
            except RecursionError:
                raise CatalogueError(f"{manifest}: line {number}: invalid JSON (nested too deeply)") from None
            if not isinstance(record, dict):
                raise CatalogueError(f"{manifest}: line {number}: expected a JSON object")
            records.append((f"line {number}", _json_record(record, f"{manifest}: line {number}")))
    if records:
        present = {key for _, record in records for key in record}
        require_columns(manifest, present, REQUIRED)
        check_columns(manifest, present, COLUMNS)
    return records


def _json_record(record: dict[str, object], where: str) -> dict[str, object]:
    """Keys lower-cased ("Label" and "label" in one object refused), and the cells skulens reads as text
    refused when they are not text: 7 and 7.0 were two classes, a list a class named "['Milk', 'Bread']"."""
    out: dict[str, object] = {}
    for key, value in record.items():
        name = str(key).strip().lower()
        if name in out:
            raise CatalogueError(f"{where}: key {name!r} given twice (keys are read in any case)")
        out[name] = value
    for name in ("path", "label", "split", "coarse_label", "title", "text"):
        text_value(out, name, where)
    attributes = out.get("attributes")
    if attributes is not None and not isinstance(attributes, str) and not (
            isinstance(attributes, list) and all(isinstance(a, str) for a in attributes)):
        raise CatalogueError(f"{where}: 'attributes' must be a string ('a;b') or a list of strings, got "
                             f"{attributes!r}"[:300])
    return out


def _manifest_sample(
    manifest: Path, root: Path, root_real: Path, where: str, record: Mapping[str, object]
) -> tuple[str, Sample]:
    for name in _NAME_CELLS:
        one_line_cell(cell(record, name), name, f"{manifest}: {where}")
    raw_path, label = cell(record, "path"), cell(record, "label")
    if not raw_path:
        raise CatalogueError(f"{manifest}: {where}: missing path")
    if not label:
        raise CatalogueError(f"{manifest}: {where}: missing label for {raw_path!r}")
    split = cell(record, "split").lower() or "train"
    texts = [t for t in (cell(record, "title"), cell(record, "text")) if t]
    sample = Sample(
        path=inside_root(raw_path, root, root_real, f"{manifest}: {where}"),
        label=label,
        coarse_label=cell(record, "coarse_label") or None,
        attributes=tuple(sorted(set(attribute_cell(record.get("attributes"))))),
        text="\n".join(texts) or None,
    )
    return split_name(split), sample


def _add_to_hierarchy(hierarchy: dict[str, str], label: str, coarse: str, where: str) -> None:
    known = hierarchy.setdefault(label, coarse)
    if known != coarse:
        raise CatalogueError(f"{where}: label {label!r} has coarse label {coarse!r}, earlier {known!r}")


def _fill_coarse_labels(
    splits: dict[str, list[Sample]], hierarchy: dict[str, str], manifest: Path
) -> dict[str, list[Sample]]:
    # A half-filled hierarchy would silently break hierarchical heads and coarse metrics.
    labels = {s.label for samples in splits.values() for s in samples}
    orphans = sorted(labels - set(hierarchy))
    if orphans:
        raise CatalogueError(
            f"{manifest}: coarse_label given for some labels but not for {len(orphans)}: "
            f"{', '.join(orphans[:MAX_LISTED])}"
        )
    return {
        name: [dataclasses.replace(s, coarse_label=hierarchy[s.label]) for s in samples]
        for name, samples in splits.items()
    }
