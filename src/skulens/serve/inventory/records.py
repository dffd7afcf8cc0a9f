"""The inventory's typed values: photos and shelf photos on their way in, what an intake answers, review items,
audit entries and erasures; and the label rules (`check_label`, `check_known_label`, `is_counted`)."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ...data.catalogue import unprintable
from .errors import InventoryError, UnknownLabelError

__all__ = ["AuditEntry", "BoxResult", "Erasure", "IntakeBox", "IntakePhoto", "IntakeResult", "ReviewItem",
           "ShelfPhoto", "ShelfResult", "check_known_label", "check_label", "is_counted"]

MAX_LABEL = 200


@dataclass(frozen=True)
class IntakePhoto:
    """One recognised photo of one product on its way into the store."""

    sha256: str
    source: str  # file name as given (never used as a path)
    predicted_label: str | None
    confidence: float  # fine confidence of predicted_label
    top_k: tuple[tuple[str, float], ...] = ()
    image: bytes | None = field(default=None, repr=False)  # EXIF-free JPEG to keep, or None
    user_ref: str | None = None  # the sender's pseudonym (serve.privacy), when the photo came from a known user


@dataclass(frozen=True)
class IntakeBox:
    """One product the detector found in a shelf photo, named by the classifier."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the photo's (EXIF-rotated) pixels
    score: float  # the detector's: is this a product?
    label: str | None  # the product, or None when the classifier could not name it (unknown)
    confidence: float  # the classifier's, for label (for its best guess when unknown)
    guess: str | None = None  # the classifier's best product guess: what a reviewer starts from
    crop: bytes | None = field(default=None, repr=False)  # EXIF-free JPEG of the box, kept for review


@dataclass(frozen=True)
class ShelfPhoto:
    """A shelf (fridge, basket) photo with every product box in it, on its way into the store."""

    sha256: str
    source: str  # file name as given (never used as a path)
    boxes: tuple[IntakeBox, ...]
    width: int = 0
    height: int = 0
    capped: bool = False  # the detector hit its box cap: there may be more products than boxes
    image: bytes | None = field(default=None, repr=False)  # the whole photo (EXIF-free) to keep, or None
    user_ref: str | None = None  # the sender's pseudonym (serve.privacy), when the photo came from a known user


@dataclass(frozen=True)
class BoxResult:
    index: int
    box: tuple[float, float, float, float]
    score: float
    label: str | None  # None: unknown
    confidence: float
    guess: str | None
    status: str  # counted | review

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
                "label": self.label or "unknown", "confidence": round(self.confidence, 4), "guess": self.guess,
                "status": self.status}


@dataclass(frozen=True)
class ShelfResult:
    """What a shelf photo added: products counted (label -> boxes), and every box with its fate."""

    counts: dict[str, int]
    boxes: tuple[BoxResult, ...]
    width: int
    height: int
    capped: bool

    @property
    def review(self) -> int:
        return sum(b.status == "review" for b in self.boxes)

    def to_dict(self, *, summary: bool = False) -> dict[str, Any]:
        """Every box, or (`summary`) only how many counted and how many wait for review."""
        boxes: Any = ({"counted": len(self.boxes) - self.review, "review": self.review} if summary
                      else [b.to_dict() for b in self.boxes])
        return {"counts": dict(sorted(self.counts.items())), "boxes": boxes, "width": self.width,
                "height": self.height, "capped": self.capped}


@dataclass(frozen=True)
class IntakeResult:
    sha256: str
    source: str
    status: str  # counted | review | duplicate (a shelf photo taken in is counted; its boxes say the rest)
    label: str | None  # the label counted (counted), the prediction (review), the stored label (duplicate)
    confidence: float
    count: int | None = None  # the label's count after this photo (counted)
    previous_status: str | None = None  # for duplicates: what happened to the photo the first time
    shelf: ShelfResult | None = None  # a shelf photo's products and boxes

    @classmethod
    def duplicate(cls, row: Mapping[str, Any], source: str) -> IntakeResult:
        """The answer for a photo already in the store, from its `photos` row (sha256, status, label,
        predicted_label, confidence): its stored label (or prediction) and what happened to it the first time."""
        return cls(row["sha256"], source, "duplicate", row["label"] or row["predicted_label"], row["confidence"],
                   previous_status=row["status"])

    def copy_answer(self, source: str) -> IntakeResult:
        """The answer for another copy of this photo sent after it: a duplicate of what it was taken in as."""
        return IntakeResult(self.sha256, source, "duplicate", self.label, self.confidence,
                            previous_status=self.status)

    def to_dict(self, *, summary: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "shelf"}
        if self.shelf is not None:  # absent for product photos: their answer keeps its shape
            d["shelf"] = self.shelf.to_dict(summary=summary)
        return d


@dataclass(frozen=True)
class ReviewItem:
    """A photo, or one box of a shelf photo (`kind` "box", `index` and `box` set), and its review state."""

    sha256: str
    source: str
    status: str
    predicted_label: str | None
    confidence: float
    top_k: list[dict[str, Any]]
    label: str | None
    created_at: str
    reviewed_at: str | None = None
    reviewed_by: str | None = None
    has_photo: bool = False
    kind: str = "photo"  # photo | box
    index: int | None = None
    box: list[float] | None = None

    @property
    def id(self) -> str:
        """What `resolve` and `photo_file` take: the sha256, or `sha256:index` for a box."""
        return self.sha256 if self.index is None else f"{self.sha256}:{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


@dataclass(frozen=True)
class Erasure:
    """What `erase_user` deleted: the user's events, and the files of the photos they sent (their rows stay,
    without the file and without the user, so a photo sent again is still a duplicate and counts stay right)."""

    user_ref: str
    events: int
    photos: int
    files: int  # files found and deleted
    missing: int = 0  # files the rows named that were in neither folder (another --labelled-dir?): not deleted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: str
    actor: str
    action: str
    label: str | None
    delta: int
    count_after: int | None
    photo: str | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_counted(label: str | None, confidence: float, threshold: float) -> bool:
    """Whether a recognised photo (or shelf box) counts at once (else it waits for a reviewer)."""
    return label is not None and confidence >= threshold


def check_label(label: str) -> str:
    label = label.strip()
    if not label or len(label) > MAX_LABEL or unprintable(label):
        raise InventoryError(f"invalid label {label[:40]!r}: 1-{MAX_LABEL} printable characters (no control or "
                             "invisible ones)")
    return label


def check_known_label(label: str, known: Collection[str]) -> str:
    """`label`, checked as `check_label` does, if it is one of `known`; else UnknownLabelError with the
    closest known names (compared case-insensitively, so "Oat-Milk" suggests "oat-milk")."""
    label = check_label(label)
    if label in known:
        return label
    by_lower: dict[str, str] = {}
    for name in sorted(known):
        by_lower.setdefault(name.lower(), name)
    close = difflib.get_close_matches(label.lower(), list(by_lower), n=3, cutoff=0.6)
    raise UnknownLabelError(label, [by_lower[c] for c in close])

