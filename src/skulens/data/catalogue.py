"""Catalogue import: turn a dataset on disk into labelled samples, splits and product metadata.

Three layouts are recognised, in this order:

* **grocery** - a folder with ``classes.csv`` and ``train.txt`` (optionally ``val.txt`` and
  ``test.txt``): the Grocery Store dataset (Klasson et al., WACV 2019) and look-alikes. Classes
  keep the dataset's id order, so class index ``i`` is the published class id ``i``.
* **manifest** - a ``.csv`` / ``.jsonl`` file, or a folder holding exactly one ``manifest.csv``
  or ``manifest.jsonl``; columns ``path,label`` and optionally ``split``, ``coarse_label``,
  ``attributes`` (``;``-separated), ``title`` and ``text``.
* **folders** - ``root/<class>/*.jpg``, or the same under ``root/{train,val,test}/``.

Manifest and folder catalogues may hold a ``products.csv`` beside them (columns ``label`` and any of
``title``, ``description``, ``info``, ``coarse_label``, ``image``): the catalogue side of each
product, used by text search, alignment, zero-shot enrolment and customer-service answers.

Everything is validated up front, because a bad row found in epoch 3 costs hours: every image
must exist, manifest and split-file paths may not leave the dataset root (a manifest is data a
stranger may hand us), and every problem is a :class:`CatalogueError` naming the file and row.
When there is no validation split, a seeded, stratified one is carved out of train.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.resources
import io
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "Catalogue", "CatalogueError", "Product", "Sample", "load_catalogue"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

_SPLIT_ORDER = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "training": "train", "testing": "test"}
_MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
_MANIFEST_SUFFIXES = (".csv", ".jsonl")
_GROCERY_COLUMNS = ("class name", "class id", "coarse class name", "coarse class id")
_MAX_LISTED = 5  # missing files named in an error; the count covers the rest


class CatalogueError(ValueError):
    """A dataset that cannot be loaded as given; the message names the file (and row) at fault."""


@dataclass(frozen=True)
class Sample:
    """One labelled image."""

    path: Path  # absolute
    label: str  # fine label name
    coarse_label: str | None = None
    attributes: tuple[str, ...] = ()
    text: str | None = None  # per-listing title/text, if the dataset has one


@dataclass(frozen=True)
class Product:
    """The catalogue side of a class: what the shop says about it, not a shopper's photo."""

    label: str
    coarse_label: str | None = None
    title: str = ""
    description: str = ""
    image: Path | None = None  # catalogue ("iconic") photo
    info: str = ""  # further facts (origin, volume, nutrition), e.g. the grocery *_Information.txt


@dataclass
class Catalogue:
    """A loaded dataset: samples per split plus the label space and product metadata."""

    root: Path
    layout: str  # "folders" | "manifest" | "grocery"
    splits: dict[str, list[Sample]]  # always has "train"
    classes: list[str]  # sorted, or the dataset's own id order (grocery)
    coarse_classes: list[str]  # [] when there is no hierarchy
    hierarchy: dict[str, str]  # fine -> coarse; {} when none
    attributes: list[str]  # sorted attribute names; [] when none
    products: dict[str, Product]  # by fine label; {} when none
    val_was_generated: bool = False

    def split(self, name: str) -> list[Sample]:
        """Samples of split ``name``; a CatalogueError lists the available splits if it is absent."""
        if name not in self.splits:
            available = ", ".join(_ordered_splits(self.splits))
            raise CatalogueError(f"{self.root}: no {name!r} split (available: {available})")
        return self.splits[name]

    def fingerprint(self) -> str:
        """Short sha256 over (split, relative path, label, file size): changes when the data does."""
        rows = sorted(
            (split, _relative_posix(s.path, self.root), s.label, _file_size(s.path))
            for split, samples in self.splits.items()
            for s in samples
        )
        digest = hashlib.sha256()
        for row in rows:
            digest.update(json.dumps(row).encode())
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        """One line for logs: layout, class counts and samples per split."""
        counts = ", ".join(f"{name}={len(self.splits[name])}" for name in _ordered_splits(self.splits))
        generated = " (val generated)" if self.val_was_generated else ""
        return (
            f"{self.layout} catalogue at {self.root}: {len(self.classes)} classes, "
            f"{len(self.coarse_classes)} coarse; {counts}{generated}"
        )


@dataclass
class _Loaded:
    """What a layout reader found, before attributes and the generated val split are added."""

    root: Path
    layout: str
    splits: dict[str, list[Sample]]
    classes: list[str] | None = None  # None: sort the labels found
    coarse_classes: list[str] | None = None
    hierarchy: dict[str, str] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)


def load_catalogue(
    path: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    attributes_file: str | os.PathLike[str] | None = None,
) -> Catalogue:
    """Load the dataset at ``path`` (layout auto-detected; see the module docstring).

    ``val_fraction`` and ``seed`` shape the stratified val split made when the dataset has none
    (``val_fraction=0`` makes none). ``attributes_file`` is a CSV of ``label`` plus one column per
    attribute group; without it the grocery layout uses the table bundled with skulens.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise CatalogueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source = Path(os.path.abspath(path))
    loaded = _load_layout(source)
    if "train" not in loaded.splits or not loaded.splits["train"]:
        found = ", ".join(_ordered_splits(loaded.splits)) or "none"
        raise CatalogueError(f"{source}: no training samples (splits found: {found})")
    table = _attribute_table(loaded.layout, attributes_file)
    splits = _attach_attributes(loaded.splits, table, source)
    val_was_generated = False
    if "val" not in splits and val_fraction > 0:
        splits["train"], splits["val"] = _stratified_split(splits["train"], val_fraction, seed)
        val_was_generated = True
    splits = {name: splits[name] for name in _ordered_splits(splits)}
    classes = loaded.classes or sorted({s.label for samples in splits.values() for s in samples})
    products = loaded.products
    if not products and (loaded.root / _PRODUCTS_CSV).is_file():
        products = _read_products(loaded.root / _PRODUCTS_CSV, loaded.root, set(classes), loaded.hierarchy)
    return Catalogue(
        root=loaded.root,
        layout=loaded.layout,
        splits=splits,
        classes=classes,
        coarse_classes=loaded.coarse_classes or sorted(set(loaded.hierarchy.values())),
        hierarchy=loaded.hierarchy,
        attributes=sorted({a for samples in splits.values() for s in samples for a in s.attributes}),
        products=products,
        val_was_generated=val_was_generated,
    )


_PRODUCTS_CSV = "products.csv"


def _read_products(path: Path, root: Path, classes: set[str], hierarchy: Mapping[str, str]) -> dict[str, Product]:
    """products.csv: one row per product (label + title/description/info/coarse_label/image)."""
    root_real = root.resolve()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        if "label" not in header:
            raise CatalogueError(f"{path}: needs a 'label' column (found: {', '.join(header) or 'none'})")
        reader.fieldnames = header
        out: dict[str, Product] = {}
        for row in reader:
            where = f"{path}: row {reader.line_num}"
            label = _cell(row, "label")
            if label not in classes:
                raise CatalogueError(f"{where}: product {label!r} has no photos in the catalogue")
            if label in out:
                raise CatalogueError(f"{where}: product {label!r} listed twice")
            image = _cell(row, "image")
            image_path = _inside_root(image, root, root_real, where) if image else None
            if image_path is not None and not image_path.is_file():
                raise CatalogueError(f"{where}: catalogue photo {image!r} not found")
            out[label] = Product(label=label, coarse_label=_cell(row, "coarse_label") or hierarchy.get(label),
                                 title=_cell(row, "title") or label.replace("-", " "),
                                 description=_cell(row, "description"), image=image_path, info=_cell(row, "info"))
    return out


def _load_layout(source: Path) -> _Loaded:
    if not source.exists():
        raise CatalogueError(f"{source}: dataset path not found")
    if source.is_file():
        if source.suffix.lower() not in _MANIFEST_SUFFIXES:
            raise CatalogueError(f"{source}: not a manifest (expected a .csv or .jsonl file, or a folder)")
        return _load_manifest(source)
    if (source / "classes.csv").is_file() and (source / "train.txt").is_file():
        return _load_grocery(source)
    manifests = [source / name for name in _MANIFEST_NAMES if (source / name).is_file()]
    if len(manifests) > 1:
        raise CatalogueError(f"{source}: both manifest.csv and manifest.jsonl found; keep one")
    if manifests:
        return _load_manifest(manifests[0])
    return _load_folders(source)


# ---------------------------------------------------------------------------------------------
# folders


def _load_folders(root: Path) -> _Loaded:
    subdirs = {d.name: d for d in _visible_dirs(root)}
    if not subdirs:
        raise CatalogueError(
            f"{root}: no class folders (expected root/<class>/*.jpg or root/train/<class>/*.jpg, "
            "or a manifest.csv / manifest.jsonl, or classes.csv + train.txt)"
        )
    split_names = [name for name in _SPLIT_ORDER if name in subdirs]
    if not split_names:
        return _Loaded(root=root, layout="folders", splits={"train": _scan_class_folders(root)})
    if "train" not in subdirs:
        raise CatalogueError(f"{root}: has {'/'.join(split_names)} split folders but no train/")
    strays = sorted(set(subdirs) - set(_SPLIT_ORDER))
    if strays:
        raise CatalogueError(f"{root}: split folders next to other folders {strays}; pick one layout")
    splits = {name: _scan_class_folders(subdirs[name]) for name in split_names}
    return _Loaded(root=root, layout="folders", splits=splits)


def _scan_class_folders(split_dir: Path) -> list[Sample]:
    class_dirs = _visible_dirs(split_dir)
    if not class_dirs:
        raise CatalogueError(f"{split_dir}: no class folders")
    samples: list[Sample] = []
    for class_dir in class_dirs:
        images = _images_under(class_dir)
        if not images:
            suffixes = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
            raise CatalogueError(f"{class_dir}: empty class {class_dir.name!r} (no {suffixes} files)")
        samples.extend(Sample(path=p, label=class_dir.name) for p in images)
    _require_files(((str(s.path), s.path) for s in samples), split_dir)  # catches broken symlinks
    return samples


def _visible_dirs(folder: Path) -> list[Path]:
    # Hidden folders are tool litter (.ipynb_checkpoints, .DS_Store dirs), never classes.
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(class_dir: Path) -> list[Path]:
    # Recursive, like torchvision's ImageFolder, so sub-folders per shoot or store still count.
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        and not p.is_dir()
    )


# ---------------------------------------------------------------------------------------------
# manifest


def _load_manifest(manifest: Path) -> _Loaded:
    root = manifest.parent
    root_real = root.resolve()
    records = _read_jsonl(manifest) if manifest.suffix.lower() == ".jsonl" else _read_csv(manifest)
    if not records:
        raise CatalogueError(f"{manifest}: no rows")
    splits: dict[str, list[Sample]] = defaultdict(list)
    hierarchy: dict[str, str] = {}
    located: list[tuple[str, Path]] = []
    for where, record in records:
        split, sample = _manifest_sample(manifest, root, root_real, where, record)
        if sample.coarse_label is not None:
            _add_to_hierarchy(hierarchy, sample.label, sample.coarse_label, f"{manifest}: {where}")
        splits[split].append(sample)
        located.append((where, sample.path))
    _require_files(located, manifest)
    splits = dict(splits)
    if hierarchy:
        splits = _fill_coarse_labels(splits, hierarchy, manifest)
    return _Loaded(root=root, layout="manifest", splits=splits, hierarchy=hierarchy)


def _read_csv(manifest: Path) -> list[tuple[str, dict[str, object]]]:
    # utf-8-sig: spreadsheets save CSV with a byte-order mark that would otherwise glue onto "path".
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        _require_columns(header, manifest)
        reader.fieldnames = header
        try:
            return [(f"row {reader.line_num}", dict(row)) for row in reader]
        except csv.Error as exc:
            raise CatalogueError(f"{manifest}: row {reader.line_num}: bad CSV ({exc})") from exc


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
            if not isinstance(record, dict):
                raise CatalogueError(f"{manifest}: line {number}: expected a JSON object")
            records.append((f"line {number}", {str(k).strip().lower(): v for k, v in record.items()}))
    if records:
        _require_columns(sorted({key for _, record in records for key in record}), manifest)
    return records


def _require_columns(columns: Iterable[str], manifest: Path) -> None:
    present = set(columns)
    missing = [name for name in ("path", "label") if name not in present]
    if missing:
        found = ", ".join(sorted(present)) or "none"
        raise CatalogueError(f"{manifest}: missing required column(s) {', '.join(missing)} (found: {found})")


def _manifest_sample(
    manifest: Path, root: Path, root_real: Path, where: str, record: Mapping[str, object]
) -> tuple[str, Sample]:
    raw_path, label = _cell(record, "path"), _cell(record, "label")
    if not raw_path:
        raise CatalogueError(f"{manifest}: {where}: missing path")
    if not label:
        raise CatalogueError(f"{manifest}: {where}: missing label for {raw_path!r}")
    split = _cell(record, "split").lower() or "train"
    texts = [t for t in (_cell(record, "title"), _cell(record, "text")) if t]
    sample = Sample(
        path=_inside_root(raw_path, root, root_real, f"{manifest}: {where}"),
        label=label,
        coarse_label=_cell(record, "coarse_label") or None,
        attributes=tuple(sorted(set(_attribute_cell(record.get("attributes"))))),
        text="\n".join(texts) or None,
    )
    return _SPLIT_ALIASES.get(split, split), sample


def _cell(record: Mapping[str, object], key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value).strip()


def _attribute_cell(value: object) -> list[str]:
    # JSONL may give a real list; CSV gives "a;b;c".
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    return [str(item).strip() for item in items if str(item).strip()]


def _inside_root(raw: str, root: Path, root_real: Path, where: str) -> Path:
    """Absolute path for ``raw``; refuses anything that lands outside the root, symlinks followed."""
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = root / candidate
    candidate = Path(os.path.normpath(candidate))
    if not candidate.resolve().is_relative_to(root_real):
        raise CatalogueError(f"{where}: path {raw!r} escapes dataset root {root}")
    return candidate


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
            f"{', '.join(orphans[:_MAX_LISTED])}"
        )
    return {
        name: [dataclasses.replace(s, coarse_label=hierarchy[s.label]) for s in samples]
        for name, samples in splits.items()
    }


# ---------------------------------------------------------------------------------------------
# grocery


@dataclass(frozen=True)
class _GroceryClass:
    name: str
    class_id: int
    coarse: str
    coarse_id: int
    iconic: str
    description: str


def _load_grocery(root: Path) -> _Loaded:
    root_real = root.resolve()
    rows = _read_grocery_classes(root / "classes.csv")
    by_id = {row.class_id: row for row in rows}
    splits: dict[str, list[Sample]] = {}
    for name in _SPLIT_ORDER:
        split_file = root / f"{name}.txt"
        if split_file.is_file():
            splits[name] = _read_grocery_split(split_file, root, root_real, by_id)
    coarse_by_id = {row.coarse_id: row.coarse for row in rows}
    return _Loaded(
        root=root,
        layout="grocery",
        splits=splits,
        classes=[row.name for row in rows],
        coarse_classes=[coarse_by_id[i] for i in sorted(coarse_by_id)],
        hierarchy={row.name: row.coarse for row in rows},
        products={row.name: _grocery_product(row, root, root_real) for row in rows},
    )


def _read_grocery_classes(classes_csv: Path) -> list[_GroceryClass]:
    with classes_csv.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        # "Class Name (str)" -> "class name": the header carries type hints in parentheses.
        header = [cell.split("(")[0].strip().lower() for cell in next(reader, [])]
        missing = [name for name in _GROCERY_COLUMNS if name not in header]
        if missing:
            raise CatalogueError(f"{classes_csv}: missing column(s) {', '.join(missing)}")
        rows = [_grocery_class(dict(zip(header, cells)), classes_csv, reader.line_num) for cells in reader]
    return _check_grocery_classes(sorted(rows, key=lambda row: row.class_id), classes_csv)


def _grocery_class(cells: dict[str, str], classes_csv: Path, line: int) -> _GroceryClass:
    try:
        return _GroceryClass(
            name=cells["class name"].strip(),
            class_id=int(cells["class id"]),
            coarse=cells["coarse class name"].strip(),
            coarse_id=int(cells["coarse class id"]),
            iconic=cells.get("iconic image path", "").strip(),
            description=cells.get("product description path", "").strip(),
        )
    except (KeyError, ValueError) as exc:
        raise CatalogueError(f"{classes_csv}: line {line}: malformed row ({exc})") from exc


def _check_grocery_classes(rows: list[_GroceryClass], classes_csv: Path) -> list[_GroceryClass]:
    if not rows:
        raise CatalogueError(f"{classes_csv}: no classes")
    ids = [row.class_id for row in rows]
    if ids != list(range(len(rows))):
        raise CatalogueError(f"{classes_csv}: class ids must be 0..{len(rows) - 1} without gaps or repeats")
    if len({row.name for row in rows}) != len(rows):
        raise CatalogueError(f"{classes_csv}: repeated class name")
    coarse_by_id: dict[int, str] = {}
    for row in rows:
        if coarse_by_id.setdefault(row.coarse_id, row.coarse) != row.coarse:
            raise CatalogueError(f"{classes_csv}: coarse id {row.coarse_id} has two names")
    return rows


def _read_grocery_split(
    split_file: Path, root: Path, root_real: Path, by_id: Mapping[int, _GroceryClass]
) -> list[Sample]:
    samples: list[Sample] = []
    located: list[tuple[str, Path]] = []
    with split_file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{split_file}: line {number}"
            row = _grocery_split_row(line, by_id, where)
            path = _inside_root(row[0], root, root_real, where)
            samples.append(Sample(path=path, label=row[1].name, coarse_label=row[1].coarse))
            located.append((f"line {number}", path))
    _require_files(located, split_file)
    return samples


def _grocery_split_row(
    line: str, by_id: Mapping[int, _GroceryClass], where: str
) -> tuple[str, _GroceryClass]:
    """Parse ``relative/path.jpg, fine_id[, coarse_id]``."""
    parts = [part.strip() for part in line.split(",")]
    if len(parts) not in (2, 3) or not parts[0]:
        raise CatalogueError(f"{where}: expected 'path, class_id, coarse_id', got {line.strip()!r}")
    try:
        ids = [int(part) for part in parts[1:]]
    except ValueError:
        raise CatalogueError(f"{where}: class ids must be integers, got {line.strip()!r}") from None
    entry = by_id.get(ids[0])
    if entry is None:
        raise CatalogueError(f"{where}: unknown class id {ids[0]}")
    if len(ids) == 2 and ids[1] != entry.coarse_id:
        raise CatalogueError(
            f"{where}: coarse id {ids[1]} contradicts classes.csv ({entry.name} is in {entry.coarse_id})"
        )
    return parts[0], entry


def _grocery_product(row: _GroceryClass, root: Path, root_real: Path) -> Product:
    where = f"{root / 'classes.csv'}: class {row.name!r}"
    description = info = ""
    if row.description:
        # Paths in classes.csv start with "/" but are relative to the dataset folder.
        text_path = _inside_root(row.description.lstrip("/"), root, root_real, where)
        if text_path.is_file():
            description = text_path.read_text(encoding="utf-8", errors="replace").strip()
            # The grocery dataset keeps a fuller product sheet beside each description.
            info_path = text_path.with_name(text_path.name.replace("_Description.txt", "_Information.txt"))
            if info_path != text_path and info_path.is_file():
                info = info_path.read_text(encoding="utf-8", errors="replace").strip()
    image = None
    if row.iconic:
        image_path = _inside_root(row.iconic.lstrip("/"), root, root_real, where)
        image = image_path if image_path.is_file() else None
    return Product(
        label=row.name,
        coarse_label=row.coarse,
        title=row.name.replace("-", " "),
        description=description,
        image=image,
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# attributes


def _attribute_table(
    layout: str, attributes_file: str | os.PathLike[str] | None
) -> dict[str, tuple[str, ...]]:
    if attributes_file is not None:
        table_path = Path(attributes_file)
        try:
            text = table_path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CatalogueError(
                f"{table_path}: cannot read attribute table ({exc.strerror or exc})"
            ) from exc
        return _parse_attribute_table(text, str(table_path))
    if layout == "grocery":
        bundled = _bundled_grocery_attributes()
        if bundled is not None:
            return _parse_attribute_table(bundled, "bundled grocery_attributes.csv")
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
    values = {value.lower() for cell in cells for value in _attribute_cell(cell)}
    return bool(values) and values <= {"yes", "no"}


def _row_attributes(row: Mapping[str, str | None], groups: list[str], boolean: set[str]) -> Iterator[str]:
    for group in groups:
        values = _attribute_cell(row.get(group))
        if group in boolean:
            if any(value.lower() == "yes" for value in values):
                yield group
        else:
            yield from (f"{group}={value}" for value in values)


def _attach_attributes(
    splits: dict[str, list[Sample]], table: Mapping[str, tuple[str, ...]], source: Path
) -> dict[str, list[Sample]]:
    if not table:
        return dict(splits)
    labels = {s.label for samples in splits.values() for s in samples}
    uncovered = sorted(labels - set(table))
    if uncovered:
        logger.warning(
            "%s: %d class(es) have no row in the attribute table and get no attributes: %s",
            source,
            len(uncovered),
            ", ".join(uncovered[:_MAX_LISTED]),
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


# ---------------------------------------------------------------------------------------------
# helpers


def _stratified_split(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, move ``round(n * fraction)`` (at least 1, and never the last) samples to val."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(train):
        by_label[sample.label].append(index)
    chosen: set[int] = set()
    for label, indices in by_label.items():
        if len(indices) < 2:
            continue
        count = min(len(indices) - 1, max(1, round(len(indices) * fraction)))
        # One generator per class, seeded by (seed, label), over path-sorted samples: a class's
        # split does not move when other classes or the listing order change.
        rng = random.Random(f"{seed}:{label}")
        chosen.update(rng.sample(sorted(indices, key=lambda i: train[i].path), count))
    kept = [s for i, s in enumerate(train) if i not in chosen]
    held_out = [s for i, s in enumerate(train) if i in chosen]
    return kept, held_out


def _require_files(located: Iterable[tuple[str, Path]], where: Path) -> None:
    missing = [(place, path) for place, path in located if not path.is_file()]
    if missing:
        listed = "; ".join(
            f"{place}: {path}" if place != str(path) else str(path) for place, path in missing[:_MAX_LISTED]
        )
        more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
        raise CatalogueError(f"{where}: {len(missing)} image file(s) missing: {listed}{more}")


def _ordered_splits(splits: Mapping[str, object]) -> list[str]:
    known = [name for name in _SPLIT_ORDER if name in splits]
    return known + sorted(name for name in splits if name not in _SPLIT_ORDER)


def _relative_posix(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()  # only via a symlinked root; still stable across runs


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise CatalogueError(
            f"{path}: cannot stat image for the fingerprint ({exc.strerror or exc})"
        ) from exc
