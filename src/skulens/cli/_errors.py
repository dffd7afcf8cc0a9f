"""The errors a user can cause (bad data, bad files, bad config): the CLI prints them as one line, exit 2; and
the machine's storage refusing writes (a full or read-only disk, a read-only database): one line, exit 3.

Matched through `sys.modules`, so classifying an error imports nothing: an exception cannot be an instance
of a class whose module was never imported (and an input error found before torch loads stays torch-free).
"""

from __future__ import annotations

import errno
import sys

__all__ = ["RUN_FAILURE_CLASSES", "USER_ERROR_CLASSES", "is_run_failure", "is_user_error", "storage_failure"]

# A run that did its work and failed its own check (exit 1, as a run whose photos were all unreadable): an
# exported file that does not reproduce its model, a training run that diverged. Looked up before the user
# errors (ParityError is a BundleError).
RUN_FAILURE_CLASSES = (
    ("skulens.deploy.parity", "ParityError"),
    ("skulens.train.engine", "TrainingDiverged"),  # a training run whose loss became NaN or inf
)

USER_ERROR_CLASSES = (
    ("skulens.config", "ConfigError"),
    ("skulens.data.catalogue", "CatalogueError"),
    ("skulens.data.decode", "ImageDecodeError"),
    ("skulens.detect.annotations", "AnnotationError"),
    ("skulens.detect.model", "DetectorError"),
    ("skulens.models.backbones", "WeightsError"),
    ("skulens.models.bundle", "BundleError"),
    ("skulens.models.inference", "DeviceError"),
    ("skulens.models.text", "TextEncoderMismatch"),
    ("skulens.search.align", "AlignerError"),
    ("skulens.search.enroll", "EnrolmentError"),
    ("skulens.search.index", "IndexStoreError"),
    ("skulens.recommend.shopping_log", "ShoppingLogError"),
    ("skulens.recommend.recommenders", "UnknownProductError"),
    ("skulens.deploy.ray_jobs", "RayClusterError"),
    ("skulens.serve.inventory", "InventoryError"),
)


def _is_one_of(exc: BaseException, classes: tuple[tuple[str, str], ...]) -> bool:
    for module, name in classes:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(exc, getattr(mod, name)):
            return True
    return False


def is_run_failure(exc: BaseException) -> bool:
    return _is_one_of(exc, RUN_FAILURE_CLASSES)


def is_user_error(exc: BaseException) -> bool:
    # PermissionError: an output path this user cannot write (-o /sys/x.csv), or an input they cannot read
    if isinstance(exc, (FileNotFoundError, ImportError, PermissionError)):
        return True
    return _is_one_of(exc, USER_ERROR_CLASSES)


# EFBIG: a file past a size limit (RLIMIT_FSIZE, the file system's own): the storage refusing, as a full disk
_FULL = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n))
_READ_ONLY = frozenset(getattr(errno, n) for n in ("EROFS",) if hasattr(errno, n))


def storage_failure(exc: BaseException) -> str | None:
    """"full" or "unavailable" when `exc`, or an error it wraps (SQLAlchemy's `.orig`, `raise ... from`), is the
    storage refusing writes: a full or read-only disk anywhere; with the inventory loaded, its own classification
    too (a read-only or full database, `StorageError`). Else None."""
    inventory = sys.modules.get("skulens.serve.inventory")
    seen: BaseException | None = exc
    for _ in range(5):  # a short chain: the error, the driver's error it wraps, their causes
        if seen is None:
            break
        if isinstance(seen, OSError):  # only a full or read-only disk: not EIO, EMFILE (a data loader's too)
            if seen.errno in _FULL:
                return "full"
            if seen.errno in _READ_ONLY:
                return "unavailable"
        elif inventory is not None:  # a database's own codes (read-only, full), or the store's StorageError
            if isinstance(seen, inventory.StorageError):
                return seen.failure
            found = inventory.storage_failure(seen)
            if found is not None:
                return found
        wrapped = getattr(seen, "orig", None)  # SQLAlchemy's DBAPIError; elsewhere `orig` may be anything
        seen = wrapped if isinstance(wrapped, BaseException) else seen.__cause__
    return None
