"""Catalogue import: turn a dataset on disk into labelled samples, splits and product metadata.

Three layouts are recognised, in this order:

* **grocery** - a folder with ``classes.csv`` and ``train.txt`` (optionally ``val.txt`` and
  ``test.txt``): the Grocery Store dataset (Klasson et al., WACV 2019) and look-alikes. Classes
  keep the dataset's id order, so class index ``i`` is the published class id ``i``.
* **manifest** - a ``.csv`` / ``.jsonl`` file, or a folder holding exactly one ``manifest.csv``
  or ``manifest.jsonl``; columns ``path,label`` and optionally ``split``, ``coarse_label``,
  ``attributes`` (``;``-separated), ``title`` and ``text``.
* **folders** - ``root/<class>/*.jpg``, or the same under ``root/{train,val,test}/``.

Splits may be spelled ``validation``/``valid``/``dev``, ``training`` or ``testing``, in a manifest's
``split`` column and as split folder names alike.

Manifest and folder catalogues may hold a ``products.csv`` beside them (columns ``label`` and any of
``title``, ``description``, ``info``, ``coarse_label``, ``image``): the catalogue side of each
product, used by text search, alignment, zero-shot enrolment and customer-service answers.

Everything is validated up front, because a bad row found in epoch 3 costs hours: every image
must exist, manifest and split-file paths may not leave the dataset root (a manifest is data a
stranger may hand us; symlinks in a folder catalogue are the owner's and are followed), and every
problem is a :class:`CatalogueError` naming the file and row. Every class needs a training photo (or a
catalogue photo, which training adds). When there is no validation split, a seeded, stratified one is
carved out of train.

The layouts live in private modules (``_folders``, ``_manifest``, ``_grocery``); this module is
the public face and the only one other code imports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ._attributes import attach_attributes, attribute_table
from ._checks import MAX_LISTED, is_unprintable, label_key, refuse_lookalike_labels, unprintable
from ._folders import load_folders
from ._grocery import is_grocery, load_grocery
from ._manifest import MANIFEST_NAMES, MANIFEST_SUFFIXES, load_manifest
from ._products import PRODUCTS_CSV, read_products
from ._types import IMAGE_SUFFIXES, Catalogue, CatalogueError, Loaded, Product, Sample, ordered_splits

__all__ = ["EXTRA_TRAIN", "IMAGE_SUFFIXES", "Catalogue", "CatalogueError", "Product", "Sample", "class_products",
           "inside_folder_catalogue", "is_unprintable", "label_attributes", "label_key", "load_catalogue", "merge_samples",
           "reads_its_folders", "selection_split", "stratified_folds", "unprintable"]

# Photos a run trains on but never holds out or selects on: self-training's pseudo-labelled ones, whose labels
# are the teacher's guesses (a hold-out drawn over them would score the student against those guesses).
EXTRA_TRAIN = "train_extra"

logger = logging.getLogger(__name__)


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
        found = ", ".join(ordered_splits(loaded.splits)) or "none"
        raise CatalogueError(f"{source}: no training samples (splits found: {found})")
    _refuse_one_photo_twice(source, loaded.splits)
    table = attribute_table(loaded.layout, attributes_file,
                            {s.label for samples in loaded.splits.values() for s in samples})
    splits = attach_attributes(loaded.splits, table, source)
    val_was_generated = False
    if "val" not in splits and val_fraction > 0:
        splits["train"], splits["val"] = _stratified_split(splits["train"], val_fraction, seed)
        val_was_generated = True
    splits = {name: splits[name] for name in ordered_splits(splits)}
    classes = loaded.classes or sorted({s.label for samples in splits.values() for s in samples})
    refuse_lookalike_labels(source, classes)
    products = loaded.products
    if not products and (loaded.root / PRODUCTS_CSV).is_file():
        products = read_products(loaded.root / PRODUCTS_CSV, loaded.root, set(classes), loaded.hierarchy)
    _refuse_catalogue_photo_classes(source, loaded.layout, splits, products)
    if loaded.layout == "manifest" and source.is_dir():
        _say_unlisted(source, splits, products)
    _require_training_photos(source, splits, classes, products)
    shared = label_attributes(splits)
    products = {label: dataclasses.replace(p, attributes=shared.get(label, ())) for label, p in products.items()}
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


def _spelling(root: Path) -> Callable[[str | os.PathLike[str]], str]:
    """A path's spelling for comparing paths under `root` without resolving each one (a stat per path component):
    absolute and normalised, its `root.resolve()` prefix spelt as `root` (a manifest may name photos through the
    real location of a linked root)."""
    spelt, real = os.path.normpath(os.path.abspath(root)), str(root.resolve())

    def key(path: str | os.PathLike[str]) -> str:
        p = os.path.normpath(os.path.abspath(path))
        return spelt + p[len(real):] if real != spelt and (p == real or p.startswith(real + os.sep)) else p

    return key


def _refuse_one_photo_twice(source: Path, splits: Mapping[str, list[Sample]]) -> None:
    """One file reached under two labels or in two splits, through links or two spellings of a path (a class
    folder linking to the catalogue's root; an absolute and a relative path in a manifest): a photo with two
    answers, or one val photo the model also trains on. Files are told apart by device and inode (one stat a
    photo, hard links too)."""
    seen: dict[tuple[int, int], tuple[str, Sample]] = {}
    for split, samples in splits.items():
        for s in samples:
            try:
                st = os.stat(s.path)
            except OSError:  # a missing file is named by the layout's own check
                continue
            first = seen.setdefault((st.st_dev, st.st_ino), (split, s))
            if first[1] is not s and (first[0] != split or first[1].label != s.label):
                raise CatalogueError(f"{source}: {s.path} ({split}, {s.label}) is the file {first[1].path} "
                                     f"({first[0]}, {first[1].label}) reached another way (a link?): one photo "
                                     "cannot have two labels or be in two splits")


def _refuse_catalogue_photo_classes(source: Path, layout: str, splits: Mapping[str, list[Sample]],
                                    products: Mapping[str, Product]) -> None:
    """In a folder catalogue every visible folder is a class: one holding only catalogue photos that products.csv
    names for other products would be trained as a product of its own ("cat"), each photo under two labels. (A
    class whose only photo is its own catalogue photo is fine.)"""
    if layout != "folders" or not any(p.image is not None for p in products.values()):
        return
    key = _spelling(source)
    owner = {key(p.image): label for label, p in products.items() if p.image is not None}
    by_class: dict[str, list[str]] = defaultdict(list)
    for samples in splits.values():
        for s in samples:
            by_class[s.label].append(key(s.path))
    only = sorted(label for label, paths in by_class.items()
                  if len(paths) <= len(owner) and all(owner.get(p, label) != label for p in paths))
    if only:
        raise CatalogueError(f"{source}: folder {only[0]!r} holds only catalogue photos products.csv names for other "
                             "products, so it would be a class: keep them in a hidden folder (.catalogue/) or beside "
                             "products.csv")


def _require_training_photos(source: Path, splits: Mapping[str, list[Sample]], classes: Sequence[str],
                             products: Mapping[str, Product]) -> None:
    """Every class has a train photo, or a catalogue photo that training adds (``catalogue_images``): a class
    only val or test has could never be predicted, and would only drag their scores down."""
    taught = {s.label for s in splits["train"]}
    taught |= {label for label, p in products.items() if p.image is not None}
    bare = [label for label in classes if label not in taught]
    if bare:
        where: dict[str, list[str]] = defaultdict(list)
        for name, samples in splits.items():
            for label in {s.label for s in samples} & set(bare):
                where[label].append(name)
        listed = ", ".join(f"{label} ({'/'.join(where[label]) or 'no photos'})" for label in bare[:MAX_LISTED])
        more = f" (and {len(bare) - MAX_LISTED} more)" if len(bare) > MAX_LISTED else ""
        raise CatalogueError(f"{source}: {len(bare)} class(es) with no training photo (and no catalogue photo): "
                             f"{listed}{more}")


def class_products(cat: Catalogue) -> dict[str, Product]:
    """A product for every class: the catalogue's own (products.csv, the grocery sheets), else one made from
    the class's first photo's listing text (first line the title, the rest the description), else its label.
    What product content (recommendations, support answers) is built from when a catalogue has no sheets."""
    products = dict(cat.products)
    shared = label_attributes(cat.splits)
    for samples in cat.splits.values():
        for s in samples:
            if s.label in products:
                continue
            lines = (s.text or "").splitlines()
            products[s.label] = Product(label=s.label, coarse_label=s.coarse_label or cat.hierarchy.get(s.label),
                                        title=lines[0].strip() if lines else s.label.replace("-", " "),
                                        description="\n".join(lines[1:]).strip(), attributes=shared[s.label])
    for label in cat.classes:  # a class without photos (only a catalogue photo) has its product already
        products.setdefault(label, Product(label=label, coarse_label=cat.hierarchy.get(label),
                                           title=label.replace("-", " ")))
    return products


def label_attributes(splits: Mapping[str, Iterable[Sample]]) -> dict[str, tuple[str, ...]]:
    """Per label, the attributes all of its samples carry (a product's facts, not one photo's)."""
    shared: dict[str, set[str]] = {}
    for samples in splits.values():
        for s in samples:
            if s.label in shared:
                shared[s.label] &= set(s.attributes)
            else:
                shared[s.label] = set(s.attributes)
    return {label: tuple(sorted(attrs)) for label, attrs in shared.items()}


def _load_layout(source: Path) -> Loaded:
    if not source.exists():
        raise CatalogueError(f"{source}: dataset path not found")
    if source.is_file():
        if source.suffix.lower() not in MANIFEST_SUFFIXES:
            raise CatalogueError(f"{source}: not a manifest (expected a .csv or .jsonl file, or a folder)")
        return load_manifest(source)
    if is_grocery(source):
        return load_grocery(source)
    manifests = [source / name for name in MANIFEST_NAMES if (source / name).is_file()]
    if len(manifests) > 1:
        raise CatalogueError(f"{source}: both manifest.csv and manifest.jsonl found; keep one")
    if manifests:
        return load_manifest(manifests[0])
    return load_folders(source)


def _say_unlisted(source: Path, splits: Mapping[str, list[Sample]], products: Mapping[str, Product]) -> None:
    """A folder given as the catalogue whose manifest does not list photos under it: the manifest wins (a stray
    4-row manifest.csv in a folder-per-class catalogue left out its other classes), so they are named."""
    from .image_list import folder_images

    key = _spelling(source)
    listed = {key(s.path) for samples in splits.values() for s in samples}
    listed |= {key(p.image) for p in products.values() if p.image is not None}
    unlisted = [f for f in folder_images(source) if key(f) not in listed]
    if unlisted:
        logger.warning("%s: %d photo(s) under the folder are not in its manifest, which alone says what the "
                       "catalogue holds (e.g. %s)", source, len(unlisted), unlisted[0].relative_to(source))


def reads_its_folders(source: str | os.PathLike[str]) -> bool:
    """Whether the catalogue at `source` takes its classes (or splits) from the folders under it, so that any
    folder written inside it becomes a class of the next run, evaluation or index build. A manifest lists its
    photos and the grocery layout its split files: files written beside them are never read."""
    path = Path(source)
    return (path.is_dir() and not is_grocery(path)
            and not any((path / name).is_file() for name in MANIFEST_NAMES))


def inside_folder_catalogue(path: str | os.PathLike[str], source: str | os.PathLike[str]) -> bool:
    """Whether `path` (a run's or a report's folder) lies inside the folder catalogue at `source`, where its
    files would be read as photos of a class by the next command over it (`reads_its_folders`). A hidden folder
    (".eval") is never read as a class or split."""
    inside, root = Path(path).resolve(), Path(source).resolve()
    return (reads_its_folders(source) and inside.is_relative_to(root)
            and not any(part.startswith(".") for part in inside.relative_to(root).parts))


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


def stratified_folds(samples: Sequence[Sample], k: int, seed: int = 0) -> list[list[Sample]]:
    """`k` disjoint folds covering `samples`, each class spread over them as evenly as it goes (fold sizes of a
    class differ by at most one): scikit-learn's StratifiedKFold over the path-sorted samples, shuffled with
    `seed`, so the folds do not move when the listing order changes. Fold i is a k-fold estimate's i-th
    hold-out; the others are what that model trains on. A class with fewer than k photos is in fewer folds, and
    one with a single photo is held out whole by its fold: that fold's model trains without the class."""
    if not 2 <= k <= len(samples):
        raise ValueError(f"k-fold needs 2 <= k <= {len(samples)} (the photos), got {k}")
    import warnings

    from sklearn.model_selection import StratifiedKFold

    ordered = sorted(samples, key=lambda s: (s.path, s.label))
    labels = [s.label for s in ordered]
    with warnings.catch_warnings():  # a class with fewer than k photos is in fewer folds: said in the docstring
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(ordered, labels)
        return [[ordered[i] for i in sorted(held)] for _, held in parts]


def selection_split(cat: Catalogue, select_on: str, holdout_fraction: float, seed: int
                    ) -> tuple[list[Sample], list[Sample], list[Sample] | None]:
    """(the photos a run trains on, the ones it makes its choices on, val when no choice was made on it).

    select_on "val": train, val, None. "holdout": train less a seeded, stratified `holdout_fraction` of each
    class (the same photos on every call: a resumed run or a teacher's threshold sees the same hold-out), that
    hold-out, and val. The `EXTRA_TRAIN` split, where there is one, is trained on in both cases and never
    held out: the hold-out is the same photos with or without it."""
    train, val = list(cat.split("train")), list(cat.split("val"))
    extra = list(cat.splits.get(EXTRA_TRAIN, ()))
    if select_on == "holdout":
        kept, held = _stratified_split(train, holdout_fraction, seed=seed)
        return kept + extra, held, val
    return train + extra, val, None


def merge_samples(cat: Catalogue, samples: Sequence[Sample], products: dict[str, Product] | None = None, *,
                  split: str = "train") -> Catalogue:
    """A copy of `cat` with `samples` added to `split` (train: retrain's enrolled and reviewed photos;
    `EXTRA_TRAIN`: self-training's pseudo-labelled ones); new labels and coarse labels are appended."""
    classes = list(cat.classes)
    coarse = list(cat.coarse_classes)
    hierarchy = dict(cat.hierarchy)
    for s in samples:
        if s.label not in classes:
            classes.append(s.label)
        if s.coarse_label:
            known = hierarchy.get(s.label)
            if known is not None and known != s.coarse_label:
                raise CatalogueError(f"{s.path}: {s.label!r} is under {known!r} in the catalogue, not {s.coarse_label!r}")
            hierarchy[s.label] = s.coarse_label
            if s.coarse_label not in coarse:
                coarse.append(s.coarse_label)
    if hierarchy and set(hierarchy) != set(classes):
        missing = sorted(set(classes) - set(hierarchy))
        raise CatalogueError(f"new product(s) without a coarse label: {', '.join(missing[:5])}")
    splits = {k: list(v) for k, v in cat.splits.items()}
    splits[split] = splits.get(split, []) + list(samples)
    return dataclasses.replace(cat, splits=splits, classes=classes, coarse_classes=coarse, hierarchy=hierarchy,
                               products={**cat.products, **(products or {})})
