"""One search façade over a model, a vector index and (optionally) a text aligner.

Photos are embedded by the model and searched in the index. Texts are searched three ways and fused by
reciprocal rank (no need to calibrate three score scales against each other):

- lexical: BM25 over each product's own words (title, label, coarse class and the record's text: the
  description, information lines and attribute words), so exact names, brands and attributes are found;
- dense: sentence similarity to the product's texts with the text encoder, the bundle's fine-tuned one
  (`skulens text-tune`) when it has one, else the bundled MiniLM: finds synonyms and descriptions;
- aligned, when the bundle has a text aligner: a text projected into the image space finds products by how
  they *look*.

Modes of `by_text`: hybrid (the default: all of them, fused), text (dense only), lexical, aligned.

Routing (`route`): a photo search can visit only the coarse classes the model predicts for the photo, the
most likely first until their probabilities sum to `route` (at most ROUTE_MAX_CLASSES). On a Milvus
collection with one partition per coarse class that is 1-3 partitions instead of all of them
(benchmarks/milvus_server.py); on grocery val, routing at 0.9 keeps 99.3 % of the unrouted top-10 photos
(benchmarks/route_grocery.py). On an index not partitioned by coarse class (FAISS) a routed search is a
filtered one, which is slower there. Entries whose coarse class is not one of the model's (none, or one the
model does not know) are not found by a routed search; a filter that names coarse_label is never routed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .index import SearchHit, VectorIndex, check_k, compile_filter, record_matches

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..models.predictor import ImageInput, Model
    from ..models.text import TextEncoder
    from .align import TextAligner

__all__ = ["ROUTE_MASS", "ROUTE_MAX_CLASSES", "TEXT_MODES", "RouteError", "SearchEngine", "encode_reusing",
           "product_document", "product_pieces", "rank_fusion", "route_classes"]

TEXT_MODES = ("hybrid", "aligned", "text", "lexical")
_RRF_K = 60  # the usual reciprocal-rank-fusion constant (Cormack et al. 2009)
_FUSE_DEPTH = 100  # products taken from each ranking into the fusion
_MAX_PIECES = 10  # texts per product on the dense side
ROUTE_MASS = 0.9  # `--route` without a value: the classes holding 90 % of the coarse probability
ROUTE_MAX_CLASSES = 3  # a routed search visits at most this many coarse classes


class RouteError(ValueError):
    """A routed search that cannot be made: a bad probability mass, or a model without coarse classes. The CLI and
    the service name their routing setting in it; other ValueErrors of SearchEngine are about the index."""


def route_classes(coarse: np.ndarray, mass: float, max_classes: int = ROUTE_MAX_CLASSES) -> list[list[int]]:
    """Per row of coarse-class probabilities: the most likely classes, in order, until their probabilities
    sum to at least `mass`, at most `max_classes` of them (always at least one)."""
    if not 0.0 < mass <= 1.0:
        raise RouteError(f"route must be a probability mass in (0, 1], got {mass}")
    if max_classes < 1:
        raise ValueError(f"max_classes must be >= 1, got {max_classes}")
    order = np.argsort(-coarse, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(coarse, order, axis=1), axis=1)
    # the first position whose running sum reaches the mass (a little slack for float sums of 1.0)
    n = np.minimum((cum < mass - 1e-6).sum(axis=1) + 1, max_classes)
    return [order[i, :n[i]].tolist() for i in range(len(coarse))]


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


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def product_document(title: str, text: str = "") -> str:
    """The one text that stands for a product on the dense side: its title, then its text (description,
    information lines, attribute words) as sentences. Also the positive of every pair in `skulens text-tune`."""
    title = " ".join(title.split())
    body = " ".join(line if line.endswith((".", "!", "?")) else f"{line}." for line in _lines(text))
    if not body:
        return title
    return body if not title or body.lower().startswith(title.lower()) else f"{title}. {body}"


def product_pieces(title: str, text: str = "", *, max_pieces: int = _MAX_PIECES) -> list[str]:
    """The product's texts a query is compared with (it scores its best): the title, the whole document and
    each sentence of the text prefixed with the title, so one matching sentence is not drowned by the rest."""
    title = " ".join(title.split())
    pieces = [title, product_document(title, text)]
    for line in _lines(text):
        for s in re.split(r"(?<=[.!?])\s+", line):
            s = s.strip()
            if len(s) > 12 and s.rstrip(".").lower() != title.lower():
                pieces.append(f"{title}: {s}" if title else s)
    return list(dict.fromkeys(p for p in pieces if p))[:max_pieces]


SAME_MODEL_COSINE = 0.9  # an index entry's vector against this model's embedding of the same photo
_PROBES = 2


def cosines_to_stored(model: Model, photos: Sequence[ImageInput], stored: np.ndarray) -> np.ndarray:
    """Each photo's cosine between `model`'s embedding of it and its `stored` vector: whether `model` is the one
    that made them. Each is scored by the numerics closer to it: the same model in bf16 (`auto` on a CPU with
    AVX512-BF16) and in fp32 agrees to only 0.96 for a small model, and an index may hold entries of both (built
    in bf16, added to in fp32). ImageDecodeError when a photo cannot be read."""
    from ..data.decode import ImageDecodeError

    stored = np.asarray(stored, np.float32)
    stored = stored / np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
    each = (model.embed(photos) * stored).sum(1)
    if each.min() < 0.999 and model.net is not None:
        from ..models.predictor import Model

        other = Model(model.net, model.card, model.device, "off" if model.precision != "off" else "auto")
        try:
            each = np.maximum(each, (other.embed(photos) * stored).sum(1))
        except ImageDecodeError:  # read once already: gone since, the first numerics' scores stand
            pass
    return each


def check_index_model(model: Model, index: VectorIndex) -> float | None:
    """Whether `index` was built with `model`: the model embeds the photos of a few entries again and their stored
    vectors must agree (cosine; the index records no model, and every Lite backbone embeds 1280-d, so the
    dimension alone lets an index of another model be searched, silently wrong). Below SAME_MODEL_COSINE a
    ValueError; between it and 0.99 a warning (a close relative: a fine-tune of the model the index was built
    with). Returns the lowest cosine, or None when no entry's photo is on this machine to check (a warning says
    so when the entries name photos that are gone: an index copied from another machine).
    Entries of enrolled products are skipped: their kept photos are re-encoded copies."""
    if model.card.embedding_dim != index.dim:  # numpy's broadcast error otherwise
        raise ValueError(f"the index holds {index.dim}-d vectors but the model embeds {model.card.embedding_dim}-d: "
                         "build the index with this model")
    try:
        first = next(index.iter_entries(batch_size=64), None)
    except Exception:  # noqa: BLE001 - a check only: a backend that cannot list entries cheaply is not checked
        return None
    if first is None:
        return None
    records, vectors = first
    named = [(r.image, v) for r, v in zip(records, vectors, strict=False)
             if r.image and not r.id.startswith("enrolled/")]
    picked = [(image, v) for image, v in named if Path(image).is_file()][:_PROBES]
    if not picked:
        if named:  # an index copied from another machine: results of another model would come back unsaid
            log.warning("the index's photos (%s, ...) are not on this machine, so whether this model built it cannot "
                        "be checked: an index of another model gives wrong results", named[0][0])
        return None
    from ..data.decode import ImageDecodeError

    try:
        each = cosines_to_stored(model, [p for p, _ in picked], np.stack([np.asarray(v) for _, v in picked]))
    except ImageDecodeError:
        return None
    cosine = float(each.min())
    if cosine < SAME_MODEL_COSINE:
        raise ValueError(f"the index was built with another model: this model embeds its photos elsewhere (cosine "
                         f"{cosine:.2f} to the stored vectors of the same photos): build the index with this model")
    if cosine < 0.99:
        log.warning("the index was built with a model close to this one, not this one (cosine %.3f to the stored "
                    "vectors of the same photos): rebuild it for this model's results", cosine)
    return cosine


class SearchEngine:
    """text_model: the text encoder of the dense side (a sentence-transformers folder, or "minilm"); by
    default the model bundle's fine-tuned encoder when it has one (`skulens text-tune`), else MiniLM."""

    def __init__(self, model: Model | None, index: VectorIndex, aligner: TextAligner | None = None, *,
                 text_model: str | None = None, route: float | None = None):
        if model is not None and model.card.embedding_dim != index.dim:
            raise ValueError(f"the index holds {index.dim}-d vectors but the model embeds {model.card.embedding_dim}-d:"
                             " build the index with this model")
        if model is not None:
            check_index_model(model, index)
        if aligner is not None and model is not None:  # an aligner of another model ranked nonsense, unsaid
            aligner = aligner.for_model(model, "text search")
        self.model, self.index, self.aligner = model, index, aligner
        self.text_model = text_model
        if route is not None:
            route_classes(np.ones((0, 1)), route)  # a bad mass fails here, not at the first search
            if model is None or not model.card.coarse_classes:
                raise RouteError("routing searches to the predicted coarse classes needs a model with coarse classes")
            if not getattr(index, "partitioned", False):
                log.warning("routing photo searches on an index not partitioned by coarse class: each search is "
                            "filtered, which is slower there, not faster (routing pays on a Milvus server)")
        self.route = route
        self._text_cache: tuple[tuple[Any, ...], _ProductTexts] | None = None

    def text_encoder(self) -> TextEncoder:
        """The dense side's encoder: `text_model` if given, else the model bundle's fine-tuned one, else MiniLM."""
        from ..models.text import DEFAULT_TEXT_MODEL, load_text_encoder

        if self.text_model is not None:
            return load_text_encoder(self.text_model)
        bundle = getattr(self.model, "path", None) if self.model is not None else None
        return load_text_encoder(DEFAULT_TEXT_MODEL, bundle=bundle)

    def by_image(self, images: Sequence[ImageInput], *, k: int = 10, filter: Mapping[str, Any] | None = None
                 ) -> list[list[SearchHit]]:
        if self.model is None:
            raise ValueError("image search needs the model the index was built with")
        check_k(k)  # before the photos are embedded (2.5 was a numpy TypeError after it; True one hit)
        if not self.routes(filter):
            return self.by_vector(self.model.embed(images), k=k, filter=filter)
        vectors, coarse = self.model.embed_with_coarse(images)
        return self.by_vector(vectors, k=k, filter=filter, coarse=coarse)

    def routes(self, filter: Mapping[str, Any] | None) -> bool:
        """Whether a photo search with this filter is routed (see the module's doc)."""
        return self.route is not None and not (filter and "coarse_label" in filter)

    def by_vector(self, vectors: np.ndarray, *, k: int = 10, filter: Mapping[str, Any] | None = None,
                  coarse: np.ndarray | None = None, group_by_product: bool = True) -> list[list[SearchHit]]:
        """`coarse`: the photos' coarse-class probabilities, to route each search (when this engine routes);
        `group_by_product`: distinct products (the default) or raw index entries, as `VectorIndex.search`."""
        check_k(k)
        vectors = np.asarray(vectors, dtype=np.float32)
        if coarse is None or not self.routes(filter):
            return self.index.search(vectors, k=k, filter=filter, group_by_product=group_by_product)
        assert self.model is not None and self.route is not None
        vectors = np.atleast_2d(vectors)
        probs = np.atleast_2d(np.asarray(coarse, dtype=np.float64))
        names = self.model.card.coarse_classes
        if probs.shape != (len(vectors), len(names)):
            raise ValueError(f"coarse: {probs.shape} probabilities for {len(vectors)} queries of "
                             f"{len(names)} coarse classes")
        if not len(vectors):
            return []
        routed = route_classes(probs, self.route)
        # one index call per distinct set of classes (photos of one class share theirs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, classes in enumerate(routed):
            groups.setdefault(tuple(sorted(classes)), []).append(i)
        out: list[list[SearchHit]] = [[] for _ in range(len(vectors))]
        for classes, rows in groups.items():
            flt = {**(filter or {}), "coarse_label": [names[c] for c in classes]}
            found = self.index.search(vectors[rows], k=k, filter=flt, group_by_product=group_by_product)
            for i, hits in zip(rows, found, strict=True):
                out[i] = hits
        return out

    def more_like_this(self, product_id: str, *, k: int = 10, filter: Mapping[str, Any] | None = None
                       ) -> list[SearchHit]:
        return self.index.more_like_this(product_id, k=k, filter=filter)

    def by_text(self, texts: Sequence[str], *, k: int = 10, filter: Mapping[str, Any] | None = None,
                mode: str = "hybrid") -> list[list[SearchHit]]:
        """mode: hybrid (lexical + dense + aligned when there is an aligner, fused), aligned (through the
        image space only), text (dense similarity to the products' texts only), lexical (BM25 only)."""
        if mode not in TEXT_MODES:
            raise ValueError(f"unknown text search mode {mode!r}: {', '.join(TEXT_MODES)}")
        check_k(k)
        if isinstance(texts, str):
            raise TypeError("by_text() takes a list of queries")
        texts = list(texts)
        # "!!!" or "." has nothing to match: dense search would still answer, with arbitrary products
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not any(ch.isalnum() for ch in t)]
        if empty:
            raise ValueError(f"empty text query (query {empty[0] + 1} of {len(texts)}): no letters or digits; give "
                             "some words to search by")
        for i, t in enumerate(texts):  # a shell's non-UTF-8 argument arrives with lone surrogates: the tokenizer's
            try:                       # TypeError traceback before
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"text query {i + 1} of {len(texts)} is not valid text (bytes that are not UTF-8: "
                                 f"{t.encode('utf-8', 'backslashreplace').decode('ascii', 'replace')[:60]})") from None
        if mode == "aligned" and self.aligner is None:
            raise ValueError("no text alignment for this model: run `skulens align` first, or use mode 'text'")
        depth = max(k, _FUSE_DEPTH) if mode == "hybrid" else k
        lists: list[list[list[SearchHit]]] = []
        if mode in ("hybrid", "lexical", "text"):
            lexical, dense = self._by_product_text(texts, k=depth, filter=filter, lexical=mode != "text",
                                                   dense=mode != "lexical")
            lists += [x for x in (lexical, dense) if x is not None]
        if self.aligner is not None and mode in ("hybrid", "aligned"):
            from ..models.text import TextEncoderMismatch

            try:
                projected = self.aligner.encode(texts)
            except TextEncoderMismatch as e:
                if mode == "aligned":
                    raise
                # hybrid goes on without the stale aligner (its lexical and dense parts are sound)
                log.warning("text search without the image-space part: %s", e)
            else:
                lists.append(self.by_vector(projected, k=max(depth, 20), filter=filter))
        if len(lists) == 1:
            return [hits[:k] for hits in lists[0]]
        return [rank_fusion(per_query, k) for per_query in zip(*lists, strict=True)]

    def _product_texts(self, encoder: TextEncoder | None) -> _ProductTexts:
        """Each product's texts, its dense vectors (with this encoder) and its BM25 document; cached until the
        texts change or the encoder does. A write to the index (its revision) only makes the texts be read
        again: a metadata update (price, stock) that leaves them as they were keeps the vectors."""
        key = (self.index.revision, len(self.index))  # len too: another process may have written to it
        if self._text_cache is None or self._text_cache[0] != key:
            ids, pieces, docs = self._record_texts()
            old = self._text_cache[1] if self._text_cache is not None else None
            if old is not None and (old.ids, old.pieces, old.docs) == (ids, pieces, docs):
                self._text_cache = (key, old)
            else:
                from .lexical import BM25

                self._text_cache = (key, _ProductTexts(ids, pieces, docs, BM25(docs), previous=old))
        cached = self._text_cache[1]
        if encoder is not None:
            cached.vectors(encoder, self.index.cache_folder())
        return cached

    def _record_texts(self) -> tuple[list[str], list[list[str]], list[str]]:
        """The products' ids (sorted), dense pieces and BM25 documents, from each product's first record with
        a title or text."""
        records: dict[str, Any] = {}
        for r in self.index.records():
            if r.product_id not in records or (not (records[r.product_id].title or records[r.product_id].text)
                                               and (r.title or r.text)):
                records[r.product_id] = r
        ids = sorted(records)
        docs = [" ".join(x for x in (records[p].title, records[p].label.replace("-", " ").replace("_", " "),
                                     (records[p].coarse_label or "").replace("-", " "), records[p].text) if x)
                for p in ids]
        pieces = [product_pieces(records[p].title or records[p].label.replace("-", " "), records[p].text)
                  for p in ids]
        return ids, pieces, docs

    def _by_product_text(self, texts: list[str], *, k: int, filter: Mapping[str, Any] | None, lexical: bool,
                         dense: bool) -> tuple[list[list[SearchHit]] | None, list[list[SearchHit]] | None]:
        encoder = self.text_encoder() if dense else None
        pt = self._product_texts(encoder)
        compiled = compile_filter(filter)
        # One pass over the records (current metadata) gives each allowed product's first record: no
        # per-hit lookups, which cost a round trip each on a Milvus server.
        first: dict[str, Any] = {}
        for r in self.index.records():
            if r.product_id not in first and record_matches(r, compiled):
                first[r.product_id] = r

        def ranked(matrix: np.ndarray, *, drop_zero: bool) -> list[list[SearchHit]]:
            out = []
            for row in matrix:
                hits = []
                for j in np.argsort(-row, kind="stable"):
                    if drop_zero and row[j] <= 0:
                        break
                    p = pt.ids[j]
                    if p not in first:  # filtered out (or removed since the text cache was built)
                        continue
                    hits.append(SearchHit(p, float(row[j]), first[p]))
                    if len(hits) == k:
                        break
                out.append(hits)
            return out

        lex = ranked(pt.bm25.scores(texts), drop_zero=True) if lexical else None
        den = None
        if encoder is not None:
            vecs, owner = pt.vectors(encoder)
            sims = encoder.encode(texts) @ vecs.T
            best = np.full((len(texts), len(pt.ids)), -np.inf, dtype=np.float32)
            np.maximum.at(best.T, owner, sims.T)  # a product scores its best piece
            den = ranked(best, drop_zero=False)
        return lex, den


class _ProductTexts:
    """The products' ids, texts and BM25 index (of the index revisions with these texts); dense vectors per
    encoder."""

    def __init__(self, ids: list[str], pieces: list[list[str]], docs: list[str], bm25: Any,
                 previous: _ProductTexts | None = None):
        self.ids, self.pieces, self.docs, self.bm25 = ids, pieces, docs, bm25
        self.owner = np.repeat(np.arange(len(ids)), [len(p) for p in pieces])
        self._vectors: tuple[TextEncoder, np.ndarray] | None = None  # the encoder itself: a re-tune is a new one
        # (encoder, vector by piece): the texts before a change give theirs, so unchanged pieces are not encoded
        self._by_text = previous._by_text if previous is not None else None

    def vectors(self, encoder: TextEncoder, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every piece's vector. After a change (one product's new title, an enrolment) only the pieces that are
        new are encoded: re-encoding every product held the index lock for seconds, and searches queued behind
        it timed out (504). A process without this encoder's vectors yet (each CLI search, a service's first)
        takes them from the file beside the index (`folder`, `_text_vectors`) and leaves there those it had to
        encode; it does not write again after a later change (a large index's file rewritten at each edit, under
        the index lock): the next new process does."""
        if self._vectors is None or self._vectors[0] is not encoder:
            from ._text_vectors import load_text_vectors, save_text_vectors

            texts = [p for ps in self.pieces for p in ps]
            digest = None  # the encoder's, hashed from its weights once, only for a file beside the index
            if self._by_text is not None and self._by_text[0] is encoder:
                known, rewrite = self._by_text[1], False
            else:
                digest = getattr(encoder, "digest", None) if folder is not None else None
                known, rewrite = load_text_vectors(folder, digest, texts, width=getattr(encoder, "dim", None))
            matrix, by_text = encode_reusing(encoder, texts, known)
            if digest is not None and (rewrite or len(by_text) > len(known)):  # some were encoded: for the next process
                save_text_vectors(folder, digest, texts, matrix)
            self._vectors, self._by_text = (encoder, matrix), (encoder, by_text)
        return self._vectors[1], self.owner


def encode_reusing(encoder: TextEncoder, texts: list[str], known: Mapping[str, np.ndarray]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The vectors of `texts`, one row each, encoding only the distinct texts `known` (this encoder's vectors by
    text) lacks; and the texts' vectors by text, to be `known` at the next call. Search and listing tags keep
    their product texts' vectors this way across a change to one product."""
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    new = dict(zip(missing, encoder.encode(missing), strict=True)) if missing else {}
    by_text = {t: new[t] if t in new else known[t] for t in texts}
    return (np.stack([by_text[t] for t in texts]) if texts else encoder.encode([])), by_text
