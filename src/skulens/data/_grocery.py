"""The Grocery Store layout (Klasson et al., WACV 2019) and look-alikes: ``classes.csv`` + ``train.txt``.

``val.txt`` and ``test.txt`` are optional. Classes keep the dataset's id order, so class index ``i``
is the published class id ``i``. Path strings in the split files and ``classes.csv`` must stay
inside the dataset folder.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._checks import inside_root, require_files
from ._types import SPLIT_ORDER, CatalogueError, Loaded, Product, Sample
from .encoding import not_utf8

logger = logging.getLogger(__name__)

_GROCERY_COLUMNS = ("class name", "class id", "coarse class name", "coarse class id")


def is_grocery(root: Path) -> bool:
    return (root / "classes.csv").is_file() and (root / "train.txt").is_file()


@dataclass(frozen=True)
class _GroceryClass:
    name: str
    class_id: int
    coarse: str
    coarse_id: int
    iconic: str
    description: str


def load_grocery(root: Path) -> Loaded:
    root_real = root.resolve()
    rows = _read_grocery_classes(root / "classes.csv")
    by_id = {row.class_id: row for row in rows}
    splits: dict[str, list[Sample]] = {}
    first_line: dict[Path, str] = {}  # one photo in two lines (or two split files) is refused, as in a manifest
    for name in SPLIT_ORDER:
        split_file = root / f"{name}.txt"
        if split_file.is_file():
            splits[name] = _read_grocery_split(split_file, root, root_real, by_id, first_line)
    coarse_by_id = {row.coarse_id: row.coarse for row in rows}
    return Loaded(
        root=root,
        layout="grocery",
        splits=splits,
        classes=[row.name for row in rows],
        coarse_classes=[coarse_by_id[i] for i in sorted(coarse_by_id)],
        hierarchy={row.name: row.coarse for row in rows},
        products={row.name: _grocery_product(row, root, root_real) for row in rows},
    )


def _read_grocery_classes(classes_csv: Path) -> list[_GroceryClass]:
    try:
        with classes_csv.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            # "Class Name (str)" -> "class name": the header carries type hints in parentheses.
            header = [cell.split("(")[0].strip().lower() for cell in next(reader, [])]
            missing = [name for name in _GROCERY_COLUMNS if name not in header]
            if missing:
                raise CatalogueError(f"{classes_csv}: missing column(s) {', '.join(missing)}")
            rows = [_grocery_class(dict(zip(header, cells)), classes_csv, reader.line_num)
                    for cells in reader if any(cell.strip() for cell in cells)]  # blank lines are no classes
    except UnicodeDecodeError:
        raise CatalogueError(f"{classes_csv}: {not_utf8(classes_csv)}") from None
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
    split_file: Path, root: Path, root_real: Path, by_id: Mapping[int, _GroceryClass], first_line: dict[Path, str]
) -> list[Sample]:
    """The samples of one split file; ``first_line`` (photo -> where it was listed) spans the split files."""
    samples: list[Sample] = []
    located: list[tuple[str, Path]] = []
    try:
        # utf-8-sig: a split list saved by a Windows editor starts with a byte-order mark.
        with split_file.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{split_file}: line {number}"
                row = _grocery_split_row(line, by_id, where)
                path = inside_root(row[0], root, root_real, where)
                if path in first_line:  # two labels for one photo, or one photo in train and test (a leak)
                    raise CatalogueError(f"{where}: {row[0]!r} is listed already ({first_line[path]})")
                first_line[path] = f"{split_file.name} line {number}"
                samples.append(Sample(path=path, label=row[1].name, coarse_label=row[1].coarse))
                located.append((f"line {number}", path))
    except UnicodeDecodeError:
        raise CatalogueError(f"{split_file}: {not_utf8(split_file)}") from None
    require_files(located, split_file)
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
        text_path = inside_root(row.description.lstrip("/"), root, root_real, where)
        if not text_path.is_file():  # a typo in the sheet's path: the product lost its text without a word
            logger.warning("%s: description file %r not found: the product has no text", where, row.description)
        else:
            description = _utf8_text(text_path)
            # The grocery dataset keeps a fuller product sheet beside each description.
            # (one product, Cabbage, names it "Cabbage-Information.txt").
            stem = text_path.name.removesuffix("_Description.txt")
            for name in (f"{stem}_Information.txt", f"{stem}-Information.txt"):
                info_path = text_path.with_name(name)
                if stem != text_path.name and info_path.is_file():
                    info = _utf8_text(info_path)
                    break
    image = None
    if row.iconic:
        image = inside_root(row.iconic.lstrip("/"), root, root_real, where)
        if not image.is_file():
            logger.warning("%s: catalogue (iconic) photo %r not found: the product has none", where, row.iconic)
            image = None
    return Product(
        label=row.name,
        coarse_label=row.coarse,
        title=row.name.replace("-", " "),
        description=description,
        image=image,
        info=info,
    )


def _utf8_text(path: Path) -> str:
    """A product text file, refused when it is not UTF-8 (it was read with replacement characters: "P\ufffdron").
    A byte-order mark is no text (one of Grocery Store's sheets starts with one: its info read "\ufeffTitle: ...")."""
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        raise CatalogueError(f"{path}: {not_utf8(path)}") from None
