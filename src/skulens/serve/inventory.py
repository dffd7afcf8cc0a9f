"""The inventory store: product counts in SQLite, fed by recognised photos.

Used by the service and by `skulens inventory`, so nothing here knows about HTTP.

* **Idempotent.** Every photo is keyed by the sha256 of its bytes; the same photo twice counts once,
  so a client that retries after a timeout, or a scan restarted after `kill -9`, never double-counts.
* **Atomic.** One transaction per batch: a photo's row, the count it changes and the audit lines
  commit together or not at all (WAL, synchronous=FULL). A crash loses at most the uncommitted batch,
  which the retry then counts once.
* **Reviewed.** Photos below the confidence threshold go to a review queue instead of the counts; a
  reviewer confirms or corrects the label (then it counts) or rejects the photo. Reviewed photos are
  written, EXIF-free, into a labelled folder with a `manifest.csv` (`path,label,split`) that
  `load_catalogue` (and so `skulens train`/`retrain`) reads.
* **Audited.** Every change to a count or a photo's status is a row in `audit`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "AuditEntry",
    "IntakePhoto",
    "IntakeResult",
    "InventoryError",
    "InventoryStore",
    "ReviewItem",
    "is_counted",
]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    label TEXT PRIMARY KEY,
    count INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS photos (
    sha256 TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('counted', 'review', 'confirmed', 'corrected', 'rejected')),
    predicted_label TEXT,
    confidence REAL NOT NULL,
    top_k TEXT NOT NULL DEFAULT '[]',
    label TEXT,
    stored TEXT,
    created_at TEXT NOT NULL,
    reviewed_at TEXT,
    reviewed_by TEXT
);
CREATE INDEX IF NOT EXISTS photos_status ON photos (status, created_at);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    label TEXT,
    delta INTEGER NOT NULL DEFAULT 0,
    count_after INTEGER,
    photo TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""
_REVIEWED = ("confirmed", "corrected")
_MAX_LABEL = 200


class InventoryError(ValueError):
    """A request the store cannot honour (unknown photo, already reviewed, bad label or count)."""


@dataclass(frozen=True)
class IntakePhoto:
    """One recognised photo on its way into the store."""

    sha256: str
    source: str  # file name as given (never used as a path)
    predicted_label: str | None
    confidence: float  # fine confidence of predicted_label
    top_k: tuple[tuple[str, float], ...] = ()
    image: bytes | None = field(default=None, repr=False)  # EXIF-free JPEG to keep, or None


@dataclass(frozen=True)
class IntakeResult:
    sha256: str
    source: str
    status: str  # counted | review | duplicate
    label: str | None  # the label counted (counted), the prediction (review), the stored label (duplicate)
    confidence: float
    count: int | None = None  # the label's count after this photo (counted)
    previous_status: str | None = None  # for duplicates: what happened to the photo the first time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReviewItem:
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
    """Whether a recognised photo counts at once (else it waits for a reviewer)."""
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


class InventoryStore:
    """Counts, review queue and audit log in one SQLite file; thread-safe (one connection, one lock).

    `photo_dir` holds photos waiting for review (and every intake photo with `keep_photos`);
    `labelled_dir` receives reviewed photos plus `manifest.csv` for retraining.
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
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise InventoryError(f"{self.path}: schema {version} is newer than this skulens understands")
        self._db.executescript(_SCHEMA)  # every statement is IF NOT EXISTS: safe on an existing file
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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

    def intake(self, photos: Sequence[IntakePhoto], *, threshold: float, actor: str,
               keep_photos: bool = False) -> list[IntakeResult]:
        """Count or queue a batch of recognised photos in one transaction; duplicates change nothing."""
        return self.intake_batches([photos], threshold=threshold, actor=actor, keep_photos=keep_photos)[0]

    def intake_batches(self, batches: Sequence[Sequence[IntakePhoto]], *, threshold: float, actor: str | Sequence[str],
                       keep_photos: bool = False) -> list[list[IntakeResult]]:
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

    def _intake_one(self, db: sqlite3.Connection, p: IntakePhoto, threshold: float, actor: str,
                    keep_photos: bool, now: str, written: list[Path]) -> IntakeResult:
        row = db.execute("SELECT status, label, predicted_label, confidence FROM photos WHERE sha256 = ?",
                         (p.sha256,)).fetchone()
        if row is not None:
            return IntakeResult(p.sha256, p.source, "duplicate", row["label"] or row["predicted_label"],
                                row["confidence"], previous_status=row["status"])
        counted = is_counted(p.predicted_label, p.confidence, threshold)
        status = "counted" if counted else "review"
        stored = None
        if p.image is not None and (keep_photos or not counted):
            stored = self._write_photo(p.sha256, p.image)
            written.append(self.photo_dir / stored)
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

    def _write_photo(self, sha256: str, data: bytes) -> str:
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        name = f"{sha256}.jpg"
        tmp = self.photo_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.photo_dir / name)
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
        rows = self._read("SELECT * FROM photos WHERE status = 'review' ORDER BY created_at, sha256 LIMIT ? OFFSET ?",
                          (limit, offset))
        return [self._item(r) for r in rows]

    def review_size(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM photos WHERE status = 'review'")[0][0])

    def photo(self, sha256: str) -> ReviewItem | None:
        rows = self._read("SELECT * FROM photos WHERE sha256 = ?", (sha256,))
        return self._item(rows[0]) if rows else None

    def photo_file(self, sha256: str) -> Path | None:
        """The kept (EXIF-free) photo of `sha256`: waiting for review, or reviewed into the labelled folder."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            return None
        rows = self._read("SELECT stored, label FROM photos WHERE sha256 = ?", (sha256,))
        if not rows or not rows[0]["stored"]:
            return None
        for path in (self.photo_dir / rows[0]["stored"], self._labelled_path(rows[0]["label"], sha256)):
            if path is not None and path.is_file():
                return path
        return None

    def _labelled_path(self, label: str | None, sha256: str) -> Path | None:
        return None if label is None else self.labelled_dir / _safe_dirname(label) / f"{sha256}.jpg"

    def _item(self, r: sqlite3.Row) -> ReviewItem:
        return ReviewItem(r["sha256"], r["source"], r["status"], r["predicted_label"], r["confidence"],
                          [{"label": lab, "p": p} for lab, p in json.loads(r["top_k"])], r["label"],
                          r["created_at"], r["reviewed_at"], r["reviewed_by"], bool(r["stored"]))

    def resolve(self, sha256: str, label: str | None, *, actor: str) -> ReviewItem:
        """Confirm (label == prediction) or correct (another label) a queued photo, which then counts,
        or reject it (label None: not a product, unusable). Reviewed photos become labelled data."""
        label = None if label is None else check_label(label)
        now = _now()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM photos WHERE sha256 = ?", (sha256,)).fetchone()
            if row is None:
                raise InventoryError(f"photo {sha256[:12]} is not in the inventory")
            if row["status"] != "review":
                raise InventoryError(f"photo {sha256[:12]} is not waiting for review (status {row['status']})")
            if label is None:
                status, count = "rejected", None
                self._audit(db, now, actor, "review_rejected", row["predicted_label"], 0, None, sha256, {})
            else:
                status = "confirmed" if label == row["predicted_label"] else "corrected"
                count = self._add(db, label, 1, now)
                self._audit(db, now, actor, f"review_{status}", label, 1, count, sha256,
                            {"predicted": row["predicted_label"], "confidence": row["confidence"]})
            db.execute("UPDATE photos SET status = ?, label = ?, reviewed_at = ?, reviewed_by = ? WHERE sha256 = ?",
                       (status, label, now, actor, sha256))
        if row["stored"]:
            with self._files_lock:
                if label is None:  # privacy: a rejected photo (not a product, maybe a person) is not kept
                    (self.photo_dir / row["stored"]).unlink(missing_ok=True)
                else:
                    self._move_to_labelled(sha256, label)
        self.write_manifest()
        item = self.photo(sha256)
        assert item is not None
        return item

    def _move_to_labelled(self, sha256: str, label: str) -> None:
        src = self.photo_dir / f"{sha256}.jpg"
        dst = self._labelled_path(label, sha256)
        if dst is None or not src.is_file():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        src.unlink()

    def labelled(self) -> list[tuple[str, str]]:
        """(relative path, label) of every reviewed photo in the labelled folder. A photo whose move was cut
        short by a crash (the review committed, the file still waiting) is moved now."""
        rows = self._read("SELECT sha256, label FROM photos WHERE status IN ('confirmed', 'corrected') "
                          "AND stored IS NOT NULL ORDER BY reviewed_at, sha256")
        out = []
        for r in rows:
            path = self._labelled_path(r["label"], r["sha256"])
            assert path is not None
            if not path.is_file():
                self._move_to_labelled(r["sha256"], r["label"])
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

    # -- counts ----------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {r["label"]: int(r["count"]) for r in self._read("SELECT label, count FROM stock ORDER BY label")}

    def count(self, label: str) -> int:
        rows = self._read("SELECT count FROM stock WHERE label = ?", (label,))
        return int(rows[0][0]) if rows else 0

    def adjust(self, label: str, *, delta: int | None = None, count: int | None = None, actor: str,
               reason: str = "") -> int:
        """A manual change (a sale, a stock take): add `delta` or set `count`; never below zero."""
        label = check_label(label)
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
            self._audit(db, now, actor, "adjust", label, after - before, after, None, {"reason": reason[:500]})
        return after

    def export_csv(self, out: io.TextIOBase | Any) -> int:
        """Write `label,count,updated_at` rows; returns the number of products."""
        rows = self._read("SELECT label, count, updated_at FROM stock ORDER BY label")
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["label", "count", "updated_at"])
        for r in rows:
            w.writerow([r["label"], r["count"], r["updated_at"]])
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
        rows = self._read("SELECT status, COUNT(*) AS n FROM photos GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}
