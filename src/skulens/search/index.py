"""Vector indexes of catalogue entries: one interface, two backends, one factory.

An index holds **entries**: one L2-normalised float32 vector each (inner product = cosine) plus an
:class:`IndexRecord` (entry id, product id, labels, title, text, image, metadata). Several entries
may share a product id (every shopper photo of a product plus its catalogue photo), so search
returns the top-k *products* by default, each with its best-matching entry.

Backends, chosen by :func:`create_index` and detected by :func:`open_index`:

* ``"faiss"`` - embedded, the default: a directory with the records (JSONL), the vectors (``.npy``)
  and the faiss structure; exact search below a size threshold, IVF above it. Saves are crash-safe.
* ``"milvus"`` - Milvus through pymilvus: a Milvus Lite ``*.db`` path for tests and one machine,
  or a server / cluster URI (``http://host:19530``) with the same code, which is how a catalogue
  outgrows one machine.

Filters are a mapping ``field -> value`` (equality) or ``field -> [values]`` (any of), ANDed.
Fields are ``product_id``, ``label``, ``coarse_label`` or metadata keys, e.g.
``{"coarse_label": "Milk", "in_stock": True}``. Equality follows Python (and Milvus): ``1 == 1.0``
and ``True == 1``, but ``"1" != 1``; an entry without the metadata key does not match.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INDEX_KINDS",
    "Filter",
    "FrozenMetadata",
    "IndexChangedError",
    "IndexRecord",
    "IndexStoreError",
    "MetadataValue",
    "SearchHit",
    "VectorIndex",
    "check_k",
    "compile_filter",
    "create_index",
    "detect_kind",
    "open_index",
    "parse_filter",
    "record_matches",
]

MetadataValue = str | int | float | bool
FilterValue = MetadataValue | Sequence[MetadataValue]
Filter = Mapping[str, FilterValue]

INDEX_KINDS = ("faiss", "milvus")
_BACKENDS = {"faiss": "skulens.search._faiss:FaissIndex", "milvus": "skulens.search._milvus:MilvusIndex"}
_MILVUS_SCHEMES = ("http://", "https://", "tcp://", "unix:")

CORE_FILTER_FIELDS = ("product_id", "label", "coarse_label")
_RESERVED_KEYS = frozenset({"id", "product_id", "label", "coarse_label", "title", "text", "image", "metadata",
                            "vector"})
# Metadata keys become filter field names and Milvus JSON paths: keep them plain.
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but \t \n \r
_MAX_SAFE_INT = 2**53  # JSON readers (and Milvus JSON) keep integers exact up to here


class IndexStoreError(ValueError):
    """A missing, corrupt or mismatched index, or a request it cannot serve; the message is one line."""


class IndexChangedError(IndexStoreError):
    """A save refused because another process saved the index after this one opened it: nothing was written; the
    change is made again on the index as it is now (the service answers 409)."""


class IndexUnavailableError(IndexStoreError):
    """The index's server cannot be reached now (a Milvus server down or restarting): the same request may succeed
    later. The service answers 503 with Retry-After, not 422 (the client's fault)."""


def _check_metadata(metadata: Mapping[str, Any], where: str) -> dict[str, MetadataValue]:
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise IndexStoreError(f"{where}: metadata key {key!r} must match {_KEY_RE.pattern}")
        if key in _RESERVED_KEYS:
            raise IndexStoreError(f"{where}: metadata key {key!r} is a record field; choose another name")
        out[key] = _check_value(value, f"{where}: metadata {key!r}")
    return out


def _check_text(value: str, where: str) -> str:
    """`value`, if it has a UTF-8 form: a JSON "\\ud800" escape decodes to a lone surrogate, which the index's
    files and a Milvus server cannot store (taken in, every later save failed)."""
    if value.isascii():  # most text, checked at C speed (an index of 1M entries builds 7M of these)
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise IndexStoreError(f"{where}: not valid Unicode (a lone surrogate {value[exc.start]!r} at "
                              f"{exc.start})") from None
    return value


def _check_value(value: Any, where: str) -> MetadataValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _check_text(value, where)
    if isinstance(value, (int, np.integer)):
        if abs(int(value)) > _MAX_SAFE_INT:
            raise IndexStoreError(f"{where}: integer {value} is too large to store exactly (limit 2**53)")
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise IndexStoreError(f"{where}: {value} is not a finite number")
        return float(value)
    raise IndexStoreError(f"{where}: {type(value).__name__} values are not supported (use str, int, float, bool)")


class FrozenMetadata(dict):  # type: ignore[type-arg]
    """A read-only dict: records are shared between an index and its callers.

    A dict subclass rather than MappingProxyType so that ``dataclasses.asdict``, ``json.dumps`` and
    web frameworks serialise records as they are.
    """

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("record metadata is read-only; use VectorIndex.update_metadata or with_metadata")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMetadata, (dict(self),))

    def __copy__(self) -> FrozenMetadata:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenMetadata:
        return self  # immutable, and its values are scalars


@dataclass(frozen=True)
class IndexRecord:
    """What an index stores beside one vector. ``id`` is unique per entry (e.g. a relative image path)."""

    id: str
    product_id: str
    label: str
    coarse_label: str | None = None
    title: str = ""
    text: str = ""
    image: str | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("id", "product_id", "label"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise IndexStoreError(f"record {self.id!r}: {name} must be a non-empty string, got {value!r}")
        for name in ("title", "text"):
            if not isinstance(getattr(self, name), str):
                raise IndexStoreError(f"record {self.id!r}: {name} must be a string")
        for name in ("coarse_label", "image"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise IndexStoreError(f"record {self.id!r}: {name} must be a string or None")
        if not "".join((self.id, self.product_id, self.label, self.title, self.text, self.coarse_label or "",
                        self.image or "")).isascii():  # most records: one check at C speed (7M fields at 1M)
            for name in ("id", "product_id", "label", "title", "text", "coarse_label", "image"):
                if getattr(self, name) is not None:
                    _check_text(getattr(self, name), f"record {self.id!r}: {name}")
        if not isinstance(self.metadata, Mapping):
            raise IndexStoreError(f"record {self.id!r}: metadata must be a mapping")
        # A read-only copy: records are shared between the index and its callers.
        object.__setattr__(self, "metadata", FrozenMetadata(_check_metadata(self.metadata, f"record {self.id!r}")))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metadata as a plain dict)."""
        return {"id": self.id, "product_id": self.product_id, "label": self.label,
                "coarse_label": self.coarse_label, "title": self.title, "text": self.text, "image": self.image,
                "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndexRecord:
        unknown = set(d) - {"id", "product_id", "label", "coarse_label", "title", "text", "image", "metadata"}
        if unknown:
            raise IndexStoreError(f"record {d.get('id')!r}: unknown fields {sorted(unknown)}")
        return cls(id=d["id"], product_id=d["product_id"], label=d["label"], coarse_label=d.get("coarse_label"),
                   title=d.get("title") or "", text=d.get("text") or "", image=d.get("image"),
                   metadata=d.get("metadata") or {})

    def with_metadata(self, changes: Mapping[str, MetadataValue | None]) -> IndexRecord:
        """A copy with ``changes`` merged into the metadata; a value of None deletes that key."""
        merged = {**self.metadata, **changes}
        return IndexRecord(self.id, self.product_id, self.label, self.coarse_label, self.title, self.text,
                           self.image, {k: v for k, v in merged.items() if v is not None})


@dataclass(frozen=True)
class SearchHit:
    """One result: a product (or entry), its cosine similarity, and the best-matching entry's record."""

    product_id: str
    score: float
    record: IndexRecord

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the product, its score (6 decimals) and the best entry's labels, title, image, metadata."""
        r = self.record
        return {"product_id": self.product_id, "score": round(float(self.score), 6), "label": r.label,
                "coarse_label": r.coarse_label, "title": r.title, "image": r.image, "metadata": dict(r.metadata)}


# ---------------------------------------------------------------------------------------------
# filters


CompiledFilter = tuple[tuple[str, tuple[MetadataValue, ...]], ...]


def compile_filter(filter: Filter | None) -> CompiledFilter:
    """Validate a filter into ``((field, (values...)), ...)``; both backends evaluate this form."""
    if not filter:
        return ()
    if not isinstance(filter, Mapping):
        raise IndexStoreError(f"a filter is a mapping of field -> value(s), got {type(filter).__name__}")
    out = []
    for name, raw in filter.items():
        if not isinstance(name, str) or name in _RESERVED_KEYS - set(CORE_FILTER_FIELDS):
            raise IndexStoreError(f"cannot filter on {name!r}: filter fields are {', '.join(CORE_FILTER_FIELDS)} "
                                  "or metadata keys")
        if name not in CORE_FILTER_FIELDS and not _KEY_RE.match(name):
            raise IndexStoreError(f"filter field {name!r} is not a valid metadata key ({_KEY_RE.pattern})")
        values = tuple(raw) if isinstance(raw, (list, tuple, set, frozenset)) else (raw,)
        if not values:
            raise IndexStoreError(f"filter {name!r}: empty list of values")
        checked = tuple(_check_value(v, f"filter {name!r}") for v in values)
        if name in CORE_FILTER_FIELDS and not all(isinstance(v, str) for v in checked):
            raise IndexStoreError(f"filter {name!r}: values must be strings, got {list(values)!r}")
        if any(isinstance(v, str) and _CONTROL.search(v) for v in checked):
            raise IndexStoreError(f"filter {name!r}: values may not hold control characters (Milvus cannot "
                                  "express them)")
        out.append((name, tuple(dict.fromkeys(checked))))
    return tuple(out)


_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def typed_value(text: str) -> str | int | float | bool:
    """A metadata value written as text (a CSV cell, `--set`, a filter), spaces around it dropped: true/false
    (any case) is a bool, a number in JSON's grammar an int (up to 2**53) or a finite float, anything else stays
    the string it is, so an EAN or SKU with a leading zero ("0012345"), "1_000", "NaN", a brand called "NAN" or
    "yes"/"no" is never turned into a number or a bool. The CSV reader and `parse_filter` both use it, so a
    stored value and a filter written alike always match (" Arla" in a cell is the brand Arla)."""
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if _NUMBER.fullmatch(text):
        number = float(text)
        if any(c in text for c in ".eE"):
            return number if math.isfinite(number) else text  # 1e400 is no number a record can hold
        return int(text) if abs(int(text)) <= 2**53 else text  # a 20-digit code stays the code it is
    return text


def _json_value(raw: str, *, text: bool) -> Any:
    """A JSON list or string; `text`: its numbers and true/false as the text they are written as (a core field's
    values are strings: product_id=[12345, 0.50] means the products "12345" and "0.50"). None: not JSON."""
    try:
        value = json.loads(raw, parse_int=str, parse_float=str) if text else json.loads(raw)
    except ValueError:
        return None
    if text and isinstance(value, list):
        value = [json.dumps(v) if isinstance(v, bool) else v for v in value]
    return value


def parse_filter(items: Iterable[str], what: str = "filter") -> dict[str, FilterValue]:
    """``["coarse_label=Milk", "in_stock=true", "shelf=[1,3]"]`` -> a filter, for the CLI and query strings
    (`what`: how errors name an item, e.g. "--set" for metadata values written this way).

    A value is typed as `typed_value` types it (true, 3, 2.5; "007" stays a string); a JSON list ([1, 3]) or
    a JSON string ("\"3\"", to match the text 3) keeps its JSON type. The values of product_id, label and
    coarse_label are always strings (product_id=12345 is the product "12345"), in a list too.
    """
    out: dict[str, FilterValue] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise IndexStoreError(f"{what} {item!r}: expected key=value")
        if key in out:  # the two would not both hold (ANDed), and only the last was kept
            raise IndexStoreError(f"{what} {key!r} given twice: one per key; a JSON list matches any of its "
                                  f"values ({key}=[\"a\", \"b\"])")
        core = key in CORE_FILTER_FIELDS
        value: Any = raw.strip() if core else typed_value(raw)
        if isinstance(value, str) and value[:1] in ("[", '"'):
            value = _json_value(value, text=core)
            if value is None:  # a list or string cut short: matching it as text would find nothing, silently
                raise IndexStoreError(f"{what} {item!r}: not a JSON list or string (a text starting with [ or \" "
                                      f"is written as a JSON string: {key}=\"[...]\")")
        if isinstance(value, dict) or (isinstance(value, list) and not value):
            value = raw.strip()
        out[key] = value
    compile_filter(out)  # fail here, naming the item, rather than at search time
    return out


def record_field(record: IndexRecord, name: str) -> Any:
    """The value a filter field refers to (None when the record has no such metadata key)."""
    if name in CORE_FILTER_FIELDS:
        return getattr(record, name)
    return record.metadata.get(name)


def record_matches(record: IndexRecord, compiled: CompiledFilter) -> bool:
    for name, values in compiled:
        value = record_field(record, name)
        if value is None or value not in values:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# the interface


_BLOCK = 8192  # rows per validation block: 8192 x 1280 float64 is 84 MB


def as_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """(N x dim) float32, finite, L2-normalised; no copy when already so (a 1M x 1280 batch is 5 GB).

    Checked in row blocks, so validation needs no N x dim temporaries; errors name the first bad row.
    """
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise IndexStoreError(f"{what}: expected shape (N, {dim}), got {tuple(np.shape(vectors))}")
    arr = np.ascontiguousarray(arr)
    norms = np.empty(len(arr), np.float64)
    for s in range(0, len(arr), _BLOCK):
        block = arr[s:s + _BLOCK].astype(np.float64)  # float64: squares of large float32 values overflow
        norms[s:s + _BLOCK] = np.sqrt(np.einsum("ij,ij->i", block, block))
    if not np.isfinite(norms).all():
        raise IndexStoreError(f"{what}: row {int(np.flatnonzero(~np.isfinite(norms))[0])} has NaN or infinite values")
    if (norms == 0).any():
        raise IndexStoreError(f"{what}: row {int(np.flatnonzero(norms == 0)[0])} is all zeros")
    if np.abs(norms - 1.0).max(initial=0.0) <= 1e-4:
        return arr
    out = np.empty_like(arr)
    for s in range(0, len(arr), _BLOCK):
        out[s:s + _BLOCK] = arr[s:s + _BLOCK] / norms[s:s + _BLOCK, None]
    return out


def check_k(k: object) -> None:
    """k hits: a whole number >= 1 (1.5 returned every product, True one hit, "2" a TypeError, -1 sliced off the
    last hit)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise IndexStoreError(f"k must be a whole number >= 1, got {k!r}")


class VectorIndex(ABC):
    """A persistent index of entries; both backends answer the same calls with the same semantics.

    Backends implement the abstract methods; search grouping, "more like this" and metadata
    updates are shared here so they cannot drift between backends. Searches may run from several
    threads at once; writes (add, upsert, update_metadata, remove, save) need the caller's lock,
    and the FAISS backend folds pending writes into its ANN structure at the next search, so call
    ``optimize()`` after writing and before sharing the index between threads.
    """

    kind: str = ""
    #: Entries fetched per wanted product before deduplication; x4 per retry while too few products.
    group_overfetch: int = 4

    def __init__(self, dim: int):
        self.dim = int(dim)
        #: Bumped by every write through this object: caches built from the records key on it.
        self.revision = 0

    # -- backend primitives ----------------------------------------------------------------

    @abstractmethod
    def __len__(self) -> int:
        """Number of entries."""

    @abstractmethod
    def _add(self, records: list[IndexRecord], vectors: np.ndarray, *, replace: bool) -> None: ...

    @abstractmethod
    def _replace_records(self, records: list[IndexRecord]) -> None:
        """Store new records for existing ids, keeping their vectors."""

    @abstractmethod
    def _remove(self, ids: set[str] | None, product_ids: set[str] | None) -> int: ...

    @abstractmethod
    def _search_entries(self, queries: np.ndarray, n: int, compiled: CompiledFilter,
                        exclude_products: frozenset[str]) -> list[list[tuple[float, IndexRecord]]]:
        """Up to ``n`` best entries per query, best first; fewer only when fewer entries match."""

    @abstractmethod
    def get(self, id: str) -> IndexRecord | None:
        """The record of entry ``id``, or None."""

    @abstractmethod
    def records(self, product_id: str | None = None) -> list[IndexRecord]:
        """All records (of one product, if given)."""

    @abstractmethod
    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of ``ids`` in that order (len(ids) x dim); an unknown id is an error."""

    @abstractmethod
    def iter_entries(self, batch_size: int = 1024) -> Iterator[tuple[list[IndexRecord], np.ndarray]]:
        """Every entry as (records, vectors) batches: for duplicate scans, exports and migrations."""

    @abstractmethod
    def save(self) -> None:
        """Make every change so far durable."""

    @abstractmethod
    def close(self) -> None:
        """Release files / connections (does not save)."""

    def cache_folder(self) -> Path | None:
        """A local folder where files derived from the entries may be kept beside the index's own (search's text
        vectors, `search._text_vectors`); None where there is none (the default: an index in a database)."""
        return None

    def ping(self) -> None:
        """Readiness: IndexUnavailableError when the index's server cannot be reached. An index in this process's
        files (FAISS, Milvus Lite) has nothing to reach."""

    def revert(self) -> bool:
        """Drop the changes not saved yet, so the index is what its storage holds (after a save that failed, a
        server answers the write as not done, and it must not come back with the next save): True when done.
        The default (a server's index, where every write is already on the server) cannot, and says False."""
        return False

    def warm(self, *, memory_fraction: float = 0.5) -> dict[str, Any]:
        """Make the first searches as fast as later ones (a server calls this before taking traffic):
        what was done, for the start-up log. The default (a remote server's index) does nothing."""
        return {"index": self.kind, "action": "none"}

    @abstractmethod
    def optimize(self) -> None:
        """Bring the ANN structure up to date now (otherwise it happens lazily, at search or save)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: kind, location, dim, entries, products, ANN structure and parameters."""

    # -- shared behaviour ------------------------------------------------------------------

    def add(self, records: Iterable[IndexRecord], vectors: Any) -> None:
        """Add new entries; an id already in the index (or twice in the batch) is an error."""
        recs, vecs = self._check_batch(records, vectors)
        self._add(recs, vecs, replace=False)
        self.revision += 1

    def upsert(self, records: Iterable[IndexRecord], vectors: Any) -> None:
        """Add entries, replacing the record and vector of ids already present."""
        recs, vecs = self._check_batch(records, vectors)
        self._add(recs, vecs, replace=True)
        self.revision += 1

    def update_metadata(self, product_id: str, fields: Mapping[str, MetadataValue | None] | None = None,
                        /, **kwargs: MetadataValue | None) -> int:
        """Merge metadata into every entry of ``product_id`` without re-embedding; None deletes a key.

        Returns the number of entries changed; an unknown product is an error.
        """
        changes = {**(fields or {}), **kwargs}
        if not changes:
            return 0
        _check_metadata({k: v for k, v in changes.items() if v is not None}, f"update of {product_id!r}")
        current = self.records(product_id)
        if not current:
            raise IndexStoreError(f"no entries for product {product_id!r} in the index")
        self._replace_records([r.with_metadata(changes) for r in current])
        self.revision += 1
        return len(current)

    def remove(self, *, ids: Iterable[str] | None = None, product_ids: Iterable[str] | None = None) -> int:
        """Remove entries by entry id and/or by product id; returns how many were removed."""
        if ids is None and product_ids is None:
            raise IndexStoreError("remove() needs ids= or product_ids=")
        id_set = {ids} if isinstance(ids, str) else (set(ids) if ids is not None else None)
        pid_set = {product_ids} if isinstance(product_ids, str) else (
            set(product_ids) if product_ids is not None else None)
        removed = self._remove(id_set or None, pid_set or None)
        self.revision += 1
        return removed

    def search(self, queries: Any, k: int = 10, *, filter: Filter | None = None, group_by_product: bool = True,
               exclude_product_ids: Iterable[str] = ()) -> list[list[SearchHit]]:
        """Top-k per query (Q x D array, or one D vector): distinct products by default, else raw entries.

        With ``group_by_product`` each product appears once with its best entry's score: entries are
        over-fetched and deduplicated, fetching more until k products are found or none are left.
        """
        check_k(k)
        q = as_vectors(queries, self.dim, "queries")
        compiled = compile_filter(filter)
        exclude = frozenset([exclude_product_ids] if isinstance(exclude_product_ids, str) else exclude_product_ids)
        if not group_by_product:
            return [[SearchHit(r.product_id, s, r) for s, r in row]
                    for row in self._search_entries(q, k, compiled, exclude)]
        native = self._search_grouped(q, k, compiled, exclude)
        out: list[list[SearchHit]] = [row or [] for row in native]
        pending = np.asarray([i for i, row in enumerate(native) if row is None], dtype=np.int64)
        n = min(k * self._overfetch(), self._max_fetch())
        while len(pending):
            rows = self._search_entries(q[pending], n, compiled, exclude)
            retry = []
            for qi, row in zip(pending, rows):
                out[qi] = _group(row, k)
                if len(row) == n:  # a full fetch: how many entries each product had, for the next first fetch
                    self._observe_fetch(row)
                # fewer entries than asked for means every match was seen
                if len(out[qi]) < k and len(row) == n and n < self._max_fetch():
                    retry.append(qi)
            pending = np.asarray(retry, dtype=np.int64)
            n = min(n * 4, self._max_fetch())
        return out

    def more_like_this(self, product_id: str, k: int = 10, filter: Filter | None = None) -> list[SearchHit]:
        """Products most like ``product_id``: the query is the mean of its entries (re-normalised)."""
        check_k(k)
        recs = self.records(product_id)
        if not recs:
            raise IndexStoreError(f"no entries for product {product_id!r} in the index")
        mean = self.vectors([r.id for r in recs]).astype(np.float64).mean(axis=0)
        if np.linalg.norm(mean) < 1e-6:  # entries that cancel out: fall back to the first one
            mean = self.vectors([recs[0].id])[0]
        return self.search(mean.astype(np.float32), k, filter=filter, exclude_product_ids=(product_id,))[0]

    def product_ids(self) -> set[str]:
        return {r.product_id for r in self.records()}

    def _search_grouped(self, queries: np.ndarray, k: int, compiled: CompiledFilter,
                        exclude_products: frozenset[str]) -> list[list[SearchHit] | None]:
        """Backend-native grouping by product; None for a query it cannot answer (then entries are over-fetched)."""
        return [None] * len(queries)

    def _overfetch(self) -> int:
        """Entries fetched per wanted product on the first try."""
        return self.group_overfetch

    def _observe_fetch(self, row: list[tuple[float, IndexRecord]]) -> None:
        """A full over-fetch's entries (backends that cannot count their products cheaply learn their first
        fetch's depth from these; the others ignore them)."""

    def _max_fetch(self) -> int:
        """Most entries one query may ask the backend for (Milvus caps topk)."""
        return 1 << 62

    def _check_batch(self, records: Iterable[IndexRecord], vectors: Any) -> tuple[list[IndexRecord], np.ndarray]:
        recs = list(records)
        for r in recs:
            if not isinstance(r, IndexRecord):
                raise IndexStoreError(f"records must be IndexRecord, got {type(r).__name__}")
        vecs = as_vectors(vectors, self.dim) if len(recs) else np.zeros((0, self.dim), np.float32)
        if len(vecs) != len(recs):
            raise IndexStoreError(f"{len(recs)} records but {len(vecs)} vectors")
        seen: set[str] = set()
        for r in recs:
            if r.id in seen:
                raise IndexStoreError(f"duplicate entry id {r.id!r} in one batch")
            seen.add(r.id)
        return recs, vecs

    def __enter__(self) -> VectorIndex:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} dim={self.dim} entries={len(self)}>"


def _group(row: list[tuple[float, IndexRecord]], k: int) -> list[SearchHit]:
    best: dict[str, SearchHit] = {}
    for score, rec in row:  # best first, so the first entry seen per product is its best
        if rec.product_id not in best:
            best[rec.product_id] = SearchHit(rec.product_id, score, rec)
            if len(best) == k:
                break
    return list(best.values())


# ---------------------------------------------------------------------------------------------
# factory


def _backend(kind: str) -> Any:
    if kind not in _BACKENDS:
        raise IndexStoreError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    module, name = _BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def create_index(kind: str, path_or_uri: str | os.PathLike[str], dim: int, *, metric: str = "ip",
                 overwrite: bool = False, **options: Any) -> VectorIndex:
    """A new, empty index. ``kind``: "faiss" (a directory) or "milvus" (a ``*.db`` file or a server URI).

    ``metric`` is "ip" (cosine on the normalised vectors); an existing index at the location is an
    error unless ``overwrite``. Backend options: see ``FaissIndex.create`` / ``MilvusIndex.create``.
    """
    if metric not in ("ip", "cosine"):
        raise IndexStoreError(f"metric {metric!r} is not supported: vectors are L2-normalised and compared "
                              "by inner product ('ip'); L2 on unit vectors would rank the same")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise IndexStoreError(f"dim must be a positive integer, got {dim!r}")
    return _backend(kind).create(path_or_uri, int(dim), overwrite=overwrite, **options)


def detect_kind(path_or_uri: str | os.PathLike[str]) -> str:
    """"milvus" for a server URI or a ``*.db`` path, else "faiss" (a directory)."""
    s = os.fspath(path_or_uri).partition("#")[0]  # "URI#collection": a Milvus collection other than the default
    if s.startswith(_MILVUS_SCHEMES) or s.endswith(".db"):
        return "milvus"
    return "faiss"


def open_index(path_or_uri: str | os.PathLike[str], **options: Any) -> VectorIndex:
    """Open an existing index, detecting the backend from the location; missing or corrupt is one error line."""
    s = os.fspath(path_or_uri)
    kind = detect_kind(s)
    if kind == "faiss" and not Path(s).exists():
        raise IndexStoreError(f"{s}: no index here (expected a skulens FAISS index directory, a Milvus Lite "
                              "*.db path or a Milvus server URI)")
    return _backend(kind).open(s, **options)
