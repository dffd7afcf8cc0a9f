"""The products' text vectors kept in a file beside the index, so that a new process does not encode every product's
texts again: each CLI text search did (the 736 pieces of the 81 grocery products: 17 CPU s with MiniLM), where the
service encodes them once and keeps them in memory.

One safetensors file, FILE, in the index's folder (`VectorIndex.cache_folder`: a FAISS index's folder; none for
Milvus), holding one text encoder's vectors (named by its `TextEncoder.digest`: the weights it holds, so a
re-tuned encoder never reads another's vectors), one row per piece of text, found by the SHA-256 of the text (a
changed text is another hash: its old vector is never read). A checksum of the rows is in the header: a file damaged
on disk is ignored, never read as vectors (a checksum, not a signature: whoever can write the index's folder can
write this file, as they can the index itself).

Best-effort: a file that cannot be read (none, damaged, another encoder's) counts as none, and one that cannot be
written (a read-only index, a full disk) is not written; each is a debug log line, never an error of the search.
A write goes to a temporary of its own beside the file, renamed over it, so processes writing at once each leave
a whole file; it never takes the index's lock, and nothing of the index's own is touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["FILE", "load_text_vectors", "save_text_vectors"]

FILE = "text-vectors.safetensors"
_FORMAT = "skulens-text-vectors-1"
_HASH = 32  # bytes of a SHA-256
_HEADER_ROOM = 1 << 20  # bytes of header and padding a file may hold beyond its rows (its header is about 200)


def _text_hashes(texts: Sequence[str]) -> np.ndarray:
    """len(texts) x 32 uint8: each text's SHA-256 (surrogatepass: a record read from JSON may hold lone surrogates)."""
    joined = b"".join(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts)
    return np.frombuffer(joined, np.uint8).reshape(len(texts), _HASH).copy()


def _checksum(hashes: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(hashes))
    h.update(np.ascontiguousarray(vectors))
    return h.hexdigest()


def _max_rows(texts: int) -> int:
    """The most rows a file for `texts` distinct texts is read with: beyond it (a catalogue that shrank to under
    half, or a planted file claiming billions of rows) it is not read but written again."""
    return 2 * texts + 1024


def load_text_vectors(folder: Path | None, digest: str | None, texts: Sequence[str], *, width: int | None = None
                      ) -> tuple[dict[str, np.ndarray], bool]:
    """The vectors of `texts` the file in `folder` holds for the encoder named `digest` (its `TextEncoder.digest`),
    by text ({} when there is no such file, no folder or no digest); and whether the file is worth writing again:
    it is none, cannot be read, is another encoder's, or holds many rows no text asks for (products gone since).

    Read only when it is a regular file whose header names this encoder, two tensors of the shapes this encoder
    writes (`width` columns, where given), at most `_max_rows` rows and a length that fits them; its rows must
    match their checksum and be finite. Anything else counts as no file: never an error, a hang (a FIFO) or memory
    beyond what the rows asked for need (a sparse file claiming a huge length)."""
    if folder is None or digest is None or not texts:
        return {}, False
    path = Path(folder) / FILE
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}, True
    except OSError as e:
        log.debug("%s: not read (%s), the texts are encoded", path, e)
        return {}, True
    if not stat.S_ISREG(st.st_mode):
        log.debug("%s: not a regular file, not read", path)
        return {}, True
    distinct = len(set(texts))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT or meta.get("encoder") != digest:
                log.debug("%s: vectors of another text encoder, not used", path)
                return {}, True
            if sorted(f.keys()) != ["hashes", "vectors"]:
                raise ValueError("not the two tensors this file holds")
            hs, vs = f.get_slice("hashes").get_shape(), f.get_slice("vectors").get_shape()
            if (len(hs) != 2 or hs[1] != _HASH or len(vs) != 2 or vs[0] != hs[0]
                    or (width is not None and vs[1] != width)):
                raise ValueError(f"shapes {hs} and {vs}, not rows x {_HASH} and rows x {width or 'the width'}")
            if hs[0] > _max_rows(distinct) or st.st_size > hs[0] * (_HASH + 4 * vs[1]) + _HEADER_ROOM:
                log.debug("%s: %d rows in %d bytes for %d texts, not read", path, hs[0], st.st_size, distinct)
                return {}, True
            hashes, vectors = f.get_tensor("hashes"), f.get_tensor("vectors")
    except Exception as e:  # noqa: BLE001 - a copy only: whatever is wrong with it, the texts are encoded again
        log.debug("%s: not read (%s: %s), the texts are encoded", path, type(e).__name__, e)
        return {}, True
    if (hashes.dtype != np.uint8 or vectors.dtype != np.float32 or meta.get("checksum") != _checksum(hashes, vectors)
            or not np.isfinite(vectors).all()):
        log.debug("%s: damaged (its rows do not match their checksum or are not finite), the texts are encoded", path)
        return {}, True
    row = {h.tobytes(): i for i, h in enumerate(hashes)}
    found = [(t, row.get(h.tobytes())) for t, h in zip(texts, _text_hashes(texts), strict=True)]
    found = [(t, i) for t, i in found if i is not None]
    # only the rows asked for, copied out: the file's rows of products gone since are not kept in memory
    picked = vectors[[i for _, i in found]]
    stale = len(hashes) > distinct + max(64, distinct // 4)  # products gone since: write the file smaller
    return {t: picked[j] for j, (t, _) in enumerate(found)}, stale


def save_text_vectors(folder: Path | None, digest: str | None, texts: Sequence[str], vectors: np.ndarray) -> None:
    """Replace the file in `folder` with the vectors of `texts` by the encoder named `digest` (row i is text i's; a
    text given twice is written once); nothing without a folder or a digest, and never an error (a read-only index,
    a full disk, too little memory: the search goes on)."""
    if folder is None or digest is None or not len(texts):
        return
    path = Path(folder) / FILE
    try:
        import torch

        from ..models.bundle import atomic_save_tensors

        first: dict[str, int] = {}
        for i, t in enumerate(texts):
            first.setdefault(t, i)
        if len(first) < len(texts):  # one row per distinct text (a copy of those rows only)
            vectors, texts = vectors[list(first.values())], list(first)
        hashes = _text_hashes(texts)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # the caller's matrix as it is, not copied
        atomic_save_tensors({"hashes": torch.from_numpy(hashes), "vectors": torch.from_numpy(vectors)}, path,
                            metadata={"format": _FORMAT, "encoder": digest, "checksum": _checksum(hashes, vectors)})
    except Exception as e:  # noqa: BLE001 - a copy only: a read-only index, a full disk; the search goes on
        log.debug("%s: not written (%s: %s)", path, type(e).__name__, e)
