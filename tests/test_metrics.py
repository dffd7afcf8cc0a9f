"""Metrics checked against values worked out by hand on tiny arrays."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from skulens.evaluate.metrics import (
    EvalReport,
    choose_thresholds,
    derive_coarse,
    evaluate_predictions,
    expected_calibration_error,
    report_from_dict,
)

# 6 classes, 4 samples. Rank of the target: 1st, 6th, 4th, 2nd -> top-1 1/4, top-5 3/4.
TOPK_PROBS = np.array(
    [
        [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],
        [0.30, 0.25, 0.20, 0.15, 0.10, 0.00],
        [0.05, 0.30, 0.25, 0.20, 0.15, 0.05],
        [0.10, 0.60, 0.30, 0.00, 0.00, 0.00],
    ]
)
TOPK_TARGETS = np.array([0, 5, 4, 2])
SIX = [f"c{i}" for i in range(6)]


def _onehot_probs(preds: list[int], n_classes: int, conf: float = 0.9) -> np.ndarray:
    """Rows putting `conf` on the prediction and the rest evenly on the other classes."""
    p = np.full((len(preds), n_classes), (1 - conf) / (n_classes - 1))
    p[np.arange(len(preds)), preds] = conf
    return p


def test_top1_top5_by_hand() -> None:
    r = evaluate_predictions(TOPK_PROBS, TOPK_TARGETS, SIX)
    assert r.n == 4
    assert r.top1 == pytest.approx(0.25)
    assert r.top5 == pytest.approx(0.75)


def test_top5_with_fewer_than_five_classes_is_top_c() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
    r = evaluate_predictions(probs, np.array([2, 0]), ["a", "b", "c"])
    assert r.top1 == 0.0
    assert r.top5 == 1.0


def test_rows_are_renormalised() -> None:
    a = evaluate_predictions(TOPK_PROBS, TOPK_TARGETS, SIX)
    b = evaluate_predictions(TOPK_PROBS * 3.0, TOPK_TARGETS, SIX)
    assert b.top1 == a.top1 and b.top5 == a.top5
    assert b.nll == pytest.approx(a.nll)
    assert b.ece == pytest.approx(a.ece)


def test_nll_by_hand() -> None:
    probs = np.array([[0.5, 0.5], [0.75, 0.25]])
    r = evaluate_predictions(probs, np.array([0, 1]), ["a", "b"])
    assert r.nll == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_ece_perfectly_calibrated_is_zero() -> None:
    # Confidence 0.8 everywhere, 8 of 10 right.
    probs = np.tile([0.8, 0.2], (10, 1))
    targets = np.array([0] * 8 + [1] * 2)
    ece, bins = expected_calibration_error(probs, targets)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert len(bins) == 15
    assert sum(b[2] for b in bins) == 10


def test_ece_overconfident() -> None:
    # Confidence 0.9, accuracy 0.5: gap 0.4.
    probs = np.tile([0.9, 0.1], (10, 1))
    targets = np.array([0, 1] * 5)
    ece, _ = expected_calibration_error(probs, targets)
    assert ece == pytest.approx(0.4)


def test_ece_two_bins_weighted_by_count() -> None:
    # 4 samples at 0.9, all right (gap 0.1); 6 at 0.7, half right (gap 0.2): 0.4*0.1 + 0.6*0.2.
    probs = np.vstack([np.tile([0.9, 0.1], (4, 1)), np.tile([0.7, 0.3], (6, 1))])
    targets = np.array([0, 0, 0, 0, 0, 1, 0, 1, 0, 1])
    ece, bins = expected_calibration_error(probs, targets)
    assert ece == pytest.approx(0.16)
    # 0.9 is in (13/15, 14/15], 0.7 in (10/15, 11/15]
    assert bins[13] == pytest.approx((0.9, 1.0, 4))
    assert bins[10] == pytest.approx((0.7, 0.5, 6))
    assert all(b == (0.0, 0.0, 0) for i, b in enumerate(bins) if i not in (10, 13))
    r = evaluate_predictions(probs, targets, ["a", "b"])
    assert r.ece == pytest.approx(0.16)
    assert r.reliability[13] == pytest.approx((0.9, 1.0, 4))


def test_derive_coarse_sums_fine_probs() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.25, 0.25]])
    out = derive_coarse(probs, np.array([0, 0, 1, 1]), 3)
    np.testing.assert_allclose(out, [[0.3, 0.7, 0.0], [0.5, 0.5, 0.0]])


def test_coarse_top1_and_derived() -> None:
    # Sample 0: fine argmax is class 0 (coarse 0) but coarse 1 holds 0.6 in total.
    probs = np.array([[0.4, 0.0, 0.3, 0.3], [0.1, 0.5, 0.2, 0.2], [0.1, 0.1, 0.5, 0.3]])
    targets = np.array([2, 1, 0])  # coarse 1, 0, 0
    fine_to_coarse = np.array([0, 0, 1, 1])
    coarse_probs = np.array([[0.3, 0.7], [0.8, 0.2], [0.6, 0.4]])
    r = evaluate_predictions(
        probs,
        targets,
        list("abcd"),
        coarse_probs=coarse_probs,
        fine_to_coarse=fine_to_coarse,
        coarse_names=["x", "y"],
    )
    assert r.top1 == pytest.approx(1 / 3)
    assert r.coarse_top1 == pytest.approx(1.0)
    assert r.coarse_top1_derived == pytest.approx(2 / 3)
    # Explicit coarse targets give the same answer; without a hierarchy both are None.
    r2 = evaluate_predictions(
        probs, targets, list("abcd"), coarse_probs=coarse_probs, coarse_targets=np.array([1, 0, 0])
    )
    assert r2.coarse_top1 == pytest.approx(1.0) and r2.coarse_top1_derived is None
    r3 = evaluate_predictions(probs, targets, list("abcd"))
    assert r3.coarse_top1 is None and r3.coarse_top1_derived is None


def test_unknown_coarse_targets_are_left_out() -> None:
    # Row 0 (derived-correct) has no coarse label: both accuracies use rows 1 and 2 only.
    probs = np.array([[0.4, 0.0, 0.3, 0.3], [0.1, 0.5, 0.2, 0.2], [0.1, 0.1, 0.5, 0.3]])
    coarse_probs = np.array([[0.3, 0.7], [0.8, 0.2], [0.4, 0.6]])
    r = evaluate_predictions(
        probs,
        np.array([2, 1, 0]),
        list("abcd"),
        coarse_probs=coarse_probs,
        coarse_targets=np.array([-100, 0, 0]),
        fine_to_coarse=np.array([0, 0, 1, 1]),
    )
    assert r.coarse_top1 == pytest.approx(0.5)
    assert r.coarse_top1_derived == pytest.approx(0.5)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_predictions(
            probs,
            np.array([2, 1, 0]),
            list("abcd"),
            coarse_probs=coarse_probs,
            coarse_targets=np.array([2, 0, 0]),
        )


def _best_threshold_brute_force(p: np.ndarray, y: np.ndarray) -> float:
    def f1(t: float) -> float:
        pred = p >= t
        tp = int(np.sum(pred & (y == 1)))
        return 2 * tp / (pred.sum() + y.sum())

    return max(sorted(set(p.tolist())), key=f1)


def test_choose_thresholds_picks_f1_optimum() -> None:
    # F1 by threshold: 0.9 -> 0.5, 0.8 -> 0.8, 0.7 -> 0.667, 0.4 -> 0.571, 0.35 -> 0.75, 0.1 -> 0.667
    p0 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    y0 = np.array([0, 0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.9, 0.3, 0.6, 0.1, 0.5])
    y1 = np.zeros(6, dtype=int)  # no positives -> 0.5
    thr = choose_thresholds(np.stack([p0, p1], 1), np.stack([y0, y1], 1))
    np.testing.assert_allclose(thr, [0.8, 0.5])
    assert thr[0] == _best_threshold_brute_force(p0, y0)


def test_choose_thresholds_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((40, 5)).round(2)
    y = (rng.random((40, 5)) < p).astype(int)
    thr = choose_thresholds(p, y)
    for j in range(5):
        pred_best = p[:, j] >= _best_threshold_brute_force(p[:, j], y[:, j])
        pred_ours = p[:, j] >= thr[j]
        f1 = [2 * np.sum(q & (y[:, j] == 1)) / (q.sum() + y[:, j].sum()) for q in (pred_best, pred_ours)]
        assert f1[1] == pytest.approx(f1[0])


def test_attribute_map_and_f1() -> None:
    rng = np.random.default_rng(1)
    attr_probs = rng.random((20, 3))
    attr_targets = (rng.random((20, 3)) < 0.4).astype(int)
    attr_targets[0] = 1  # every attribute has a positive
    probs = _onehot_probs([0] * 20, 2)
    thresholds = np.array([0.3, 0.5, 0.7])
    r = evaluate_predictions(
        probs,
        np.zeros(20, dtype=int),
        ["a", "b"],
        attr_probs=attr_probs,
        attr_targets=attr_targets,
        attr_names=["red", "round", "boxed"],
        attr_thresholds=thresholds,
    )
    assert r.attribute_map == pytest.approx(
        average_precision_score(attr_targets, attr_probs, average="macro")
    )
    pred = attr_probs >= thresholds
    tp = np.sum(pred & (attr_targets == 1))
    assert r.attribute_f1 == pytest.approx(2 * tp / (pred.sum() + attr_targets.sum()))
    assert [a.name for a in r.per_attribute] == ["red", "round", "boxed"]
    assert [a.threshold for a in r.per_attribute] == [0.3, 0.5, 0.7]
    assert [a.support for a in r.per_attribute] == attr_targets.sum(0).tolist()


def test_attribute_map_skips_attributes_without_positives() -> None:
    attr_probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.6, 0.3]])
    attr_targets = np.array([[1, 0], [0, 0], [1, 0]])
    r = evaluate_predictions(
        _onehot_probs([0, 1, 0], 2),
        np.array([0, 1, 0]),
        ["a", "b"],
        attr_probs=attr_probs,
        attr_targets=attr_targets,
    )
    assert r.attribute_map == pytest.approx(average_precision_score(attr_targets[:, 0], attr_probs[:, 0]))
    assert r.per_attribute[1].ap is None
    assert r.per_attribute[0].name == "attr0"


def test_most_confused_ordering() -> None:
    # a->b x3, b->c x2, c->a x2, b->a x1; equal counts ordered by true class index.
    pairs = [(0, 1)] * 3 + [(2, 0)] * 2 + [(1, 2)] * 2 + [(1, 0)] + [(0, 0)] * 5
    targets = np.array([t for t, _ in pairs])
    r = evaluate_predictions(_onehot_probs([p for _, p in pairs], 3), targets, ["a", "b", "c"])
    got = [(c.true, c.predicted, c.count) for c in r.most_confused]
    assert got == [("a", "b", 3), ("b", "c", 2), ("c", "a", 2), ("b", "a", 1)]
    assert r.confusion == ((5, 3, 0), (1, 0, 2), (2, 0, 0))


def test_most_confused_keeps_ten() -> None:
    n = 6
    preds, targets = zip(*[(j, i) for i, j in itertools.permutations(range(n), 2)], strict=True)
    r = evaluate_predictions(_onehot_probs(list(preds), n), np.array(targets), SIX)
    assert len(r.most_confused) == 10


def test_top_losses_picks_highest_loss_paths() -> None:
    n = 15
    p_true = np.linspace(0.05, 0.95, n)  # sample i has p[target] = p_true[i]; lowest first
    probs = np.column_stack([p_true, 1 - p_true])
    paths = [f"img/{i:02d}.jpg" for i in range(n)]
    r = evaluate_predictions(probs, np.zeros(n, dtype=int), ["a", "b"], paths=paths)
    assert len(r.top_losses) == 12
    assert [t.path for t in r.top_losses] == paths[:12]
    first = r.top_losses[0]
    assert first.loss == pytest.approx(-math.log(0.05))
    assert (first.true, first.predicted, first.index) == ("a", "b", 0)
    assert first.confidence == pytest.approx(0.95)
    # Without paths the index still identifies the sample.
    assert evaluate_predictions(probs, np.zeros(n, dtype=int), ["a", "b"]).top_losses[0].path == ""


def test_per_class_and_macro_f1_over_present_classes() -> None:
    # Class c never occurs and is never predicted: listed with zeros, left out of macro F1.
    r = evaluate_predictions(_onehot_probs([0, 0, 1, 1], 3), np.array([0, 0, 1, 1]), ["a", "b", "c"])
    assert r.macro_f1 == pytest.approx(1.0)
    assert r.per_class[2].name == "c"
    assert (r.per_class[2].precision, r.per_class[2].recall, r.per_class[2].f1, r.per_class[2].support) == (
        0.0,
        0.0,
        0.0,
        0,
    )
    # Class b predicted but never true: it counts, with F1 0; a has P=1, R=1/2, F1=2/3.
    r = evaluate_predictions(_onehot_probs([0, 1], 3), np.array([0, 0]), ["a", "b", "c"])
    assert r.per_class[0].f1 == pytest.approx(2 / 3)
    assert r.macro_f1 == pytest.approx(1 / 3)


def test_to_dict_round_trips_through_json() -> None:
    r = evaluate_predictions(
        TOPK_PROBS,
        TOPK_TARGETS,
        SIX,
        paths=[f"p{i}.jpg" for i in range(4)],
        fine_to_coarse=np.array([0, 0, 0, 1, 1, 1]),
        attr_probs=np.array([[0.9], [0.2], [0.6], [0.4]]),
        attr_targets=np.array([[1], [0], [1], [1]]),
    )
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert EvalReport.from_dict(json.loads(json.dumps(d))) == r
    assert report_from_dict(d) == r
    assert set(d) >= {"top1", "per_class", "confusion", "reliability", "top_losses", "per_attribute"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probs": np.ones(4)}, "2-D"),
        ({"targets": np.array([0, 1])}, "shape"),
        ({"targets": np.array([0, 1, 2, 6])}, "out of range"),
        ({"targets": np.array([0, 1, 2, -1])}, "out of range"),
        ({"targets": np.array([0.0, 1.0, 2.0, 3.0])}, "integer"),
        ({"probs": -TOPK_PROBS}, "non-negative"),
        ({"probs": np.zeros((4, 6))}, "sum to 0"),
        ({"class_names": ["a", "b"]}, "names"),
        ({"paths": ["x.jpg"]}, "paths"),
        ({"fine_to_coarse": np.array([0, 1])}, "fine_to_coarse"),
        ({"coarse_probs": np.full((4, 2), 0.5)}, "coarse_targets or fine_to_coarse"),
        ({"coarse_probs": np.full((3, 2), 0.5), "coarse_targets": np.zeros(3, dtype=int)}, "rows"),
        ({"attr_probs": np.zeros((4, 2))}, "together"),
        ({"attr_probs": np.zeros((4, 2)), "attr_targets": np.zeros((4, 3))}, r"\(N, A\)"),
        ({"attr_probs": np.zeros((4, 2)), "attr_targets": np.full((4, 2), 2)}, "0 and 1"),
        (
            {"attr_probs": np.zeros((4, 2)), "attr_targets": np.zeros((4, 2)), "attr_thresholds": [0.5]},
            "attr_thresholds",
        ),
    ],
)
def test_bad_inputs_raise_value_error(kwargs: dict, message: str) -> None:
    args = {"probs": TOPK_PROBS, "targets": TOPK_TARGETS, "class_names": SIX, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(args.pop("probs"), args.pop("targets"), args.pop("class_names"), **args)


def test_helpers_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        derive_coarse(np.ones((2, 3)), np.array([0, 1]), 2)
    with pytest.raises(ValueError):
        derive_coarse(np.ones((2, 3)), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError):
        choose_thresholds(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        expected_calibration_error(np.ones((2, 3)) / 3, np.array([0, 1, 2]))


def test_attribute_f1_scores_only_the_likelier_of_two_exclusive_values() -> None:
    """As predictions show them: flavour=plain 0.9 and flavour=vanilla 0.8 on one photo keep only plain."""
    probs = np.array([[0.9, 0.1], [0.2, 0.1]])
    targets = np.array([0, 1])
    names = ["flavour=plain", "flavour=vanilla"]
    attr_p = np.array([[0.9, 0.8], [0.1, 0.7]])
    attr_y = np.array([[1, 0], [0, 1]])
    kw = {"attr_probs": attr_p, "attr_targets": attr_y, "attr_names": names}
    free = evaluate_predictions(probs, targets, ["a", "b"], **kw)
    resolved = evaluate_predictions(probs, targets, ["a", "b"], **kw,
                                    attr_exclusive=[("flavour=plain", "flavour=vanilla")])
    assert free.attribute_f1 < 1.0 and resolved.attribute_f1 == 1.0  # the vanilla false positive is gone
    assert free.attribute_map == resolved.attribute_map  # AP ranks the raw probabilities either way


def test_bootstrap_intervals_match_explicit_resamples_and_shrink_with_more_photos() -> None:
    from sklearn.metrics import f1_score

    from skulens.evaluate.metrics import bootstrap_intervals

    rng = np.random.default_rng(3)
    t = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 5, 200))
    ci = bootstrap_intervals(t, p, 5, rounds=300, seed=1)
    # The same resamples, drawn explicitly: rows of counts -> photo indices.
    w = np.random.default_rng(1).multinomial(200, np.full(200, 1 / 200), size=300)
    top1, f1 = [], []
    for row in w:
        idx = np.repeat(np.arange(200), row)
        top1.append(np.mean(t[idx] == p[idx]))
        f1.append(f1_score(t[idx], p[idx], average="macro", labels=np.union1d(t[idx], p[idx]), zero_division=0))
    assert ci["top1"] == pytest.approx(tuple(np.percentile(top1, [2.5, 97.5])))
    assert ci["macro_f1"] == pytest.approx(tuple(np.percentile(f1, [2.5, 97.5])))
    assert ci["top1"][0] < np.mean(t == p) < ci["top1"][1] and ci["coarse_top1"] is None
    wide = bootstrap_intervals(t[:50], p[:50], 5, seed=1)["top1"]
    assert wide[1] - wide[0] > ci["top1"][1] - ci["top1"][0]  # fewer photos, less certainty
    hits = np.array([1, 0, -1, 1] * 50)  # -1: no coarse label, left out
    coarse = bootstrap_intervals(t, p, 5, coarse_hits=hits, seed=1)["coarse_top1"]
    assert coarse[0] < 2 / 3 < coarse[1]
    # 3 coarse-labelled photos of 40, all right: resamples without one of them have no coarse accuracy (they
    # were counted as 0 %, and the interval read (0, 1) for a split with every coarse answer right)
    few = np.full(40, -1)
    few[:3] = 1
    assert bootstrap_intervals(t[:40], p[:40], 5, coarse_hits=few, seed=1)["coarse_top1"] == (1.0, 1.0)


# -- found by a mutation review (session 38): each of these went unnoticed when the rule it checks was broken --


def test_top5_counts_a_target_ranked_exactly_fifth_and_not_sixth() -> None:
    p = np.array([[0.30, 0.25, 0.20, 0.12, 0.08, 0.03, 0.02]] * 2)
    r = evaluate_predictions(p, np.array([4, 5]), [f"c{i}" for i in range(7)])
    assert r.top5 == pytest.approx(0.5)


def test_ece_a_confidence_on_a_bin_edge_falls_in_the_lower_bin() -> None:
    probs = np.array([[0.75, 0.25], [0.75, 0.25]])  # 0.75 is exactly an edge of 4 bins: (0.5, 0.75]
    _, table = expected_calibration_error(probs, np.array([0, 1]), n_bins=4)
    assert table[2] == pytest.approx((0.75, 0.5, 2))
    assert table[3] == (0.0, 0.0, 0)


def test_macro_f1_interval_uses_the_same_classes_as_the_macro_f1() -> None:
    targets = np.array([0, 0, 0, 1, 1, 1])  # 10 catalogue classes, 2 in the split, all right
    p = np.full((6, 10), 0.01)
    p[np.arange(6), targets] = 0.91
    r = evaluate_predictions(p, targets, [f"c{i}" for i in range(10)])
    assert r.macro_f1 == pytest.approx(1.0)
    assert r.macro_f1_ci == pytest.approx((1.0, 1.0))


def test_an_attribute_probability_equal_to_its_threshold_is_positive() -> None:
    attr_p = np.array([[0.4], [0.7], [0.2], [0.1]])
    attr_y = np.array([[1], [1], [0], [0]])
    thr = choose_thresholds(attr_p, attr_y)
    assert thr[0] == pytest.approx(0.4)
    r = evaluate_predictions(np.array([[0.9, 0.1]] * 4), np.zeros(4, int), ["a", "b"],
                             attr_probs=attr_p, attr_targets=attr_y, attr_thresholds=thr)
    assert r.per_attribute[0].f1 == pytest.approx(1.0)
