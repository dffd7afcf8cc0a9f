"""Find, recognise and count every product in a photo: the detector finds boxes, the classifier names
each crop, and a crop it is unsure of stays `unknown` (open set) instead of taking a wrong name.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..data.decode import ImageDecodeError
from ..data.sheets import spreadsheet_row
from ..models.predictor import check_images, source_name
from .boxes import PRODUCT, Detections
from .detector import Detector, ImageInput, shelf_photo

if TYPE_CHECKING:
    from ..models.predictor import Model
    from ..search.index import VectorIndex

__all__ = ["MIN_SIMILARITY", "CountedBox", "CountsWriter", "PhotoCount", "check_naming", "count_products",
           "crop_boxes", "recognise_boxes", "write_counts"]

UNKNOWN = "unknown"
MIN_SIMILARITY = 0.5  # the cosine an index match needs to name a box, unless told
CROP_PAD = 0.06  # context kept around a box, as a share of its size: the classifier saw whole products


@dataclass(frozen=True)
class CountedBox:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in photo pixels
    score: float  # the detector's: is this a product?
    label: str | None  # the product, None (unknown) when the recogniser is not sure enough of one, or
    # "product" when no recogniser ran (a count of products, not of SKUs)
    confidence: float  # the classifier's for its best guess (a product, never a coarse class)
    guess: str | None = None  # the classifier's best guess, kept for review even when unknown

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
                "label": self.label or UNKNOWN, "confidence": round(self.confidence, 4), "guess": self.guess}


@dataclass(frozen=True)
class PhotoCount:
    """One photo's result: every box kept, the count per product and how many are unknown."""

    source: str
    width: int = 0
    height: int = 0
    boxes: tuple[CountedBox, ...] = ()
    capped: bool = False  # the detector hit its box cap: there may be more products than boxes
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    recognised: bool = True  # False: no recogniser ran, every box is an unnamed "product" (none unknown)

    @property
    def total(self) -> int:
        return len(self.boxes)

    @property
    def unknown(self) -> int:
        return sum(b.label is None for b in self.boxes)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "width": self.width, "height": self.height, "total": self.total,
                "counts": dict(sorted(self.counts.items())), "unknown": self.unknown, "capped": self.capped,
                "error": self.error, "boxes": [b.to_dict() for b in self.boxes]}

    def annotated(self, image: ImageInput) -> Image.Image:
        """The photo (a path, bytes or PIL image: decoded as counting decoded it, upright by its EXIF
        orientation, so the boxes land where they were found) with every box drawn and named (unknown boxes in
        their own colour); unnamed products (no recogniser) with the detector's score."""
        from .draw import draw_boxes

        image = shelf_photo(image, self.source)
        boxes = np.array([b.box for b in self.boxes], np.float32).reshape(-1, 4)
        if not self.recognised:
            return draw_boxes(image, boxes, scores=[b.score for b in self.boxes])
        return draw_boxes(image, boxes, labels=[b.label for b in self.boxes],
                          scores=[b.confidence for b in self.boxes])


def crop_boxes(image: Image.Image, boxes: np.ndarray, pad: float = CROP_PAD) -> list[Image.Image]:
    """Each box cut out of the photo with a little context, clipped to the photo."""
    crops = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32).reshape(-1, 4):
        px, py = (x2 - x1) * pad, (y2 - y1) * pad
        box = (max(0, int(x1 - px)), max(0, int(y1 - py)), min(image.width, int(np.ceil(x2 + px))),
               min(image.height, int(np.ceil(y2 + py))))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            box = (max(0, int(x1)), max(0, int(y1)), max(int(x1) + 2, int(x2)), max(int(y1) + 2, int(y2)))
        crops.append(image.crop(box))
    return crops


def recognise_boxes(model: Model | None, image: Image.Image, dets: Detections, min_confidence: float, *,
                    index: VectorIndex | None = None, min_similarity: float | None = None) -> list[CountedBox]:
    """Name each box's crop; a box the recogniser is unsure of gets label None (unknown). Without a model
    every box is an unnamed "product" (never unknown: nothing was asked to name it).

    Without an index the classifier names it (confident when its probability >= min_confidence). With a
    search index (built with this model) the nearest indexed product names it when the cosine similarity
    is >= min_similarity (None: MIN_SIMILARITY), so products enrolled in the index but unknown to the
    classifier are counted too.
    """
    min_similarity = check_naming(model, index, min_similarity)
    if model is None or not len(dets):
        return [CountedBox(tuple(map(float, b)), float(s), PRODUCT, 0.0) for b, s in zip(dets.boxes, dets.scores)]
    crops = crop_boxes(image, dets.boxes)
    out = []
    if index is not None:
        hits = index.search(model.embed(crops), k=1)
        for b, s, hit in zip(dets.boxes, dets.scores, hits, strict=True):
            best = hit[0] if hit else None
            name = None if best is None else (best.record.label or best.product_id)
            sure = best is not None and best.score >= min_similarity
            out.append(CountedBox(tuple(map(float, b)), float(s), name if sure else None,
                                  0.0 if best is None else float(best.score), name))
        return out
    # A count is of products: the fine decision alone. predict's fallback to a coarse class ("Apple" for an
    # unsure Granny-Smith) would be counted beside the SKUs and carry the coarse class's confidence.
    preds = model.predict(crops, top_k=1)
    for b, s, p in zip(dets.boxes, dets.scores, preds, strict=True):
        sure = p.fine_label is not None and p.fine_confidence >= min_confidence
        out.append(CountedBox(tuple(map(float, b)), float(s), p.fine_label if sure else None,
                              float(p.fine_confidence), p.fine_label))
    return out


def check_naming(model: object, index: object, min_similarity: float | None) -> float:
    """The similarity an index match needs (MIN_SIMILARITY when None); ValueError for settings that would be
    ignored: an index without the model it was built with, or a similarity without an index."""
    if index is not None and model is None:
        raise ValueError("an index names boxes through the model it was built with: give the model too")
    if min_similarity is not None and index is None:
        raise ValueError("min_similarity is a setting of the index: without one the classifier names the boxes "
                         "(min_confidence)")
    if min_similarity is not None and not 0 <= min_similarity <= 1:
        raise ValueError(f"min_similarity must be in [0, 1], got {min_similarity}")
    return MIN_SIMILARITY if min_similarity is None else min_similarity


def count_products(detector: Detector, images: Iterable[ImageInput], *, model: Model | None = None,
                   min_score: float | None = None, min_confidence: float = 0.5, tiles: str = "auto",
                   index: VectorIndex | None = None, min_similarity: float | None = None,
                   sources: Sequence[str] | None = None) -> Iterable[tuple[PhotoCount, Image.Image | None]]:
    """Per photo (lazily, in order): its PhotoCount and the decoded photo (None when it failed).

    min_score: the detector's score a box needs to count as a product (None: the detector's own
    `min_score`, chosen on held-out composites when it was trained). min_confidence: the classifier's
    confidence a box needs to be named; below it the box counts as unknown. Without a model every box
    is an unnamed "product" (a count of products, not of SKUs; `unknown` is 0). index: name boxes by the
    nearest product in a search index built with `model` (see `recognise_boxes`). A photo that cannot be
    decoded gives a PhotoCount with `error` set, and the rest go on. Photos up to MAX_PIXELS are counted.
    The settings are checked at the call (ValueError), before any photo is read: the stream itself is lazy.
    """
    check_images(images)  # one path on its own would be counted letter by letter
    from .options import check_tiles

    check_tiles(tiles)  # at the call, as the other settings (Detector.detect checks it per photo)
    similarity = check_naming(model, index, min_similarity)
    if index is not None and model is not None:
        from ..search.engine import check_index_model

        check_index_model(model, index)  # an index of another model would name every box, confidently wrong
    min_score = detector.config.min_score if min_score is None else min_score
    if not 0 <= min_score <= 1 or not 0 <= min_confidence <= 1:
        raise ValueError(f"min_score and min_confidence must be in [0, 1], got {min_score}, {min_confidence}")
    return _counted(detector, images, model, min_score, min_confidence, tiles, index,
                    similarity if index is not None else None, sources)


def _counted(detector: Detector, images: Iterable[ImageInput], model: Model | None, min_score: float,
             min_confidence: float, tiles: str, index: VectorIndex | None, min_similarity: float | None,
             sources: Sequence[str] | None) -> Iterator[tuple[PhotoCount, Image.Image | None]]:
    """count_products' photos, one at a time, under settings it has checked."""
    for i, im in enumerate(images):
        source = sources[i] if sources is not None else source_name(im, i)
        try:
            pil = shelf_photo(im, source)
            # a strip too narrow to look into is an ImageDecodeError too
            dets = detector.detect([pil], tiles=tiles, min_score=min_score)[0].above(min_score)
        except ImageDecodeError as e:
            yield PhotoCount(source, error=e.reason), None
            continue
        boxes = tuple(recognise_boxes(model, pil, dets, min_confidence, index=index,
                                      min_similarity=min_similarity))
        counts = dict(Counter(b.label for b in boxes if b.label is not None))  # no model: {"product": n}
        yield PhotoCount(source, pil.width, pil.height, boxes, dets.capped, None, counts, model is not None), pil


class CountsWriter:
    """JSON lines (one photo per line, boxes included) or CSV (one row per photo and product), written as the
    photos are counted and flushed after each: a run cut short keeps the photos it counted."""

    def __init__(self, path: str | os.PathLike, fmt: str | None = None):
        self.path = Path(path)
        self.fmt = fmt or ("csv" if self.path.suffix.lower() == ".csv" else "jsonl")
        if self.fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be jsonl or csv, got {self.fmt!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file) if self.fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(["source", "product", "count", "photo_total", "unknown", "capped", "error"])

    def write(self, r: PhotoCount) -> None:
        if self._csv is None:
            self._file.write(json.dumps(r.to_dict()) + "\n")
        else:
            for label, n in sorted(r.counts.items()) or [("", 0)]:
                self._csv.writerow(spreadsheet_row([r.source, label, n, r.total, r.unknown, int(r.capped), r.error or ""]))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CountsWriter:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_counts(results: Sequence[PhotoCount], path: str | os.PathLike, fmt: str | None = None) -> Path:
    """JSON lines (one photo per line, boxes included) or CSV (one row per photo and product)."""
    with CountsWriter(path, fmt) as writer:
        for r in results:
            writer.write(r)
    return writer.path
