"""The inventory store: product counts in SQLite, fed by recognised photos.

Used by the service and by `skulens inventory`, so nothing here knows about HTTP.

* **Idempotent.** Every photo is keyed by the sha256 of its bytes; the same photo twice counts once,
  so a client that retries after a timeout, or a scan restarted after `kill -9`, never double-counts.
* **Atomic.** One transaction per batch: a photo's row, the count it changes and the audit lines
  commit together or not at all (WAL, synchronous=FULL). A crash loses at most the uncommitted batch,
  which the retry then counts once.
* **Two kinds of photo.** A product photo (`IntakePhoto`) is one product: its top-1 label counts. A shelf
  photo (`ShelfPhoto`) holds many: the detector's boxes, each named by the classifier, and every named box
  adds one to its product; the photo, its boxes and every count it changes are one transaction.
* **Reviewed.** Photos, and shelf boxes, below the confidence threshold go to a review queue instead of the
  counts; a reviewer confirms or corrects the label (then it counts) or rejects the item. Given the known
  products, a correction must name one of them (a typo would otherwise invent a product). A review item's id
  is the photo's sha256, or `sha256:index` for a box. Reviewed photos and box crops are written, EXIF-free,
  into a labelled folder with a `manifest.csv` (`path,label,split`) that `load_catalogue` (and so
  `skulens train`/`retrain`) reads.
* **Audited.** Every change to a count or to a photo's or box's status is a row in `audit`.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "AuditEntry",
    "BoxResult",
    "IntakeBox",
    "IntakePhoto",
    "IntakeResult",
    "InventoryError",
    "InventoryStore",
    "ReviewItem",
    "ShelfPhoto",
    "ShelfResult",
    "UnknownLabelError",
    "check_known_label",
    "is_counted",
]

SCHEMA_VERSION = 2
_STATUSES = "'counted', 'review', 'confirmed', 'corrected', 'rejected'"
_SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS stock (
        label TEXT PRIMARY KEY,
        count INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS photos (
        sha256 TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
        predicted_label TEXT,
        confidence REAL NOT NULL,
        top_k TEXT NOT NULL DEFAULT '[]',
        label TEXT,
        stored TEXT,
        created_at TEXT NOT NULL,
        reviewed_at TEXT,
        reviewed_by TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS photos_status ON photos (status, created_at)",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        label TEXT,
        delta INTEGER NOT NULL DEFAULT 0,
        count_after INTEGER,
        photo TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
)
# Each step takes a database from the version before to its own; applied in order, in one transaction.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: shelf photos. A photo row says its kind; a shelf photo's products are its boxes (a shelf photo row
    # itself is 'counted' once taken in: its boxes carry the review states).
    2: (
        "ALTER TABLE photos ADD COLUMN kind TEXT NOT NULL DEFAULT 'photo' CHECK (kind IN ('photo', 'shelf'))",
        f"""CREATE TABLE boxes (
            sha256 TEXT NOT NULL REFERENCES photos (sha256),
            idx INTEGER NOT NULL,
            x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
            score REAL NOT NULL,
            predicted_label TEXT,
            confidence REAL NOT NULL,
            guess TEXT,
            status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
            label TEXT,
            stored TEXT,
            reviewed_at TEXT,
            reviewed_by TEXT,
            PRIMARY KEY (sha256, idx)
        )""",
        "CREATE INDEX boxes_status ON boxes (status)",
    ),
}
_REVIEWED = ("confirmed", "corrected")
_MAX_LABEL = 200
_ITEM_ID = re.compile(r"([0-9a-f]{64})(?::([0-9]{1,6}))?")


class InventoryError(ValueError):
    """A request the store cannot honour (unknown photo, already reviewed, bad label or count)."""


class UnknownLabelError(InventoryError):
    """A review label that names no known product: accepted, a typo ("Bananna") would become a new product,
    a row in the counts and a class folder in the labelled data that retraining reads."""

    def __init__(self, label: str, suggestions: Sequence[str]):
        self.label, self.suggestions = label, tuple(suggestions)
        hint = f"did you mean {' or '.join(map(repr, self.suggestions))}? " if self.suggestions else ""
        super().__init__(f"unknown product {label!r}: {hint}a correction must name an existing product "
                         "(a new product is enrolled first)")


@dataclass(frozen=True)
class IntakePhoto:
    """One recognised photo of one product on its way into the store."""

    sha256: str
    source: str  # file name as given (never used as a path)
    predicted_label: str | None
    confidence: float  # fine confidence of predicted_label
    top_k: tuple[tuple[str, float], ...] = ()
    image: bytes | None = field(default=None, repr=False)  # EXIF-free JPEG to keep, or None


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _safe_dirname(label: str) -> str:
    # Labels are data; folder names must not be able to climb out of the labelled folder.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "label"


def check_label(label: str) -> str:
    label = label.strip()
    if not label or len(label) > _MAX_LABEL or any(ord(ch) < 32 for ch in label):
        raise InventoryError(f"invalid label {label[:40]!r}: 1-{_MAX_LABEL} printable characters")
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


def _parse_id(item_id: str) -> tuple[str, int | None]:
    m = _ITEM_ID.fullmatch(item_id)
    if m is None:
        raise InventoryError(f"{item_id[:80]!r} is not in the inventory (ids are a sha256, or sha256:index)")
    return m[1], None if m[2] is None else int(m[2])


# The review queue: photos and boxes in one list, oldest photo first (a box under its photo's source and date).
_QUEUE_COLUMNS = ("sha256, idx, source, status, predicted_label, confidence, top_k, label, created_at, reviewed_at, "
                  "reviewed_by, stored, x1, y1, x2, y2")
_QUEUE = f"""
SELECT {_QUEUE_COLUMNS} FROM (
    SELECT sha256, NULL AS idx, source, status, predicted_label, confidence, top_k, label, created_at, reviewed_at,
           reviewed_by, stored, NULL AS x1, NULL AS y1, NULL AS x2, NULL AS y2 FROM photos
    UNION ALL
    SELECT b.sha256, b.idx, p.source, b.status, b.guess, b.confidence, NULL, b.label, p.created_at, b.reviewed_at,
           b.reviewed_by, b.stored, b.x1, b.y1, b.x2, b.y2 FROM boxes b JOIN photos p ON p.sha256 = b.sha256
)"""


class InventoryStore:
    """Counts, review queue and audit log in one SQLite file; thread-safe (one connection, one lock).

    `photo_dir` holds photos and box crops waiting for review (and every intake photo with `keep_photos`);
    `labelled_dir` receives reviewed photos and crops plus `manifest.csv` for retraining.
    """

    def __init__(self, path: str | os.PathLike[str], *, photo_dir: str | os.PathLike[str] | None = None,
                 labelled_dir: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.photo_dir = Path(photo_dir) if photo_dir else self.path.with_name(f"{self.path.stem}-photos")
        self.labelled_dir = Path(labelled_dir) if labelled_dir else self.path.with_name(f"{self.path.stem}-labelled")
        self._lock = threading.Lock()
        self._files_lock = threading.Lock()  # photo moves and manifest rewrites
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a batch is exactly one transaction.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed count survives kill -9 and power loss
        self._db.execute("PRAGMA busy_timeout=30000")  # a CLI scan and the server may share the file
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Create or upgrade the schema, in one transaction (two processes opening an old file at once
        upgrade it once; a failed upgrade leaves the file as it was)."""
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InventoryError(f"{self.path}: schema {version} is newer than this skulens understands")
            if version == SCHEMA_VERSION:
                return
            if version < 1:
                for statement in _SCHEMA_V1:
                    db.execute(statement)
            for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> InventoryStore:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- intake ----------------------------------------------------------------------------------------

    def known(self, hashes: Iterable[str]) -> dict[str, str]:
        """{sha256: status} of the photos already in the store (lets callers skip recognising them)."""
        hashes = list(hashes)
        out: dict[str, str] = {}
        for start in range(0, len(hashes), 500):  # SQLite's bound-parameter limit
            chunk = hashes[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.update({r["sha256"]: r["status"] for r in self._read(
                f"SELECT sha256, status FROM photos WHERE sha256 IN ({marks})", chunk)})
        return out

    def intake(self, photos: Sequence[IntakePhoto | ShelfPhoto], *, threshold: float, actor: str,
               keep_photos: bool = False) -> list[IntakeResult]:
        """Count or queue a batch of recognised photos in one transaction; duplicates change nothing."""
        return self.intake_batches([photos], threshold=threshold, actor=actor, keep_photos=keep_photos)[0]

    def intake_batches(self, batches: Sequence[Sequence[IntakePhoto | ShelfPhoto]], *, threshold: float,
                       actor: str | Sequence[str], keep_photos: bool = False) -> list[list[IntakeResult]]:
        """`intake` for several requests' photos at once, still one transaction (the service's writer)."""
        actors = [actor] * len(batches) if isinstance(actor, str) else list(actor)
        now = _now()
        written: list[Path] = []
        try:
            with self._transaction() as db:
                results = [[self._intake_one(db, p, threshold, who, keep_photos, now, written) for p in photos]
                           for photos, who in zip(batches, actors, strict=True)]
        except BaseException:
            for path in written:  # the rows that named them were rolled back
                path.unlink(missing_ok=True)
            raise
        return results

    def _intake_one(self, db: sqlite3.Connection, p: IntakePhoto | ShelfPhoto, threshold: float, actor: str,
                    keep_photos: bool, now: str, written: list[Path]) -> IntakeResult:
        row = db.execute("SELECT status, label, predicted_label, confidence FROM photos WHERE sha256 = ?",
                         (p.sha256,)).fetchone()
        if row is not None:
            return IntakeResult(p.sha256, p.source, "duplicate", row["label"] or row["predicted_label"],
                                row["confidence"], previous_status=row["status"])
        if isinstance(p, ShelfPhoto):
            return self._intake_shelf(db, p, threshold, actor, keep_photos, now, written)
        counted = is_counted(p.predicted_label, p.confidence, threshold)
        status = "counted" if counted else "review"
        stored = None
        if p.image is not None and (keep_photos or not counted):
            stored = self._write_photo(p.sha256, p.image, written)
        db.execute(
            "INSERT INTO photos (sha256, source, status, predicted_label, confidence, top_k, label, stored, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (p.sha256, p.source[:300], status, p.predicted_label, float(p.confidence),
             json.dumps([[lab, round(float(c), 6)] for lab, c in p.top_k]),
             p.predicted_label if counted else None, stored, now))
        if not counted:
            self._audit(db, now, actor, "review_queued", p.predicted_label, 0, None, p.sha256,
                        {"confidence": round(float(p.confidence), 6), "threshold": threshold})
            return IntakeResult(p.sha256, p.source, "review", p.predicted_label, p.confidence)
        assert p.predicted_label is not None
        count = self._add(db, p.predicted_label, 1, now)
        self._audit(db, now, actor, "intake", p.predicted_label, 1, count, p.sha256,
                    {"confidence": round(float(p.confidence), 6)})
        return IntakeResult(p.sha256, p.source, "counted", p.predicted_label, p.confidence, count=count)

    def _intake_shelf(self, db: sqlite3.Connection, p: ShelfPhoto, threshold: float, actor: str, keep_photos: bool,
                      now: str, written: list[Path]) -> IntakeResult:
        """The photo row, +N per named product, every box row and the audit lines (the caller's transaction)."""
        stored = self._write_photo(p.sha256, p.image, written) if p.image is not None and keep_photos else None
        db.execute("INSERT INTO photos (sha256, source, status, predicted_label, confidence, label, stored, "
                   "created_at, kind) VALUES (?, ?, 'counted', NULL, 0.0, NULL, ?, ?, 'shelf')",
                   (p.sha256, p.source[:300], stored, now))
        counted = [is_counted(b.label, b.confidence, threshold) for b in p.boxes]
        by_label: dict[str, list[int]] = {}
        for i, (b, ok) in enumerate(zip(p.boxes, counted, strict=True)):
            if ok and b.label is not None:
                by_label.setdefault(b.label, []).append(i)
        for label, idx in sorted(by_label.items()):
            count = self._add(db, label, len(idx), now)
            self._audit(db, now, actor, "intake", label, len(idx), count, p.sha256, {"boxes": idx})
        results = []
        for i, (b, ok) in enumerate(zip(p.boxes, counted, strict=True)):
            crop = None
            if not ok:
                if b.crop is not None:
                    crop = self._write_photo(f"{p.sha256}-{i}", b.crop, written)
                self._audit(db, now, actor, "review_queued", b.guess, 0, None, p.sha256,
                            {"box": i, "confidence": round(float(b.confidence), 6), "threshold": threshold})
            status = "counted" if ok else "review"
            db.execute("INSERT INTO boxes (sha256, idx, x1, y1, x2, y2, score, predicted_label, confidence, guess, "
                       "status, label, stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (p.sha256, i, *map(float, b.box), float(b.score), b.label, float(b.confidence), b.guess,
                        status, b.label if ok else None, crop))
            results.append(BoxResult(i, b.box, b.score, b.label, b.confidence, b.guess, status))
        shelf = ShelfResult({label: len(idx) for label, idx in by_label.items()}, tuple(results), p.width, p.height,
                            p.capped)
        return IntakeResult(p.sha256, p.source, "counted", None, 0.0, shelf=shelf)

    def _write_photo(self, stem: str, data: bytes, written: list[Path]) -> str:
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        name = f"{stem}.jpg"
        tmp = self.photo_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.photo_dir / name)
        written.append(self.photo_dir / name)
        return name

    @staticmethod
    def _add(db: sqlite3.Connection, label: str, delta: int, now: str) -> int:
        row = db.execute(
            "INSERT INTO stock (label, count, updated_at) VALUES (?, ?, ?) ON CONFLICT(label) DO UPDATE SET "
            "count = count + excluded.count, updated_at = excluded.updated_at RETURNING count",
            (label, delta, now)).fetchone()
        return int(row[0])

    @staticmethod
    def _audit(db: sqlite3.Connection, now: str, actor: str, action: str, label: str | None, delta: int,
               count_after: int | None, photo: str | None, detail: dict[str, Any]) -> None:
        db.execute("INSERT INTO audit (ts, actor, action, label, delta, count_after, photo, detail) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (now, actor, action, label, delta, count_after, photo, json.dumps(detail)))

    # -- review ----------------------------------------------------------------------------------------

    def review_queue(self, *, limit: int = 100, offset: int = 0) -> list[ReviewItem]:
        """Photos and shelf boxes waiting for a reviewer, oldest first."""
        rows = self._read(f"{_QUEUE} WHERE status = 'review' ORDER BY created_at, sha256, idx LIMIT ? OFFSET ?",
                          (limit, offset))
        return [self._item(r) for r in rows]

    def review_size(self) -> int:
        return int(self._read("SELECT (SELECT COUNT(*) FROM photos WHERE status = 'review') + "
                              "(SELECT COUNT(*) FROM boxes WHERE status = 'review')")[0][0])

    def photo(self, sha256: str) -> ReviewItem | None:
        """A photo (or, given `sha256:index`, a shelf box) and its review state."""
        try:
            sha, idx = _parse_id(sha256)
        except InventoryError:
            return None
        where, params = ("sha256 = ? AND idx IS NULL", (sha,)) if idx is None else ("sha256 = ? AND idx = ?",
                                                                                  (sha, idx))
        rows = self._read(f"{_QUEUE} WHERE {where}", params)
        return self._item(rows[0]) if rows else None

    def boxes(self, sha256: str) -> list[ReviewItem]:
        """Every box of a shelf photo, in detection order (best score first)."""
        return [self._item(r) for r in self._read(f"{_QUEUE} WHERE sha256 = ? AND idx IS NOT NULL ORDER BY idx",
                                                  (sha256,))]

    def photo_file(self, sha256: str) -> Path | None:
        """The kept (EXIF-free) photo of `sha256`, or box crop of `sha256:index`: waiting for review, or
        reviewed into the labelled folder."""
        try:
            sha, idx = _parse_id(sha256)
        except InventoryError:
            return None
        rows = (self._read("SELECT stored, label FROM photos WHERE sha256 = ?", (sha,)) if idx is None else
                self._read("SELECT stored, label FROM boxes WHERE sha256 = ? AND idx = ?", (sha, idx)))
        if not rows or not rows[0]["stored"]:
            return None
        for path in (self.photo_dir / rows[0]["stored"], self._labelled_path(rows[0]["label"], rows[0]["stored"])):
            if path is not None and path.is_file():
                return path
        return None

    def _labelled_path(self, label: str | None, name: str) -> Path | None:
        return None if label is None else self.labelled_dir / _safe_dirname(label) / name

    @staticmethod
    def _item(r: sqlite3.Row) -> ReviewItem:
        if r["idx"] is None:
            top_k = [{"label": lab, "p": p} for lab, p in json.loads(r["top_k"])]
            box = None
        else:  # a box keeps the classifier's best guess only
            top_k = [{"label": r["predicted_label"], "p": r["confidence"]}] if r["predicted_label"] else []
            box = [r["x1"], r["y1"], r["x2"], r["y2"]]
        return ReviewItem(r["sha256"], r["source"], r["status"], r["predicted_label"], r["confidence"], top_k,
                          r["label"], r["created_at"], r["reviewed_at"], r["reviewed_by"], bool(r["stored"]),
                          "photo" if r["idx"] is None else "box", r["idx"], box)

    def resolve(self, sha256: str, label: str | None, *, actor: str,
                known: Collection[str] | None = None) -> ReviewItem:
        """Confirm (label == prediction) or correct (another label) a queued photo or box (id `sha256:index`),
        which then counts, or reject it (label None: not a product, unusable). Reviewed ones become labelled data.

        known: the products a label may name (the model's classes, the catalogue); another label raises
        UnknownLabelError with the closest names. None: any well-formed label (the caller checked it)."""
        if label is not None:
            label = check_label(label) if known is None else check_known_label(label, known)
        sha, idx = _parse_id(sha256)
        table, where, params = (("photos", "sha256 = ?", (sha,)) if idx is None else
                                ("boxes", "sha256 = ? AND idx = ?", (sha, idx)))
        what = f"photo {sha[:12]}" if idx is None else f"box {sha[:12]}:{idx}"
        now = _now()
        with self._transaction() as db:
            row = db.execute(f"SELECT * FROM {table} WHERE {where}", params).fetchone()
            if row is None:
                raise InventoryError(f"{what} is not in the inventory")
            if row["status"] != "review":
                raise InventoryError(f"{what} is not waiting for review (status {row['status']})")
            predicted = row["predicted_label"] if idx is None else row["guess"]
            where_box = {} if idx is None else {"box": idx}
            if label is None:
                status, count = "rejected", None
                self._audit(db, now, actor, "review_rejected", predicted, 0, None, sha, where_box)
            else:
                status = "confirmed" if label == predicted else "corrected"
                count = self._add(db, label, 1, now)
                self._audit(db, now, actor, f"review_{status}", label, 1, count, sha,
                            {**where_box, "predicted": predicted, "confidence": row["confidence"]})
            db.execute(f"UPDATE {table} SET status = ?, label = ?, reviewed_at = ?, reviewed_by = ? WHERE {where}",
                       (status, label, now, actor, *params))
        if row["stored"]:
            with self._files_lock:
                if label is None:  # privacy: a rejected photo (not a product, maybe a person) is not kept
                    (self.photo_dir / row["stored"]).unlink(missing_ok=True)
                else:
                    self._move_to_labelled(row["stored"], label)
        self.write_manifest()
        item = self.photo(sha256)
        assert item is not None
        return item

    def _move_to_labelled(self, name: str, label: str) -> None:
        src = self.photo_dir / name
        dst = self._labelled_path(label, name)
        if dst is None or not src.is_file():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        src.unlink()

    def labelled(self) -> list[tuple[str, str]]:
        """(relative path, label) of every reviewed photo and box crop in the labelled folder. A file whose move
        was cut short by a crash (the review committed, the file still waiting) is moved now."""
        rows = self._read(f"{_QUEUE} WHERE status IN {_REVIEWED} AND stored IS NOT NULL ORDER BY reviewed_at, stored")
        out = []
        for r in rows:
            path = self._labelled_path(r["label"], r["stored"])
            assert path is not None
            if not path.is_file():
                self._move_to_labelled(r["stored"], r["label"])
            if path.is_file():
                out.append((path.relative_to(self.labelled_dir).as_posix(), r["label"]))
        return out

    def write_manifest(self) -> Path | None:
        """Rewrite `labelled_dir/manifest.csv` from the database (atomic; rebuilt, so never out of step)."""
        with self._files_lock:
            return self._write_manifest()

    def _write_manifest(self) -> Path | None:
        rows = self.labelled()
        if not rows:
            return None
        self.labelled_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "split"])
        w.writerows([rel, label, "train"] for rel, label in rows)
        path = self.labelled_dir / "manifest.csv"
        tmp = path.with_name(".manifest.csv.tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def labels(self) -> set[str]:
        """Every product name this inventory has seen: in the counts, predicted at intake (each photo's top-k
        guesses too) or given by a reviewer. What a correction can be checked against without the model."""
        rows = self._read(
            "SELECT label FROM stock UNION SELECT predicted_label FROM photos UNION SELECT label FROM photos "
            "UNION SELECT json_extract(t.value, '$[0]') FROM photos, json_each(photos.top_k) AS t "
            "UNION SELECT guess FROM boxes UNION SELECT predicted_label FROM boxes UNION SELECT label FROM boxes")
        return {r[0] for r in rows if r[0]}

    # -- counts ----------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {r["label"]: int(r["count"]) for r in self._read("SELECT label, count FROM stock ORDER BY label")}

    def stock(self) -> list[tuple[str, int, str]]:
        """(label, count, updated_at) per product, by label, in one read (updated_at: the last change, UTC)."""
        rows = self._read("SELECT label, count, updated_at FROM stock ORDER BY label")
        return [(r["label"], int(r["count"]), r["updated_at"]) for r in rows]

    def count(self, label: str) -> int:
        rows = self._read("SELECT count FROM stock WHERE label = ?", (label,))
        return int(rows[0][0]) if rows else 0

    def adjust(self, label: str, *, delta: int | None = None, count: int | None = None, actor: str,
               reason: str = "", known: Collection[str] | None = None) -> int:
        """A manual change (a sale, a stock take): add `delta` or set `count`; never below zero.

        known: the products a label may name (with those this inventory has seen); an unknown label is an
        UnknownLabelError with the closest names, so a typo never becomes a new product row."""
        label = check_label(label) if known is None else check_known_label(label, set(known) | self.labels())
        if (delta is None) == (count is None):
            raise InventoryError("give exactly one of delta or count")
        now = _now()
        with self._transaction() as db:
            current = db.execute("SELECT count FROM stock WHERE label = ?", (label,)).fetchone()
            before = int(current[0]) if current else 0
            after = before + delta if delta is not None else int(count)  # type: ignore[arg-type]
            if after < 0:
                raise InventoryError(f"{label}: count would become {after}")
            self._add(db, label, after - before, now)
            # mode: a stock take ("set": the count was counted) or a change by a number ("delta": sold, broken).
            self._audit(db, now, actor, "adjust", label, after - before, after, None,
                        {"reason": reason[:500], "mode": "delta" if delta is not None else "set"})
        return after

    def export_csv(self, out: io.TextIOBase | Any, *, titles: Callable[[str], str] | None = None) -> int:
        """Write `label,count,updated_at` rows (with `titles`, a fourth column `title`: the product's name);
        returns the number of products."""
        rows = self.stock()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["label", "count", "updated_at"] + (["title"] if titles is not None else []))
        for label, count, updated_at in rows:
            w.writerow([label, count, updated_at] + ([titles(label)] if titles is not None else []))
        return len(rows)

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        """Newest first."""
        sql, params = "SELECT * FROM audit", []
        if before_id is not None:
            sql += " WHERE id < ?"
            params.append(before_id)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [AuditEntry(r["id"], r["ts"], r["actor"], r["action"], r["label"], r["delta"], r["count_after"],
                           r["photo"], json.loads(r["detail"])) for r in rows]

    def stats(self) -> dict[str, int]:
        """Photos per status (a shelf photo taken in is 'counted'; see `box_stats` for its boxes)."""
        rows = self._read("SELECT status, COUNT(*) AS n FROM photos GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def box_stats(self) -> dict[str, int]:
        """Shelf boxes per status."""
        rows = self._read("SELECT status, COUNT(*) AS n FROM boxes GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}
