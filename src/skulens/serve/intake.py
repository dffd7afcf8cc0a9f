"""Inventory intake: the rules that turn a recognised photo into a store entry (`intake_photo` for a photo of
one product, `shelf_photo` for a shelf photo of many, both used by the API's intake and by `scan`), and intake
from a folder (`skulens inventory scan DIR`, with `--detector` for shelf photos).

Resumable by construction: photos already in the store are skipped before recognition, and each chunk
commits in one transaction, so a scan killed at any point and run again counts every photo once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..data.image_list import folder_images
from .images import content_hash, encode_jpeg, stripped_jpeg
from .inventory import IntakeBox, IntakePhoto, IntakeResult, InventoryStore, ShelfPhoto, is_counted

if TYPE_CHECKING:
    from PIL import Image

    from ..detect.count import PhotoCount
    from ..detect.detector import Detector
    from ..models.predictor import Model, Prediction

__all__ = ["TOP_K", "ScanSummary", "count_shelf", "find_images", "intake_photo", "scan", "scan_shelves",
           "shelf_photo"]

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


def count_shelf(detector: Detector, model: Model, image: Image.Image, *, threshold: float, min_score: float | None,
                tiles: str = "auto", source: str | os.PathLike[str] | None = None) -> PhotoCount:
    """Every product box in a decoded shelf photo, named by the classifier when it is at least `threshold` sure
    (the review threshold: a box it is less sure of stays unknown and goes to review)."""
    from ..detect.count import count_products

    ((result, _),) = count_products(detector, [image], model=model, min_score=min_score, min_confidence=threshold,
                                    tiles=tiles)
    if result.error:  # a photo the detector cannot look into (too narrow): never a counted photo of nothing
        raise ImageDecodeError(result.source, result.error)
    if result.capped:
        logger.warning("%s reached the box cap (%d boxes): there may be more products than counted, and this "
                       "photo, once in the inventory, is not counted again; raise the cap (detector_max_boxes, "
                       "--max-boxes) before the next such photo", source or "a shelf photo",
                       detector.config.max_detections)
    return result


def shelf_photo(data: bytes, sha256: str, source: str, result: PhotoCount, image: Image.Image, *,
                threshold: float, keep_photos: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> ShelfPhoto:
    """A counted shelf photo ready for `InventoryStore.intake`: each box with its product, or none when the
    classifier could not name it (unknown, or only its coarse class). A box that will not count carries its crop
    for the reviewer, re-encoded from pixels (no EXIF); the whole photo is kept only with `keep_photos`."""
    from ..detect.count import crop_boxes

    boxes = []
    for b in result.boxes:
        label = b.label if b.label is not None and b.label == b.guess else None  # a coarse class is no product
        crop = None
        if not is_counted(label, b.confidence, threshold):
            crop = encode_jpeg(crop_boxes(image, [b.box])[0])
        boxes.append(IntakeBox(b.box, b.score, label, b.confidence, b.guess, crop))
    kept = stripped_jpeg(data, max_pixels=max_pixels) if keep_photos else None
    return ShelfPhoto(sha256, source, tuple(boxes), result.width, result.height, result.capped, kept)


@dataclass
class ScanSummary:
    counted: int = 0
    review: int = 0
    duplicate: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    products: int = 0  # shelf photos: products counted
    boxes_review: int = 0  # shelf photos: boxes waiting for review
    shelf: bool = False

    def add(self, r: IntakeResult) -> None:
        setattr(self, r.status, getattr(self, r.status) + 1)
        if r.shelf is not None:
            self.products += sum(r.shelf.counts.values())
            self.boxes_review += r.shelf.review

    def line(self) -> str:
        if self.shelf:
            return (f"{self.counted} shelf photos: {self.products} products counted, {self.boxes_review} boxes for "
                    f"review; {self.duplicate} photos already in the inventory, {len(self.errors)} unreadable")
        return (f"{self.counted} counted, {self.review} for review, {self.duplicate} already in the inventory, "
                f"{len(self.errors)} unreadable")


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files under `root` (a file is itself), sorted, hidden folders skipped."""
    p = Path(root)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    return sorted(folder_images(p))


def outside_store(paths: Sequence[Path], store: InventoryStore) -> tuple[list[Path], int]:
    """`paths` less the store's own files (its kept photos, review crops and reviewed photos), and how many went:
    a scan of a folder that holds the database took them in again as new photos (re-encoded, so a new hash)."""
    own = [d.resolve() for d in (store.photo_dir, store.labelled_dir)]
    kept = [p for p in paths if not any(p.resolve().is_relative_to(d) for d in own)]
    return kept, len(paths) - len(kept)


_Answer = tuple[Path, "IntakeResult | str"]


def _triage(store: InventoryStore, part: Sequence[Path]
            ) -> tuple[list[_Answer], list[tuple[Path, bytes, str]], dict[str, list[Path]]]:
    """The answers for unreadable photos and those already in the store, the (path, bytes, sha256) of the rest,
    which need recognising, and the later copies of those within `part` ({sha256: paths}): a copy's answer is
    its first copy's (`_copies`), known only once that one is taken in or fails."""
    done: list[_Answer] = []
    datas: list[tuple[Path, bytes, str]] = []
    for path in part:
        try:
            data = path.read_bytes()
        except OSError as exc:
            done.append((path, f"cannot read ({exc.strerror or exc})"))
            continue
        datas.append((path, data, content_hash(data)))
    known = store.known_results(h for _, _, h in datas)
    todo = []
    copies: dict[str, list[Path]] = {}
    for path, data, h in datas:
        if h in known:  # the store would say duplicate; skip recognising it
            done.append((path, replace(known[h], source=str(path))))
        elif h in copies:
            copies[h].append(path)
        else:
            copies[h] = []
            todo.append((path, data, h))
    return done, todo, {h: paths for h, paths in copies.items() if paths}


def _copies(answers: Sequence[_Answer], copies: dict[str, list[Path]], hashes: dict[Path, str]) -> list[_Answer]:
    """The answers of a chunk's later copies of a photo: its first copy's error, or a duplicate of what it was
    taken in as."""
    out: list[_Answer] = []
    for path, result in answers:
        for copy in copies.get(hashes[path], ()):
            if isinstance(result, str):
                out.append((copy, result))
            else:
                out.append((copy, result.copy_answer(str(copy))))
    return out


def scan(model: Model, store: InventoryStore, paths: Sequence[Path], *, threshold: float, actor: str,
         keep_photos: bool = False, chunk: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS
         ) -> Iterator[tuple[Path, IntakeResult | str]]:
    """Yield (path, result or error reason) per photo of one product; each chunk is one transaction."""
    for start in range(0, len(paths), chunk):
        done, todo, copies = _triage(store, paths[start:start + chunk])
        yield from done
        if not todo:
            continue
        preds = model.predict([d for _, d, _ in todo], top_k=TOP_K, batch_size=len(todo))
        photos, sources, answers = [], [], []
        for (path, data, h), pred in zip(todo, preds, strict=True):
            if pred.level == "error":
                answers.append((path, pred.error or "unreadable"))
                continue
            try:
                photos.append(intake_photo(data, h, str(path), pred, threshold=threshold, keep_photos=keep_photos,
                                           max_pixels=max_pixels))
            except ImageDecodeError as exc:
                answers.append((path, exc.reason))
                continue
            sources.append(path)
        results = store.intake(photos, threshold=threshold, actor=actor, keep_photos=keep_photos) if photos else []
        answers.extend(zip(sources, results, strict=True))
        yield from answers
        yield from _copies(answers, copies, {p: h for p, _, h in todo})


def scan_shelves(detector: Detector, model: Model, store: InventoryStore, paths: Sequence[Path], *,
                 threshold: float, actor: str, min_score: float | None = None, tiles: str = "auto",
                 keep_photos: bool = False,
                 chunk: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[tuple[Path, IntakeResult | str]]:
    """`scan` for shelf photos: every product in each photo counts (boxes the classifier is unsure of go to
    review); each chunk is one transaction. Photos are decoded one at a time (a chunk of 48 MP photos
    would not fit in memory); only the review crops are held until the chunk commits."""
    for start in range(0, len(paths), chunk):
        done, todo, copies = _triage(store, paths[start:start + chunk])
        yield from done
        photos, sources, answers = [], [], []
        for path, data, h in todo:
            try:
                image = decode_image(data, max_pixels=max_pixels)
                result = count_shelf(detector, model, image, threshold=threshold, min_score=min_score, tiles=tiles,
                                     source=path)
            except ImageDecodeError as exc:
                answers.append((path, exc.reason))
                continue
            photos.append(shelf_photo(data, h, str(path), result, image, threshold=threshold,
                                      keep_photos=keep_photos, max_pixels=max_pixels))
            sources.append(path)
        if photos:
            results = store.intake(photos, threshold=threshold, actor=actor, keep_photos=keep_photos)
            answers.extend(zip(sources, results, strict=True))
        yield from answers
        yield from _copies(answers, copies, {p: h for p, _, h in todo})
