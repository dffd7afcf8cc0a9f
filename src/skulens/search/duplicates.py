"""Near-duplicate detection over a whole index through its own ANN search (never an N x N matrix).

Every entry queries the index for its ``k`` nearest entries in batches; pairs at or above the
similarity threshold are joined with union-find (single linkage), so memory is O(N + pairs) and time
is N ANN queries: usable at hundreds of thousands of images. Groups spanning several products are
the interesting ones: the same photo filed under two products is usually a labelling mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .index import Filter, IndexStoreError, VectorIndex, compile_filter, record_matches

__all__ = ["DuplicateGroup", "near_duplicates"]


@dataclass(frozen=True)
class DuplicateGroup:
    """Entries linked by similarities >= the threshold (single linkage: a chain A~B~C is one group)."""

    ids: tuple[str, ...]  # entry ids, sorted
    product_ids: tuple[str, ...]  # distinct products, sorted
    min_score: float  # weakest link found inside the group
    max_score: float  # closest pair
    pairs: tuple[tuple[str, str, float], ...]  # (id, id, cosine) found above the threshold, closest first

    @property
    def cross_product(self) -> bool:
        """True when the group spans several products: a likely mislabel or a duplicated listing."""
        return len(self.product_ids) > 1


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = self.parent.setdefault(x, x)
        while root != self.parent[root]:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicates(index: VectorIndex, *, threshold: float = 0.95, k: int = 10, filter: Filter | None = None,
                    batch_size: int = 1024, progress: bool = False) -> list[DuplicateGroup]:
    """Groups of entries whose cosine similarity is >= ``threshold``.

    ``k`` bounds the neighbours examined per entry (a cluster of more than k+1 copies is still
    joined, through chains). ``filter`` restricts both the queries and the candidates. Groups are
    sorted cross-product first, then by closest pair, then by ids.
    """
    if not -1.0 <= threshold <= 1.0:
        raise IndexStoreError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if k < 1:
        raise IndexStoreError(f"k must be >= 1, got {k}")
    compiled = compile_filter(filter)
    uf = _UnionFind()
    product_of: dict[str, str] = {}
    pairs: dict[tuple[str, str], float] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(index), desc="near-duplicates", unit="img", disable=not progress)
    for records, vectors in index.iter_entries(batch_size):
        keep = [i for i, r in enumerate(records) if record_matches(r, compiled)] if compiled else None
        if keep is not None:
            bar.update(len(records) - len(keep))
            records, vectors = [records[i] for i in keep], vectors[np.asarray(keep, np.int64)]
        if not records:
            continue
        hits = index.search(vectors, k + 1, filter=filter, group_by_product=False)  # +1: the entry itself
        for rec, row in zip(records, hits):
            product_of[rec.id] = rec.product_id
            for hit in row:
                if hit.score < threshold:
                    break  # best first
                if hit.record.id == rec.id:
                    continue
                product_of[hit.record.id] = hit.product_id
                key = (rec.id, hit.record.id) if rec.id < hit.record.id else (hit.record.id, rec.id)
                pairs[key] = max(pairs.get(key, -2.0), hit.score)
                uf.union(rec.id, hit.record.id)
        bar.update(len(records))
    bar.close()
    return _groups(uf, pairs.items(), product_of)


def _groups(uf: _UnionFind, pairs: Iterable[tuple[tuple[str, str], float]],
            product_of: dict[str, str]) -> list[DuplicateGroup]:
    members: dict[str, set[str]] = {}
    edges: dict[str, list[tuple[str, str, float]]] = {}
    for (a, b), score in pairs:
        root = uf.find(a)
        members.setdefault(root, set()).update((a, b))
        edges.setdefault(root, []).append((a, b, round(float(score), 6)))
    out = []
    for root, ids in members.items():
        found = sorted(edges[root], key=lambda e: (-e[2], e[0], e[1]))
        out.append(DuplicateGroup(ids=tuple(sorted(ids)), product_ids=tuple(sorted({product_of[i] for i in ids})),
                                  min_score=found[-1][2], max_score=found[0][2], pairs=tuple(found)))
    out.sort(key=lambda g: (not g.cross_product, -g.max_score, g.ids))
    return out
