"""The embedded FAISS backend: one directory, crash-safe saves, exact below a size threshold, IVF above.

On disk (never pickled)::

    index.json               manifest: format, dim, options, ANN parameters, and the files below
    records-000007.jsonl     one JSON record per row; ``null`` marks a removed row (a tombstone)
    vectors-000007.npy       float32 rows x dim, the source of truth for re-ranking and rebuilds
    ann-000007.faiss         the ANN structure (absent while exact search is used)

Beside them, not part of the index: ``text-vectors.safetensors``, search's copy of the products' text vectors
(`search._text_vectors`), which saves ignore and any process may replace.

A save writes the changed files under a new version number, fsyncs them, then swaps the manifest
in with ``os.replace`` and fsyncs the directory; only then are files no manifest names deleted. A
kill at any moment therefore leaves the old or the new manifest, each naming complete files.
Unchanged parts are not rewritten (a metadata update rewrites only the records). Saves take an
exclusive lock on ``.lock`` in the folder and check that the manifest on disk is still the one this
object was opened from (or last saved): a save over another process's newer save is refused
(IndexChangedError, nothing written; the object then holds the index as the other process saved it),
so two writers never lose each other's changes or delete each other's files; the refused change is
made again.

Rows are append-only between compactions: removing an entry leaves a tombstone (IVF also drops it
from its lists; HNSW skips it through an ID selector), and a quarter of tombstones triggers a
compaction and rebuild. FAISS labels are row numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .index import (
    CORE_FILTER_FIELDS,
    CompiledFilter,
    IndexChangedError,
    IndexRecord,
    IndexStoreError,
    VectorIndex,
)

try:
    import faiss
except ImportError as e:  # pragma: no cover - the extra is part of the dev install
    raise ImportError("the FAISS index needs faiss-cpu: pip install 'skulens[search]'") from e

__all__ = ["AUTO_ANN", "FaissIndex", "FaissOptions"]

logger = logging.getLogger(__name__)

FORMAT = "skulens-faiss-index"
SCHEMA = 1
MANIFEST = "index.json"
LOCK = ".lock"  # taken by each save (`_save_lock`)
_VERSIONED = re.compile(r"^(records|vectors|ann)-(\d{6,})\.(jsonl|npy|faiss)(\.tmp)?$")
ANN_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfsq8", "ivfpq")
_RERANKED = ("ivfsq8", "ivfpq")  # approximate codes: candidates are re-scored from the stored vectors
# IVF with 8-bit scalar-quantised codes plus exact re-ranking: 1 byte per dimension besides the
# stored vectors (IVF-Flat keeps a second float32 copy, 5 GB at 1M x 1280). In a 100k x 1280
# prototype on this 2-core machine it matched IVF-Flat's recall@10 at the same nprobe, where PQ
# codes (160 bytes) lost up to 2 points unless 100 candidates were re-ranked; HNSW inserts cost
# ~1 ms each at 1280-d (10k: 10-12 s), 20+ min at 1M, and HNSW cannot remove entries in place.
# Measurements: benchmarks/RESULTS.md, "ANN index".
AUTO_ANN = "ivfsq8"
_MIN_ANN_ENTRIES = 1024  # below this, exact search is faster than any ANN structure
_REBUILD_DEAD_FRACTION = 0.25
_REBUILD_GROWTH = 4  # retrain IVF once the index has grown this much past its training size
_CHUNK = 16384  # rows per exact-search block: 80 MB of 1280-d float32


@dataclass(frozen=True)
class FaissOptions:
    """How the FAISS backend indexes; stored in the manifest, search-time fields overridable on open."""

    ann: str = "auto"  # "auto": exact below exact_threshold entries, AUTO_ANN above
    # One exact query reads every vector: 20k x 1280 float32 is 100 MB, ~10 ms of memory bandwidth.
    exact_threshold: int = 20_000
    nlist: int | None = None  # IVF lists; None: ~2 sqrt(N), a power of two
    nprobe: int | None = None  # IVF lists visited per query; None: max(16, nlist // 128)
    pq_m: int | None = None  # PQ sub-quantizers; None: dim / 8 (8 dims per byte)
    rerank: int = 4  # candidates per wanted result (at least 50) re-scored exactly for ivfsq8 / ivfpq
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 96
    exact_filter_rows: int = 20_000  # a filter keeping at most this many entries is searched exactly
    # vectors sampled to train IVF / PQ, raised to 39 per list (faiss' minimum); k-means time grows
    # linearly with it (100k at 1M vectors: 100k x 2048 lists x 10 iterations, minutes on 2 cores)
    train_size: int = 50_000
    progress: bool = False

    def __post_init__(self) -> None:
        if self.ann not in ANN_KINDS:
            raise IndexStoreError(f"ann={self.ann!r}: choose one of {', '.join(ANN_KINDS)}")
        for f in ("exact_threshold", "rerank", "hnsw_m", "ef_construction", "ef_search", "exact_filter_rows",
                  "train_size"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise IndexStoreError(f"{f} must be a positive integer, got {getattr(self, f)!r}")
        for f in ("nlist", "nprobe", "pq_m"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise IndexStoreError(f"{f} must be a positive integer or None, got {v!r}")


_SEARCH_TIME = ("nprobe", "rerank", "ef_search", "exact_filter_rows", "progress")


def _options(base: dict[str, Any], overrides: dict[str, Any]) -> FaissOptions:
    known = {f.name for f in fields(FaissOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise IndexStoreError(f"unknown FAISS index options {sorted(unknown)}; known: {sorted(known)}")
    return FaissOptions(**{**{k: v for k, v in base.items() if k in known}, **overrides})


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _auto_nlist(n: int) -> int:
    # ~2 sqrt(N) lists (2048 at 1M): k-means and list assignment cost grow with nlist, and at 39
    # training points per list (faiss' minimum) 2048 lists need 80k training vectors.
    return int(min(65536, max(16, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))))


def _pq_m(dim: int) -> int:
    target = max(1, dim // 8)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def _available_memory() -> int:
    """Bytes the kernel could give now without swapping (MemAvailable), else the free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _page_in(buf: np.memmap, rows: int) -> None:
    """Ask for read-ahead, then touch one float per 4 KiB page so every page is resident."""
    import mmap

    raw = getattr(buf, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_WILLNEED"):
        raw.madvise(mmap.MADV_WILLNEED)
    flat = buf[:rows].reshape(-1)
    for start in range(0, len(flat), 1 << 26):  # 256 MiB at a time
        float(flat[start:start + (1 << 26):1024].sum())


class FaissIndex(VectorIndex):
    kind = "faiss"

    def __init__(self, path: Path, dim: int, options: FaissOptions):
        super().__init__(dim)
        self.path = path
        self.options = options
        self._records: list[IndexRecord | None] = []
        self._buf = np.zeros((0, dim), np.float32)  # capacity >= rows; may be a read-only memmap
        self._n = 0
        self._alive = np.zeros(0, bool)
        self._row_of: dict[str, int] = {}
        self._by_product: dict[str, list[int]] = {}
        self._columns: dict[str, tuple[np.ndarray, dict[Any, int]]] = {}
        self._ann: Any = None
        self._ann_kind = "flat"
        self._ann_rows = 0  # rows [0, _ann_rows) have been offered to the ANN structure
        self._ann_trained_on = 0
        self._ann_params: dict[str, Any] = {}
        self._version = 0
        self._files: dict[str, str | None] = {"records": None, "vectors": None, "ann": None}
        self._dirty = {"records", "vectors", "ann"}
        self._replaces = False  # created with overwrite: its first save replaces whatever index is there

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], dim: int, *, overwrite: bool = False,
               **options: Any) -> FaissIndex:
        """A new index at directory ``path`` (written at the first save; the old one stays until then).

        Options: see :class:`FaissOptions`. An existing index there is an error unless ``overwrite``.
        """
        p = Path(path)
        if str(p).endswith(".db"):
            raise IndexStoreError(f"{p}: a FAISS index directory may not end in .db (that names a Milvus Lite "
                                  "database); choose another name")
        if p.exists() and not p.is_dir():
            raise IndexStoreError(f"{p}: exists and is not a directory")
        if (p / MANIFEST).exists() and not overwrite:
            raise IndexStoreError(f"{p}: an index already exists (open it, or replace it: --overwrite, "
                                  "overwrite=True in Python)")
        if p.is_dir() and not (p / MANIFEST).exists() and any(f.name != LOCK for f in p.iterdir()):
            raise IndexStoreError(f"{p}: directory is not empty and holds no index; choose an empty one")
        index = cls(p, dim, _options({}, options))
        index._replaces = overwrite
        return index

    @classmethod
    def open(cls, path: str | os.PathLike[str], **overrides: Any) -> FaissIndex:
        """Load the index at ``path``; search-time options (nprobe, rerank, ef_search, ...) may be overridden."""
        p = Path(path)
        manifest = _read_manifest(p)
        bad = set(overrides) - set(_SEARCH_TIME)
        if bad:
            raise IndexStoreError(f"options {sorted(bad)} are fixed when an index is built; on open only "
                                  f"{', '.join(_SEARCH_TIME)} may change")
        with _read_as_index(p):
            index = cls(p, int(manifest["dim"]), _options(manifest.get("options", {}), overrides))
            index._load(manifest)
        return index

    def _load(self, m: dict[str, Any]) -> None:
        files = m["files"]
        for name in filter(None, files.values()):
            f = self.path / name
            if not f.is_file():
                raise IndexStoreError(f"{self.path}: corrupt index: {name} is missing")
            if f.stat().st_size != m["sizes"][name]:
                raise IndexStoreError(f"{self.path}: corrupt index: {name} has {f.stat().st_size} bytes, "
                                      f"the manifest says {m['sizes'][name]}")
        rows = int(m["rows"])
        # mmap: a 1M x 1280 index does not read 5 GB up front; the OS pages rows in as re-ranking needs them.
        vec = np.load(self.path / files["vectors"], mmap_mode="r", allow_pickle=False)
        if vec.dtype != np.float32 or vec.shape != (rows, self.dim):
            raise IndexStoreError(f"{self.path}: corrupt index: vectors are {vec.dtype} {vec.shape}, "
                                  f"expected float32 ({rows}, {self.dim})")
        records: list[IndexRecord | None] = []
        with open(self.path / files["records"], encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                records.append(None if d is None else IndexRecord.from_dict(d))
        if len(records) != rows:
            raise IndexStoreError(f"{self.path}: corrupt index: {len(records)} records for {rows} vectors")
        self._records, self._buf, self._n = records, vec, rows
        self._alive = np.fromiter((r is not None for r in records), bool, count=rows)
        self._reindex()
        ann = m["ann"]
        self._ann_kind, self._ann_rows = ann["kind"], int(ann.get("rows", 0))
        self._ann_trained_on, self._ann_params = int(ann.get("trained_on", 0)), dict(ann.get("params", {}))
        if files.get("ann"):
            self._ann = faiss.read_index(str(self.path / files["ann"]))
            expected = self._ann_rows if self._ann_kind == "hnsw" else int(self._alive[:self._ann_rows].sum())
            if self._ann.ntotal != expected or self._ann.d != self.dim:
                raise IndexStoreError(f"{self.path}: corrupt index: {files['ann']} holds {self._ann.ntotal} "
                                      f"vectors of dim {self._ann.d}, expected {expected} of dim {self.dim}")
        self._version, self._files, self._dirty = int(m["version"]), dict(files), set()

    def _reindex(self) -> None:
        self._row_of, self._by_product, self._columns = {}, {}, {}
        for row, r in enumerate(self._records):
            if r is not None:
                self._row_of[r.id] = row
                self._by_product.setdefault(r.product_id, []).append(row)

    # -- reading ---------------------------------------------------------------------------

    def cache_folder(self) -> Path | None:
        # not before the first save: `create` refuses a folder that holds files and no index
        return self.path if (self.path / MANIFEST).is_file() else None

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def _vec(self) -> np.ndarray:
        return self._buf[:self._n]

    def get(self, id: str) -> IndexRecord | None:
        row = self._row_of.get(id)
        return None if row is None else self._records[row]

    def records(self, product_id: str | None = None) -> list[IndexRecord]:
        if product_id is not None:
            return [self._records[r] for r in self._by_product.get(product_id, ())]  # type: ignore[misc]
        return [r for r in self._records if r is not None]

    def product_ids(self) -> set[str]:
        return set(self._by_product)

    def _overfetch(self) -> int:
        # twice the mean entries per product: one fetch usually finds k products, and each retry
        # of an exact search is another full scan
        return max(self.group_overfetch, math.ceil(2 * len(self) / max(1, len(self._by_product))))

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise IndexStoreError(f"{len(missing)} ids not in the index, e.g. {missing[0]!r}")
        return np.array(self._vec[[self._row_of[i] for i in ids]], dtype=np.float32)

    def iter_entries(self, batch_size: int = 1024) -> Iterator[tuple[list[IndexRecord], np.ndarray]]:
        rows = np.flatnonzero(self._alive)
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            yield [self._records[r] for r in chunk], np.array(self._vec[chunk])  # type: ignore[misc]

    def info(self) -> dict[str, Any]:
        self._sync_ann()
        return {"kind": self.kind, "path": str(self.path), "dim": self.dim, "metric": "ip", "entries": len(self),
                "products": len(self._by_product), "rows": self._n, "ann": self._ann_kind,
                "ann_params": dict(self._ann_params), "version": self._version, "options": asdict(self.options)}

    # -- writing ---------------------------------------------------------------------------

    def _add(self, records: list[IndexRecord], vectors: np.ndarray, *, replace: bool) -> None:
        existing = [r.id for r in records if r.id in self._row_of]
        if existing and not replace:
            raise IndexStoreError(f"{len(existing)} ids already in the index, e.g. {existing[0]!r} "
                                  "(use upsert to replace them)")
        if existing:
            self._kill_rows([self._row_of[i] for i in existing])
        if not records:
            return
        start = self._n
        self._append_vectors(vectors)
        self._records.extend(records)
        self._alive = np.concatenate([self._alive, np.ones(len(records), bool)])
        for row, r in enumerate(records, start):
            self._row_of[r.id] = row
            self._by_product.setdefault(r.product_id, []).append(row)
        for name, (codes, vocab) in list(self._columns.items()):
            self._columns[name] = (np.concatenate([codes, _codes(records, name, vocab)]), vocab)
        self._dirty |= {"records", "vectors", "ann"}

    def _append_vectors(self, vectors: np.ndarray) -> None:
        need = self._n + len(vectors)
        if need > len(self._buf) or not self._buf.flags.writeable:  # a memmap is read-only: copy on first write
            # 1.25x growth: amortised appends without doubling a multi-GB buffer
            cap = need if self._n == 0 else max(need, int(len(self._buf) * 1.25) + 1024)
            buf = np.empty((cap, self.dim), np.float32)
            buf[:self._n] = self._buf[:self._n]
            self._buf = buf
        self._buf[self._n:need] = vectors
        self._n = need

    def _replace_records(self, records: list[IndexRecord]) -> None:
        for r in records:
            row = self._row_of[r.id]
            old = self._records[row]
            assert old is not None and old.product_id == r.product_id
            self._records[row] = r
        rows = np.array([self._row_of[r.id] for r in records], np.int64)
        for name, (codes, vocab) in list(self._columns.items()):
            codes[rows] = _codes(records, name, vocab)
        self._dirty.add("records")

    def _remove(self, ids: set[str] | None, product_ids: set[str] | None) -> int:
        rows = {self._row_of[i] for i in ids or () if i in self._row_of}
        for p in product_ids or ():
            rows.update(self._by_product.get(p, ()))
        self._kill_rows(sorted(rows))
        return len(rows)

    def _kill_rows(self, rows: list[int]) -> None:
        if not rows:
            return
        for row in rows:
            r = self._records[row]
            assert r is not None
            del self._row_of[r.id]
            plist = self._by_product[r.product_id]
            plist.remove(row)
            if not plist:
                del self._by_product[r.product_id]
            self._records[row] = None
        arr = np.asarray(rows, np.int64)
        self._alive[arr] = False
        for codes, _ in self._columns.values():
            codes[arr] = -1
        if self._ann is not None and self._ann_kind != "hnsw":
            in_ann = arr[arr < self._ann_rows]
            if len(in_ann):
                self._ann.remove_ids(faiss.IDSelectorBatch(in_ann))
                self._dirty.add("ann")
        self._dirty.add("records")

    # -- the ANN structure -----------------------------------------------------------------

    def _wanted_kind(self) -> str:
        n = len(self)
        if self.options.ann != "auto":
            kind = self.options.ann
        elif n >= self.options.exact_threshold or (self._ann is not None and n >= self.options.exact_threshold // 2):
            kind = AUTO_ANN  # the // 2: no flapping between structures around the threshold
        else:
            kind = "flat"
        return "flat" if n < _MIN_ANN_ENTRIES else kind

    def optimize(self) -> None:
        self._sync_ann()

    def warm(self, *, memory_fraction: float = 0.5) -> dict[str, Any]:
        """Reopened, the vectors are mapped from disk and the first searches' exact re-scoring pays page
        faults (p99 114 ms at 1M against 5 ms warm, benchmarks/RESULTS.md). Load them into RAM when they
        take at most `memory_fraction` of the memory available now, else have the OS read every page in;
        then a few searches warm FAISS's own structures and threads. Call before sharing the index."""
        t0 = time.perf_counter()
        nbytes = self._n * self.dim * 4
        action = "in memory"
        if isinstance(self._buf, np.memmap):
            if nbytes <= memory_fraction * _available_memory():
                self._buf = np.array(self._buf[:self._n])  # a private copy: capacity == rows, writeable
                action = "loaded into memory"
            else:
                _page_in(self._buf, self._n)
                action = "paged in (larger than the memory budget)"
        self._sync_ann()
        if len(self):
            rows = np.flatnonzero(self._alive)
            picks = rows[np.linspace(0, len(rows) - 1, num=min(32, len(rows))).astype(int)]
            for row in picks:
                self.search(self._vec[row][None, :], k=10)
        return {"index": self.kind, "action": action, "vectors": len(self), "mb": round(nbytes / 2**20, 1),
                "seconds": round(time.perf_counter() - t0, 3)}

    def _sync_ann(self) -> None:
        """Make the ANN structure cover every row: add pending rows, or rebuild when it is stale."""
        kind = self._wanted_kind()
        dead = self._n - len(self)
        if kind == "flat":
            if dead:
                self._compact()
            if self._ann is not None or self._ann_kind != "flat":
                self._ann, self._ann_kind, self._ann_params, self._ann_trained_on = None, "flat", {}, 0
                self._dirty.add("ann")
            self._ann_rows = self._n
            return
        stale = (self._ann is None or self._ann_kind != kind or dead > _REBUILD_DEAD_FRACTION * self._n
                 or (kind != "hnsw" and self.options.nlist is None
                     and len(self) > _REBUILD_GROWTH * self._ann_trained_on))
        if stale:
            self._build(kind)
        elif self._ann_rows < self._n:
            self._add_to_ann(self._ann_rows, self._n)

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive)
        self._buf = np.ascontiguousarray(self._vec[keep])
        self._n = len(keep)
        self._records = [self._records[r] for r in keep]
        self._alive = np.ones(self._n, bool)
        self._reindex()
        self._ann, self._ann_rows = None, 0
        self._dirty |= {"records", "vectors", "ann"}

    def _build(self, kind: str) -> None:
        if self._n - len(self):
            self._compact()
        n, d = self._n, self.dim
        t0 = time.perf_counter()
        if kind == "hnsw":
            ann = faiss.IndexHNSWFlat(d, self.options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            ann.hnsw.efConstruction = self.options.ef_construction
            params: dict[str, Any] = {"M": self.options.hnsw_m, "ef_construction": self.options.ef_construction}
        else:
            nlist = min(self.options.nlist or _auto_nlist(n), max(1, n // 39))
            quantizer = faiss.IndexFlatIP(d)
            params = {"nlist": nlist}
            if kind == "ivf":
                ann = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            elif kind == "ivfsq8":
                ann = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                    faiss.METRIC_INNER_PRODUCT)
            else:
                m = self.options.pq_m or _pq_m(d)
                if d % m:
                    raise IndexStoreError(f"pq_m={m} must divide the dimension {d}")
                # 8 bits per code needs 256 centroids per sub-quantizer, trained on >= 39 x 256 points
                nbits = int(min(8, max(4, math.floor(math.log2(max(16, min(n, self.options.train_size) / 39))))))
                ann = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
                params.update(pq_m=m, pq_bits=nbits)
            ann.cp.niter = 10  # k-means iterations: 10 is within noise of the default 25 for search, 2.5x faster
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(n, min(n, max(self.options.train_size, 39 * nlist)), replace=False))
            if self.options.progress:
                logger.info("training %s (%d lists) on %d vectors", kind, nlist, len(sample))
            ann.train(np.ascontiguousarray(self._vec[sample]))
        self._ann, self._ann_kind, self._ann_rows, self._ann_params = ann, kind, 0, params
        self._ann_trained_on = n
        self._add_to_ann(0, n)
        self._ann_params["build_s"] = round(time.perf_counter() - t0, 2)

    def _add_to_ann(self, start: int, stop: int) -> None:
        from tqdm.auto import tqdm

        step = 65536
        bar = tqdm(total=stop - start, desc=f"index {self._ann_kind}", unit="vec", disable=not self.options.progress,
                   leave=False)
        for s in range(start, stop, step):
            e = min(stop, s + step)
            rows = np.flatnonzero(self._alive[s:e]) + s
            if self._ann_kind == "hnsw":  # HNSW labels are insertion order: add dead rows too, never return them
                self._ann.add(np.ascontiguousarray(self._vec[s:e]))
            elif len(rows):
                self._ann.add_with_ids(np.ascontiguousarray(self._vec[rows]), rows.astype(np.int64))
            bar.update(e - s)
        bar.close()
        self._ann_rows = stop
        self._dirty.add("ann")

    # -- search ----------------------------------------------------------------------------

    def _search_entries(self, queries: np.ndarray, n: int, compiled: CompiledFilter,
                        exclude_products: frozenset[str]) -> list[list[tuple[float, IndexRecord]]]:
        self._sync_ann()
        n = min(n, len(self))
        if n == 0:
            return [[] for _ in queries]
        mask = self._filter_mask(compiled, exclude_products) if (compiled or exclude_products) else None
        allowed = len(self) if mask is None else int(mask.sum())
        n = min(n, allowed)
        if n == 0:
            return [[] for _ in queries]
        dead = self._n - len(self)
        if self._ann is None or (mask is not None and allowed <= self.options.exact_filter_rows):
            scores, rows = _exact_topk(self._vec, queries, n, mask if mask is not None or not dead else self._alive)
        else:
            if mask is None and self._ann_kind == "hnsw" and dead:
                mask = self._alive
            scores, rows = self._ann_search(queries, n, mask)
            short = np.flatnonzero((rows >= 0).sum(axis=1) < n)
            if len(short):  # an ANN structure can miss matches of a selective filter: finish those exactly
                es, er = _exact_topk(self._vec, queries[short], n, mask if mask is not None else self._alive)
                scores[short], rows[short] = es, er
        out = []
        for srow, rrow in zip(scores, rows):
            out.append([(float(s), self._records[r]) for s, r in zip(srow, rrow) if r >= 0])
        return out  # type: ignore[return-value]

    def _ann_search(self, queries: np.ndarray, n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        sel = faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little")) if mask is not None else None
        fetch = max(n * o.rerank, 50) if self._ann_kind in _RERANKED else n
        if self._ann_kind == "hnsw":
            params: Any = faiss.SearchParametersHNSW(efSearch=max(o.ef_search, fetch))
        else:
            params = faiss.SearchParametersIVF(nprobe=o.nprobe or max(16, self._ann_params["nlist"] // 128))
        if sel is not None:
            params.sel = sel
        scores, rows = self._ann.search(queries, fetch, params=params)
        if self._ann_kind in _RERANKED:
            scores, rows = _rerank(self._vec, queries, rows, n)
        return scores, rows

    def _filter_mask(self, compiled: CompiledFilter, exclude_products: frozenset[str]) -> np.ndarray:
        mask = self._alive.copy()
        for name, values in compiled:
            codes, vocab = self._column(name)
            wanted = [vocab[v] for v in values if v in vocab]
            mask &= np.isin(codes, wanted)
        if exclude_products:
            codes, vocab = self._column("product_id")
            mask &= ~np.isin(codes, [vocab[p] for p in exclude_products if p in vocab])
        return mask

    def _column(self, name: str) -> tuple[np.ndarray, dict[Any, int]]:
        """Filter field as int codes per row (-1: missing): a filter is then a vectorised isin.

        The vocabulary is a dict, so codes follow Python equality (1 == 1.0 == True), as filters do.
        """
        if name not in self._columns:
            vocab: dict[Any, int] = {}
            self._columns[name] = (_codes(self._records, name, vocab), vocab)
        return self._columns[name]

    # -- persistence -----------------------------------------------------------------------

    def save(self) -> None:
        """Crash-safe: new files under a new version, fsync, swap the manifest, fsync the dir, clean up."""
        self._sync_ann()
        if not self._dirty and (self.path / MANIFEST).exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with _save_lock(self.path):
            try:
                self._check_unchanged_on_disk()
            except IndexChangedError:
                self.revert()  # the index as the other process saved it: the change is made again on that
                raise
            self._save()

    def _check_unchanged_on_disk(self) -> None:
        """Refuse a save over a manifest this object was not opened from (another process saved meanwhile)."""
        on_disk = _manifest_version(self.path)
        if self._replaces or on_disk is None or on_disk == self._version:
            return
        what = (f"changed by another process since this one opened it (version {self._version}, now {on_disk})"
                if self._version else "created by another process meanwhile")
        raise IndexChangedError(f"{self.path}: the index was {what}; this change was not saved (one writer at a "
                                "time: make it again)")

    def _save(self) -> None:
        version = max([self._version, *_versions_on_disk(self.path)]) + 1
        files = dict(self._files)
        if "records" in self._dirty or not files["records"]:
            files["records"] = self._write(f"records-{version:06d}.jsonl", self._write_records)
        if "vectors" in self._dirty or not files["vectors"]:
            files["vectors"] = self._write(f"vectors-{version:06d}.npy",
                                           lambda f: np.save(f, np.ascontiguousarray(self._vec), allow_pickle=False))
        if self._ann is None:
            files["ann"] = None
        elif "ann" in self._dirty or not files["ann"]:
            files["ann"] = self._write(f"ann-{version:06d}.faiss", None)
        manifest = {
            "format": FORMAT, "schema": SCHEMA, "version": version, "dim": self.dim, "metric": "ip",
            "rows": self._n, "entries": len(self), "files": files,
            "sizes": {name: (self.path / name).stat().st_size for name in files.values() if name},
            "ann": {"kind": self._ann_kind, "rows": self._ann_rows, "trained_on": self._ann_trained_on,
                    "params": self._ann_params},
            "options": asdict(self.options),
        }
        tmp = self._write(MANIFEST + ".tmp", lambda f: f.write(json.dumps(manifest, indent=1).encode("utf-8")))
        os.replace(self.path / tmp, self.path / MANIFEST)  # the commit point: from here on the save is made
        self._version, self._files, self._dirty, self._replaces = version, files, set(), False
        try:
            _fsync_path(self.path)
        except OSError as e:  # raised, the service answered "not made" a save that is on disk
            logger.warning("index %s: saved, but its folder could not be synced (%s): a power cut now may undo "
                           "this save", self.path, e)
        _remove_unreferenced(self.path, set(filter(None, files.values())))

    def revert(self) -> bool:
        """Back to the index as the files on disk hold it (empty when it was never saved). An index whose files
        cannot be read raises IndexStoreError and stays as it was."""
        fresh = FaissIndex(self.path, self.dim, self.options)
        if (self.path / MANIFEST).exists():
            with _read_as_index(self.path):
                fresh._load(_read_manifest(self.path))
        revision = self.revision
        self.__dict__.update(fresh.__dict__)
        self.revision = revision + 1  # caches of the records (search's texts) key on it: never an old value
        return True

    def _write(self, name: str, writer: Any) -> str:
        path = self.path / name
        try:
            if writer is None:
                faiss.write_index(self._ann, str(path))
            else:
                with open(path, "wb") as f:
                    writer(f)
        except BaseException:
            path.unlink(missing_ok=True)  # a file cut short is never left beside the index's files
            raise
        _fsync_path(path)  # fsync through a new descriptor flushes the same file: one code path for all
        return name

    def _write_records(self, f: Any) -> None:
        lines = []
        for r in self._records:
            lines.append("null" if r is None else json.dumps(r.to_dict(), ensure_ascii=False))
            if len(lines) >= 10000:
                f.write(("\n".join(lines) + "\n").encode("utf-8"))
                lines = []
        if lines:
            f.write(("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._ann = None
        self._buf = np.zeros((0, self.dim), np.float32)  # drops the memmap
        self._records, self._n, self._alive = [], 0, np.zeros(0, bool)
        self._reindex()


# ---------------------------------------------------------------------------------------------
# helpers


def _codes(records: Sequence[IndexRecord | None], name: str, vocab: dict[Any, int]) -> np.ndarray:
    out = np.full(len(records), -1, np.int32)
    core = name in CORE_FILTER_FIELDS
    for i, r in enumerate(records):
        if r is None:
            continue
        v = getattr(r, name) if core else r.metadata.get(name)
        if v is not None:
            out[i] = vocab.setdefault(v, len(vocab))
    return out


def _exact_topk(vec: np.ndarray, queries: np.ndarray, n: int,
                mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-n inner products (Q x n, rows -1 / scores -inf where fewer), in row blocks.

    A sparse mask gathers its rows; a dense one scans contiguous blocks and masks scores, so no
    block ever copies more than _CHUNK rows.
    """
    q = len(queries)
    best_s = np.full((q, 0), -np.inf, np.float32)
    best_r = np.full((q, 0), -1, np.int64)
    sparse = mask is not None and mask.sum() < len(vec) // 4
    rows_all = np.flatnonzero(mask) if sparse else None
    total = len(rows_all) if rows_all is not None else len(vec)
    for s in range(0, total, _CHUNK):
        if rows_all is not None:
            rows = rows_all[s:s + _CHUNK]
            scores = queries @ np.asarray(vec[rows]).T
        else:
            rows = np.arange(s, min(total, s + _CHUNK))
            scores = queries @ np.asarray(vec[s:s + _CHUNK]).T
            if mask is not None:
                scores[:, ~mask[s:s + _CHUNK]] = -np.inf
        best_s = np.concatenate([best_s, scores], axis=1)
        best_r = np.concatenate([best_r, np.broadcast_to(rows, scores.shape)], axis=1)
        if best_s.shape[1] > n:
            part = np.argpartition(-best_s, n - 1, axis=1)[:, :n]
            best_s = np.take_along_axis(best_s, part, 1)
            best_r = np.take_along_axis(best_r, part, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_r = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_r, order, 1)
    best_r[~np.isfinite(best_s)] = -1
    if best_s.shape[1] < n:  # fewer rows than n: pad like faiss does
        pad = n - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_r = np.pad(best_r, ((0, 0), (0, pad)), constant_values=-1)
    return best_s, best_r


def _rerank(vec: np.ndarray, queries: np.ndarray, cand: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((len(queries), n), -np.inf, np.float32)
    rows = np.full((len(queries), n), -1, np.int64)
    for i, (q, c) in enumerate(zip(queries, cand)):
        c = np.sort(c[c >= 0])  # sorted rows: sequential reads from a memory-mapped file
        if not len(c):
            continue
        s = np.asarray(vec[c]) @ q
        top = np.argsort(-s, kind="stable")[:n]
        scores[i, :len(top)], rows[i, :len(top)] = s[top], c[top]
    return scores, rows


@contextlib.contextmanager
def _read_as_index(path: Path) -> Iterator[None]:
    """What reading an index's files can raise, as one IndexStoreError naming the index (open, revert)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        if isinstance(e, IndexStoreError):
            raise
        raise IndexStoreError(f"{path}: corrupt index ({type(e).__name__}: {e})") from None


def _read_manifest(path: Path) -> dict[str, Any]:
    f = path / MANIFEST
    if not path.is_dir():
        raise IndexStoreError(f"{path}: no index here (not a directory)")
    if not f.is_file():
        raise IndexStoreError(f"{path}: not a skulens FAISS index (no {MANIFEST})")
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IndexStoreError(f"{f}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexStoreError(f"{f}: not a skulens FAISS index manifest")
    if m.get("schema") != SCHEMA:
        raise IndexStoreError(f"{f}: index schema {m.get('schema')} is not supported (this skulens reads {SCHEMA})")
    return m


@contextlib.contextmanager
def _save_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the index folder's `.lock` file while a save runs (filelock, as bundles are locked)."""
    from filelock import FileLock

    with FileLock(path / LOCK):
        yield


def _manifest_version(path: Path) -> int | None:
    """The version of the manifest on disk; None where there is none (or none readable: the save replaces it)."""
    try:
        return int(json.loads((path / MANIFEST).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _versions_on_disk(path: Path) -> list[int]:
    if not path.is_dir():
        return []
    return [int(m.group(2)) for m in map(_VERSIONED.match, os.listdir(path)) if m]


def _remove_unreferenced(path: Path, keep: set[str]) -> None:
    for name in os.listdir(path):
        if _VERSIONED.match(name) and name not in keep:
            try:
                os.remove(path / name)
            except OSError as e:  # a leftover is harmless: the next save tries again
                logger.warning("could not remove old index file %s: %s", path / name, e)
