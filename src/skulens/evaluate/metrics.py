"""Classification metrics for a finished prediction pass: pure numpy in, a typed `EvalReport` out.

`evaluate_predictions` takes what a model produced on one split (probabilities, never logits) and
the ground truth, and returns an immutable `EvalReport`. Nothing here touches files, torch or plots;
`skulens.evaluate.report` turns a report into JSON, PNGs and markdown.

Conventions
-----------
* The predicted class is ``argmax`` of a row; ties go to the lower class index (numpy's rule), and
  top-k uses the same stable order, so top-1 is always the first element of top-k.
* Rows of ``probs`` are renormalised to sum to 1 (softmax in float16, or averaged crops, rarely sum
  to exactly 1); negative or non-finite values are an error, because they mean logits were passed.
* ``top5`` is top-min(5, C) accuracy, so with fewer than 5 classes it is 1.0, never undefined.
* ``per_class`` lists every class, even those absent from this split (precision, recall and F1
  are 0 there, sklearn's ``zero_division=0``). ``macro_f1`` averages only over classes that occur
  in the targets *or* the predictions: a class never seen and never predicted has no evidence
  either way and would only drag the average to 0, while a class predicted but never true keeps
  its F1 of 0, so spurious predictions are still penalised.
* ``ece`` uses ``n_bins`` equal-width bins over the top-1 confidence, bin i covering
  (i/n, (i+1)/n]; ``reliability`` lists every bin as (mean confidence, accuracy, count), with
  (0.0, 0.0, 0) for an empty bin.
* ``nll`` and ``top_losses`` use the cross-entropy ``-log p[target]``, with p clipped at 1e-12 so
  one confidently wrong sample gives a large, finite loss instead of ``inf``.
* Negative ``coarse_targets`` (e.g. -100, PyTorch's ignore_index) mean "coarse label unknown";
  both coarse accuracies are over the other rows, and None when no row has a coarse label.
* Attribute predictions are positive when ``attr_probs >= threshold``. Thresholds default to 0.5;
  tuned ones should come from `choose_thresholds` on the *validation* split, never the test split.

`EvalReport.to_dict` keys
-------------------------
``n, top1, top5, macro_f1, ece, nll`` (numbers); ``coarse_top1, coarse_top1_derived,
attribute_map, attribute_f1`` (number or null); ``class_names`` (list of str);
``per_class``: list of ``{name, precision, recall, f1, support}``;
``per_attribute``: list of ``{name, ap, f1, threshold, support}`` (``ap`` null without positives);
``most_confused``: list of ``{true, predicted, count}``;
``top_losses``: list of ``{path, true, predicted, confidence, loss, index}``;
``confusion``: C lists of C ints, rows = true class; ``reliability``: list of
``[mean_confidence, accuracy, count]``; ``top1_ci, macro_f1_ci, coarse_top1_ci``: ``[low, high]`` 95 %
percentile-bootstrap intervals (`bootstrap_intervals`, seeded) or null. Only JSON types (lists, str, int,
float, null).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
)

__all__ = [
    "AttributeMetrics",
    "ClassMetrics",
    "ConfusedPair",
    "EvalReport",
    "TopLoss",
    "bootstrap_intervals",
    "choose_thresholds",
    "derive_coarse",
    "evaluate_predictions",
    "expected_calibration_error",
    "report_from_dict",
]

N_BINS = 15
TOP_K = 5
N_CONFUSED = 10
N_TOP_LOSSES = 12
# Clip for log(p): keeps one zero-probability target from turning the mean NLL into inf.
_EPS = 1e-12


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class AttributeMetrics:
    name: str
    ap: float | None  # None when the attribute has no positive sample: AP is undefined then
    f1: float
    threshold: float
    support: int  # number of positive samples


@dataclass(frozen=True)
class ConfusedPair:
    true: str
    predicted: str
    count: int


@dataclass(frozen=True)
class TopLoss:
    path: str  # "" when no paths were given
    true: str
    predicted: str
    confidence: float  # probability of the predicted class
    loss: float  # -log p[true]
    index: int  # row in the evaluated arrays, to find the sample when there are no paths


@dataclass(frozen=True)
class EvalReport:
    n: int
    top1: float
    top5: float
    macro_f1: float
    ece: float
    nll: float
    coarse_top1: float | None
    coarse_top1_derived: float | None
    attribute_map: float | None
    attribute_f1: float | None
    per_class: tuple[ClassMetrics, ...]
    per_attribute: tuple[AttributeMetrics, ...]
    most_confused: tuple[ConfusedPair, ...]
    top_losses: tuple[TopLoss, ...]
    confusion: tuple[tuple[int, ...], ...]
    reliability: tuple[tuple[float, float, int], ...]
    class_names: tuple[str, ...]
    # 95 % bootstrap intervals (percentile, BOOTSTRAP_ROUNDS resamples of the photos, seeded): how far the
    # number could move on another sample of photos like these. None when there is nothing to resample.
    top1_ci: tuple[float, float] | None = None
    macro_f1_ci: tuple[float, float] | None = None
    coarse_top1_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (keys in the module docstring); `from_dict` reverses it."""
        return _listify(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from `to_dict` output, or from a whole report.json (its "model" entry)."""
        if "model" in data and "schema" in data:
            data = data["model"]
        nested = {
            "per_class": ClassMetrics,
            "per_attribute": AttributeMetrics,
            "most_confused": ConfusedPair,
            "top_losses": TopLoss,
        }
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.endswith("_ci"):  # absent from reports written before intervals existed
                raw = data.get(f.name)
                values[f.name] = None if raw is None else (float(raw[0]), float(raw[1]))
                continue
            raw = data[f.name]
            if f.name in nested:
                values[f.name] = tuple(nested[f.name](**item) for item in raw)
            elif f.name in ("confusion", "reliability"):
                values[f.name] = tuple(tuple(row) for row in raw)
            elif f.name == "class_names":
                values[f.name] = tuple(raw)
            else:
                values[f.name] = raw
        return cls(**values)


def report_from_dict(data: dict[str, Any]) -> EvalReport:
    """Function form of `EvalReport.from_dict`."""
    return EvalReport.from_dict(data)


def _listify(obj: Any) -> Any:
    # asdict keeps tuples; JSON turns them into lists, so convert now for an exact round trip.
    if isinstance(obj, dict):
        return {k: _listify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_listify(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- validation


def _as_probs(probs: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array (N, classes), got shape {p.shape}")
    if n is not None and p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows but there are {n} samples")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{name} must be finite and non-negative (probabilities, not logits)")
    sums = p.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError(f"{name} has rows that sum to 0")
    return p / sums


def _as_labels(labels: np.ndarray, name: str, n: int, n_classes: int) -> np.ndarray:
    t = np.asarray(labels)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {t.shape}")
    if not (np.issubdtype(t.dtype, np.integer) or t.dtype == np.bool_):
        raise ValueError(f"{name} must be integer class indices, got dtype {t.dtype}")
    t = t.astype(np.int64)
    bad = (t < 0) | (t >= n_classes)
    if np.any(bad):
        raise ValueError(
            f"{name} out of range [0, {n_classes}): e.g. {int(t[bad][0])} at index {int(np.argmax(bad))}"
        )
    return t


def _as_names(names: Sequence[str] | None, count: int, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{what}{i}" for i in range(count))
    out = tuple(str(x) for x in names)
    if len(out) != count:
        raise ValueError(f"{len(out)} {what} names given for {count} columns of {what} probabilities")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} names must be unique")
    return out


# --------------------------------------------------------------------------- building blocks


def _topk_hits(probs: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    # Own top-k instead of sklearn's top_k_accuracy_score: sklearn breaks ties towards the *higher*
    # index (and needs C > 2), which can disagree with argmax; a stable sort on -p agrees with it.
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.any(order == targets[:, None], axis=1)


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS
) -> tuple[float, list[tuple[float, float, int]]]:
    """ECE of the top-1 confidence and the per-bin (mean confidence, accuracy, count) it is made of."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = _as_probs(probs, "probs")
    t = _as_labels(targets, "targets", p.shape[0], p.shape[1])
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == t
    # side="left" puts a confidence equal to an edge in the bin below: bins are (lo, hi].
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], conf, side="left")
    table: list[tuple[float, float, int]] = []
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        count = int(mask.sum())
        if count == 0:
            table.append((0.0, 0.0, 0))
            continue
        mean_conf, acc = float(conf[mask].mean()), float(correct[mask].mean())
        table.append((mean_conf, acc, count))
        ece += count / len(t) * abs(acc - mean_conf)
    return float(ece), table


def derive_coarse(probs: np.ndarray, fine_to_coarse: np.ndarray, n_coarse: int) -> np.ndarray:
    """N x n_coarse probabilities: each coarse class gets the summed probability of its fine classes."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (N, classes), got shape {p.shape}")
    mapping = _as_labels(fine_to_coarse, "fine_to_coarse", p.shape[1], n_coarse)
    onehot = np.zeros((p.shape[1], n_coarse))
    onehot[np.arange(p.shape[1]), mapping] = 1.0
    return p @ onehot


def choose_thresholds(attr_probs: np.ndarray, attr_targets: np.ndarray) -> np.ndarray:
    """Per attribute, the threshold (predict ``p >= t``) that maximises F1 on this data.

    Meant for the validation split. Attributes without a positive sample get 0.5, since any
    threshold would be an equally uninformed guess. Ties in F1 go to the lowest threshold.

    Each attribute is tuned alone: predictions then keep only the likelier of two exclusive values
    (`resolve_exclusive`), so on these photos the F1 shown can be below this attribute's best. Tuning them
    together under that rule was tried (session 35) and not kept: on grocery val halves it scored 0.4 points
    lower on the other half on average (5 splits), fitting the tuning photos more closely.
    """
    p, y = _as_attributes(attr_probs, attr_targets)
    out = np.full(p.shape[1], 0.5)
    for j in range(p.shape[1]):
        if y[:, j].sum() == 0:
            continue
        precision, recall, thresholds = precision_recall_curve(y[:, j], p[:, j])
        # The last (precision=1, recall=0) point has no threshold; drop it.
        precision, recall = precision[:-1], recall[:-1]
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        out[j] = thresholds[int(np.argmax(f1))]
    return out


def _as_attributes(attr_probs: np.ndarray, attr_targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(attr_probs, dtype=np.float64)
    y = np.asarray(attr_targets)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"attr_probs {p.shape} and attr_targets {y.shape} must both be (N, A)")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("attr_probs must be probabilities in [0, 1] (apply a sigmoid to logits)")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("attr_targets must contain only 0 and 1")
    return p, y.astype(np.int64)


def _per_class(
    targets: np.ndarray, preds: np.ndarray, names: tuple[str, ...]
) -> tuple[tuple[ClassMetrics, ...], float]:
    labels = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0
    )
    per_class = tuple(
        ClassMetrics(names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i in labels
    )
    present = np.union1d(targets, preds)  # see the module docstring for why not all classes
    macro = f1_score(targets, preds, labels=present, average="macro", zero_division=0)
    return per_class, float(macro)


def _most_confused(cm: np.ndarray, names: tuple[str, ...], k: int = N_CONFUSED) -> tuple[ConfusedPair, ...]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    # Count descending, then (true, predicted) index ascending so equal counts keep a stable order.
    order = np.lexsort((cols, rows, -off[rows, cols]))[:k]
    return tuple(ConfusedPair(names[rows[i]], names[cols[i]], int(off[rows[i], cols[i]])) for i in order)


def _top_losses(
    probs: np.ndarray,
    targets: np.ndarray,
    losses: np.ndarray,
    names: tuple[str, ...],
    paths: Sequence[str] | None,
    k: int = N_TOP_LOSSES,
) -> tuple[TopLoss, ...]:
    preds = probs.argmax(axis=1)
    order = np.argsort(-losses, kind="stable")[:k]
    return tuple(
        TopLoss(
            path=str(paths[i]) if paths is not None else "",
            true=names[targets[i]],
            predicted=names[preds[i]],
            confidence=float(probs[i, preds[i]]),
            loss=float(losses[i]),
            index=int(i),
        )
        for i in order
    )


# --------------------------------------------------------------------------- optional heads


def _coarse_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    coarse_probs: np.ndarray | None,
    coarse_targets: np.ndarray | None,
    coarse_names: Sequence[str] | None,
    fine_to_coarse: np.ndarray | None,
) -> tuple[float | None, float | None]:
    if coarse_probs is None and fine_to_coarse is None:
        if coarse_targets is not None:
            raise ValueError("coarse_targets given without coarse_probs or fine_to_coarse")
        return None, None
    n = probs.shape[0]
    cp = None if coarse_probs is None else _as_probs(coarse_probs, "coarse_probs", n)
    mapping = None if fine_to_coarse is None else np.asarray(fine_to_coarse)
    n_coarse = _n_coarse(cp, coarse_names, mapping)
    if mapping is not None:
        mapping = _as_labels(mapping, "fine_to_coarse", probs.shape[1], n_coarse)
    if coarse_targets is not None:
        ct = _as_coarse_targets(coarse_targets, n, n_coarse)
    elif mapping is not None:
        ct = mapping[targets]
    else:
        raise ValueError("coarse_probs needs coarse_targets or fine_to_coarse to score against")
    known = ct >= 0
    if not known.any():
        return None, None
    top1 = None if cp is None else float(np.mean(cp[known].argmax(axis=1) == ct[known]))
    derived = None
    if mapping is not None:
        coarse_pred = derive_coarse(probs[known], mapping, n_coarse).argmax(axis=1)
        derived = float(np.mean(coarse_pred == ct[known]))
    return top1, derived


def _coarse_hits(coarse_probs: np.ndarray | None, coarse_targets: np.ndarray | None) -> np.ndarray | None:
    """Per sample: 1 when the coarse prediction is right, 0 when wrong, -1 when the coarse label is unknown."""
    if coarse_probs is None or coarse_targets is None:
        return None
    ct = np.asarray(coarse_targets)
    return np.where(ct < 0, -1, (np.asarray(coarse_probs).argmax(axis=1) == ct).astype(np.int64))


BOOTSTRAP_ROUNDS = 1000


def bootstrap_intervals(targets: np.ndarray, preds: np.ndarray, n_classes: int, *,
                        coarse_hits: np.ndarray | None = None, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of top-1, macro-F1 (this module's convention: over classes that occur
    in the targets or predictions of the resample) and coarse top-1: `rounds` resamples of the n photos with
    replacement, seeded. Vectorised: each resample is a row of counts, and every metric a matrix product."""
    t, p = np.asarray(targets), np.asarray(preds)
    n = len(t)
    if n == 0:
        return {"top1": None, "macro_f1": None, "coarse_top1": None}
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=rounds).astype(np.float64)  # (rounds, n) counts
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        a, b = np.percentile(values, [lo, hi])
        return float(a), float(b)

    truth = np.zeros((n, n_classes))
    truth[np.arange(n), t] = 1
    guess = np.zeros((n, n_classes))
    guess[np.arange(n), p] = 1
    tp, true, pred = w @ (truth * guess), w @ truth, w @ guess
    seen = (true + pred) > 0
    f1 = np.divide(2 * tp, true + pred, out=np.zeros_like(tp), where=seen)
    out: dict[str, tuple[float, float] | None] = {
        "top1": interval(w @ (t == p) / n),
        "macro_f1": interval(f1.sum(axis=1) / np.maximum(seen.sum(axis=1), 1)),
        "coarse_top1": None,
    }
    if coarse_hits is not None and (coarse_hits >= 0).any():
        known = coarse_hits >= 0
        counted = w[:, known].sum(axis=1)
        # a resample without a coarse-labelled photo has no coarse accuracy (it was counted as 0 %)
        rates = np.divide(w[:, known] @ coarse_hits[known], counted, out=np.full(rounds, np.nan), where=counted > 0)
        a, b = np.nanpercentile(rates, [lo, hi])
        out["coarse_top1"] = (float(a), float(b))
    return out


def _as_coarse_targets(coarse_targets: np.ndarray, n: int, n_coarse: int) -> np.ndarray:
    # Negative entries (PyTorch's ignore_index -100) mark samples whose coarse label is unknown:
    # the catalogue may lack it for some products, and those rows are left out of coarse accuracy.
    ct = np.asarray(coarse_targets)
    known = _as_labels(np.where(ct < 0, 0, ct), "coarse_targets", n, n_coarse)
    return np.where(ct < 0, -1, known)


def _n_coarse(cp: np.ndarray | None, names: Sequence[str] | None, mapping: np.ndarray | None) -> int:
    if cp is not None:
        n = cp.shape[1]
    elif names is not None:
        n = len(names)
    else:
        assert mapping is not None  # _coarse_metrics returns early when both are None
        n = int(np.max(mapping)) + 1 if mapping.size else 0
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} coarse names given for {n} coarse classes")
    return n


def _attribute_metrics(
    attr_probs: np.ndarray | None,
    attr_targets: np.ndarray | None,
    attr_names: Sequence[str] | None,
    attr_thresholds: np.ndarray | None,
    n: int,
    attr_exclusive: Sequence[tuple[str, str]] = (),
) -> tuple[float | None, float | None, tuple[AttributeMetrics, ...]]:
    if attr_probs is None and attr_targets is None:
        return None, None, ()
    if attr_probs is None or attr_targets is None:
        raise ValueError("attr_probs and attr_targets must be given together")
    p, y = _as_attributes(attr_probs, attr_targets)
    if p.shape[0] != n:
        raise ValueError(f"attr_probs has {p.shape[0]} rows but there are {n} samples")
    n_attr = p.shape[1]
    names = _as_names(attr_names, n_attr, "attr")
    thr = np.full(n_attr, 0.5) if attr_thresholds is None else np.asarray(attr_thresholds, dtype=np.float64)
    if thr.shape != (n_attr,):
        raise ValueError(f"attr_thresholds must have shape ({n_attr},), got {thr.shape}")
    pred = (p >= thr).astype(np.int64)
    if attr_exclusive:  # F1 scores what a prediction shows: of two exclusive values, only the likelier
        from ..models.card import resolve_exclusive

        pred = resolve_exclusive(p, pred.astype(bool), names, attr_exclusive).astype(np.int64)
    per_attr = []
    for j in range(n_attr):
        support = int(y[:, j].sum())
        ap = float(average_precision_score(y[:, j], p[:, j])) if support else None
        f1 = float(f1_score(y[:, j], pred[:, j], zero_division=0))
        per_attr.append(AttributeMetrics(names[j], ap, f1, float(thr[j]), support))
    aps = [a.ap for a in per_attr if a.ap is not None]
    attr_map = float(np.mean(aps)) if aps else None
    micro = float(f1_score(y, pred, average="micro", zero_division=0))
    return attr_map, micro, tuple(per_attr)


# --------------------------------------------------------------------------- entry point


def evaluate_predictions(
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    *,
    paths: Sequence[str] | None = None,
    coarse_probs: np.ndarray | None = None,
    coarse_targets: np.ndarray | None = None,
    coarse_names: Sequence[str] | None = None,
    fine_to_coarse: np.ndarray | None = None,
    attr_probs: np.ndarray | None = None,
    attr_targets: np.ndarray | None = None,
    attr_names: Sequence[str] | None = None,
    attr_thresholds: np.ndarray | None = None,
    attr_exclusive: Sequence[tuple[str, str]] = (),
) -> EvalReport:
    """Score one split's predictions. Conventions and edge cases are in the module docstring.

    attr_exclusive: the card's pairs of attributes no product carries together; F1 then counts only the
    likelier of two, as predictions do (AP ranks the raw probabilities)."""
    p = _as_probs(probs, "probs")
    n, n_classes = p.shape
    names = _as_names(class_names, n_classes, "class")
    t = _as_labels(targets, "targets", n, n_classes)
    if paths is not None and len(paths) != n:
        raise ValueError(f"{len(paths)} paths given for {n} samples")
    preds = p.argmax(axis=1)
    losses = -np.log(np.clip(p[np.arange(n), t], _EPS, None))
    cm = confusion_matrix(t, preds, labels=np.arange(n_classes))
    per_class, macro_f1 = _per_class(t, preds, names)
    ece, reliability = expected_calibration_error(p, t)
    coarse_top1, coarse_derived = _coarse_metrics(
        p, t, coarse_probs, coarse_targets, coarse_names, fine_to_coarse
    )
    attr_map, attr_f1, per_attr = _attribute_metrics(attr_probs, attr_targets, attr_names, attr_thresholds, n,
                                                     attr_exclusive)
    if coarse_targets is None and fine_to_coarse is not None:
        coarse_targets = np.asarray(fine_to_coarse)[t]
    cis = bootstrap_intervals(t, preds, n_classes, coarse_hits=_coarse_hits(coarse_probs, coarse_targets)
                              if coarse_top1 is not None else None)
    return EvalReport(
        n=int(n),
        top1=float(np.mean(preds == t)),
        top5=float(np.mean(_topk_hits(p, t, TOP_K))),
        macro_f1=macro_f1,
        ece=ece,
        nll=float(losses.mean()),
        coarse_top1=coarse_top1,
        coarse_top1_derived=coarse_derived,
        attribute_map=attr_map,
        attribute_f1=attr_f1,
        per_class=per_class,
        per_attribute=per_attr,
        most_confused=_most_confused(cm, names),
        top_losses=_top_losses(p, t, losses, names, paths),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        reliability=tuple(reliability),
        class_names=names,
        top1_ci=cis["top1"],
        macro_f1_ci=cis["macro_f1"],
        coarse_top1_ci=cis["coarse_top1"],
    )
