"""The catalogue's types and split names, shared by every layout reader; public via ``catalogue``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Photo formats skulens does not decode: a folder's files of these are named, not skipped in silence.
UNREAD_PHOTO_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raw"})

SPLIT_ORDER = ("train", "val", "test")
# One table for manifests and split folders: Keras writes "validation", Kaggle kits "valid".
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "training": "train", "testing": "test"}


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
    # The attributes every photo of the product carries ("lactose_free", "colour=white"); () when none are known.
    attributes: tuple[str, ...] = ()

    @property
    def has_text(self) -> bool:
        """Whether the shop wrote anything about it: a title, a description or info (a products.csv of labels alone
        gives none, and text search has nothing to learn from but the labels)."""
        return bool(self.title.strip() or self.description.strip() or self.info.strip())


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
            available = ", ".join(ordered_splits(self.splits))
            raise CatalogueError(f"{self.root}: no {name!r} split (available: {available})")
        return self.splits[name]

    def fingerprint(self, split: str | None = None) -> str:
        """Short sha256 over (split, relative path, label, file size): changes when the data does (`split`: that
        split's photos only)."""
        rows = sorted(
            (name, _relative_posix(s.path, self.root), s.label, _file_size(s.path))
            for name, samples in self.splits.items() if split is None or name == split
            for s in samples
        )
        digest = hashlib.sha256()
        for row in rows:
            digest.update(json.dumps(row).encode())
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        """One line for logs: layout, class counts and samples per split."""
        counts = ", ".join(f"{name}={len(self.splits[name])}" for name in ordered_splits(self.splits))
        generated = " (val generated)" if self.val_was_generated else ""
        return (
            f"{self.layout} catalogue at {self.root}: {len(self.classes)} classes, "
            f"{len(self.coarse_classes)} coarse; {counts}{generated}"
        )


@dataclass
class Loaded:
    """What a layout reader found, before attributes and the generated val split are added."""

    root: Path
    layout: str
    splits: dict[str, list[Sample]]
    classes: list[str] | None = None  # None: sort the labels found
    coarse_classes: list[str] | None = None
    hierarchy: dict[str, str] = field(default_factory=dict)
    products: dict[str, Product] = field(default_factory=dict)


def split_name(name: str) -> str:
    """The canonical name of a split as a manifest cell or a folder spells it, in any case
    ("validation" -> "val", "Training" -> "train"); a name that is no split comes back lower-cased."""
    lowered = name.lower()
    return SPLIT_ALIASES.get(lowered, lowered)


def ordered_splits(splits: Mapping[str, object]) -> list[str]:
    known = [name for name in SPLIT_ORDER if name in splits]
    return known + sorted(name for name in splits if name not in SPLIT_ORDER)


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
