"""The folder-per-class layout: ``root/<class>/*.jpg``, or the same under ``root/{train,val,test}/``.

Split folders may be spelled as manifests spell splits, in any case (``validation/``, ``Valid/``,
``Training/``...).
Symlinks anywhere in the structure are followed: the folders are the owner's own arrangement, often
links into a data store on another disk, and no path string read from a file is involved.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._checks import require_files
from ._types import IMAGE_SUFFIXES, SPLIT_ORDER, CatalogueError, Loaded, Sample, split_name
from .image_list import walk_images


def load_folders(root: Path) -> Loaded:
    subdirs = {d.name: d for d in _visible_dirs(root)}
    if not subdirs:
        raise CatalogueError(
            f"{root}: no class folders (expected root/<class>/*.jpg or root/train/<class>/*.jpg, "
            "or a manifest.csv / manifest.jsonl, or classes.csv + train.txt)"
        )
    split_dirs = _split_dirs(root, subdirs)
    if not split_dirs:
        return Loaded(root=root, layout="folders", splits={"train": _scan_class_folders(root)})
    if "train" not in split_dirs:
        found = "/".join(folder.name for folder in split_dirs.values())
        raise CatalogueError(f"{root}: has {found} split folders but no train/")
    strays = sorted(set(subdirs) - {folder.name for folder in split_dirs.values()})
    if strays:
        raise CatalogueError(f"{root}: split folders next to other folders {strays}; pick one layout")
    splits = {name: _scan_class_folders(folder) for name, folder in split_dirs.items()}
    return Loaded(root=root, layout="folders", splits=splits)


def _split_dirs(root: Path, subdirs: dict[str, Path]) -> dict[str, Path]:
    """The split folders among ``subdirs``, by canonical split name, in train/val/test order."""
    found: dict[str, Path] = {}
    for name in sorted(subdirs):
        split = split_name(name)
        if split not in SPLIT_ORDER:
            continue
        if split in found:
            raise CatalogueError(
                f"{root}: {found[split].name}/ and {name}/ are both the {split} split; keep one"
            )
        found[split] = subdirs[name]
    return {name: found[name] for name in SPLIT_ORDER if name in found}


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
    require_files(((str(s.path), s.path) for s in samples), split_dir)  # catches broken symlinks
    return samples


def _visible_dirs(folder: Path) -> list[Path]:
    # Hidden folders are tool litter (.ipynb_checkpoints, .DS_Store dirs), never classes.
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    # A dangling link here is a class or split whose data store is not mounted: dropping it quietly
    # would train on part of the data, or carve val out of train.
    broken = [p for p in entries if p.is_symlink() and not p.exists()]
    if broken:
        target = os.readlink(broken[0])
        raise CatalogueError(f"{broken[0]}: broken link to {target} (is the data store mounted?)")
    return sorted(p for p in entries if p.is_dir())


def _images_under(class_dir: Path) -> list[Path]:
    # through symlinked sub-folders too, so sub-folders per shoot or store still count
    return sorted(walk_images(class_dir))
