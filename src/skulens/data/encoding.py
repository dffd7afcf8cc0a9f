"""Where a text file that should be UTF-8 is not: one phrase for the error a reader raises about it.

Catalogue files (manifests, split lists, ``classes.csv``, ``products.csv``, attribute tables) and behaviour
logs are read as UTF-8; a spreadsheet saved as Windows-1252 or Latin-1 otherwise ends in a raw
``UnicodeDecodeError`` traceback that names neither the file nor the place.
"""

from __future__ import annotations

import codecs
import os

__all__ = ["not_utf8"]

_CHUNK = 1 << 20


def not_utf8(path: str | os.PathLike[str]) -> str:
    """``"not UTF-8 (byte 0xe8 at position 20, line 2); save it as UTF-8"`` for the first bad byte of ``path``.

    The position is the byte offset in the file (the ``UnicodeDecodeError`` a text reader raises counts
    from the start of its buffer, not of the file). A file that decodes after all (it changed) or cannot be
    read gets the phrase without a position.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    try:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(_CHUNK)
                pending = decoder.getstate()[0]  # bytes of a character split across chunks
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as exc:
                    data = exc.object
                    line = lines + 1 + data.count(b"\n", len(pending), exc.start)
                    return (f"not UTF-8 (byte 0x{data[exc.start]:02x} at position "
                            f"{offset - len(pending) + exc.start}, line {line}); save it as UTF-8")
                if not chunk:
                    break
                offset += len(chunk)
                lines += chunk.count(b"\n")
    except OSError:
        pass
    return "not UTF-8; save it as UTF-8"
