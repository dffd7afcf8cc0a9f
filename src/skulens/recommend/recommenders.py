"""Recommendations from a behaviour log and product content, and their offline evaluation.

Three recommenders answer the same calls: ``fit(events, catalogue=...)``, then
``recommend(user_id, k, exclude_seen=..., seed_products=...)`` and ``similar(product_id, k)``, each
returning `Recommendation` (product, score, reason) best first.

* `PopularityRecommender` - the baseline: products by event-weighted counts.
* `ContentRecommender` - a user's profile is the event- and recency-weighted mean of the content
  vectors (image + text embeddings, supplied by the caller) of what they touched; products by
  cosine to it.
* `HybridRecommender` - the skulens default: item-item co-occurrence (an asymmetric cosine over
  the users x products matrix of log-damped weighted counts) blended with content similarity and
  popularity. The blend weights are tuned on a leave-last-out split *of the training log*, never on
  the events being evaluated. Products with content but no events (cold-start products) borrow the
  co-occurrence and popularity of their nearest products in content space, so they can be reached.

Users with no usable history (new users, or histories made only of products the model has never
seen) get popularity; a user with no history but a ``seed_products`` (say, the page being viewed)
gets recommendations from those seeds. Everything is numpy/scipy, deterministic, and ties break by
product id.

Evaluation is leave-last-out (see `leave_last_out` for how repeat purchases are handled) with
HitRate@k, NDCG@k and catalogue coverage; `cold_start_split` hides every event of a fraction of the
products to measure how often content brings them back.
"""

from __future__ import annotations

import math
import numbers
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .shopping_log import DEFAULT_EVENT_WEIGHTS, Event

if TYPE_CHECKING:
    from ..data.catalogue import Catalogue, Product
    from ..models.predictor import Model

__all__ = [
    "ContentRecommender",
    "HybridRecommender",
    "PopularityRecommender",
    "Recommendation",
    "RecommendationReport",
    "Recommender",
    "UnknownProductError",
    "cold_start_split",
    "create_recommender",
    "evaluate",
    "fit_recommender",
    "item_vectors",
    "leave_last_out",
    "ranking_metrics",
]

_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # content weight in the hybrid blend
_BETAS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)  # popularity weight added to the blend
_MIN_VAL_USERS = 50  # fewer validation users than this: keep the default blend, the grid would chase noise
_MAX_VAL_USERS = 5000  # enough to rank a few dozen blends; caps tuning time on big logs
# The least an event's recency weight decays to: 0.5 ** (later / half_life) underflows to exactly 0 after
# about 1075 half-lives, and a zero would drop the event from the history (and from what is excluded as seen).
_MIN_DECAY = 1e-12


class UnknownProductError(LookupError):
    """``similar`` was asked about a product the fitted recommender does not know."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended product; ``reason`` is a short phrase for people ("similar to X", "popular")."""

    product_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class RecommendationReport:
    """Leave-last-out quality of one recommender on one split."""

    recommender: str
    k: int
    n_users: int  # test users scored
    hit_rate: float  # fraction whose held-out product is in their top k
    ndcg: float  # mean 1 / log2(rank + 1) of the held-out product (0 outside the top k)
    coverage: float  # fraction of the catalogue appearing in at least one top-k list
    n_items: int  # catalogue size the recommender ranked
    fit_seconds: float
    recommend_seconds: float
    details: Mapping[str, float] = field(default_factory=dict)  # e.g. the hybrid's tuned blend

    def summary(self) -> str:
        return (f"{self.recommender}: HitRate@{self.k} {self.hit_rate:.4f}, NDCG@{self.k} {self.ndcg:.4f}, "
                f"coverage {self.coverage:.3f} over {self.n_users} users")


# ---------------------------------------------------------------------------------------------
# the shared machinery


class Recommender:
    """Base class: turns a log into weighted user histories; subclasses score products from them.

    ``event_weights`` says how much each event type counts (purchase > cart > view by default);
    ``recency_half_life`` is in events: a user's event that has ``h`` later events counts half
    (``None``: all count the same).
    """

    name = "recommender"

    def __init__(self, *, event_weights: Mapping[str, float] | None = None,
                 recency_half_life: float | None = 10.0):
        weights = dict(DEFAULT_EVENT_WEIGHTS if event_weights is None else event_weights)
        bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v > 0)}
        if bad or not weights:
            raise ValueError(f"event weights must be positive numbers, got {weights}")
        if recency_half_life is not None and not recency_half_life > 0:
            raise ValueError(f"recency_half_life must be positive or None, got {recency_half_life}")
        self.event_weights = weights
        self.recency_half_life = recency_half_life
        self.items: list[str] = []
        self._index: dict[str, int] = {}
        self._users: dict[str, int] = {}
        self._history = sparse.csr_matrix((0, 0))
        self._popularity = np.zeros(0)

    def _check_known(self, product_ids: Iterable[str], what: str) -> None:
        import difflib

        for p in product_ids:
            if p not in self._index:
                close = difflib.get_close_matches(str(p), self.items, n=3)
                raise UnknownProductError(f"{self.name}: unknown {what} {p!r} (not in the events or the catalogue "
                                          "it was fitted on)" + (f"; did you mean {', '.join(close)}?" if close else ""))

    def knows(self, product_id: str) -> bool:
        """Whether the product is one this recommender ranks (in the events or the catalogue it was fitted on)."""
        return product_id in self._index

    # -- fitting

    def fit(self, events: Sequence[Event], *, catalogue: Iterable[str] | None = None) -> Recommender:
        """Learn from ``events``; ``catalogue`` adds products that may be recommended without any events."""
        _check_events(events)
        self._prepare(events, catalogue)
        if not self.items:
            raise ValueError(f"{self.name}: nothing to recommend (no events, catalogue or content vectors)")
        self._fit_model(events)
        return self

    def _content_items(self) -> Iterable[str]:
        return ()

    def _prepare(self, events: Sequence[Event], catalogue: Iterable[str] | None) -> None:
        unknown = sorted({e.event for e in events} - set(self.event_weights))
        if unknown:
            raise ValueError(f"{self.name}: no weight for event type(s) {', '.join(unknown)} "
                             f"(weights: {self.event_weights})")
        products = {e.product_id for e in events}
        self.items = sorted(set(catalogue or ()) | products | set(self._content_items()))
        self._index = {p: i for i, p in enumerate(self.items)}
        self._users = {u: i for i, u in enumerate(sorted({e.user_id for e in events}))}
        self._history, raw = _user_matrices(events, self._users, self._index, self.event_weights,
                                            self.recency_half_life)
        self._raw = raw
        self._padded_history = sparse.vstack([self._history, sparse.csr_matrix((1, len(self.items)))]).tocsr()
        self._popularity = np.asarray(raw.sum(axis=0)).ravel()
        self._popular_norm = _max_normalise(np.log1p(self._popularity))

    def _fit_model(self, events: Sequence[Event]) -> None:
        """Subclass hook, after the histories and popularity exist."""

    def _score(self, history: sparse.csr_matrix) -> np.ndarray:
        """Scores (rows x items) for non-empty history rows; higher is better."""
        raise NotImplementedError

    def _explain(self, row: sparse.csr_matrix, item: int) -> str:
        return "popular"

    # -- ranking

    def _require_fitted(self) -> None:
        if not self.items:
            raise RuntimeError(f"{self.name}: call fit() first")

    def _rows(self, user_ids: Sequence[str]) -> sparse.csr_matrix:
        """History rows of ``user_ids``; users the log did not have get the empty last row."""
        empty = len(self._users)
        return self._padded_history[[self._users.get(u, empty) for u in user_ids]]

    def _scores(self, history: sparse.csr_matrix) -> np.ndarray:
        scores = np.tile(self._popular_norm, (history.shape[0], 1))
        has = np.flatnonzero(np.diff(history.indptr) > 0)
        if has.size:
            scores[has] = self._score(history[has])
        return scores

    def _rank(self, history: sparse.csr_matrix, k: int, exclude: sparse.csr_matrix | None
              ) -> tuple[np.ndarray, np.ndarray]:
        scores = self._scores(history)
        if exclude is not None and exclude.nnz:
            rows, cols = _stored(exclude)
            scores[rows, cols] = -np.inf
        order = _top_k(scores, k)
        return order, np.take_along_axis(scores, order, axis=1)

    # -- the public calls

    def recommend(self, user_id: str, k: int = 10, *, exclude_seen: bool = True,
                  seed_products: Sequence[str] = ()) -> list[Recommendation]:
        """Top ``k`` products for ``user_id``; ``seed_products`` (e.g. the product on screen) join history.

        A user with no known history and no seed gets the most popular products; a seed the recommender does
        not know is an UnknownProductError. Products the user (or the seeds) already touched are left out
        unless ``exclude_seen=False``.
        """
        self._require_fitted()
        if isinstance(seed_products, str):  # one id would be read letter by letter
            raise TypeError(f"seed_products: a list of product ids (e.g. [{seed_products!r}]), not one string")
        self._check_known(seed_products, "seed product")  # a typo would bring back the plain list, unsaid
        row = self._rows([user_id])
        seeds = [self._index[p] for p in dict.fromkeys(seed_products)]
        if seeds:
            # A seed counts as much as the heaviest event, just now.
            top = max(self.event_weights.values())
            row = row + sparse.csr_matrix((np.full(len(seeds), top), (np.zeros(len(seeds), int), seeds)),
                                          shape=row.shape)
        return self._recommendations(sparse.csr_matrix(row), k, exclude=row if exclude_seen else None)

    def similar(self, product_id: str, k: int = 10) -> list[Recommendation]:
        """The ``k`` products most like ``product_id`` for this recommender (never the product itself)."""
        self._require_fitted()
        self._check_known([product_id], "product")
        row = sparse.csr_matrix(([1.0], ([0], [self._index[product_id]])), shape=(1, len(self.items)))
        return self._recommendations(row, k, exclude=row)

    def _recommendations(self, row: sparse.csr_matrix, k: int, exclude: sparse.csr_matrix | None
                         ) -> list[Recommendation]:
        _check_k(k)
        order, scores = self._rank(row, k, exclude)
        out = []
        for item, score in zip(order[0], scores[0], strict=True):
            if not np.isfinite(score):
                break  # only excluded products are left
            reason = self._explain(row, int(item)) if row.nnz else "popular"
            out.append(Recommendation(self.items[item], float(score), reason))
        return out


def _user_matrices(events: Sequence[Event], users: Mapping[str, int], index: Mapping[str, int],
                   weights: Mapping[str, float], half_life: float | None
                   ) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """(recency-weighted history, raw weighted counts), both users x items, duplicates summed."""
    shape = (len(users), len(index))
    if not events:
        return sparse.csr_matrix(shape), sparse.csr_matrix(shape)
    u = np.fromiter((users[e.user_id] for e in events), dtype=np.int64, count=len(events))
    i = np.fromiter((index[e.product_id] for e in events), dtype=np.int64, count=len(events))
    w = np.fromiter((weights[e.event] for e in events), dtype=np.float64, count=len(events))
    t = np.fromiter((e.timestamp for e in events), dtype=np.float64, count=len(events))
    order = np.lexsort((np.arange(len(events)), t, u))  # by user, then time, then file order
    u, i, w = u[order], i[order], w[order]
    ends = np.cumsum(np.bincount(u, minlength=len(users)))  # one past each user's last event
    later = ends[u] - 1 - np.arange(len(u))  # how many of the user's events come after this one
    decay = 1.0 if half_life is None else np.maximum(0.5 ** (later / half_life), _MIN_DECAY)
    history = sparse.csr_matrix((w * decay, (u, i)), shape=shape)
    raw = sparse.csr_matrix((w, (u, i)), shape=shape)
    history.sum_duplicates()
    raw.sum_duplicates()
    return history, raw


def _stored(matrix: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every stored entry, zeros included: what a user touched, however faded its weight."""
    coo = matrix.tocoo()
    return coo.row, coo.col


def _top_k(scores: np.ndarray, k: int, *, exact: bool = True) -> np.ndarray:
    """Column indices of each row's ``k`` highest scores, best first.

    ``exact``: a stable full sort, so equal scores keep product-id order. Otherwise a partial sort
    (tuning, where the order of ties does not matter and a catalogue may be large).
    """
    k = min(k, scores.shape[1])
    if exact or k >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    within = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, within, axis=1)


def _max_normalise(x: np.ndarray) -> np.ndarray:
    """Divide each row (or the vector) by its maximum where that is positive."""
    top = np.max(x, axis=-1, keepdims=True) if x.size else np.ones_like(x)
    return np.divide(x, top, out=np.zeros_like(x, dtype=np.float64), where=top > 0)


# ---------------------------------------------------------------------------------------------
# recommenders


class PopularityRecommender(Recommender):
    """The baseline: every user gets the products with the highest event-weighted counts."""

    name = "popularity"

    def _score(self, history: sparse.csr_matrix) -> np.ndarray:
        return np.tile(self._popular_norm, (history.shape[0], 1))


def _content_matrix(item_vectors: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, np.ndarray]:
    vectors = {p: np.asarray(v, dtype=np.float64).ravel() for p, v in item_vectors.items()}
    dims = {v.size for v in vectors.values()}
    if len(dims) > 1:
        raise ValueError(f"content vectors must share one dimension, got {sorted(dims)}")
    for p, v in vectors.items():
        norm = float(np.linalg.norm(v))
        if not math.isfinite(norm) or norm == 0:
            raise ValueError(f"content vector of {p!r} is zero or not finite")
        vectors[p] = v / norm  # re-normalised: the caller's vectors may be only nearly unit length
    return vectors


class _ContentMixin:
    """Content vectors as a (items x dim) matrix with zero rows for products that have none."""

    items: list[str]
    _index: dict[str, int]

    def _init_content(self, item_vectors: Mapping[str, Sequence[float] | np.ndarray] | None) -> None:
        self._vectors = _content_matrix(item_vectors or {})

    @property
    def item_vectors(self) -> Mapping[str, np.ndarray]:
        """The content vectors in use, by product (unit length)."""
        return MappingProxyType(self._vectors)

    def _content_items(self) -> Iterable[str]:
        return self._vectors.keys()

    def _build_content(self) -> None:
        dim = next(iter(self._vectors.values())).size if self._vectors else 0
        self._V = np.zeros((len(self.items), dim))
        for p, v in self._vectors.items():
            self._V[self._index[p]] = v
        self._has_vector = np.linalg.norm(self._V, axis=1) > 0

    def _content_scores(self, history: sparse.csr_matrix) -> np.ndarray:
        """Cosine of each row's weighted-mean profile with every product; rows without a profile are 0."""
        profile = np.asarray(history @ self._V)
        norms = np.linalg.norm(profile, axis=1, keepdims=True)
        profile = np.divide(profile, norms, out=np.zeros_like(profile), where=norms > 0)
        return profile @ self._V.T

    def _closest_in_history(self, row: sparse.csr_matrix, item: int) -> str:
        cols = row.indices
        contribution = row.data * (self._V[cols] @ self._V[item])
        return self.items[cols[int(np.argmax(contribution))]]


class ContentRecommender(_ContentMixin, Recommender):
    """Products by cosine between their content vector and the user's weighted-mean profile.

    ``item_vectors`` maps product id to a vector (e.g. concatenated, L2-normalised image and text
    embeddings); products without one are ranked last.
    """

    name = "content"

    def __init__(self, item_vectors: Mapping[str, Sequence[float] | np.ndarray], *,
                 event_weights: Mapping[str, float] | None = None, recency_half_life: float | None = 10.0):
        super().__init__(event_weights=event_weights, recency_half_life=recency_half_life)
        self._init_content(item_vectors)
        if not self._vectors:
            raise ValueError("ContentRecommender needs at least one content vector")

    def _fit_model(self, events: Sequence[Event]) -> None:
        self._build_content()

    def _score(self, history: sparse.csr_matrix) -> np.ndarray:
        scores = self._content_scores(history)
        scores[:, ~self._has_vector] = -2.0  # below any cosine
        # Popularity breaks ties between identical vectors without reordering distinct ones.
        scores += 1e-6 * self._popular_norm
        no_profile = ~self._has_profile(history)
        scores[no_profile] = self._popular_norm  # a history of products without content
        return scores

    def _has_profile(self, history: sparse.csr_matrix) -> np.ndarray:
        return np.asarray(history @ self._has_vector.astype(float)).ravel() > 0

    def _explain(self, row: sparse.csr_matrix, item: int) -> str:
        if not self._has_profile(row)[0]:
            return "popular"
        return f"similar to {self._closest_in_history(row, item)}"


class HybridRecommender(_ContentMixin, Recommender):
    """Co-occurrence blended with content and popularity; the skulens default.

    score = (1 - alpha) * co-occurrence + alpha * content + beta * popularity, each scaled to [0, 1]
    per user. Products with content but no events (cold-start products) borrow co-occurrence and
    popularity from their ``cold_neighbours`` nearest products in content space (a sharp softmax of
    cosine at ``cold_temperature``). A weight left at ``None`` is tuned on a leave-last-out split
    of the *training* log (NDCG@10); the chosen values land in ``alpha_`` and ``beta_``, the grid in
    ``tuning_``. Without ``item_vectors`` it is plain item-item co-occurrence; products with events
    but no vector get content 0. ``asymmetry`` shapes the item-item similarity (0.5: cosine, 1.0:
    P(target | source)); ``shrink`` damps rare pairs.
    """

    name = "hybrid"

    def __init__(self, item_vectors: Mapping[str, Sequence[float] | np.ndarray] | None = None, *,
                 alpha: float | None = None, beta: float | None = None, asymmetry: float = 0.8,
                 shrink: float = 10.0, cold_neighbours: int = 3, cold_temperature: float = 0.02,
                 event_weights: Mapping[str, float] | None = None, recency_half_life: float | None = 10.0,
                 seed: int = 0):
        super().__init__(event_weights=event_weights, recency_half_life=recency_half_life)
        self._init_content(item_vectors)
        for label, value in (("alpha", alpha), ("beta", beta), ("asymmetry", asymmetry)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value}")
        if cold_neighbours < 1 or not cold_temperature > 0 or shrink < 0:
            raise ValueError("need cold_neighbours >= 1, cold_temperature > 0 and shrink >= 0")
        self.alpha, self.beta = alpha, beta
        self.asymmetry, self.shrink, self.seed = asymmetry, shrink, seed
        self.cold_neighbours, self.cold_temperature = cold_neighbours, cold_temperature
        self.alpha_, self.beta_ = self._default_blend()
        self.tuning_: list[tuple[float, float, float]] = []  # (alpha, beta, validation NDCG@10)

    def _default_blend(self) -> tuple[float, float]:
        # 0.3 / 0.1: the blend kept when a log is too small to tune on (fewer than 50 validation users).
        alpha = 0.0 if not self._vectors else (0.3 if self.alpha is None else self.alpha)
        return alpha, 0.1 if self.beta is None else self.beta

    def fit(self, events: Sequence[Event], *, catalogue: Iterable[str] | None = None) -> HybridRecommender:
        _check_events(events)  # before the blend is tuned on them
        catalogue = None if catalogue is None else list(catalogue)
        self.alpha_, self.beta_ = self._default_blend()
        self.tuning_ = []
        if self.alpha is None or self.beta is None:
            self._tune(events, catalogue)
        super().fit(events, catalogue=catalogue)
        return self

    def _tune(self, events: Sequence[Event], catalogue: list[str] | None) -> None:
        """Pick (alpha, beta) on a leave-last-out split of ``events``, which are training events only."""
        inner, val = leave_last_out(events)
        if len(val) > _MAX_VAL_USERS:
            keep = np.random.default_rng(self.seed).choice(sorted(val), size=_MAX_VAL_USERS, replace=False)
            val = {u: val[u] for u in sorted(keep)}
        if len(val) < _MIN_VAL_USERS:
            return
        self._prepare(inner, catalogue)
        self._fit_model(inner)
        users = sorted(val)
        rows = self._rows(users)
        cooc, content, popular = self._components(rows)
        targets = np.array([self._index.get(val[u], -1) for u in users])
        seen_rows, seen_cols = _stored(rows)
        alphas = _ALPHAS if self.alpha is None and self._vectors else (self.alpha_,)
        betas = _BETAS if self.beta is None else (self.beta_,)
        for a in alphas:
            for b in betas:
                scores = (1 - a) * cooc + a * content + b * popular
                scores[seen_rows, seen_cols] = -np.inf
                ndcg = _metrics_from_top(_top_k(scores, 10, exact=False), targets)[1]
                self.tuning_.append((a, b, ndcg))
        best = max(self.tuning_, key=lambda row: row[2])  # the first best: the smallest weights win ties
        self.alpha_, self.beta_ = best[0], best[1]

    def _fit_model(self, events: Sequence[Event]) -> None:
        self._build_content()
        counts = self._raw.copy()
        counts.data = np.log1p(counts.data)  # a hundred views of one product are not a hundred signals
        co = (counts.T @ counts).toarray()
        norms = np.diag(co)
        # Asymmetric cosine (Aiolli 2013): asymmetry 0.5 is the cosine, 1.0 is P(target | source).
        denominator = np.outer(norms ** self.asymmetry, norms ** (1 - self.asymmetry)) + self.shrink
        sim = np.divide(co, denominator, out=np.zeros_like(co), where=denominator > 0)
        np.fill_diagonal(sim, 0.0)
        popular = self._popular_norm.copy()
        warm = self._popularity > 0
        cold = np.flatnonzero(self._has_vector & ~warm)
        donors = np.flatnonzero(self._has_vector & warm)
        if cold.size and donors.size:
            self._borrow_for_cold(sim, popular, cold, donors)
        self._S, self._popular_blend = sim, popular

    def _borrow_for_cold(self, sim: np.ndarray, popular: np.ndarray, cold: np.ndarray, donors: np.ndarray
                         ) -> None:
        """Products with content but no events borrow co-occurrence and popularity from content neighbours."""
        near = np.clip(self._V[cold] @ self._V[donors].T, 0.0, None)
        m = min(self.cold_neighbours, donors.size)
        cut = -np.sort(-near, axis=1)[:, m - 1: m]
        # A sharp softmax: the closest product dominates, close runners-up share.
        soft = np.exp((near - near.max(axis=1, keepdims=True)) / self.cold_temperature)
        weights = np.where(near >= cut, soft, 0.0)
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        sim[cold] = weights @ sim[donors]
        sim[:, cold] = sim[:, donors] @ weights.T
        sim[cold, cold] = 0.0  # the (c, c) pairs: no product is its own neighbour
        popular[cold] = weights @ popular[donors]

    def _components(self, history: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cooc = _max_normalise(np.asarray(history @ self._S))
        if self._vectors:
            raw = self._content_scores(history)
            cols = self._has_vector
            low = raw[:, cols].min(axis=1, keepdims=True)
            span = raw[:, cols].max(axis=1, keepdims=True) - low
            content = np.zeros_like(raw)
            content[:, cols] = np.divide(raw[:, cols] - low, span, out=np.zeros_like(raw[:, cols]),
                                         where=span > 0)
        else:
            content = np.zeros_like(cooc)
        return cooc, content, np.broadcast_to(self._popular_blend, cooc.shape)

    def _score(self, history: sparse.csr_matrix) -> np.ndarray:
        cooc, content, popular = self._components(history)
        # 1e-6 popularity: the order among equal blends is by popularity, then product id.
        return (1 - self.alpha_) * cooc + self.alpha_ * content + (self.beta_ + 1e-6) * popular

    def similar(self, product_id: str, k: int = 10) -> list[Recommendation]:
        """Products like this one: co-occurrence and content weighted alike, popularity only breaking ties.

        "Similar" is about the product, not what sells: the tuned user blend (which leans on popularity)
        would put a best-seller next to anything.
        """
        self._require_fitted()
        if product_id not in self._index:
            raise UnknownProductError(f"{self.name}: unknown product {product_id!r}")
        _check_k(k)
        i = self._index[product_id]
        row = sparse.csr_matrix(([1.0], ([0], [i])), shape=(1, len(self.items)))
        cooc, content, popular = self._components(row)
        w = 0.5 if self._vectors else 0.0
        scores = (1 - w) * cooc + w * content + 1e-6 * popular
        scores[0, i] = -np.inf
        order = _top_k(scores, k)[0]
        def reason(j: int) -> str:
            if content[0, j] <= 0 and cooc[0, j] <= 0:  # neither part: only the best-seller tie-break ranked it
                return "popular"
            if w * content[0, j] >= (1 - w) * cooc[0, j]:
                return "similar content"
            if self._popularity[i] == 0:  # this product has no events: its co-occurrence is borrowed
                return f"bought with products like {product_id}"
            if self._popularity[j] == 0:  # nor has that one
                return f"new product, like others bought with {product_id}"
            return f"often together with {product_id}"

        return [Recommendation(self.items[j], float(scores[0, j]), reason(j)) for j in order
                if np.isfinite(scores[0, j])]

    def _explain(self, row: sparse.csr_matrix, item: int) -> str:
        cooc, content, popular = (c[0, item] for c in self._components(row))
        parts = {"cooc": (1 - self.alpha_) * cooc, "content": self.alpha_ * content,
                 "popular": self.beta_ * popular}
        kind = max(parts, key=lambda key: parts[key])
        if kind == "popular" or parts[kind] <= 0:
            return "popular"
        if kind == "content":
            return f"similar to {self._closest_in_history(row, item)}"
        cols = row.indices
        source = cols[int(np.argmax(row.data * self._S[cols, item]))]
        partner = self.items[source]
        if self._popularity[item] == 0:  # a cold-start product: its co-occurrence is borrowed
            return f"new product, like others bought with {partner}"
        if self._popularity[source] == 0:  # the history's product has no events: it borrowed its neighbours'
            return f"bought with products like {partner}"
        return f"often together with {partner}"


_RECOMMENDERS: dict[str, Callable[..., Recommender]] = {
    "popularity": PopularityRecommender,
    "content": ContentRecommender,
    "hybrid": HybridRecommender,
}


def create_recommender(kind: str = "hybrid", **kwargs: object) -> Recommender:
    """``popularity``, ``content`` (needs ``item_vectors``) or ``hybrid`` (the default)."""
    if kind not in _RECOMMENDERS:
        raise ValueError(f"unknown recommender {kind!r} (choose from {', '.join(_RECOMMENDERS)})")
    return _RECOMMENDERS[kind](**kwargs)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def item_vectors(catalogue: Catalogue | Mapping[str, Product], model: Model | None = None) -> dict[str, np.ndarray]:
    """The recommenders' product content, one vector per product of a catalogue (or a label -> Product map):
    the text encoding of its title + description (the model bundle's fine-tuned encoder when it has one, else
    MiniLM), joined with the model's embedding of its catalogue photo when a model is given (each part
    unit-length, the whole renormalised). `skulens recommend` and the service use it. A catalogue's classes
    without a product sheet (folder and manifest layouts without products.csv) get one from their listing
    text or label (`class_products`).
    """
    from ..data.catalogue import Catalogue, class_products
    from ..models.text import load_text_encoder
    from ..search.embeddings import embed_paths, product_text

    products = list((class_products(catalogue) if isinstance(catalogue, Catalogue) else catalogue).values())
    if not products:
        return {}
    encoder = load_text_encoder(bundle=getattr(model, "path", None))
    parts = [_unit(encoder.encode([product_text(p) for p in products]))]
    if model is not None:
        with_image = [i for i, p in enumerate(products) if p.image is not None]
        embedded = embed_paths(model, [str(products[i].image) for i in with_image])
        image = np.zeros((len(products), model.card.embedding_dim), dtype=np.float32)
        image[[with_image[i] for i in embedded.kept]] = embedded.vectors
        parts.append(_unit(image))
    vectors = _unit(np.hstack(parts))
    return {p.label: v for p, v in zip(products, vectors, strict=True)}


def fit_recommender(events: Sequence[Event], products: Catalogue | Mapping[str, Product] | None = None, *,
                    kind: str = "hybrid", model: Model | None = None, **options: Any) -> Recommender:
    """A recommender of ``kind`` fitted on ``events``; ``products`` (the catalogue) join the logged products.

    Product content for ``content`` and ``hybrid`` is `item_vectors(products, model)`. ``skulens
    recommend`` and the service both build their recommender here, so the same log, products and model
    give the same answers. ``item_vectors`` in ``options`` replaces that content (``None``: none); the
    other options go to the recommender (see `create_recommender`).
    """
    from ..data.catalogue import Catalogue, class_products

    if isinstance(products, Catalogue):  # as item_vectors takes one: its classes' products
        products = class_products(products)
    if kind != "popularity" and "item_vectors" not in options:
        options["item_vectors"] = item_vectors(products or {}, model)
    rec = create_recommender(kind, **options)
    return rec.fit(events, catalogue=None if products is None else list(products))


def _check_k(k: Any) -> None:
    """As the search engine checks its k (2.5 was NumPy's "slice indices must be integers", from inside)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")


def _check_events(events: Sequence[Event]) -> None:
    """Events as `read_events` gives them (a tuple was "'tuple' object has no attribute 'event'", deep inside)."""
    if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
        raise TypeError(f"events: a list of Event (skulens.recommend.shopping_log), not {type(events).__name__}")
    for i, e in enumerate(events if isinstance(events, Sequence) else ()):  # a generator is not consumed here
        if not isinstance(e, Event):
            raise TypeError(f"events[{i}]: an Event(user_id, product_id, event, timestamp) "
                            f"(skulens.recommend.shopping_log.Event), not {type(e).__name__}")


# ---------------------------------------------------------------------------------------------
# evaluation


def leave_last_out(events: Sequence[Event], *, novel: bool = False) -> tuple[list[Event], dict[str, str]]:
    """Split off each user's most recent product: ``(train events, {user: held-out product})``.

    Default: the held-out product is the one in the user's last event (by timestamp; file order
    breaks ties). Only users who touched at least two distinct products are tested; the others stay
    in train whole. *All* of a tested user's events on the held-out product leave train, not just
    the last one: a view-cart-purchase funnel is one interaction, and with ``exclude_seen`` a
    product left in the user's history could never be recommended. The price is that a repeat
    purchase is scored as if it were a discovery (the recommender no longer sees that the user had
    it before); the price is the same for every recommender.

    ``novel=True`` asks the discovery question instead: the held-out product is the user's most
    recent *first-time* product, train keeps only that user's events before its first touch, and the
    user's later events (returns to older products) are dropped. Other users' events stay in train
    whatever their time, in both modes.
    """
    by_user: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for position, e in enumerate(events):
        by_user[e.user_id].append((e.timestamp, position))
    test: dict[str, str] = {}
    keep = np.ones(len(events), dtype=bool)
    for user, stamps in by_user.items():
        order = [events[position] for _, position in sorted(stamps)]
        positions = [position for _, position in sorted(stamps)]
        if novel:
            first: dict[str, int] = {}
            for i, e in enumerate(order):
                first.setdefault(e.product_id, i)
            product, start = max(first.items(), key=lambda item: item[1])
            if start > 0:
                test[user] = product
                keep[positions[start:]] = False
        else:
            product = order[-1].product_id
            if any(e.product_id != product for e in order):
                test[user] = product
                keep[[p for p, e in zip(positions, order, strict=True) if e.product_id == product]] = False
    return [e for e, k in zip(events, keep, strict=True) if k], test


def cold_start_split(events: Sequence[Event], *, fraction: float = 0.1, seed: int = 0
                     ) -> tuple[list[Event], dict[str, str], frozenset[str]]:
    """Leave-last-out, then hide *every* train event of a random ``fraction`` of the products.

    Returns ``(train without them, test restricted to users whose held-out product is hidden, the
    hidden products)``. Evaluate with the hidden products in the catalogue: only content can reach them.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    products = sorted({e.product_id for e in events})
    count = max(1, round(fraction * len(products)))
    hidden = frozenset(np.random.default_rng(seed).choice(products, size=count, replace=False).tolist())
    train, test = leave_last_out(events)
    return ([e for e in train if e.product_id not in hidden],
            {u: p for u, p in test.items() if p in hidden}, hidden)


def ranking_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int = 10
                    ) -> tuple[float, float]:
    """(HitRate@k, NDCG@k) for one relevant product per list: a hit at rank r scores 1 / log2(r + 1)."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets")
    if not targets:
        return 0.0, 0.0
    ranks = [list(r[:k]).index(t) + 1 if t in r[:k] else 0 for r, t in zip(ranked, targets, strict=True)]
    hits = [1.0 if r else 0.0 for r in ranks]
    gains = [1.0 / math.log2(r + 1) if r else 0.0 for r in ranks]
    return sum(hits) / len(ranks), sum(gains) / len(ranks)


def _metrics_from_top(top: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    if not len(targets):
        return 0.0, 0.0
    match = top == targets[:, None]
    ranks = np.where(match.any(axis=1), match.argmax(axis=1) + 1, 0)
    gains = np.divide(1.0, np.log2(ranks + 1.0), out=np.zeros(len(ranks)), where=ranks > 0)
    return float(np.mean(ranks > 0)), float(np.mean(gains))


def evaluate(recommender: Recommender, train: Sequence[Event], test: Mapping[str, str], k: int = 10, *,
             catalogue: Iterable[str] | None = None, exclude_seen: bool = True, batch_size: int = 2048
             ) -> RecommendationReport:
    """Fit ``recommender`` on ``train``, then score every test user's held-out product at ``k``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:  # 0 failed in NumPy's argmax
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    t0 = time.perf_counter()
    recommender.fit(train, catalogue=catalogue)
    fit_seconds = time.perf_counter() - t0
    users = sorted(test)
    targets = np.array([recommender._index.get(test[u], -1) for u in users], dtype=np.int64)
    t0 = time.perf_counter()
    tops = []
    for start in range(0, len(users), batch_size):
        rows = recommender._rows(users[start: start + batch_size])
        order, scores = recommender._rank(rows, k, rows if exclude_seen else None)
        tops.append(np.where(np.isfinite(scores), order, -2))  # -2: no product (all excluded)
    top = np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)
    seconds = time.perf_counter() - t0
    hit_rate, ndcg = _metrics_from_top(top, targets)
    shown = np.unique(top[top >= 0])
    details = ({"alpha": recommender.alpha_, "beta": recommender.beta_}
               if isinstance(recommender, HybridRecommender) else {})
    return RecommendationReport(recommender=recommender.name, k=k, n_users=len(users), hit_rate=hit_rate,
                                ndcg=ndcg, coverage=shown.size / max(len(recommender.items), 1),
                                n_items=len(recommender.items), fit_seconds=fit_seconds,
                                recommend_seconds=seconds, details=details)
