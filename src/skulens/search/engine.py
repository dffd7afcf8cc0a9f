"""One search façade over a model, a vector index and (optionally) a text aligner.

Photos are embedded by the model and searched in the index; texts are searched two ways and fused:
through the aligner (a text projected into the image space finds products by how they *look*) and by
sentence similarity to the products' own titles and texts (finds them by what the shop *says*).
Reciprocal-rank fusion combines the two without having to calibrate two cosine scales.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .index import SearchHit, VectorIndex, compile_filter, record_matches

if TYPE_CHECKING:
    from ..models.predictor import ImageInput, Model
    from .align import TextAligner

__all__ = ["TEXT_MODES", "SearchEngine", "rank_fusion"]

TEXT_MODES = ("hybrid", "aligned", "text")
_RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al. 2009)


def rank_fusion(lists: Sequence[Sequence[SearchHit]], k: int) -> list[SearchHit]:
    """Merge ranked product lists: score = sum of 1 / (60 + rank); ties keep the first list's order."""
    scores: dict[str, float] = {}
    first: dict[str, SearchHit] = {}
    for hits in lists:
        for rank, h in enumerate(hits):
            scores[h.product_id] = scores.get(h.product_id, 0.0) + 1.0 / (_RRF_K + rank + 1)
            first.setdefault(h.product_id, h)
    order = sorted(scores, key=lambda p: -scores[p])[:k]
    return [SearchHit(p, scores[p], first[p].record) for p in order]


class SearchEngine:
    def __init__(self, model: Model | None, index: VectorIndex, aligner: TextAligner | None = None):
        if model is not None and model.card.embedding_dim != index.dim:
            raise ValueError(f"the index holds {index.dim}-d vectors but the model embeds {model.card.embedding_dim}-d:"
                             " build the index with this model")
        self.model, self.index, self.aligner = model, index, aligner
        self._text_cache: tuple[tuple[int, int], list[str], np.ndarray] | None = None

    def by_image(self, images: Sequence[ImageInput], *, k: int = 10, filter: Mapping[str, Any] | None = None
                 ) -> list[list[SearchHit]]:
        if self.model is None:
            raise ValueError("image search needs the model the index was built with")
        return self.by_vector(self.model.embed(images), k=k, filter=filter)

    def by_vector(self, vectors: np.ndarray, *, k: int = 10, filter: Mapping[str, Any] | None = None
                  ) -> list[list[SearchHit]]:
        return self.index.search(np.asarray(vectors, dtype=np.float32), k=k, filter=filter)

    def more_like_this(self, product_id: str, *, k: int = 10, filter: Mapping[str, Any] | None = None
                       ) -> list[SearchHit]:
        return self.index.more_like_this(product_id, k=k, filter=filter)

    def by_text(self, texts: Sequence[str], *, k: int = 10, filter: Mapping[str, Any] | None = None,
                mode: str = "hybrid") -> list[list[SearchHit]]:
        """mode: hybrid (both, fused), aligned (through the image space only), text (titles/texts only)."""
        if mode not in TEXT_MODES:
            raise ValueError(f"unknown text search mode {mode!r}: {', '.join(TEXT_MODES)}")
        if isinstance(texts, str):
            raise TypeError("by_text() takes a list of queries")
        if mode == "aligned" and self.aligner is None:
            raise ValueError("no text alignment for this model: run `skulens align` first, or use mode 'text'")
        use_aligned = self.aligner is not None and mode in ("hybrid", "aligned")
        aligned = self.by_vector(self.aligner.encode(texts), k=max(k, 20), filter=filter) if use_aligned else None
        lexical = self._by_product_text(texts, k=max(k, 20), filter=filter) if mode in ("hybrid", "text") else None
        if aligned is None:
            assert lexical is not None
            return [hits[:k] for hits in lexical]
        if lexical is None:
            return [hits[:k] for hits in aligned]
        return [rank_fusion([a, t], k) for a, t in zip(aligned, lexical, strict=True)]

    def _product_texts(self) -> tuple[list[str], np.ndarray]:
        """MiniLM vectors of each product's title + text, cached until the index is written to."""
        from ..models.text import load_text_encoder

        n = (self.index.revision, len(self.index))  # len too: another process may have written to it
        if self._text_cache is None or self._text_cache[0] != n:
            texts: dict[str, str] = {}
            for r in self.index.records():
                if r.product_id not in texts or (not texts[r.product_id] and (r.title or r.text)):
                    texts[r.product_id] = ". ".join(t for t in (r.title or r.label, r.text) if t)
            ids = sorted(texts)
            vecs = load_text_encoder().encode([texts[p] for p in ids])
            self._text_cache = (n, ids, vecs)
        return self._text_cache[1], self._text_cache[2]

    def _by_product_text(self, texts: Sequence[str], *, k: int, filter: Mapping[str, Any] | None
                         ) -> list[list[SearchHit]]:
        from ..models.text import load_text_encoder

        ids, vecs = self._product_texts()
        compiled = compile_filter(filter)
        # One pass over the records (current metadata) gives each allowed product's first record: no
        # per-hit lookups, which cost a round trip each on a Milvus server.
        first: dict[str, Any] = {}
        for r in self.index.records():
            if r.product_id not in first and record_matches(r, compiled):
                first[r.product_id] = r
        q = load_text_encoder().encode(texts)
        out = []
        for row in q @ vecs.T:
            hits = []
            for j in np.argsort(-row):
                p = ids[j]
                if p not in first:  # filtered out (or removed since the text cache was built)
                    continue
                hits.append(SearchHit(p, float(row[j]), first[p]))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

