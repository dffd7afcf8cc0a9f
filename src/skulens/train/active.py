"""Active learning: which unlabelled photos a person should label next.

A label is worth most where the model is unsure *and* the photo is unlike what is already labelled. The
default strategy, ``margin-kcenter``, takes the ``pool`` x budget photos with the smallest margin between the
model's two best classes (uncertainty), then picks the budget among them by greedy k-center over the
embeddings (diversity: each pick is the photo farthest, in cosine distance, from everything labelled or
picked so far; with nothing labelled yet, the first pick is the least certain photo), so a batch is not fifty
photos of the one product the model confuses. Where pool x budget reaches every photo (a budget of a quarter
of the photos or more), uncertainty only orders the first pick and the rest is chosen for diversity.
``margin`` (uncertainty only), ``kcenter`` (diversity only: Sener & Savarese, ICLR 2018, core-set) and
``random`` are there for comparison; benchmarks/active_learning_grocery.py measures them against each other.

`select` is pure numpy (probabilities and L2-normalised embeddings in, indices out); `suggest_labels` runs a
model over photos (one pass: probabilities and embeddings) and returns typed suggestions, which
`skulens suggest-labels` writes as a manifest to fill in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..models.predictor import Model

__all__ = ["STRATEGIES", "LabelSuggestion", "k_center", "margins", "select", "suggest_labels"]

STRATEGIES = ("margin-kcenter", "margin", "kcenter", "random")


def margins(probs: np.ndarray) -> np.ndarray:
    """Per row, best minus second-best probability (small: unsure between two classes; 1 with one class)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return np.zeros(p.shape[0] if p.ndim else 0)
    if p.shape[1] < 2:
        return np.ones(p.shape[0])
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def k_center(embeddings: np.ndarray, budget: int, *, candidates: Sequence[int] | np.ndarray | None = None,
             anchors: np.ndarray | None = None, first_candidate: bool = False) -> list[int]:
    """Greedy k-center: `budget` indices of `candidates` (default: all rows), each the one farthest (cosine
    distance on L2-normalised rows) from the `anchors` (already labelled embeddings) and the earlier picks.
    Without anchors the first pick is the candidate farthest from the candidates' mean, or with
    `first_candidate` the first candidate (margin-kcenter's least certain photo)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    cand = np.arange(len(emb)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    budget = min(int(budget), len(cand))
    if budget <= 0:
        return []
    x = emb[cand]
    if anchors is not None and len(anchors):
        nearest = (1.0 - x @ np.asarray(anchors, dtype=np.float32).T).min(axis=1)
    elif first_candidate:  # all equally far from nothing: argmax takes the first, then the distances count
        nearest = np.full(len(x), np.inf, dtype=np.float32)
    else:
        centre = x.mean(axis=0)
        nearest = 1.0 - x @ (centre / max(float(np.linalg.norm(centre)), 1e-12))
    picked: list[int] = []
    for _ in range(budget):
        j = int(np.argmax(nearest))
        picked.append(int(cand[j]))
        nearest = np.minimum(nearest, 1.0 - x @ x[j])
        nearest[j] = -np.inf  # never twice
    return picked


def select(probs: np.ndarray, embeddings: np.ndarray, budget: int, *, strategy: str = "margin-kcenter",
           labelled: np.ndarray | None = None, pool: int = 4, seed: int = 0) -> list[int]:
    """The rows to label next, best first. `labelled`: embeddings of photos already labelled (k-center keeps
    away from them). `pool`: margin-kcenter draws from the pool x budget least certain rows."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    n = len(probs)
    if len(embeddings) != n:
        raise ValueError(f"{n} probability rows but {len(embeddings)} embeddings")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    budget = min(budget, n)
    if strategy == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(n)[:budget]]
    if strategy == "kcenter":
        return k_center(embeddings, budget, anchors=labelled)
    order = np.argsort(margins(probs), kind="stable")  # least certain first
    if strategy == "margin":
        return [int(i) for i in order[:budget]]
    # Where pool x budget covers every photo, uncertainty only picks the first (the least certain): the rest is
    # spread by diversity, as kcenter's (a budget of a quarter of the photos or more, with the default pool).
    return k_center(embeddings, budget, candidates=order[: max(budget, pool * budget)], anchors=labelled,
                    first_candidate=True)


@dataclass(frozen=True)
class LabelSuggestion:
    """One photo to label: its rank (1 = label first), the model's guess and how unsure it is."""

    path: str
    rank: int
    guess: str
    confidence: float
    margin: float  # best minus second-best probability


def suggest_labels(model: Model, photos: Sequence[str | os.PathLike[str]], budget: int, *,
                   strategy: str = "margin-kcenter", labelled: Sequence[str | os.PathLike[str]] = (),
                   batch_size: int = 32, progress: bool = False) -> tuple[list[LabelSuggestion], list[tuple[str, str]]]:
    """(the `budget` photos to label next, best first; the photos that could not be read, with the reason).
    `labelled`: photos already labelled, which the diversity step keeps away from."""
    from ..data.dataset import decode_all

    for name, value in (("photos", photos), ("labelled", labelled)):
        if isinstance(value, (str, os.PathLike)):  # one path was read letter by letter, each a missing file
            raise TypeError(f"{name}: a list of paths (e.g. [{str(value)!r}]), not one path")
    classes = model.card.classes
    if not classes and strategy.startswith("margin"):
        raise ValueError(f"strategy {strategy!r} ranks by how unsure the classifier is, and this model has no "
                         "classes (a pretrained backbone): use kcenter or random, or a trained bundle")
    pool = decode_all([Path(p) for p in photos], model.card.resize_to, desc="photos", progress=progress)
    if not pool.images:
        return [], pool.failed
    names = [str(photos[i]) for i in pool.kept]
    out = model.run(pool.images, embeddings=True, batch_size=batch_size, progress=progress)
    anchors = None
    if labelled:
        known = decode_all([Path(p) for p in labelled], model.card.resize_to, desc="labelled", progress=False).images
        anchors = model.run(known, embeddings=True, batch_size=batch_size).embeddings if known else None
    assert out.embeddings is not None
    chosen = select(out.fine, out.embeddings, budget, strategy=strategy, labelled=anchors)
    if not classes:  # embeddings alone (kcenter, random): no guess to offer
        return [LabelSuggestion(names[i], rank, "", float("nan"), float("nan"))
                for rank, i in enumerate(chosen, start=1)], pool.failed
    m = margins(out.fine)
    return [LabelSuggestion(names[i], rank, classes[int(out.fine[i].argmax())], float(out.fine[i].max()), float(m[i]))
            for rank, i in enumerate(chosen, start=1)], pool.failed
