"""``products.csv`` beside a manifest or folder catalogue: the catalogue side of each product.

Columns ``label`` and any of ``title``, ``description``, ``info``, ``coarse_label``, ``image``; used by
text search, alignment, zero-shot enrolment and customer-service answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ._checks import cell, inside_root, one_line_cell, read_csv_table
from ._types import CatalogueError, Product
from .encoding import not_utf8

PRODUCTS_CSV = "products.csv"
COLUMNS = ("label", "title", "description", "info", "coarse_label", "image")


def read_products(
    path: Path, root: Path, classes: set[str], hierarchy: Mapping[str, str]
) -> dict[str, Product]:
    """products.csv: one row per product (label + title/description/info/coarse_label/image)."""
    try:
        return _read_products(path, root, classes, hierarchy)
    except UnicodeDecodeError:
        raise CatalogueError(f"{path}: {not_utf8(path)}") from None


def _read_products(
    path: Path, root: Path, classes: set[str], hierarchy: Mapping[str, str]
) -> dict[str, Product]:
    root_real = root.resolve()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        _, rows = read_csv_table(handle, path, required=("label",), known=COLUMNS)
    out: dict[str, Product] = {}
    for line, row in rows:
        where = f"{path}: row {line}"
        for name in ("label", "coarse_label", "image"):
            one_line_cell(cell(row, name), name, where)
        label = cell(row, "label")
        if label not in classes:
            raise CatalogueError(f"{where}: product {label!r} has no photos in the catalogue")
        if label in out:
            raise CatalogueError(f"{where}: product {label!r} listed twice")
        image = cell(row, "image")
        image_path = inside_root(image, root, root_real, where) if image else None
        if image_path is not None and not image_path.is_file():
            raise CatalogueError(f"{where}: catalogue photo {image!r} not found")
        out[label] = Product(
            label=label,
            coarse_label=cell(row, "coarse_label") or hierarchy.get(label),
            title=cell(row, "title") or label.replace("-", " "),
            description=cell(row, "description"),
            image=image_path,
            info=cell(row, "info"),
        )
    return out
