"""A bundle's file names and the repair of an interrupted swap: files only, no torch (the CLI checks a --model
with it before torch is imported)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["CARD", "WEIGHTS", "recover_bundle"]

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CARD = "card.json"


def recover_bundle(directory: str | os.PathLike[str]) -> bool:
    """Put back the previous bundle when a kill landed inside `save_bundle`'s swap (after the old one moved
    aside, before the new one moved in): True when it did."""
    out = Path(directory)
    old = out.with_name(f".{out.name}.old")
    if out.exists() or not (old / CARD).is_file() or not (old / WEIGHTS).is_file():
        return False
    os.replace(old, out)
    log.warning("%s: restored the previous bundle (a save was interrupted while swapping it)", out)
    return True
