"""The inventory store: product counts in SQLite or PostgreSQL, fed by recognised photos.

A package: `errors` (what it refuses, how storage fails), `records` (typed values), `schema` (the SQL),
`store` (`InventoryStore`). Used by the service and by `skulens inventory`, so nothing here knows about HTTP.

* **One code path, two databases.** `InventoryStore("inv.sqlite")` keeps everything in one SQLite file (the
  embedded default); `InventoryStore("postgresql://user@host/db")` in a PostgreSQL database, which several
  `skulens serve` processes (and CLI scans) share. The SQL is the same (SQLAlchemy Core, plain SQL both
  understand); only the schema's column types, the schema-version record and the JSON query in `labels` differ.
* **Idempotent.** Every photo is keyed by the sha256 of its bytes (a primary key); the same photo twice counts
  once, so a client that retries after a timeout, a scan restarted after `kill -9`, or two service processes
  that get the same photo at once never double-count.
* **Atomic.** One transaction per batch: a photo's row, the count it changes and the audit lines commit
  together or not at all (SQLite: WAL, synchronous=FULL; PostgreSQL: its own WAL). A crash loses at most the
  uncommitted batch, which the retry then counts once. Counts change only by `count = count + n` in SQL.
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
* **People.** Behaviour events (`record_events`) and uploads that name who sent them carry a pseudonym
  (`serve.privacy`), never a user id; `erase_user` deletes a user's events and photos in one call, and
  `purge_uploads` deletes kept uploads older than a retention period. Counts never change for either: a
  counted product stays counted, only the personal data goes.

Errors from the database itself are the driver's own exceptions (`sqlite3.Error`, `psycopg.Error`), as when
this module talked to sqlite3 directly.
"""
from .errors import (
    InventoryError,
    PhotoMissingError,
    StorageError,
    UnknownLabelError,
    database_lost,
    storage_error,
    storage_failure,
)
from .records import (
    AuditEntry,
    BoxResult,
    Erasure,
    IntakeBox,
    IntakePhoto,
    IntakeResult,
    ReviewItem,
    ShelfPhoto,
    ShelfResult,
    check_known_label,
    check_label,
    is_counted,
)
from .schema import SCHEMA_VERSION
from .store import MAX_COUNT, InventoryStore, is_database_url

__all__ = [
    "MAX_COUNT",
    "SCHEMA_VERSION",
    "AuditEntry",
    "BoxResult",
    "Erasure",
    "IntakeBox",
    "IntakePhoto",
    "IntakeResult",
    "InventoryError",
    "InventoryStore",
    "PhotoMissingError",
    "ReviewItem",
    "ShelfPhoto",
    "ShelfResult",
    "StorageError",
    "UnknownLabelError",
    "check_known_label",
    "check_label",
    "database_lost",
    "is_counted",
    "is_database_url",
    "storage_error",
    "storage_failure",
]
