"""The Milvus backend through pymilvus: a Milvus Lite ``*.db`` path, or a Milvus server / cluster URI.

The code path is the same for both: ``MilvusClient(uri)`` with ``uri`` either ``./products.db``
(Milvus Lite, embedded in this process; for tests and one machine) or ``http://host:19530`` (a
standalone server or a cluster, with ``token="user:password"`` if auth is on), which is how an
index outgrows one machine. Only the default vector index differs (see ``_default_index``).

One partition per coarse class (see ``partition_name``): an entry goes to the partition of its
``coarse_label`` and a search filtered on ``coarse_label`` visits only those partitions. A server
older than 2.5 (e.g. the 2.3 standalone of the ``[milvus-server]`` extra, which pymilvus 3 talks to)
has no nullable fields and no grouping search: there, a missing ``coarse_label`` / ``image`` is
stored as "" (so "" reads back as None) and grouping falls back to over-fetching.

One collection (default ``"skulens"``) holds one row per entry: a VARCHAR primary key ``id``,
``product_id``, ``label``, ``coarse_label`` and ``image`` (nullable where the server can), ``title``, ``text``, a JSON
``metadata`` field and a FLOAT_VECTOR compared by inner product. Filters become Milvus boolean
expressions; string literals are escaped here because Milvus Lite has no expression templates.
Durability is Milvus' own (its write-ahead log); ``save()`` flushes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .index import (
    CORE_FILTER_FIELDS,
    CompiledFilter,
    IndexRecord,
    IndexStoreError,
    IndexUnavailableError,
    SearchHit,
    VectorIndex,
)

try:
    import fcntl
except ImportError:  # Windows: no flock, so no probe of who holds a Milvus Lite file
    fcntl = None  # type: ignore[assignment]
try:
    from pymilvus import DataType, MilvusClient, MilvusException
except ImportError as e:
    raise ImportError("the Milvus index needs pymilvus (and milvus-lite for *.db files): "
                      "pip install 'skulens[milvus]'") from e

__all__ = ["MilvusIndex", "milvus_expr", "partition_name"]

logger = logging.getLogger(__name__)


class _QuietIterator(logging.Filter):
    """Milvus Lite has no server-side MVCC timestamp; pymilvus warns about it on every iteration."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_QuietIterator())

# VARCHAR limits in UTF-8 bytes; a server rejects longer values, Milvus Lite silently keeps them,
# so they are checked here for both.
_MAX_BYTES = {"id": 1024, "product_id": 512, "label": 512, "coarse_label": 512, "title": 2048, "text": 65535,
              "image": 2048}
_SCALARS = ["id", "product_id", "label", "coarse_label", "title", "text", "image", "metadata"]
# describe_index: the build parameters (M, efConstruction, nlist) sit beside these keys
_INDEX_STATE = {"field_name", "index_name", "index_type", "metric_type", "total_rows", "indexed_rows",
                "pending_index_rows", "state", "index_state_fail_reason", "params"}
_MAX_TOPK = 16384  # Milvus' limit on limit (and offset + limit)
_MAX_OVERFETCH = 32  # entries fetched per wanted product on a first try, at most (k = 10: 320)
_RELIST_S = 5.0  # a search naming an unknown partition lists the server's partitions at most this often
_BATCH = 1000  # rows per insert / ids per get: well under gRPC's 64 MB message limit at 1280 dims
_QUERY_CHUNK = 128  # queries per search call


def _default_index(uri: str) -> tuple[str, dict[str, Any]]:
    """HNSW on a server; IVF_FLAT in Milvus Lite, which builds each segment's index in this process.

    Milvus Lite 3.2 builds HNSW at ~4 ms per 1280-d vector on 2 cores (10k vectors: ~45 s) against
    ~1 ms for IVF_FLAT at the same recall; a server builds in the background on its own machines.
    """
    if _is_lite(uri):
        return "IVF_FLAT", {"nlist": 128}
    return "HNSW", {"M": 32, "efConstruction": 200}


def _search_params(index_type: str) -> dict[str, Any]:
    return {"HNSW": {"ef": 128}, "IVF_FLAT": {"nprobe": 16}, "IVF_SQ8": {"nprobe": 16},
            "IVF_PQ": {"nprobe": 16}}.get(index_type, {})


def _is_lite(uri: str) -> bool:
    return uri.endswith(".db")


DEFAULT_COLLECTION = "skulens"


_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def split_location(location: str | os.PathLike[str], collection: str | None = None) -> tuple[str, str]:
    """"http://host:19530#shoes" -> ("http://host:19530", "shoes"): a collection other than the default named in
    the location itself, so every command that takes an index location reaches it. `collection`, when given
    too, must agree."""
    uri, sep, named = os.fspath(location).partition("#")
    if sep and not named:
        raise IndexStoreError(f"{location}: an empty collection name after '#'")
    if named and collection and named != collection:
        raise IndexStoreError(f"{location}: the location names collection {named!r}, the option {collection!r}")
    name = named or collection or DEFAULT_COLLECTION
    if not _COLLECTION_NAME.fullmatch(name):  # Milvus's rule; it answered with a traceback and a raw repr
        raise IndexStoreError(f"{location}: {name!r} is not a Milvus collection name (a letter or '_' first, then "
                              "letters, digits and '_', at most 255 characters)")
    return uri, name


# Server versions from which a feature exists (Milvus Lite has both). A 2.3 server accepts a nullable
# field and then rejects None, and answers a grouping search with ungrouped hits, so it is asked.
_SINCE = {"nullable": (2, 5), "grouping": (2, 4)}


def _server_has(client: MilvusClient, uri: str) -> dict[str, bool]:
    if _is_lite(uri):
        return dict.fromkeys(_SINCE, True)
    try:
        m = re.search(r"(\d+)\.(\d+)", str(client.get_server_version()))  # "v2.3.5-lite", "2.5.4"
    except MilvusException:
        m = None
    return {name: m is None or (int(m[1]), int(m[2])) >= since for name, since in _SINCE.items()}


# The collection property that says entries are partitioned by coarse class: a collection made
# before partitions (everything in "_default") lacks it and keeps searching everything.
_PARTITION_PROPERTY = "skulens.partition_by"
_DEFAULT_PARTITION = "_default"


def partition_name(coarse_label: str | None) -> str:
    """The partition of a coarse class; no class (None or "") is Milvus' "_default".

    Milvus names are [A-Za-z0-9_], 255 at most, starting with a letter or "_": "Milk" is "c_Milk",
    and a label that had to be changed gets a hash of itself ("Ben & Jerry's" -> "c_Ben___Jerry_s_1f0c...").
    A search still applies its coarse_label filter inside the partitions, so two labels sharing a
    partition would cost speed, never correctness.
    """
    if not coarse_label:
        return _DEFAULT_PARTITION
    clean = re.sub(r"[^A-Za-z0-9_]", "_", coarse_label)
    if clean == coarse_label and len(clean) <= 200:
        return "c_" + clean
    return f"c_{clean[:200]}_{hashlib.sha1(coarse_label.encode('utf-8')).hexdigest()[:10]}"


# Milvus Lite runs one in-process server per .db path; close() stops it when no index here uses it
# any more, so another process (the CLI, then the REST service) can open the file.
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def _unreachable(e: BaseException) -> bool:
    """A server that cannot be reached (down, restarting, a network cut), not a request it refused."""
    from pymilvus.exceptions import MilvusUnavailableException

    return isinstance(e, MilvusUnavailableException) or getattr(e, "code", None) == 2 or \
        "server unavailable" in str(e).lower() or "fail connecting" in str(e).lower()


def _connect(uri: str, token: str | None) -> MilvusClient:
    try:
        client = MilvusClient(uri=uri, token=token or "")
    except Exception as e:  # noqa: BLE001 - pymilvus raises unrelated types for a bad URI / no server
        if _is_lite(uri) and _lite_held_elsewhere(uri):
            raise IndexStoreError(f"{uri}: another process has this Milvus Lite file open (a running `skulens serve "
                                  "--index` of it?): Milvus Lite serves one process at a time; stop that one, or "
                                  "keep the index on a Milvus server (a URI) for several") from None
        raise IndexStoreError(f"{uri}: cannot connect to Milvus ({_one_line(e)})") from None
    if _is_lite(uri):
        with _LITE_LOCK:
            key = os.path.abspath(uri)
            _LITE_USERS[key] = _LITE_USERS.get(key, 0) + 1
    return client


def _lite_held_elsewhere(uri: str) -> bool:
    """Whether another process holds the Milvus Lite data folder's lock (its LOCK file, flock'ed while open)."""
    lock = Path(uri) / "LOCK"
    if fcntl is None or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _release(uri: str) -> None:
    if not _is_lite(uri):
        return
    key = os.path.abspath(uri)
    with _LITE_LOCK:
        _LITE_USERS[key] = _LITE_USERS.get(key, 1) - 1
        if _LITE_USERS[key] > 0:
            return
        del _LITE_USERS[key]
    try:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(key)
    except (ImportError, AttributeError):  # an older milvus-lite: it stops at process exit instead
        pass


def _one_line(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())[:300]


# ---------------------------------------------------------------------------------------------
# filters -> Milvus expressions


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    # Milvus Lite's parser knows \\ \" \n \t \r but no \u escapes; compile_filter rejects other
    # control characters, so everything else goes in literally.
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '"' + s.replace("\r", "\\r") + '"'


def milvus_expr(compiled: CompiledFilter, exclude_products: frozenset[str] = frozenset()) -> str:
    """A compiled filter as a Milvus boolean expression ("" for none)."""
    parts = []
    for name, values in compiled:
        if name in CORE_FILTER_FIELDS:
            parts.append(f"{name} == {_literal(values[0])}" if len(values) == 1
                         else f"{name} in [{', '.join(map(_literal, values))}]")
        else:
            # metadata keys match [A-Za-z_][A-Za-z0-9_-]*, so the path needs no escaping; Milvus
            # has no `in` for JSON paths, hence the or-chain.
            ors = [f'metadata["{name}"] == {_literal(v)}' for v in values]
            parts.append(ors[0] if len(ors) == 1 else "(" + " or ".join(ors) + ")")
    if exclude_products:
        parts.append(f"product_id not in [{', '.join(map(_literal, sorted(exclude_products)))}]")
    return " and ".join(parts)


# ---------------------------------------------------------------------------------------------
# the backend


class MilvusIndex(VectorIndex):
    kind = "milvus"

    def __init__(self, client: MilvusClient, uri: str, collection: str, dim: int, index_type: str,
                 search_params: dict[str, Any], *, partitions: set[str] | None = None, nullable: bool = True,
                 grouping: bool = True):
        super().__init__(dim)
        self.uri, self.collection, self.index_type = uri, collection, index_type
        self.search_params = search_params
        self._client: MilvusClient | None = client
        #: Partitions known to exist (None: the collection is not partitioned by coarse class).
        self._partitions = partitions
        self._listed_at = -math.inf  # when a search last asked the server for its partitions
        self._nullable = nullable
        self._native_grouping = grouping
        #: Entries per distinct product in this object's full over-fetches (running mean; 0: none yet).
        self._per_product = 0.0

    @property
    def partitioned(self) -> bool:
        return self._partitions is not None

    @classmethod
    def create(cls, uri: str | os.PathLike[str], dim: int, *, overwrite: bool = False, collection: str | None = None,
               index_type: str = "auto", index_params: dict[str, Any] | None = None,
               search_params: dict[str, Any] | None = None, token: str | None = None,
               consistency_level: str = "Strong", partitions: bool = True) -> MilvusIndex:
        """A new collection. ``index_type`` "auto" picks by location (see ``_default_index``).

        ``consistency_level="Strong"``: a search sees every write before it, which updates and tests
        rely on; on a server each request then waits for the next time tick (200 ms by default), so
        a service that can miss the last fraction of a second of writes uses "Bounded" (a few ms).
        ``partitions``: one partition per coarse class (see ``partition_name``). The collection is
        `collection`, else the one the location names after '#', else "skulens".
        """
        uri, collection = split_location(uri, collection)
        if _is_lite(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        client = _connect(uri, token)
        try:
            if client.has_collection(collection):
                if not overwrite:
                    raise IndexStoreError(f"{uri}: collection {collection!r} already exists (open it, or "
                                          "replace it: --overwrite, overwrite=True in Python)")
                client.drop_collection(collection)
            auto_type, auto_params = _default_index(uri)
            itype = auto_type if index_type == "auto" else index_type.upper()
            params = index_params if index_params is not None else (auto_params if index_type == "auto" else {})
            has = _server_has(client, uri)
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_MAX_BYTES["id"])
            for name in ("product_id", "label", "title", "text"):
                schema.add_field(name, DataType.VARCHAR, max_length=_MAX_BYTES[name])
            for name in ("coarse_label", "image"):
                schema.add_field(name, DataType.VARCHAR, max_length=_MAX_BYTES[name], nullable=has["nullable"])
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            iparams = client.prepare_index_params()
            iparams.add_index("vector", index_type=itype, metric_type="IP", params=params)
            client.create_collection(collection, schema=schema, index_params=iparams,
                                     consistency_level=consistency_level,
                                     **({"properties": {_PARTITION_PROPERTY: "coarse_label"}} if partitions else {}))
            known = set(client.list_partitions(collection)) if partitions else None
        except MilvusException as e:
            client.close()
            _release(uri)
            raise IndexStoreError(f"{uri}: cannot create collection {collection!r}: {_one_line(e)}") from None
        except IndexStoreError:
            client.close()
            _release(uri)
            raise
        return cls(client, uri, collection, dim, itype, {**_search_params(itype), **(search_params or {})},
                   partitions=known, nullable=has["nullable"], grouping=has["grouping"])

    @classmethod
    def exists(cls, uri: str | os.PathLike[str], *, collection: str | None = None, token: str | None = None) -> bool:
        """Whether `collection` is there already: a build checks it before hours of embedding, not after."""
        uri, collection = split_location(uri, collection)
        if _is_lite(uri) and not Path(uri).exists():
            return False
        client = _connect(uri, token)
        try:
            return bool(client.has_collection(collection))
        except MilvusException as e:
            raise IndexStoreError(f"{uri}: {e}") from None
        finally:
            client.close()
            _release(uri)

    @classmethod
    def open(cls, uri: str | os.PathLike[str], *, collection: str | None = None, token: str | None = None,
             search_params: dict[str, Any] | None = None) -> MilvusIndex:
        uri, collection = split_location(uri, collection)
        if _is_lite(uri) and not Path(uri).exists():
            raise IndexStoreError(f"{uri}: no Milvus Lite database here")
        client = _connect(uri, token)
        try:
            if not client.has_collection(collection):
                raise IndexStoreError(f"{uri}: no collection {collection!r}")
            desc = client.describe_collection(collection)
            by_name = {f["name"]: f for f in desc["fields"]}
            missing = [n for n in [*_SCALARS, "vector"] if n not in by_name]
            if missing:
                raise IndexStoreError(f"{uri}: collection {collection!r} is not a skulens index (no {missing})")
            dim = int(by_name["vector"]["params"]["dim"])
            itype = client.describe_index(collection, "vector").get("index_type", "")
            partitioned = (desc.get("properties") or {}).get(_PARTITION_PROPERTY) == "coarse_label"
            known = set(client.list_partitions(collection)) if partitioned else None
            has = _server_has(client, uri)
            client.load_collection(collection)
        except MilvusException as e:
            client.close()
            _release(uri)
            raise IndexStoreError(f"{uri}: cannot open collection {collection!r}: {_one_line(e)}") from None
        except IndexStoreError:
            client.close()
            _release(uri)
            raise
        return cls(client, uri, collection, dim, itype, {**_search_params(itype), **(search_params or {})},
                   partitions=known, nullable=bool(by_name["coarse_label"].get("nullable")),
                   grouping=has["grouping"])

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            raise IndexStoreError(f"{self.uri}: index is closed")
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MilvusException as e:
            error = IndexUnavailableError if _unreachable(e) else IndexStoreError
            raise error(f"{self.uri}: Milvus {what} failed: {_one_line(e)}") from None

    def ping(self) -> None:
        """One round trip to the server (readiness), within 2 s: IndexUnavailableError when it cannot be reached."""
        self._call("ping", self.client.has_collection, self.collection, timeout=2)

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        res = self._call("count", self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def get(self, id: str) -> IndexRecord | None:
        res = self._call("get", self.client.get, self.collection, ids=[id], output_fields=_SCALARS)
        return self._record(res[0]) if res else None

    def records(self, product_id: str | None = None) -> list[IndexRecord]:
        expr = "" if product_id is None else f"product_id == {_literal(product_id)}"
        return [self._record(row) for batch in self._iterate(expr, _SCALARS) for row in batch]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        ids = list(ids)
        found: dict[str, Any] = {}
        for s in range(0, len(ids), _BATCH):
            res = self._call("get", self.client.get, self.collection, ids=ids[s:s + _BATCH], output_fields=["vector"])
            found.update((row["id"], row["vector"]) for row in res)
        missing = [i for i in ids if i not in found]
        if missing:
            raise IndexStoreError(f"{len(missing)} ids not in the index, e.g. {missing[0]!r}")
        return np.asarray([found[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def iter_entries(self, batch_size: int = 1024) -> Iterator[tuple[list[IndexRecord], np.ndarray]]:
        for batch in self._iterate("", [*_SCALARS, "vector"], batch_size):
            yield ([self._record(row) for row in batch],
                   np.asarray([row["vector"] for row in batch], np.float32).reshape(len(batch), self.dim))

    def _iterate(self, expr: str, fields: list[str], batch_size: int = _BATCH) -> Iterator[list[dict[str, Any]]]:
        it = self._call("query", self.client.query_iterator, self.collection, batch_size=batch_size, filter=expr,
                        output_fields=fields)
        try:
            while True:
                batch = self._call("query", it.next)
                if not batch:
                    return
                yield list(batch)
        finally:
            it.close()

    def info(self) -> dict[str, Any]:
        index = self._call("describe_index", self.client.describe_index, self.collection, "vector")
        partitions = self._call("list_partitions", self.client.list_partitions, self.collection)
        return {"kind": self.kind, "uri": self.uri, "collection": self.collection, "dim": self.dim, "metric": "ip",
                "entries": len(self), "ann": self.index_type,
                "ann_params": index.get("params") or {k: v for k, v in index.items() if k not in _INDEX_STATE},
                "search_params": dict(self.search_params), "lite": _is_lite(self.uri),
                "partition_by": "coarse_label" if self.partitioned else None, "partitions": len(partitions)}

    # -- writing ---------------------------------------------------------------------------

    def _add(self, records: list[IndexRecord], vectors: np.ndarray, *, replace: bool) -> None:
        for r in records:
            check_record_lengths(r)
        if not replace:
            ids = [r.id for r in records]
            for s in range(0, len(ids), _BATCH):
                res = self._call("get", self.client.get, self.collection, ids=ids[s:s + _BATCH],
                                 output_fields=["id"])
                if res:
                    raise IndexStoreError(f"{len(res)} ids already in the index, e.g. {res[0]['id']!r} "
                                          "(use upsert to replace them)")
        self._write(records, vectors, replace=replace)

    def _replace_records(self, records: list[IndexRecord]) -> None:
        for r in records:
            check_record_lengths(r)
        # a full-row upsert works on every Milvus version
        self._write(records, self.vectors([r.id for r in records]), replace=True)

    def _write(self, records: list[IndexRecord], vectors: np.ndarray, *, replace: bool) -> None:
        """Insert or upsert rows; in a partitioned collection each into its coarse class's partition."""
        what, write = ("upsert", self.client.upsert) if replace else ("insert", self.client.insert)
        groups: dict[str | None, list[int]] = {None: list(range(len(records)))}
        if self.partitioned:
            if replace:
                self._delete_moved(records)
            groups = {}
            for i, r in enumerate(records):
                groups.setdefault(partition_name(r.coarse_label), []).append(i)
        for partition, rows in groups.items():
            where = {}
            if partition is not None:
                self._ensure_partition(partition)
                where = {"partition_name": partition}
            for s in range(0, len(rows), _BATCH):
                self._call(what, write, self.collection,
                           [self._row(records[i], vectors[i]) for i in rows[s:s + _BATCH]], **where)

    def _delete_moved(self, records: list[IndexRecord]) -> None:
        """Before an upsert: a server replaces an id only within the partition written to, so an entry whose
        coarse class changed is deleted first (not atomic: a search in between misses it)."""
        for s in range(0, len(records), _BATCH):
            recs = records[s:s + _BATCH]
            res = self._call("get", self.client.get, self.collection, ids=[r.id for r in recs],
                             output_fields=["coarse_label"])
            old = {row["id"]: partition_name(row.get("coarse_label")) for row in res}
            moved = [r.id for r in recs if r.id in old and old[r.id] != partition_name(r.coarse_label)]
            if moved:
                self._call("delete", self.client.delete, self.collection, ids=moved)

    def _ensure_partition(self, name: str) -> None:
        assert self._partitions is not None
        if name in self._partitions:
            return
        try:
            self.client.create_partition(self.collection, name)
        except MilvusException as e:
            self._refresh_partitions()
            if name not in self._partitions:  # not made meanwhile by another writer
                raise IndexStoreError(f"{self.uri}: cannot create partition {name!r}: {_one_line(e)}") from None
        self._partitions.add(name)

    def _refresh_partitions(self) -> None:
        self._partitions = set(self._call("list_partitions", self.client.list_partitions, self.collection))

    def _partitions_for(self, compiled: CompiledFilter) -> list[str] | None:
        """The partitions a filtered search visits: its coarse classes' ([]: no entry can match); None: all."""
        values = dict(compiled).get("coarse_label")
        if self._partitions is None or values is None:
            return None
        names = list(dict.fromkeys(partition_name(str(v)) for v in values))
        # A class this object has not seen: another writer's? Asked at most every few seconds, so a class the
        # index never holds (a routed search's prediction) does not cost every search a round trip.
        if not set(names) <= self._partitions and time.monotonic() - self._listed_at > _RELIST_S:
            self._listed_at = time.monotonic()
            self._refresh_partitions()
        return [n for n in names if n in self._partitions]

    def _row(self, r: IndexRecord, v: np.ndarray) -> dict[str, Any]:
        row = {**r.to_dict(), "vector": v}
        if not self._nullable:
            row["coarse_label"], row["image"] = r.coarse_label or "", r.image or ""
        return row

    def _record(self, row: dict[str, Any]) -> IndexRecord:
        if not self._nullable:
            row = {**row, "coarse_label": row.get("coarse_label") or None, "image": row.get("image") or None}
        return _record(row)

    def _remove(self, ids: set[str] | None, product_ids: set[str] | None) -> int:
        found: set[str] = set()
        id_list = sorted(ids or ())
        for s in range(0, len(id_list), _BATCH):
            res = self._call("get", self.client.get, self.collection, ids=id_list[s:s + _BATCH], output_fields=["id"])
            found.update(row["id"] for row in res)
        pids = sorted(product_ids or ())
        for s in range(0, len(pids), _BATCH):
            expr = f"product_id in [{', '.join(map(_literal, pids[s:s + _BATCH]))}]"
            found.update(row["id"] for batch in self._iterate(expr, ["id"]) for row in batch)
        todo = sorted(found)
        for s in range(0, len(todo), _BATCH):
            self._call("delete", self.client.delete, self.collection, ids=todo[s:s + _BATCH])
        return len(todo)

    # -- search ----------------------------------------------------------------------------

    def _max_fetch(self) -> int:
        return _MAX_TOPK

    def _overfetch(self) -> int:
        # twice the entries per product the over-fetches have seen, as FAISS does with the counts it holds: a
        # server without grouping search otherwise often needs a second round trip (benchmarks/milvus_server.py)
        return max(self.group_overfetch, min(_MAX_OVERFETCH, math.ceil(2 * self._per_product)))

    def _observe_fetch(self, row: list[tuple[float, IndexRecord]]) -> None:
        ratio = len(row) / max(1, len({r.product_id for _, r in row}))
        self._per_product = ratio if not self._per_product else 0.9 * self._per_product + 0.1 * ratio

    def _search_entries(self, queries: np.ndarray, n: int, compiled: CompiledFilter,
                        exclude_products: frozenset[str]) -> list[list[tuple[float, IndexRecord]]]:
        n = min(n, _MAX_TOPK)
        expr = milvus_expr(compiled, exclude_products)
        partitions = self._partitions_for(compiled)
        if partitions == []:
            return [[] for _ in range(len(queries))]
        out = self._search(queries, n, expr, self.search_params, partitions)
        short = [i for i, row in enumerate(out) if len(row) < n]
        if short:
            # An ANN index finds only what the lists / graph it visits hold, and filters while it scans them, so
            # a query (a selective filter most of all) can come back short although more entries match: count
            # them, and search those queries again visiting everything (IVF: every list; HNSW: the widest beam
            # Milvus allows), as FAISS finishes a short row exactly.
            count = len(self) if not expr else self._call(
                "count", self.client.query, self.collection, filter=expr, output_fields=["count(*)"],
                partition_names=partitions)[0]["count(*)"]
            redo = [i for i in short if len(out[i]) < min(n, count)]
            if redo:
                wide = {**self.search_params, "nprobe": 65536, "ef": 32768}
                for i, row in zip(redo, self._search(queries[redo], n, expr, wide, partitions)):
                    out[i] = row
        return out

    def _search_grouped(self, queries: np.ndarray, k: int, compiled: CompiledFilter,
                        exclude_products: frozenset[str]) -> list[list[SearchHit] | None]:
        """Milvus grouping search: the k best products in one call (over-fetching takes 2-5 calls).

        A query that comes back with fewer than k products (a selective filter, a small collection)
        is answered by the shared over-fetch path instead, which checks for missed matches.
        """
        if not self._native_grouping or k > _MAX_TOPK:
            return [None] * len(queries)
        partitions = self._partitions_for(compiled)
        if partitions == []:
            return [[] for _ in range(len(queries))]
        try:
            rows = self._search(queries, k, milvus_expr(compiled, exclude_products), self.search_params,
                                partitions, group_by="product_id")
        except IndexStoreError as e:  # a server / index type without grouping search
            logger.info("Milvus grouping search unavailable (%s); over-fetching instead", e)
            self._native_grouping = False
            return [None] * len(queries)
        return [[SearchHit(r.product_id, s, r) for s, r in row] if len(row) == k else None for row in rows]

    def _search(self, queries: np.ndarray, n: int, expr: str, params: dict[str, Any],
                partitions: list[str] | None = None, group_by: str | None = None
                ) -> list[list[tuple[float, IndexRecord]]]:
        params = {k: v for k, v in params.items() if k in _search_params(self.index_type) or k not in ("nprobe", "ef")}
        if "ef" in params:
            params["ef"] = max(params["ef"], n)  # HNSW needs ef >= limit
        out: list[list[tuple[float, IndexRecord]]] = []
        for s in range(0, len(queries), _QUERY_CHUNK):
            extra = {"group_by_field": group_by} if group_by else {}
            res = self._call("search", self.client.search, self.collection, data=list(queries[s:s + _QUERY_CHUNK]),
                             limit=n, filter=expr, output_fields=_SCALARS, partition_names=partitions,
                             search_params={"metric_type": "IP", "params": params}, **extra)
            for hits in res:
                out.append([(float(h["distance"]), self._record({**h["entity"], "id": h["id"]})) for h in hits])
        return out

    # -- persistence -----------------------------------------------------------------------

    def save(self) -> None:
        self._call("flush", self.client.flush, self.collection)

    def optimize(self) -> None:
        """Flush, then (re)load the collection: Milvus Lite builds each segment's vector index on load;
        a server builds the flushed segments' indexes in the background, which this waits for."""
        self.save()
        if _is_lite(self.uri):
            self._call("release", self.client.release_collection, self.collection)
        else:
            while True:
                state = self._call("describe_index", self.client.describe_index, self.collection, "vector")
                if state.get("state") == "Failed":
                    raise IndexStoreError(f"{self.uri}: Milvus index build failed: "
                                          f"{state.get('index_state_fail_reason') or state}")
                if int(state.get("pending_index_rows") or 0) == 0:
                    break
                time.sleep(0.5)
        self._call("load", self.client.load_collection, self.collection)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            _release(self.uri)


def check_record_lengths(r: IndexRecord) -> None:
    """IndexStoreError for a record whose text fields are longer than the collection's VARCHAR fields."""
    for name, limit in _MAX_BYTES.items():
        value = getattr(r, name)
        if value is not None and len(value.encode("utf-8")) > limit:
            raise IndexStoreError(f"record {r.id[:80]!r}: {name} is longer than Milvus allows ({limit} bytes)")


def _record(row: dict[str, Any]) -> IndexRecord:
    return IndexRecord.from_dict({k: row.get(k) for k in _SCALARS})
