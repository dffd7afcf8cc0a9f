"""Inventory intake: the one rule that turns a recognised photo into a store entry (`intake_photo`, used by
the API's intake and by `scan`), and intake from a folder (`skulens inventory scan DIR`).

Resumable by construction: photos already in the store are skipped before recognition, and each chunk
commits in one transaction, so a scan killed at any point and run again counts every photo once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.catalogue import IMAGE_SUFFIXES
from ..data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError
from .images import content_hash, stripped_jpeg
from .inventory import IntakePhoto, IntakeResult, InventoryStore, is_counted

if TYPE_CHECKING:
    from ..models.predictor import Model, Prediction

__all__ = ["TOP_K", "ScanSummary", "find_images", "intake_photo", "scan"]

logger = logging.getLogger(__name__)

TOP_K = 5  # candidates stored with each photo: what a reviewer chooses from


def intake_photo(data: bytes, sha256: str, source: str, pred: Prediction, *, threshold: float,
                 keep_photos: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> IntakePhoto:
    """A recognised photo ready for `InventoryStore.intake`.

    Only a photo that will be kept (every one with `keep_photos`, else one going to review) is
    re-encoded; re-encoding from pixels drops EXIF (GPS included). ImageDecodeError if it cannot be.
    """
    keep = keep_photos or not is_counted(pred.fine_label, pred.fine_confidence, threshold)
    stored = stripped_jpeg(data, max_pixels=max_pixels) if keep else None
    return IntakePhoto(sha256, source, pred.fine_label, pred.fine_confidence, pred.top_k, stored)


@dataclass
class ScanSummary:
    counted: int = 0
    review: int = 0
    duplicate: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def add(self, r: IntakeResult) -> None:
        setattr(self, r.status, getattr(self, r.status) + 1)

    def line(self) -> str:
        return (f"{self.counted} counted, {self.review} for review, {self.duplicate} already in the inventory, "
                f"{len(self.errors)} unreadable")


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files under `root` (a file is itself), sorted, hidden folders skipped."""
    p = Path(root)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    return sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(p).parts))


def scan(model: Model, store: InventoryStore, paths: Sequence[Path], *, threshold: float, actor: str,
         keep_photos: bool = False, chunk: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS
         ) -> Iterator[tuple[Path, IntakeResult | str]]:
    """Yield (path, result or error reason) per photo; each chunk is one transaction."""
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        datas: list[tuple[Path, bytes, str]] = []
        for path in part:
            try:
                data = path.read_bytes()
            except OSError as exc:
                yield path, f"cannot read ({exc.strerror or exc})"
                continue
            datas.append((path, data, content_hash(data)))
        known = store.known(h for _, _, h in datas)
        todo = []
        seen: set[str] = set()
        for path, data, h in datas:
            if h in known or h in seen:  # the store would say duplicate; skip recognising it
                yield path, IntakeResult(h, path.name, "duplicate", None, 0.0, previous_status=known.get(h))
            else:
                seen.add(h)
                todo.append((path, data, h))
        if not todo:
            continue
        preds = model.predict([d for _, d, _ in todo], top_k=TOP_K, batch_size=len(todo))
        photos, sources = [], []
        for (path, data, h), pred in zip(todo, preds, strict=True):
            if pred.level == "error":
                yield path, pred.error or "unreadable"
                continue
            try:
                photos.append(intake_photo(data, h, str(path), pred, threshold=threshold, keep_photos=keep_photos,
                                           max_pixels=max_pixels))
            except ImageDecodeError as exc:
                yield path, exc.reason
                continue
            sources.append(path)
        results = store.intake(photos, threshold=threshold, actor=actor, keep_photos=keep_photos)
        yield from zip(sources, results, strict=True)
