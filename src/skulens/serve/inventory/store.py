"""`InventoryStore`: counts, the review queue, the audit log, people's events and the kept photos' files, in one
SQLite file or a PostgreSQL database (the package's docstring says how it behaves)."""


from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, RowMapping

from ...data.sheets import spreadsheet_row
from ...recommend.shopping_log import Event
from ..privacy import is_pseudonym
from ..settings import MAX_RETENTION_DAYS
from .errors import (
    InventoryError,
    PhotoMissingError,
    database_lost,
    driver_error,
    one_requests_error,
    storage_error,
    storage_failure,
)
from .records import (
    MAX_LABEL,
    AuditEntry,
    BoxResult,
    Erasure,
    IntakePhoto,
    IntakeResult,
    ReviewItem,
    ShelfPhoto,
    ShelfResult,
    check_known_label,
    check_label,
    is_counted,
)
from .schema import (
    COLUMN_TYPES,
    LABELLED,
    MIGRATIONS,
    NAMED_FILES,
    PG_MIGRATE_LOCK,
    PG_VERSION_TABLE,
    QUEUE,
    SCHEMA_V1,
    SCHEMA_VERSION,
    TOP_K_LABELS,
)

try:
    import fcntl
except ImportError:  # Windows: the manifest lock is per process only
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAX_COUNT", "InventoryStore", "is_database_url"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# PostgreSQL errors after which the whole transaction is simply run again: deadlock, serialization failure.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
_RETRIES = 5
# Database URL schemes: a URL with another scheme is an error, anything without "://" is a SQLite file path.
_URL_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
                "postgresql+psycopg": "postgresql+psycopg", "sqlite": "sqlite", "sqlite+pysqlite": "sqlite"}
_ITEM_ID = re.compile(r"([0-9a-f]{64})(?::([0-9]{1,6}))?")

MAX_COUNT = 2**31 - 1  # a stock count: PostgreSQL's INTEGER column
# The store's own files in its folders: kept photos and box crops, and their temporaries (`_write_photo`,
# `_copy_to_labelled`, and the files an erasure sets aside until its commit, `erase_user`). Only these are ever
# swept.
_STORE_FILE = re.compile(
    r"[0-9a-f]{64}(?:-[0-9]+)?\.jpg|\.[0-9a-f]{64}(?:-[0-9]+)?\.jpg(?:\.[0-9]+)?(?:\.erasing)?\.tmp")
# A file an erasure set aside until its commit (`.{name}.{pid}.erasing.tmp`): group 1 is the name it had.
_ASIDE_FILE = re.compile(r"\.([0-9a-f]{64}(?:-[0-9]+)?\.jpg)\.[0-9]+\.erasing\.tmp")
# 1 h: an intake writes its files before its transaction commits (seconds, a lock wait at most); a file that no
# row names an hour later was left by a crash or a failed write.
_SWEEP_MIN_AGE_S = 3600.0
# Files checked against the database per query: their sha256s are bound twice (`NAMED_FILES`), under the 999
# bound parameters of SQLite before 3.32.
_SWEEP_CHUNK = 400

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _user_ref(value: str | None) -> str | None:
    """A user reference as stored: a pseudonym or nothing (a plain user id here is a bug upstream)."""
    if value is not None and not is_pseudonym(value):
        raise InventoryError("a user is stored by pseudonym only (serve.privacy.Pseudonymizer), never by id")
    return value


def _safe_dirname(label: str) -> str:
    # Labels are data; folder names must not be able to climb out of the labelled folder.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "label"


def _parse_id(item_id: str) -> tuple[str, int | None]:
    m = _ITEM_ID.fullmatch(item_id)
    if m is None:
        raise InventoryError(f"{item_id[:80]!r} is not in the inventory (ids are a sha256, or sha256:index)")
    return m[1], None if m[2] is None else int(m[2])


def is_database_url(db: str | os.PathLike[str]) -> bool:
    """Whether `db` is a database URL (`postgresql://...`, `sqlite:///...`) rather than a SQLite file path."""
    return isinstance(db, str) and "://" in db


def _display(url: sa.engine.URL) -> str:
    """The URL as logs and messages name it: no password, in the user part or in the query string."""
    from ..settings import hide_password

    return hide_password(url.render_as_string(hide_password=True))


def _old_store_files(folder: Path, cutoff: float) -> Iterator[str]:
    """The names of the store's own files (`_STORE_FILE`) in `folder` last written before `cutoff`, and every file
    an erasure set aside (`_ASIDE_FILE`) whatever its age, one at a time (a folder's listing is never held whole).
    A rename keeps a file's mtime, so an aside file's age is its photo's; and the sweep holds `_files()`, as an
    erasure does from its renames to its commit, so one it sees was left by an erasure cut short."""
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if _STORE_FILE.fullmatch(entry.name) is None:
                continue
            try:
                if entry.is_file() and (entry.stat().st_mtime < cutoff or _ASIDE_FILE.fullmatch(entry.name)):
                    yield entry.name
            except FileNotFoundError:  # deleted meanwhile
                continue


def _write_whole(path: Path, data: bytes, *, via: Path | None = None) -> None:
    """Write `path` whole or not at all (with `via`: into that temporary, then renamed over `path`, which is never
    seen half-written). A write cut short (a full disk) leaves no half-written file behind: half a photo is still
    someone's photo, half a manifest is wrong training data."""
    target = via or path
    try:
        target.write_bytes(data)
        if via is not None:
            os.replace(via, path)
    except BaseException:
        with suppress(OSError):  # the write's own error is the one to hear
            target.unlink(missing_ok=True)
        raise


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's documented recipe for pysqlite: no implicit BEGIN from the driver, ours in _sqlite_on_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed count survives kill -9 and power loss
    cursor.execute("PRAGMA busy_timeout=30000")  # a CLI scan and the server(s) may share the file
    cursor.execute("PRAGMA secure_delete=ON")  # an erased user's rows (file names, events) are overwritten, not freed
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A write takes the write lock up front (BEGIN IMMEDIATE): a batch's check for a photo and its insert can
    # never interleave with another writer's, and a busy database waits (busy_timeout) instead of failing at
    # the first write. A read is a plain deferred transaction: WAL lets it run beside a writer.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("skulens_write") else "BEGIN")


class InventoryStore:
    """Counts, review queue and audit log in a SQLite file or a PostgreSQL database; thread-safe, and, on
    PostgreSQL or one SQLite file, safe for several processes at once.

    `path`: a SQLite file (created if missing), or a database URL: `postgresql://user:pw@host:5432/db`
    (`postgresql+psycopg://` and `postgres://` too, all through psycopg 3; `pip install 'skulens[postgres]'`)
    or `sqlite:///path/inv.sqlite`.

    `photo_dir` holds photos and box crops waiting for review (and every intake photo with `keep_photos`);
    `labelled_dir` receives reviewed photos and crops plus `manifest.csv` for retraining. For a SQLite file they
    default to `<stem>-photos/` and `<stem>-labelled/` beside it; for a PostgreSQL URL to `<database>-photos/` and
    `<database>-labelled/` in the current folder (logged): processes that share a database must share these
    folders too (start every worker from the same folder, or pass the same paths).

    SQLite: one connection and one lock per store, BEGIN IMMEDIATE for writes, WAL. PostgreSQL: a connection
    pool (`pool_size`), READ COMMITTED, and row and unique-key locks taken in a fixed order (see `intake_batches`).
    """

    def __init__(self, path: str | os.PathLike[str], *, photo_dir: str | os.PathLike[str] | None = None,
                 labelled_dir: str | os.PathLike[str] | None = None, pool_size: int = 5, create: bool = True):
        self.path: Path | None  # the SQLite file; None for PostgreSQL
        if is_database_url(path):
            try:
                url = sa.engine.make_url(str(path))
                url.port  # noqa: B018 - a port that is not a number raises here, not at the first connection
            except (sa.exc.ArgumentError, ValueError) as exc:
                raise InventoryError(f"not a database URL: {exc}") from None
            driver = _URL_DRIVERS.get(url.drivername.lower())  # a scheme is case-insensitive (RFC 3986)
            if driver is None:
                raise InventoryError(f"{_display(url)}: unsupported database (give a SQLite file path or a "
                                     "postgresql:// URL)")
            url = url.set(drivername=driver)
            self.path = Path(url.database or "") if driver == "sqlite" else None
            if self.path is not None and not url.database:
                raise InventoryError(f"{_display(url)}: a sqlite URL needs a file (sqlite:///inv.sqlite)")
        else:
            self.path = Path(path)
            url = sa.engine.URL.create("sqlite", database=str(self.path))
        self.backend = "sqlite" if self.path is not None else "postgresql"
        self.url = _display(url) if is_database_url(path) else str(path)  # for messages: no password
        if self.path is not None:
            if self.path.is_dir():
                raise InventoryError(f"{self.url} is a folder: give the inventory's SQLite file")
            if not create and not self.path.is_file():
                # A mistyped --db must not answer from a new, empty inventory (an erasure that "erased" nothing).
                raise InventoryError(f"no inventory at {self.url} (`skulens inventory scan` or `skulens serve --db` "
                                     "creates one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            stem, base = self.path.stem, self.path.parent
        else:
            stem, base = url.database or "inventory", Path.cwd()
            if not photo_dir or not labelled_dir:
                logger.info("inventory %s: photo_dir %s, labelled_dir %s (defaults, under the current folder: "
                            "every process sharing this database must use the same folders)", self.url,
                            photo_dir or base / f"{stem}-photos", labelled_dir or base / f"{stem}-labelled")
        self.photo_dir = Path(photo_dir) if photo_dir else base / f"{stem}-photos"
        self.labelled_dir = Path(labelled_dir) if labelled_dir else base / f"{stem}-labelled"
        # SQLite: one connection, so one thread at a time (as a sqlite3 connection needs); PostgreSQL: the
        # pool gives each thread its own connection and the database does the locking.
        self._lock: AbstractContextManager[Any] = threading.Lock() if self.backend == "sqlite" else nullcontext()
        self._files_lock = threading.Lock()  # photo moves and manifest rewrites (and a file lock across processes)
        self._for_update = " FOR UPDATE" if self.backend == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE did it
        self._create = create  # False: read an inventory that exists, never make one
        self._engine = self._create_engine(url, pool_size)
        self._ping_engine: sa.engine.Engine | None = None  # PostgreSQL readiness: `ping`
        try:
            self._migrate()
        except BaseException as exc:
            self._engine.dispose()
            # unreachable, no such database, not a database: said as the store's opener's error (a lost database
            # later is storage "unavailable": the same request succeeds once it is back)
            if driver_error(exc) and (storage_failure(exc) is None or database_lost(exc)):
                first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                raise InventoryError(f"cannot open inventory {self.url}: {first[0] if first else type(exc).__name__}") \
                    from exc
            raise

    def ping(self) -> None:
        """One round trip to a PostgreSQL database (readiness) on a connection of its own, opened within 2 s: the
        driver's error when it cannot be used. Not through the pool: a busy pool made a healthy database look
        gone. SQLite is a local file, not pinged: its one shared connection under another thread's write rolled
        that write back (a review of this check lost 81 of 300 acknowledged adjustments)."""
        if self.backend == "sqlite":
            return
        if self._ping_engine is None:
            self._ping_engine = sa.create_engine(self._engine.url, poolclass=sa.pool.NullPool,
                                                 connect_args={"connect_timeout": 2})
        with self._ping_engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def _create_engine(self, url: sa.engine.URL, pool_size: int) -> sa.engine.Engine:
        if self.backend == "sqlite":
            engine = sa.create_engine(url, poolclass=sa.pool.StaticPool,
                                      connect_args={"check_same_thread": False, "timeout": 30.0})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        try:
            return sa.create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_timeout=60,
                                    pool_pre_ping=True)  # pre-ping: a database restart costs no failed request
        except ImportError as exc:
            raise ImportError(f"a PostgreSQL inventory needs psycopg 3: pip install 'skulens[postgres]' ({exc})") \
                from exc

    def _migrate(self) -> None:
        """Create or upgrade the schema, in one transaction (two processes opening an old database at once
        upgrade it once; a failed upgrade leaves the database as it was).

        A database whose schema is current is only read here. So a PostgreSQL database that takes no writes (a hot
        standby, `default_transaction_read_only = on` for the database or the role) opens: reads work, and every
        write fails as it does when a database goes read-only later (the driver's error; `storage_failure`:
        "unavailable"). One whose schema still has to be created or upgraded cannot be opened there: a StorageError
        says so, instead of the driver's error about a CREATE TABLE. (A SQLite file on a read-only mount is not
        covered: opening it in WAL mode may already fail in the driver.)"""
        with self._transaction(write=False) as db:
            version = self._schema_version(db)
            if self._current_schema(version):
                return
            if version == 0:
                self._refuse_another_database(db)

        def migrate(db: Connection, _written: list[Path]) -> None:
            types = COLUMN_TYPES[self.backend]

            def run(statement: str) -> None:
                for placeholder, sql_type in types.items():
                    statement = statement.replace(placeholder, sql_type)
                db.exec_driver_sql(statement)

            if self.backend == "postgresql":
                # PostgreSQL's DDL is transactional too; the advisory lock makes a second process wait here
                # (and then find the schema made) instead of failing on CREATE TABLE.
                db.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATE_LOCK})
                db.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {PG_VERSION_TABLE} (version INTEGER NOT NULL)")
            version = self._schema_version(db)
            if self._current_schema(version):
                return
            if version < 1:
                for statement in SCHEMA_V1:
                    run(statement)
            for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    run(statement)
            if self.backend == "postgresql":
                db.exec_driver_sql(f"DELETE FROM {PG_VERSION_TABLE}")
                db.execute(sa.text(f"INSERT INTO {PG_VERSION_TABLE} (version) VALUES (:v)"), {"v": SCHEMA_VERSION})
            else:
                db.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")

        try:
            self._write(migrate)
        except Exception as exc:
            error = storage_error(exc, f"the inventory cannot set up its tables in {self.url}",
                                  f"nothing was changed: schema version {SCHEMA_VERSION} needs one open where the "
                                  "database takes writes")
            if error is None:
                raise
            raise error from exc

    def _refuse_another_database(self, db: Connection) -> None:
        """A database with no inventory schema yet: refused when it was to be read only (a mistyped --db: `inventory
        counts` made the tables in whatever SQLite file it was given), or when its `stock` table is another
        program's (the tables were half made around it, then "no such column: label", a traceback). A `stock`
        table of skulens' own is an inventory from before schema versions: upgraded as before."""
        inspector = sa.inspect(db)
        tables = set(inspector.get_table_names())
        if "stock" in tables and not {"label", "count"} <= {c["name"] for c in inspector.get_columns("stock")}:
            raise InventoryError(f"{self.url} holds a table 'stock' that is not a skulens inventory's: give the "
                                 "inventory a database or file of its own")
        if not self._create and "stock" not in tables:
            raise InventoryError(f"no inventory at {self.url} (`skulens inventory scan` or `skulens serve --db` "
                                 "creates one)")

    def _schema_version(self, db: Connection) -> int:
        """The database's schema version; 0 for a new database (PostgreSQL: no version table yet)."""
        if self.backend == "sqlite":
            return db.exec_driver_sql("PRAGMA user_version").scalar() or 0
        if db.execute(sa.text("SELECT to_regclass(:table)"), {"table": PG_VERSION_TABLE}).scalar() is None:
            return 0
        return db.exec_driver_sql(f"SELECT MAX(version) FROM {PG_VERSION_TABLE}").scalar() or 0

    def _current_schema(self, version: int) -> bool:
        """Whether a database at `version` needs no change; a newer schema than this skulens knows is an error."""
        if version > SCHEMA_VERSION:
            raise InventoryError(f"{self.url}: schema {version} is newer than this skulens understands")
        return version == SCHEMA_VERSION

    def close(self) -> None:
        with self._lock:
            self._engine.dispose()
            if self._ping_engine is not None:
                self._ping_engine.dispose()

    def __enter__(self) -> InventoryStore:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction (SQLite: BEGIN IMMEDIATE for a write); the driver's own error on failure."""
        with self._lock, self._engine.connect() as conn:
            if write:
                conn.execution_options(skulens_write=True)
            try:
                with conn.begin():
                    yield conn
            except sa.exc.DBAPIError as exc:
                if exc.orig is None:
                    raise
                raise exc.orig from exc  # sqlite3.IntegrityError stays one, as before SQLAlchemy

    def _write(self, work: Callable[[Connection, list[Path]], _T]) -> _T:
        """Run `work(db, written)` in one write transaction. The files it wrote (listed in `written`) are deleted
        when the transaction fails. PostgreSQL: a deadlock or serialization failure rolls everything back, so
        the whole transaction simply runs again (a few times, after a short random pause)."""
        for attempt in range(1, _RETRIES + 1):
            written: list[Path] = []
            try:
                with self._transaction(write=True) as db:
                    return work(db, written)
            except BaseException as exc:
                for path in written:  # the rows that named them were rolled back
                    path.unlink(missing_ok=True)
                if attempt == _RETRIES or getattr(exc, "sqlstate", None) not in _RETRY_SQLSTATES:
                    raise
                logger.warning("inventory %s: %s; running the transaction again", self.url,
                               str(exc).splitlines()[0])
                time.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")

    def _read(self, sql: str | sa.TextClause, params: dict[str, Any] | None = None) -> list[RowMapping]:
        with self._transaction(write=False) as db:
            return list(db.execute(sa.text(sql) if isinstance(sql, str) else sql, params or {}).mappings())

    # -- intake ----------------------------------------------------------------------------------------

    def known(self, hashes: Iterable[str]) -> dict[str, str]:
        """{sha256: status} of the photos already in the store (lets callers skip recognising them)."""
        return {h: r.previous_status or "" for h, r in self.known_results(hashes).items()}

    def known_results(self, hashes: Iterable[str], source: str = "") -> dict[str, IntakeResult]:
        """{sha256: the duplicate answer intake would give} for the photos already in the store: the stored label
        (or prediction) and confidence, and what happened to the photo the first time (`previous_status`)."""
        hashes = list(hashes)
        query = sa.text("SELECT sha256, status, label, predicted_label, confidence FROM photos "
                        "WHERE sha256 IN :hashes").bindparams(sa.bindparam("hashes", expanding=True))
        out: dict[str, IntakeResult] = {}
        for start in range(0, len(hashes), 500):  # SQLite's bound-parameter limit
            out.update({r["sha256"]: IntakeResult.duplicate(r, source)
                        for r in self._read(query, {"hashes": hashes[start:start + 500]})})
        return out

    def intake(self, photos: Sequence[IntakePhoto | ShelfPhoto], *, threshold: float, actor: str,
               keep_photos: bool = False) -> list[IntakeResult]:
        """Count or queue a batch of recognised photos in one transaction; duplicates change nothing."""
        return self._intake_merged([photos], [actor], threshold, keep_photos)[0]

    def intake_batches(self, batches: Sequence[Sequence[IntakePhoto | ShelfPhoto]], *, threshold: float,
                       actor: str | Sequence[str], keep_photos: bool = False) -> list[list[IntakeResult] | Exception]:
        """`intake` for several requests' photos at once, still one transaction (the service's writer): each
        request's results, or the exception that request failed with.

        One request's failure (its photo file cannot be written, a bad row) is its own: when the merged
        transaction fails, everything in it was rolled back, and each request is written again in a transaction
        of its own, so only the requests that fail alone get an error. Nothing counts twice: a photo whose row
        is already there (a transaction that committed after all, a client's retry) is a duplicate. A failure
        that is everyone's (a locked or lost database; a full, over-quota or read-only disk: `storage_failure`)
        is every request's at once, the same exception, with nothing written and no photo file left.

        Concurrency, the same on both databases: a photo counts in the transaction that inserted its row (the
        sha256 is the primary key: `INSERT ... ON CONFLICT DO NOTHING`), and counts change by
        `count = count + n` in SQL. On SQLite, BEGIN IMMEDIATE makes writers take turns anyway. On PostgreSQL
        (READ COMMITTED) writers run side by side: a second insert of a photo another transaction has just
        inserted waits for it and then finds the row (a duplicate, even across processes), and a count's row is
        locked by the first transaction that changes it until that commits. That is all the exactness needs,
        without SERIALIZABLE (whose retries every concurrent batch touching a popular product would pay). To
        never deadlock, a transaction takes these locks in one global order: first its new photos' rows, by
        sha256, then the counts it will change, by label; only then does it write counts and audit lines in
        request order. (A deadlock, should one happen anyway, is retried: see `_write`.)"""
        actors = [actor] * len(batches) if isinstance(actor, str) else list(actor)
        try:
            return list(self._intake_merged(batches, actors, threshold, keep_photos))
        except Exception as exc:  # noqa: BLE001 - whose failure it is, the requests written alone tell
            if storage_failure(exc) is not None:  # the operator's to fix: said once, not once per request
                logger.error("inventory %s: %s; an intake of %d request(s) failed, nothing of it was written",
                             self.url, exc, len(batches))
            if len(batches) == 1:
                return [exc]
            if not one_requests_error(exc):  # a locked or lost database, a full disk: 64 solo attempts would
                return [exc] * len(batches)  # only wait longer, and fail alike
            logger.warning("inventory %s: an intake of %d requests failed (%s); writing each on its own", self.url,
                           len(batches), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        out: list[list[IntakeResult] | Exception] = []
        for photos, who in zip(batches, actors, strict=True):
            try:
                out.append(self._intake_merged([photos], [who], threshold, keep_photos)[0])
            except Exception as exc:  # noqa: BLE001 - handed back in its request's place
                out.append(exc)
                if storage_failure(exc) is not None:  # the disk filled meanwhile: the rest would fail alike
                    logger.error("inventory %s: %s; %d request(s) of the intake not written", self.url, exc,
                                 len(batches) - len(out) + 1)
                    return out + [exc] * (len(batches) - len(out))
        return out

    def _intake_merged(self, batches: Sequence[Sequence[IntakePhoto | ShelfPhoto]], actors: Sequence[str],
                       threshold: float, keep_photos: bool) -> list[list[IntakeResult]]:
        """Every request's photos in one transaction: each request's results."""
        items = [(p, who) for photos, who in zip(batches, actors, strict=True) for p in photos]
        now = _now()
        flat = self._write(lambda db, written: self._intake(db, items, threshold, keep_photos, now, written))
        out, start = [], 0
        for photos in batches:
            out.append(flat[start:start + len(photos)])
            start += len(photos)
        return out

    def _intake(self, db: Connection, items: Sequence[tuple[IntakePhoto | ShelfPhoto, str]], threshold: float,
                keep_photos: bool, now: str, written: list[Path]) -> list[IntakeResult]:
        first: dict[str, int] = {}  # sha256 -> its first place in the batch (a repeat is a duplicate of it)
        for i, (p, _) in enumerate(items):
            first.setdefault(p.sha256, i)
        # 1. Claim the new photos: their rows, in sha256 order.
        claimed = {sha for sha in sorted(first) if self._claim(db, items[first[sha]][0], threshold, keep_photos, now)}
        # 2. Lock the counts the claimed photos change, in label order.
        labels: set[str] = set()
        for sha in claimed:
            p = items[first[sha]][0]
            if isinstance(p, ShelfPhoto):
                labels.update(b.label for b in p.boxes if b.label is not None and is_counted(b.label, b.confidence,
                                                                                             threshold))
            elif p.predicted_label is not None and is_counted(p.predicted_label, p.confidence, threshold):
                labels.add(p.predicted_label)
        for label in sorted(labels):
            self._lock_count(db, label, now)
        # 3. Counts, boxes and audit lines, in request order.
        results = []
        for i, (p, who) in enumerate(items):
            if p.sha256 in claimed and first[p.sha256] == i:
                if isinstance(p, ShelfPhoto):
                    results.append(self._intake_shelf(db, p, threshold, who, keep_photos, now, written))
                else:
                    results.append(self._intake_photo(db, p, threshold, who, keep_photos, now, written))
            else:
                row = db.execute(sa.text("SELECT sha256, status, label, predicted_label, confidence FROM photos "
                                         "WHERE sha256 = :sha"), {"sha": p.sha256}).mappings().one()
                results.append(IntakeResult.duplicate(row, p.source))
        return results

    @staticmethod
    def _row(p: IntakePhoto | ShelfPhoto, threshold: float, keep_photos: bool) -> dict[str, Any]:
        """The photo's row (less sha256, source and time): its status, and the file it keeps, if any."""
        if isinstance(p, ShelfPhoto):
            return {"status": "counted", "predicted": None, "confidence": 0.0, "top_k": "[]", "label": None,
                    "stored": f"{p.sha256}.jpg" if p.image is not None and keep_photos else None, "kind": "shelf"}
        counted = is_counted(p.predicted_label, p.confidence, threshold)
        keep = p.image is not None and (keep_photos or not counted)
        return {"status": "counted" if counted else "review", "predicted": p.predicted_label,
                "confidence": float(p.confidence), "top_k": json.dumps([[lab, round(float(c), 6)] for lab, c in p.top_k]),
                "label": p.predicted_label if counted else None, "stored": f"{p.sha256}.jpg" if keep else None,
                "kind": "photo"}

    def _claim(self, db: Connection, p: IntakePhoto | ShelfPhoto, threshold: float, keep_photos: bool,
               now: str) -> bool:
        """Insert the photo's row unless the sha256 is there already (committed, or being inserted by another
        transaction, which PostgreSQL then waits for); whether this transaction inserted it."""
        row = db.execute(sa.text(
            "INSERT INTO photos (sha256, source, status, predicted_label, confidence, top_k, label, stored, "
            "created_at, kind, user_ref) VALUES (:sha, :source, :status, :predicted, :confidence, :top_k, :label, "
            ":stored, :now, :kind, :user) ON CONFLICT (sha256) DO NOTHING RETURNING sha256"),
            {"sha": p.sha256, "source": p.source[:300], "now": now, "user": _user_ref(p.user_ref),
             **self._row(p, threshold, keep_photos)}).first()
        return row is not None

    def _intake_photo(self, db: Connection, p: IntakePhoto, threshold: float, actor: str, keep_photos: bool,
                      now: str, written: list[Path]) -> IntakeResult:
        """A product photo whose row this transaction inserted (`_claim`): its file, count and audit line."""
        if self._row(p, threshold, keep_photos)["stored"]:
            assert p.image is not None
            self._write_photo(p.sha256, p.image, written)
        if not is_counted(p.predicted_label, p.confidence, threshold):
            self._audit(db, now, actor, "review_queued", p.predicted_label, 0, None, p.sha256,
                        {"confidence": round(float(p.confidence), 6), "threshold": threshold})
            return IntakeResult(p.sha256, p.source, "review", p.predicted_label, p.confidence)
        assert p.predicted_label is not None
        count = self._add(db, p.predicted_label, 1, now)
        self._audit(db, now, actor, "intake", p.predicted_label, 1, count, p.sha256,
                    {"confidence": round(float(p.confidence), 6)})
        return IntakeResult(p.sha256, p.source, "counted", p.predicted_label, p.confidence, count=count)

    def _intake_shelf(self, db: Connection, p: ShelfPhoto, threshold: float, actor: str, keep_photos: bool,
                      now: str, written: list[Path]) -> IntakeResult:
        """A shelf photo whose row this transaction inserted: +N per named product, every box row and the audit
        lines (the caller's transaction)."""
        if p.image is not None and keep_photos:
            self._write_photo(p.sha256, p.image, written)
        counted = [is_counted(b.label, b.confidence, threshold) for b in p.boxes]
        by_label: dict[str, list[int]] = {}
        for i, (b, ok) in enumerate(zip(p.boxes, counted, strict=True)):
            if ok and b.label is not None:
                by_label.setdefault(b.label, []).append(i)
        for label, idx in sorted(by_label.items()):
            count = self._add(db, label, len(idx), now)
            self._audit(db, now, actor, "intake", label, len(idx), count, p.sha256, {"boxes": idx})
        if p.capped:  # kept with the photo: its counts may be short, and a re-sent photo only says "duplicate"
            self._audit(db, now, actor, "box_cap_reached", None, 0, None, p.sha256, {"boxes": len(p.boxes)})
        results = []
        for i, (b, ok) in enumerate(zip(p.boxes, counted, strict=True)):
            crop = None
            if not ok:
                if b.crop is not None:
                    crop = self._write_photo(f"{p.sha256}-{i}", b.crop, written)
                self._audit(db, now, actor, "review_queued", b.guess, 0, None, p.sha256,
                            {"box": i, "confidence": round(float(b.confidence), 6), "threshold": threshold})
            status = "counted" if ok else "review"
            x1, y1, x2, y2 = map(float, b.box)
            db.execute(sa.text(
                "INSERT INTO boxes (sha256, idx, x1, y1, x2, y2, score, predicted_label, confidence, guess, status, "
                "label, stored) VALUES (:sha, :idx, :x1, :y1, :x2, :y2, :score, :predicted, :confidence, :guess, "
                ":status, :label, :stored)"),
                {"sha": p.sha256, "idx": i, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": float(b.score),
                 "predicted": b.label, "confidence": float(b.confidence), "guess": b.guess, "status": status,
                 "label": b.label if ok else None, "stored": crop})
            results.append(BoxResult(i, b.box, b.score, b.label, b.confidence, b.guess, status))
        shelf = ShelfResult({label: len(idx) for label, idx in by_label.items()}, tuple(results), p.width, p.height,
                            p.capped)
        return IntakeResult(p.sha256, p.source, "counted", None, 0.0, shelf=shelf)

    def _write_photo(self, stem: str, data: bytes, written: list[Path]) -> str:
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        name = f"{stem}.jpg"
        _write_whole(self.photo_dir / name, data, via=self.photo_dir / f".{name}.{os.getpid()}.tmp")
        written.append(self.photo_dir / name)
        return name

    @staticmethod
    def _lock_count(db: Connection, label: str, now: str) -> int:
        """Lock a product's count row until the transaction ends (creating it at 0 if new); its count now."""
        return int(db.execute(sa.text(
            "INSERT INTO stock (label, count, updated_at) VALUES (:label, 0, :now) "
            "ON CONFLICT (label) DO UPDATE SET count = stock.count RETURNING count"),
            {"label": label, "now": now}).scalar_one())

    @staticmethod
    def _add(db: Connection, label: str, delta: int, now: str) -> int:
        """count += delta, in SQL (never read, add and write back: two writers would lose one's change). A count
        past MAX_COUNT (PostgreSQL's 4-byte column) is an InventoryError, whichever write adds it: the update is
        skipped and the caller's transaction rolls back."""
        if delta > MAX_COUNT:  # a new row's count is the delta itself, which the WHERE below does not see
            raise InventoryError(f"{label}: the count would go above the largest stored ({MAX_COUNT})")
        after = db.execute(sa.text(
            "INSERT INTO stock (label, count, updated_at) VALUES (:label, :delta, :now) ON CONFLICT (label) DO UPDATE "
            "SET count = stock.count + excluded.count, updated_at = excluded.updated_at "
            "WHERE CAST(stock.count AS BIGINT) + excluded.count <= :most RETURNING count"),
            {"label": label, "delta": delta, "now": now, "most": MAX_COUNT}).scalar_one_or_none()
        if after is None:
            raise InventoryError(f"{label}: the count would go above the largest stored ({MAX_COUNT})")
        return int(after)

    @staticmethod
    def _audit(db: Connection, now: str, actor: str, action: str, label: str | None, delta: int,
               count_after: int | None, photo: str | None, detail: dict[str, Any]) -> None:
        db.execute(sa.text("INSERT INTO audit (ts, actor, action, label, delta, count_after, photo, detail) "
                           "VALUES (:ts, :actor, :action, :label, :delta, :count_after, :photo, :detail)"),
                   {"ts": now, "actor": actor, "action": action, "label": label, "delta": delta,
                    "count_after": count_after, "photo": photo, "detail": json.dumps(detail)})

    # -- review ----------------------------------------------------------------------------------------

    def review_queue(self, *, limit: int = 100, offset: int = 0) -> list[ReviewItem]:
        """Photos and shelf boxes waiting for a reviewer, oldest first."""
        rows = self._read(f"{QUEUE} WHERE status = 'review' ORDER BY created_at, sha256, idx NULLS FIRST "
                          "LIMIT :limit OFFSET :offset", {"limit": limit, "offset": offset})
        return [self._item(r) for r in rows]

    def review_size(self) -> int:
        return int(self._read("SELECT (SELECT COUNT(*) FROM photos WHERE status = 'review') + "
                              "(SELECT COUNT(*) FROM boxes WHERE status = 'review') AS n")[0]["n"])

    def photo(self, sha256: str) -> ReviewItem | None:
        """A photo (or, given `sha256:index`, a shelf box) and its review state."""
        try:
            sha, idx = _parse_id(sha256)
        except InventoryError:
            return None
        where = "sha256 = :sha AND idx IS NULL" if idx is None else "sha256 = :sha AND idx = :idx"
        rows = self._read(f"{QUEUE} WHERE {where}", {"sha": sha, "idx": idx} if idx is not None else {"sha": sha})
        return self._item(rows[0]) if rows else None

    def boxes(self, sha256: str) -> list[ReviewItem]:
        """Every box of a shelf photo, in detection order (best score first)."""
        return [self._item(r) for r in self._read(f"{QUEUE} WHERE sha256 = :sha AND idx IS NOT NULL ORDER BY idx",
                                                  {"sha": sha256})]

    def photo_file(self, sha256: str) -> Path | None:
        """The kept (EXIF-free) photo of `sha256`, or box crop of `sha256:index`: waiting for review, or
        reviewed into the labelled folder."""
        try:
            sha, idx = _parse_id(sha256)
        except InventoryError:
            return None
        rows = (self._read("SELECT stored, label FROM photos WHERE sha256 = :sha", {"sha": sha}) if idx is None else
                self._read("SELECT stored, label FROM boxes WHERE sha256 = :sha AND idx = :idx", {"sha": sha, "idx": idx}))
        if not rows or not rows[0]["stored"]:
            return None
        for path in (self.photo_dir / rows[0]["stored"], self._labelled_path(rows[0]["label"], rows[0]["stored"])):
            if path is not None and path.is_file():
                return path
        return None

    def _labelled_path(self, label: str | None, name: str) -> Path | None:
        return None if label is None else self.labelled_dir / _safe_dirname(label) / name

    def _file_paths(self, label: str | None, name: str) -> Iterator[Path]:
        """Where a kept file can be: the photo folder, and (reviewed) its label's folder in the labelled data."""
        yield self.photo_dir / name
        labelled = self._labelled_path(label, name)
        if labelled is not None:
            yield labelled

    @staticmethod
    def _item(r: RowMapping) -> ReviewItem:
        if r["idx"] is None:
            top_k = [{"label": lab, "p": p} for lab, p in json.loads(r["top_k"])]
            box = None
        else:  # a box keeps the classifier's best guess only
            top_k = [{"label": r["predicted_label"], "p": r["confidence"]}] if r["predicted_label"] else []
            box = [r["x1"], r["y1"], r["x2"], r["y2"]]
        return ReviewItem(r["sha256"], r["source"], r["status"], r["predicted_label"], r["confidence"], top_k,
                          r["label"], r["created_at"], r["reviewed_at"], r["reviewed_by"],
                          bool(r["stored"]) and r["status"] != "rejected",  # a rejected item's file went
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
        table, where, params = (("photos", "sha256 = :sha", {"sha": sha}) if idx is None else
                                ("boxes", "sha256 = :sha AND idx = :idx", {"sha": sha, "idx": idx}))
        what = f"photo {sha[:12]}" if idx is None else f"box {sha[:12]}:{idx}"
        now = _now()

        def review(db: Connection, written: list[Path]) -> tuple[RowMapping, Path | None]:
            # FOR UPDATE (PostgreSQL): a second reviewer of the same item waits, then finds it reviewed.
            row = db.execute(sa.text(f"SELECT * FROM {table} WHERE {where}{self._for_update}"), params).mappings().first()
            if row is None:
                raise InventoryError(f"{what} is not in the inventory")
            if row["status"] != "review":
                raise InventoryError(f"{what} is not waiting for review (status {row['status']})")
            predicted = row["predicted_label"] if idx is None else row["guess"]
            where_box = {} if idx is None else {"box": idx}
            if label is None:
                status = "rejected"
                self._audit(db, now, actor, "review_rejected", predicted, 0, None, sha, where_box)
            else:
                status = "confirmed" if label == predicted else "corrected"
                count = self._add(db, label, 1, now)
                self._audit(db, now, actor, f"review_{status}", label, 1, count, sha,
                            {**where_box, "predicted": predicted, "confidence": row["confidence"]})
            db.execute(sa.text(f"UPDATE {table} SET status = :status, label = :label, reviewed_at = :now, "
                               f"reviewed_by = :actor WHERE {where}"),
                       {"status": status, "label": label, "now": now, "actor": actor, **params})
            if label is None:  # the labelled data does not change
                return row, None
            # What needs the disk is written before the commit (the photo's copy in the labelled folder, the new
            # manifest beside the old one): a full or read-only disk fails the review as a whole, the item stays
            # in the queue with its photo. After the commit only an unlink and a rename are left.
            if row["stored"] and not (self.photo_dir / row["stored"]).is_file():
                # it would count, and never reach the labelled data retraining reads (a scan by a process with
                # other folders kept it elsewhere; the CLI refused this, the service said "corrected")
                raise PhotoMissingError(f"the photo of {what} is not in {self.photo_dir} (kept by a process with "
                                        "other folders, or deleted): review it where it is, give this one the same "
                                        "photo and labelled folders, or reject it; nothing was changed")
            dst = self._labelled_path(label, row["stored"]) if row["stored"] else None
            # A file already there (another store's, in a shared labelled folder) is replaced, never rolled back.
            fresh = dst is not None and not dst.exists()
            if dst is not None and self._copy_to_labelled(row["stored"], label) is not None and fresh:
                written.append(dst)
            manifest = self._stage_manifest(self._labelled(db.execute(sa.text(LABELLED)).mappings()))
            written.extend([manifest] if manifest is not None else [])
            return row, manifest

        with self._files():  # from before the transaction to the manifest's rename: no other rewrite between
            try:
                row, manifest = self._write(review)
            except Exception as exc:
                if storage_failure(exc) is not None:  # the operator's to fix; the client hears only what happened
                    logger.error("inventory %s: %s; the review of %s was not recorded", self.url, exc, what)
                raise
            if row["stored"]:  # reviewed: copied into the labelled folder; rejected (not a product, maybe a
                (self.photo_dir / row["stored"]).unlink(missing_ok=True)  # person): privacy, not kept
            self._put_manifest(manifest)
        item = self.photo(sha256)
        assert item is not None
        return item

    @contextmanager
    def _files(self) -> Iterator[None]:
        """Photo moves and manifest rewrites, one at a time: across threads (a lock) and across processes that
        share the folders (an exclusive lock on a file beside the labelled folder)."""
        with self._files_lock:
            if fcntl is None:
                yield
                return
            lock = self.labelled_dir.with_name(f".{self.labelled_dir.name}.lock")
            lock.parent.mkdir(parents=True, exist_ok=True)
            with open(lock, "a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
                yield

    def _copy_to_labelled(self, name: str, label: str) -> Path | None:
        """Copy a kept photo or crop into its label's folder, whole or not at all; its path there, or None when
        the photo folder has no such file."""
        src = self.photo_dir / name
        dst = self._labelled_path(label, name)
        if dst is None or not src.is_file():
            return None
        dst.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(dst, src.read_bytes(), via=dst.with_name(f".{dst.name}.tmp"))  # a photo or crop: small
        return dst

    def _move_to_labelled(self, name: str, label: str) -> None:
        if self._copy_to_labelled(name, label) is not None:
            (self.photo_dir / name).unlink()

    def labelled(self) -> list[tuple[str, str]]:
        """(relative path, label) of every reviewed photo and box crop in the labelled folder. A file whose move
        was cut short by a crash (the review committed, the file still waiting) is moved now."""
        return self._labelled(self._read(LABELLED))

    def _labelled(self, rows: Iterable[RowMapping]) -> list[tuple[str, str]]:
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
        """Rewrite `labelled_dir/manifest.csv` from the database (atomic; rebuilt, so never out of step: under
        the files lock, the last writer read the database after every review that came before it committed)."""
        with self._files():
            return self._write_manifest()

    def _write_manifest(self) -> Path | None:
        return self._put_manifest(self._stage_manifest(self.labelled()))

    def _refresh_manifest(self) -> None:
        """After labelled files were deleted: the manifest rewritten, or removed when none is left."""
        if self._write_manifest() is None:
            (self.labelled_dir / "manifest.csv").unlink(missing_ok=True)

    def _stage_manifest(self, rows: Sequence[tuple[str, str]]) -> Path | None:
        """The manifest of these (path, label) rows, written whole (or not at all) beside `manifest.csv`, for
        `_put_manifest`; None when there are no rows."""
        if not rows:
            return None
        self.labelled_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "split"])
        w.writerows([rel, label, "train"] for rel, label in rows)
        staged = self.labelled_dir / ".manifest.csv.tmp"
        _write_whole(staged, buf.getvalue().encode("utf-8"))
        return staged

    def _put_manifest(self, staged: Path | None) -> Path | None:
        """Rename a staged manifest over `manifest.csv` (atomic); None, changing nothing, when none was staged."""
        if staged is None:
            return None
        path = self.labelled_dir / "manifest.csv"
        os.replace(staged, path)
        return path

    def labels(self) -> set[str]:
        """Every product name this inventory has seen: in the counts, predicted at intake (each photo's top-k
        guesses too) or given by a reviewer. What a correction can be checked against without the model."""
        rows = self._read(
            "SELECT label FROM stock UNION SELECT predicted_label FROM photos UNION SELECT label FROM photos "
            f"UNION {TOP_K_LABELS[self.backend]} "
            "UNION SELECT guess FROM boxes UNION SELECT predicted_label FROM boxes UNION SELECT label FROM boxes")
        return {r["label"] for r in rows if r["label"]}

    # -- counts ----------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {r["label"]: int(r["count"]) for r in self._read("SELECT label, count FROM stock ORDER BY label")}

    def stock(self) -> list[tuple[str, int, str]]:
        """(label, count, updated_at) per product, by label, in one read (updated_at: the last change, UTC)."""
        rows = self._read("SELECT label, count, updated_at FROM stock ORDER BY label")
        return [(r["label"], int(r["count"]), r["updated_at"]) for r in rows]

    def count(self, label: str) -> int:
        rows = self._read("SELECT count FROM stock WHERE label = :label", {"label": label})
        return int(rows[0]["count"]) if rows else 0

    def adjust(self, label: str, *, delta: int | None = None, count: int | None = None, actor: str,
               reason: str = "", known: Collection[str] | None = None) -> int:
        """A manual change (a sale, a stock take): add `delta` or set `count`; never below zero.

        known: the products a label may name (with those this inventory has seen); an unknown label is an
        UnknownLabelError with the closest names, so a typo never becomes a new product row."""
        label = check_label(label) if known is None else check_known_label(label, set(known) | self.labels())
        if (delta is None) == (count is None):
            raise InventoryError("give exactly one of delta or count")
        now = _now()

        def change(db: Connection, _written: list[Path]) -> int:
            before = self._lock_count(db, label, now)  # locked: no intake changes it until this commits
            after = before + delta if delta is not None else int(count)  # type: ignore[arg-type]
            if after < 0:
                raise InventoryError(f"{label}: count would become {after} (in stock: {before})")
            if after > MAX_COUNT:  # the column is a 4-byte integer on PostgreSQL
                raise InventoryError(f"{label}: count would become {after}, above the largest stored ({MAX_COUNT})")
            after = self._add(db, label, after - before, now)
            # mode: a stock take ("set": the count was counted) or a change by a number ("delta": sold, broken).
            self._audit(db, now, actor, "adjust", label, after - before, after, None,
                        {"reason": reason[:500], "mode": "delta" if delta is not None else "set"})
            return after

        try:
            return self._write(change)
        except Exception as exc:
            if storage_failure(exc) is not None:  # the operator's to fix; the transaction rolled back whole
                logger.error("inventory %s: %s; the adjustment of %s was not recorded", self.url, exc, label)
            raise

    def export_csv(self, out: io.TextIOBase | Any, *, titles: Callable[[str], str] | None = None) -> int:
        """Write `label,count,updated_at` rows (with `titles`, a fourth column `title`: the product's name);
        returns the number of products."""
        rows = self.stock()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["label", "count", "updated_at"] + (["title"] if titles is not None else []))
        for label, count, updated_at in rows:  # the named export is the spreadsheet's: its text cells made safe
            w.writerow([label, count, updated_at] if titles is None
                       else spreadsheet_row([label, count, updated_at, titles(label)]))
        return len(rows)

    def audit(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        """Newest first: at most `limit` entries (any number: past the database's largest integer is all of them)."""
        sql, params = "SELECT * FROM audit", {"limit": min(limit, 2**62)}
        if before_id is not None:
            sql += " WHERE id < :before_id"
            params["before_id"] = before_id
        rows = self._read(sql + " ORDER BY id DESC LIMIT :limit", params)
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

    # -- people: behaviour events, erasure, retention -----------------------------------------------------

    def record_events(self, events: Sequence[Event]) -> int:
        """Append behaviour events whose `user_id` is a pseudonym (serve.privacy); one transaction."""
        rows = [{"user": _user_ref(e.user_id), "product": e.product_id[:MAX_LABEL], "event": e.event,
                 "ts": float(e.timestamp)} for e in events]
        if rows:
            self._write(lambda db, _w: db.execute(sa.text(
                "INSERT INTO events (user_ref, product_id, event, ts) VALUES (:user, :product, :event, :ts)"), rows))
        return len(rows)

    def events(self) -> list[Event]:
        """Every recorded event, in the order they were recorded (user ids are pseudonyms)."""
        return [Event(r["user_ref"], r["product_id"], r["event"], float(r["ts"]))
                for r in self._read("SELECT user_ref, product_id, event, ts FROM events ORDER BY id")]

    def events_version(self) -> tuple[int, int]:
        """(number of events, last event id): changes whenever events are added or erased."""
        r = self._read("SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS last FROM events")[0]
        return int(r["n"]), int(r["last"])

    def _checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database and empty it, so that what an erasure overwrote
        (secure_delete) is not still in the log's earlier page images. Under the store's lock (the one shared
        connection: a checkpoint beside another thread's transaction had SQLAlchemy roll that one back), on the
        driver's connection (no transaction of its own), waiting at most a second for another process's reader:
        then the next checkpoint (SQLite's own, or the next erasure's) clears it."""
        if self.backend != "sqlite":
            return
        with self._lock, self._engine.connect() as conn:
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cur.execute("PRAGMA busy_timeout=1000")  # writers wait behind a checkpoint: not for 30 s
                busy = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError as exc:
                busy = str(exc)
            finally:
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
        if busy:
            logger.info("inventory %s: the write-ahead log could not be emptied now (a reader in another process: "
                        "%s); a later checkpoint does it", self.url, busy)

    def audit_note(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        """One audit line of its own, for work done outside the database (the CSV log's part of an erasure)."""
        self._write(lambda db, _: self._audit(db, _now(), actor, action, None, 0, None, None, detail))

    def erase_user(self, user_ref: str, *, actor: str, missing_ok: bool = False) -> Erasure:
        """Delete a user's events and the kept files of every photo they sent (waiting for review, kept, or
        reviewed into the labelled folder; box crops too), in one transaction, with an audit line. Counts and
        the photos' rows stay (without file or user): stock that was counted is still there.

        All or nothing. What can fail on the disk happens before the commit: the user's files are renamed aside
        (to names of the store's temporaries, in their own folders) and the manifest without them is written
        beside the old one. A failure until the commit (a full or read-only disk, a read-only database) rolls the
        transaction back and renames the files back: nothing was erased, and the error is raised. After the
        commit only unlinks and the manifest's rename are left (no space needed); a file they miss (logged) is
        no row's any more, and `sweep_uploads` deletes it. A crash before the commit leaves the rows naming files
        that are now under temporary names: nothing was erased, and `sweep_uploads` (the service's start) puts them
        back; erasing the user again, before or after, finishes the erasure."""
        user = _user_ref(user_ref)
        assert user is not None
        now = _now()
        aside: list[tuple[Path, Path]] = []  # (a file of the user's, its name until the commit)
        missing: list[str] = []  # files the rows name that neither folder holds

        def erase(db: Connection, written: list[Path]) -> tuple[int, int, int, bool, Path | None]:
            self._put_back(aside)  # a deadlocked attempt's (PostgreSQL runs the transaction again)
            missing.clear()
            n_events = db.execute(sa.text("DELETE FROM events WHERE user_ref = :u"), {"u": user}).rowcount
            files = [(r["label"], r["stored"]) for r in db.execute(sa.text(
                # (a rejected item's file went when it was rejected)
                "SELECT label, stored FROM photos WHERE user_ref = :u AND stored IS NOT NULL AND status <> 'rejected' "
                "UNION ALL SELECT b.label, b.stored FROM boxes b JOIN photos p ON p.sha256 = b.sha256 "
                "WHERE p.user_ref = :u AND b.stored IS NOT NULL AND b.status <> 'rejected'"), {"u": user}).mappings()]
            db.execute(sa.text("UPDATE boxes SET stored = NULL WHERE stored IS NOT NULL AND sha256 IN "
                               "(SELECT sha256 FROM photos WHERE user_ref = :u)"), {"u": user})
            # the file name a photo came with can name a person ("anna_kitchen.jpg"): it goes with the user
            n_photos = db.execute(sa.text("UPDATE photos SET stored = NULL, user_ref = NULL, source = '' "
                                          "WHERE user_ref = :u"), {"u": user}).rowcount
            for label, name in files:
                found = False
                for path in self._file_paths(label, name):
                    aside_path = path.with_name(f".{name}.{os.getpid()}.erasing.tmp")  # `_ASIDE_FILE`
                    try:
                        path.rename(aside_path)
                    except FileNotFoundError:  # reviewed (moved out of the photo folder), or never kept there
                        continue
                    found = True
                    aside.append((path, aside_path))
                if not found:
                    missing.append(name)
            if missing and not missing_ok:  # another folder than the service's: erasing the rows would lose the names
                raise InventoryError(f"nothing was erased: {len(missing)} of the user's files are in neither "
                                     f"{self.photo_dir} nor {self.labelled_dir} (the service's folders are others? "
                                     "give them; files deleted by hand: erase with missing_ok)")
            self._audit(db, now, actor, "erase_user", None, 0, None, None,
                        {"user": user, "events": n_events, "photos": n_photos, "files": len(files) - len(missing),
                         **({"missing": missing} if missing else {})})
            # the manifest changes only when a labelled photo goes (a queued or counted one's erasure needs no space)
            # a reviewed photo's row names it in the manifest, found on disk or not: the manifest is made again
            relabel = any(self.labelled_dir in path.parents for path, _ in aside) or any(
                label is not None and name in missing for label, name in files)
            manifest = self._stage_manifest(self._labelled(db.execute(sa.text(LABELLED)).mappings())) if relabel \
                else None
            written.extend([manifest] if manifest is not None else [])
            return n_events, n_photos, len(files), relabel, manifest

        with self._files():  # from the renames to the manifest's: no other photo move or manifest rewrite between
            try:
                n_events, n_photos, n_files, relabel, manifest = self._write(erase)
            except BaseException as exc:
                self._put_back(aside)
                if storage_failure(exc) is not None:  # the operator's to fix; the client hears only what happened
                    logger.error("inventory %s: %s; the erasure of user %s was not done, nothing was erased", self.url,
                                 exc, user)
                raise
            if aside or relabel:  # a reviewed row of a file deleted by hand changes the manifest too
                self._finish_erasure(user, aside, manifest if relabel else False)
        self._checkpoint()
        if missing:  # the rows are cleared: the names are in this log line and the audit entry
            logger.warning("inventory %s: erased user %s, but %d of their files were in neither %s nor %s (kept "
                           "elsewhere? the service's --labelled-dir): %s", self.url, user, len(missing),
                           self.photo_dir, self.labelled_dir, ", ".join(missing))
        return Erasure(user, n_events, n_photos, n_files - len(missing), len(missing))

    def _finish_erasure(self, user: str, aside: Sequence[tuple[Path, Path]], manifest: Path | None | bool) -> None:
        """After an erasure's commit: put its staged manifest in place (None: no labelled photo is left, so the
        manifest goes too; False: no labelled photo was erased, the manifest stays), then unlink the files it set
        aside, so no manifest names a file already gone. Nothing here needs space; what fails is logged, not raised
        (the erasure is done), and the files it leaves are no row's: the next sweep deletes them."""
        left: list[str] = []
        if manifest is not False:
            try:
                if self._put_manifest(manifest) is None:
                    (self.labelled_dir / "manifest.csv").unlink(missing_ok=True)
            except OSError as exc:
                left.append(f"the manifest's rewrite ({exc.strerror}; the next review rewrites it)")
        for _, aside_path in aside:
            try:
                aside_path.unlink(missing_ok=True)
            except OSError as exc:
                left.append(f"{aside_path} ({exc.strerror})")
        if left:
            logger.error("inventory %s: user %s was erased, but these are left: %s", self.url, user, ", ".join(left))

    def _put_back(self, aside: list[tuple[Path, Path]]) -> None:
        """Rename the files a failed erasure set aside back to their own names (emptying `aside`)."""
        while aside:
            path, aside_path = aside.pop()
            try:
                aside_path.rename(path)
            except OSError:  # not expected (the folder took a rename a moment ago); it is swept as a leftover
                logger.exception("inventory %s: %s could not be put back after a failed erasure", self.url, path)

    def purge_uploads(self, older_than_days: float, *, actor: str = "retention") -> int:
        """Delete kept photos and box crops taken in more than `older_than_days` ago that no reviewer has
        labelled (counted photos kept with keep_photos, and items still waiting for review, which stay in the
        queue without their photo). Labelled ones are the shop's training data: `erase_user` removes those.
        Returns the number of files deleted; one audit line when there were any."""
        if not 0 <= older_than_days <= MAX_RETENTION_DAYS:  # NaN fails this too
            raise InventoryError(f"older_than_days must be between 0 and {MAX_RETENTION_DAYS:g}, "
                                 f"got {older_than_days}")
        cutoff = (datetime.now(timezone.utc) - timedelta(days=older_than_days)).isoformat(timespec="milliseconds")
        # Counted-and-kept photos and items still waiting for review; a rejected one's file is already gone.
        kept = "{t}stored IS NOT NULL AND {t}status IN ('counted', 'review')"

        missing: list[str] = []

        def purge(db: Connection, _written: list[Path]) -> list[tuple[str | None, str]]:
            params = {"cutoff": cutoff}
            old_photos = "SELECT sha256 FROM photos WHERE created_at < :cutoff"
            named = [r["stored"] for r in db.execute(sa.text(
                f"SELECT stored FROM photos WHERE {kept.format(t='')} AND created_at < :cutoff UNION ALL "
                f"SELECT b.stored FROM boxes b WHERE {kept.format(t='b.')} AND b.sha256 IN ({old_photos})"),
                params).mappings()]
            # Only rows whose file is here: with another --photo-dir than the service's, the rows were cleared
            # and the sweep reported and audited files it never found (they stayed, named by no row).
            files = [name for name in named if (self.photo_dir / name).is_file()]
            found = set(files)
            missing[:] = [name for name in named if name not in found]
            names = sa.bindparam("names", expanding=True)
            for chunk in _chunks(files, 500):
                # the file name an upload came with can name a person ("anna_kitchen.jpg"): it goes with the file
                for table, clear in (("photos", "stored = NULL, source = ''"), ("boxes", "stored = NULL")):
                    db.execute(sa.text(f"UPDATE {table} SET {clear} WHERE {kept.format(t='')} "
                                       "AND stored IN :names").bindparams(names), {"names": chunk})
            if files:
                self._audit(db, _now(), actor, "retention_purge", None, 0, None, None,
                            {"files": len(files), "older_than_days": older_than_days, "cutoff": cutoff})
            return [(None, name) for name in files]

        files = self._write(purge)
        if missing:
            logger.warning("inventory %s: retention: %d kept file(s) past %g days are not in %s (the service's photo "
                           "folder is another? give it): left as they are, e.g. %s", self.url, len(missing),
                           older_than_days, self.photo_dir, ", ".join(missing[:3]))
        self._delete_files(files)
        if files:
            self._checkpoint()  # the purged uploads' file names are out of the log's old pages too
        return len(files) + self.sweep_uploads(actor=actor)

    def sweep_uploads(self, *, actor: str = "retention", min_age_s: float = _SWEEP_MIN_AGE_S) -> int:
        """Delete the store's files (photos, box crops, half-written temporaries) in the photo and labelled
        folders that no row names: what a crash between a commit and its file deletions leaves behind
        (`erase_user`, `purge_uploads`, a rejection), or a write cut short. A file younger than `min_age_s` stays:
        it may be an intake's whose transaction has not committed yet. Returns how many went; one audit line
        when any did. `purge_uploads` calls it, and the service at start.

        The old enough files are checked against the database a chunk at a time (`_SWEEP_CHUNK`), so memory
        grows with the chunk, not with the store or its folders. A sweep that stops on an error (the database
        failing mid-sweep) raises it, after the audit line for the files it did delete.

        A file an erasure set aside whose row still names it (the erasure was cut short before its commit: nothing
        was erased) is put back under its own name instead, unless a file has that name again (then it is swept
        as a leftover); the audit line counts these as "restored"."""
        cutoff = time.time() - min_age_s
        swept = labelled = restored = 0
        with self._files():
            try:
                for folder in (self.photo_dir, *(d for d in self.labelled_dir.glob("*") if d.is_dir())):
                    for chunk in _chunks(_old_store_files(folder, cutoff), _SWEEP_CHUNK):
                        named, ours = self._named_files({name.lstrip(".")[:64] for name in chunk})
                        for name in chunk:
                            # A labelled folder may be shared with another store's database: only photos this
                            # store took in (their rows stay, erased or not) are its to sweep there.
                            if name in named or (folder != self.photo_dir and name.lstrip(".")[:64] not in ours):
                                continue
                            if self._put_aside_back(folder, name, named):
                                restored += 1
                                continue
                            path = folder / name
                            try:
                                if not path.is_file() or path.stat().st_mtime >= cutoff:  # rewritten meanwhile
                                    continue
                                path.unlink()
                            except FileNotFoundError:  # deleted meanwhile (a rejection's own unlink)
                                continue
                            swept += 1
                            labelled += folder != self.photo_dir
            except BaseException as exc:
                self._swept(actor, swept, labelled, restored, stopped=exc)
                raise
            self._swept(actor, swept, labelled, restored)
        return swept

    def _put_aside_back(self, folder: Path, name: str, named: Collection[str]) -> bool:
        """Whether `name` in `folder` was a file an erasure set aside (`_ASIDE_FILE`) whose row still names it, now
        renamed back to its own name: the erasure was cut short before its commit, so the file is still the row's
        (a waiting photo's, or labelled data the manifest lists). Not when its own name is taken again."""
        aside = _ASIDE_FILE.fullmatch(name)
        if aside is None or aside[1] not in named or (folder / aside[1]).exists():
            return False
        try:
            (folder / name).rename(folder / aside[1])
        except FileNotFoundError:  # deleted meanwhile
            return False
        return True

    def _swept(self, actor: str, swept: int, labelled: int, restored: int = 0, *,
               stopped: BaseException | None = None) -> None:
        """The audit line (first: the files are gone whatever comes next) and the manifest rewrite for the files a
        sweep deleted (the files it put back are those the manifest still lists). After a sweep that `stopped` on an
        error, as far as they go: that error is the one raised."""
        if not swept and not restored:
            return
        if restored:
            logger.warning("inventory %s: put back %d file(s) an erasure set aside before it was cut short (nothing "
                           "was erased: erase the user again)", self.url, restored)
        if swept:
            logger.warning("inventory %s: deleted %d file(s) that no photo names (left by a crash or a failed "
                           "write)%s", self.url, swept, "" if stopped is None else
                           f" before the sweep stopped ({stopped!r})")
        detail: dict[str, Any] = {"files": swept, "labelled": labelled, **({"restored": restored} if restored else {})}
        if stopped is not None:
            detail["stopped"] = type(stopped).__name__  # the files it did not reach are swept next time
        steps: list[tuple[Callable[[], Any], str]] = [(lambda: self._write(
            lambda db, _w: self._audit(db, _now(), actor, "sweep_files", None, 0, None, None, detail)),
            "the audit line of a stopped sweep could not be written")]
        if labelled:
            steps.append((self._refresh_manifest, "the manifest could not be rewritten after a stopped sweep"))
        for run, failed in steps:
            try:
                run()
            except Exception:
                if stopped is None:
                    raise
                logger.exception("inventory %s: %s", self.url, failed)

    def _named_files(self, shas: Collection[str]) -> tuple[set[str], set[str]]:
        """For these photos: the files their rows and their boxes' rows name (a rejected item's file is deleted
        after its commit: not named), and which of them have a row at all. By sha256, the primary key: a stored
        name starts with its photo's sha256 (`_write_photo`), and `stored` has no index of its own."""
        rows = self._read(NAMED_FILES, {"shas": sorted(shas)})
        named = {r["stored"] for r in rows if r["stored"] is not None and r["status"] != "rejected"}
        return named, {r["sha256"] for r in rows if r["kind"] == "photo"}

    def _delete_files(self, files: Sequence[tuple[str | None, str]]) -> None:
        """Unlink (label, name) files from the photo folder and, for labelled ones, the labelled folder; then
        rewrite the manifest, which no longer lists them (after the commit: a crash before this leaves a file
        that no row names, never a row that names a deleted file)."""
        if not files:
            return
        with self._files():
            for label, name in files:
                for path in self._file_paths(label, name):
                    path.unlink(missing_ok=True)
            self._refresh_manifest()
