"""A bundle's file names and the repair of an interrupted swap: files only, no torch (the CLI checks a --model
with it before torch is imported)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from filelock import FileLock

__all__ = ["CARD", "WEIGHTS", "lock_of", "recover_bundle"]

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CARD = "card.json"


def lock_of(directory: str | os.PathLike[str]) -> FileLock:
    """The lock of the bundle in `directory`, a file beside it (`.NAME.lock`): held by whoever rewrites the
    bundle (its save's swap, an enrolment from load to save), so that two processes (`skulens enroll` beside
    `skulens serve`, two service workers) or two threads take turns. One object per bundle and process, so a
    thread that holds it may take it again (the enrolment, then its save); a wait is `acquire(timeout=...)`'s."""
    out = Path(directory).resolve()
    return FileLock(out.with_name(f".{out.name}.lock"), is_singleton=True)


def _aside(out: Path) -> bool:
    old = out.with_name(f".{out.name}.old")
    return not out.exists() and (old / CARD).is_file() and (old / WEIGHTS).is_file()


def recover_bundle(directory: str | os.PathLike[str]) -> bool:
    """Put back the previous bundle when a kill landed inside `save_bundle`'s swap (after the old one moved
    aside, before the new one moved in): True when it did. A save still swapping (another process or thread)
    is waited for, not undone."""
    out = Path(directory)
    if not _aside(out):
        return False
    with lock_of(out):
        if not _aside(out):  # the save finished while this waited
            return False
        os.replace(out.with_name(f".{out.name}.old"), out)
    log.warning("%s: restored the previous bundle (a save was interrupted while swapping it)", out)
    return True
