"""What the inventory store refuses (`InventoryError` and its kinds) and how its storage fails (`storage_failure`,
`database_lost`, `StorageError`): the rules the service and the CLI use to answer 4xx, 503 or 507."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

import sqlalchemy as sa

__all__ = ["InventoryError", "PhotoMissingError", "StorageError", "UnknownLabelError", "database_lost",
           "storage_error", "storage_failure"]

# The disk's own state, not one file's: every request's photo fails alike (on a full disk slowly, after most of
# its bytes), so a merged intake that meets one fails as a whole. Full: no space, over quota. Unavailable: a
# read-only or failing file system, no file handles left, a read-only database (retrying at once would meet it
# again).
_STORAGE_FULL_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n))
_STORAGE_DOWN_ERRNOS = frozenset(getattr(errno, n) for n in ("EROFS", "EIO", "EMFILE", "ENFILE") if hasattr(errno, n))
# sqlite3's error codes (Python 3.11+) are extended ones: the primary code is the low byte
# (SQLITE_READONLY_DBMOVED is 1032 = 8 | 4 << 8).
_SQLITE_FULL = 13  # "database or disk is full"
_SQLITE_READONLY = 8  # "attempt to write a readonly database": a read-only file, folder or mount, query_only
_SQLITE_IOERR = 10  # "disk I/O error": the OS failed a read, write or sync of the database's files (EIO, ...)
_PG_DISK_FULL = "53100"
_PG_READ_ONLY = "25006"  # read_only_sql_transaction: a hot standby, default_transaction_read_only
_PG_IO_ERROR = "58030"  # io_error: the OS failed a read or write of the database's files (EIO), as SQLITE_IOERR


def storage_failure(exc: BaseException) -> str | None:
    """Whether `exc` is the store's disk failing every write alike, not one request's: "full" (no space left,
    over quota; a database that says its disk is full too), "unavailable" (a read-only or failing file system,
    no file handles left; a database that takes no writes, or whose disk fails it: SQLite's SQLITE_IOERR,
    PostgreSQL's io_error), else None. A merged intake fails as a whole on one (`intake_batches`). A sqlite3 error
    without a code (Python 3.10's) is none of these: its message is all it has, and that is not matched."""
    if isinstance(exc, sa.exc.DBAPIError) and isinstance(exc.orig, BaseException):  # a connect's, unwrapped
        exc = exc.orig
    if isinstance(exc, OSError) and exc.errno in _STORAGE_FULL_ERRNOS:
        return "full"
    if isinstance(exc, OSError) and exc.errno in _STORAGE_DOWN_ERRNOS or database_lost(exc):
        return "unavailable"
    sqlite_code, sqlstate = _sqlite_code(exc), getattr(exc, "sqlstate", None)
    if sqlite_code == _SQLITE_FULL or sqlstate == _PG_DISK_FULL:
        return "full"
    if sqlite_code in (_SQLITE_READONLY, _SQLITE_IOERR) or sqlstate in (_PG_READ_ONLY, _PG_IO_ERROR):
        return "unavailable"
    return None


def database_lost(exc: BaseException) -> bool:
    """PostgreSQL cannot be reached, or went away: psycopg's OperationalError without a server code (refused,
    reset, "connection is bad", "consuming input failed"), a connection exception (SQLSTATE class 08) or the server
    shutting down or starting (57P01-57P03). The same request succeeds once it is back: storage "unavailable"."""
    if isinstance(exc, sa.exc.DBAPIError) and isinstance(exc.orig, BaseException):
        exc = exc.orig
    if type(exc).__module__.split(".")[0] != "psycopg":
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(("08", "57P"))
    return any(c.__name__ == "OperationalError" for c in type(exc).__mro__)


def _sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of a sqlite3 error (the low byte of its extended code: SQLITE_IOERR_WRITE,
    778, is SQLITE_IOERR, 10), or None: not a sqlite3 error, or one without a code (Python 3.10)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def one_requests_error(exc: BaseException) -> bool:
    """An error one request of a merged intake can cause alone: its photo file cannot be written (an OSError
    that is not the disk's own: a path in the way, a file it may not replace), a value the store refuses
    (ValueError, InventoryError) or a row the database refuses (the DB-API's IntegrityError / DataError,
    sqlite3's or psycopg's). A locked, lost or broken database, or a full or read-only disk, is everyone's."""
    if storage_failure(exc) is not None:
        return False
    return isinstance(exc, (OSError, ValueError)) or any(
        c.__name__ in ("IntegrityError", "DataError") for c in type(exc).__mro__)


def driver_error(exc: BaseException) -> bool:
    """An error of the database or its driver (SQLAlchemy's wrapper, sqlite3's, psycopg's), not skulens' own."""
    return isinstance(exc, sa.exc.DBAPIError) or type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg")


class InventoryError(ValueError):
    """A request the store cannot honour (unknown photo, already reviewed, bad label or count)."""


class StorageError(Exception):
    """A change the store's storage refused, not the request (`storage_failure`): `failure` is "full" (no space left,
    over quota) or "unavailable" (a read-only or failing disk, a read-only database, one whose disk fails it: the
    same request may succeed later). The message says what was not done, and no path (the store's log line has it).
    The store's methods raise the driver's or the OS's own error; `storage_error` makes one of these from it, for
    callers that answer people (`People.erase`: the CLI says it in one line, the service answers 507, or 503 with
    Retry-After). Opening a store whose schema cannot be written raises one too (`InventoryStore._migrate`; its
    message names the database, without a password, for whoever opened it)."""

    def __init__(self, message: str, failure: str):
        super().__init__(message)
        self.failure = failure


def storage_error(exc: BaseException, doing: str, outcome: str) -> StorageError | None:
    """`exc` as a StorageError when it is the storage failing (`storage_failure`), else None. Its message is
    "{doing} ({why}); {outcome}": "the inventory cannot erase a user now (the database is read-only); nothing was
    erased"."""
    failure = storage_failure(exc)
    if failure is None:
        return None
    if isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno)
    elif database_lost(exc):
        reason = "the database cannot be reached"
    elif failure == "full":
        reason = "the database's disk is full"
    elif _sqlite_code(exc) == _SQLITE_IOERR or getattr(exc, "sqlstate", None) == _PG_IO_ERROR:
        reason = "the database's disk reports I/O errors"
    else:
        reason = "the database is read-only"
    return StorageError(f"{doing} ({reason}); {outcome}", failure)


class PhotoMissingError(InventoryError):
    """A correction or confirmation of a kept photo that is not in this store's photo folder: it would count, and
    its photo would never reach the labelled data."""


class UnknownLabelError(InventoryError):
    """A review label that names no known product: accepted, a typo ("Bananna") would become a new product,
    a row in the counts and a class folder in the labelled data that retraining reads."""

    def __init__(self, label: str, suggestions: Sequence[str]):
        self.label, self.suggestions = label, tuple(suggestions)
        hint = f"did you mean {' or '.join(map(repr, self.suggestions))}? " if self.suggestions else ""
        super().__init__(f"unknown product {label!r}: {hint}a correction must name an existing product "
                         "(a new product is enrolled first)")
