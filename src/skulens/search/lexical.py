"""Lexical product search: Okapi BM25 over each product's own words (scikit-learn counts, numpy scoring).

Tokens are case-folded, accent-folded words of any script (decimal commas read as points, "1,5%" -> "1.5%")
minus a few stop words, plus each pair of neighbouring words, so "lactose free" also matches as a phrase.
Inflected English words are read as their base form where WordNet knows it (`lexicon.base_form`: "tangerines"
-> "tangerine", "tomatoes" -> "tomato", "sliced" -> "slice"), in documents and queries alike; other words, most
brands among them, are left as they are, and without WordNet (the `search` extra) no word is changed.
Chinese and Japanese, written without spaces, are cut into overlapping pairs of characters ("牛奶巧克力" ->
"牛奶", "奶巧", ...), as search engines index them. A product that shares no token with a query is not
ranked at all.
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


# Latin letters that NFKD does not take apart into a letter and an accent: spelt plainly, as "é" becomes "e"
_PLAIN = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i",
                        "ħ": "h", "ŧ": "t"})
_KANA_VOICING = "\u3099\u309a"  # combining marks that make another kana ("か" + "\u3099" = "が"), not accents
# Han and kana: runs of them are written without spaces, so they are cut into character pairs.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
# A word: ASCII letters and digits, or any non-ASCII character left by `_spaced` (letters, digits and the marks
# of scripts such as Devanagari), then an optional decimal part and percent sign; or a run of Han / kana.
_WORD = re.compile(rf"([{_CJK}]+)|(?:[0-9a-z]|[^\x00-\x7f{_CJK}])+(?:[.,][0-9]+)?%?")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def fold(text: str) -> str:
    """Case-folded ("Straße" -> "strasse"), accents dropped, the few Latin letters without a separable accent
    spelt plainly ("Smør" -> "smor"), decimal commas as points."""
    text = re.sub(r"(\d),(\d)", r"\1.\2", text.casefold())
    text = "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c) or c in _KANA_VOICING)
    return unicodedata.normalize("NFC", text).translate(_PLAIN)


def _spaced(text: str) -> str:
    """Non-ASCII punctuation, symbols and spaces as plain spaces (ASCII ones are left to the word pattern)."""
    return _NON_ASCII.sub(lambda m: m[0] if m[0].isalnum() or unicodedata.category(m[0])[0] == "M" else " ", text)


def _words(text: str) -> list[str]:
    out = []
    for m in _WORD.finditer(_spaced(fold(text))):
        run = m[1]
        if run is None:
            out.append(m[0])
        else:
            out += [run] if len(run) <= 2 else [run[i:i + 2] for i in range(len(run) - 1)]
    return out


def tokens(text: str) -> list[str]:
    """Words (stop words dropped, inflections as their base form) and neighbouring word pairs."""
    from .lexicon import base_form

    words = [base_form(w) for w in _words(text) if w not in STOP_WORDS]
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
