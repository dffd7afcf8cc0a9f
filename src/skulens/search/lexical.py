"""Lexical product search: Okapi BM25 over each product's own words (scikit-learn counts, numpy scoring).

Tokens are lower-cased, accent-folded words (decimal commas read as points, "1,5%" -> "1.5%") minus a few
stop words, plus each pair of neighbouring words, so "lactose free" also matches as a phrase. A product
that shares no token with a query is not ranked at all.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

__all__ = ["BM25", "fold", "tokens"]

STOP_WORDS = frozenset({"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is",
                        "it", "its", "of", "on", "or", "that", "the", "this", "to", "with"})


def fold(text: str) -> str:
    """Lower case, accents dropped, decimal commas as points."""
    text = re.sub(r"(\d),(\d)", r"\1.\2", text.lower())
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def tokens(text: str) -> list[str]:
    """Words (stop words dropped) and neighbouring word pairs."""
    words = [w for w in re.findall(r"[a-z0-9]+(?:[.,][0-9]+)?%?", fold(text)) if w not in STOP_WORDS]
    return words + [f"{a} {b}" for a, b in pairwise(words)]


class BM25:
    """`scores(queries)` -> queries x documents BM25 scores (k1 = 1.2, b = 0.75, the usual defaults)."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.2, b: float = 0.75):
        from sklearn.feature_extraction.text import CountVectorizer

        self.n = len(documents)
        self.vocabulary = CountVectorizer(analyzer=tokens)
        if not self.n:
            self._weights = None
            return
        try:
            counts = self.vocabulary.fit_transform(documents).tocsr().astype(np.float64)
        except ValueError:  # no document has a single token
            self._weights = None
            return
        length = np.asarray(counts.sum(axis=1)).ravel()
        norm = k1 * (1 - b + b * length / max(float(length.mean()), 1e-9))
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = np.log1p((self.n - df + 0.5) / (df + 0.5))
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        tf = counts.data
        counts.data = idf[counts.indices] * tf * (k1 + 1) / (tf + norm[rows])
        self._weights = counts.T.tocsr()  # terms x documents

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        if self._weights is None:
            return np.zeros((len(queries), self.n), dtype=np.float32)
        q = self.vocabulary.transform(list(queries))
        q.data[:] = 1.0  # each query term counts once
        return np.asarray((q @ self._weights).toarray(), dtype=np.float32)
