"""The products' text vectors kept in a file beside the index, so that a new process does not encode every product's
texts again: each CLI text search did (the 736 pieces of the 81 grocery products: 17 CPU s with MiniLM), where the
service encodes them once and keeps them in memory.

One safetensors file, FILE, in the index's folder (`VectorIndex.cache_folder`: a FAISS index's folder; none for
Milvus), holding one text encoder's vectors (named by its `TextEncoder.digest`: the weights it holds, so a
re-tuned encoder never reads another's vectors), one row per piece of text, found by the SHA-256 of the text (a
changed text is another hash: its old vector is never read). A checksum of the rows is in the header: a file damaged
on disk is ignored, never read as vectors.

Best-effort: a file that cannot be read (none, damaged, another encoder's) counts as none, and one that cannot be
written (a read-only index, a full disk) is not written; each is a debug log line, never an error of the search.
A write goes to a temporary of its own beside the file, renamed over it, so processes writing at once each leave
a whole file; it never takes the index's lock, and nothing of the index's own is touched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["FILE", "load_text_vectors", "save_text_vectors"]

FILE = "text-vectors.safetensors"
_FORMAT = "skulens-text-vectors-1"
_HASH = 32  # bytes of a SHA-256


def _text_hashes(texts: Sequence[str]) -> np.ndarray:
    """len(texts) x 32 uint8: each text's SHA-256 (surrogatepass: a record read from JSON may hold lone surrogates)."""
    joined = b"".join(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts)
    return np.frombuffer(joined, np.uint8).reshape(len(texts), _HASH).copy()


def _checksum(hashes: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(hashes))
    h.update(np.ascontiguousarray(vectors))
    return h.hexdigest()


def load_text_vectors(folder: Path | None, encoder: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The vectors of `texts` the file in `folder` holds for this encoder, by text; {} when there is no such file
    (or no folder, or an encoder without a `digest`)."""
    digest = getattr(encoder, "digest", None)
    if folder is None or digest is None or not texts:
        return {}
    path = Path(folder) / FILE
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT or meta.get("encoder") != digest:
                log.debug("%s: vectors of another text encoder, not used", path)
                return {}
            hashes, vectors = f.get_tensor("hashes"), f.get_tensor("vectors")
    except FileNotFoundError:
        return {}
    except Exception as e:  # noqa: BLE001 - a copy only: whatever is wrong with it, the texts are encoded again
        log.debug("%s: not read (%s: %s), the texts are encoded", path, type(e).__name__, e)
        return {}
    if (hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != _HASH or vectors.dtype != np.float32
            or vectors.ndim != 2 or len(vectors) != len(hashes) or meta.get("checksum") != _checksum(hashes, vectors)):
        log.debug("%s: damaged (its rows do not match their checksum), the texts are encoded", path)
        return {}
    row = {h.tobytes(): i for i, h in enumerate(hashes)}
    found = [(t, row.get(h.tobytes())) for t, h in zip(texts, _text_hashes(texts), strict=True)]
    found = [(t, i) for t, i in found if i is not None]
    # only the rows asked for, copied out: the file's rows of products gone since are not kept in memory
    picked = vectors[[i for _, i in found]]
    return {t: picked[j] for j, (t, _) in enumerate(found)}


def save_text_vectors(folder: Path | None, encoder: Any, by_text: Mapping[str, np.ndarray]) -> None:
    """Replace the file in `folder` with these vectors of this encoder (nothing without a folder or a `digest`)."""
    digest = getattr(encoder, "digest", None)
    if folder is None or digest is None or not by_text:
        return
    path = Path(folder) / FILE
    hashes = _text_hashes(list(by_text))
    vectors = np.ascontiguousarray(np.stack(list(by_text.values())), dtype=np.float32)
    try:
        import torch

        from ..models.bundle import atomic_save_tensors

        atomic_save_tensors({"hashes": torch.from_numpy(hashes), "vectors": torch.from_numpy(vectors)}, path,
                            metadata={"format": _FORMAT, "encoder": digest, "checksum": _checksum(hashes, vectors)})
    except Exception as e:  # noqa: BLE001 - a copy only: a read-only index, a full disk; the search goes on
        log.debug("%s: not written (%s: %s)", path, type(e).__name__, e)
