"""Active learning by simulation on Grocery Store train: accuracy against the number of labels, photos chosen by
`skulens suggest-labels`' strategies vs at random.

    python benchmarks/active_learning_grocery.py [--rounds 10] [--step 81] [--seeds 3]

The simulation: train is split (seeded, stratified, 15 % of each class) into a pool and a hold-out from the
same stores. Every run starts from one random labelled photo per product (81 labels); each round the
strategy picks `step` more photos from the pool, whose labels are then "given", and the learner is refitted.
The learner is a logistic regression on frozen pretrained EfficientNet-Lite2 (ImageNet) embeddings: a model
that never saw these products, fitted in seconds, so that 4 strategies x 3 seeds x 10 rounds fit in minutes
on a CPU; the uncertainty the strategies rank by is this learner's. Scored on the train hold-out and on val
(296 photos, two other stores). A fine-tuned network would score higher at every budget; the question here
is only which photos to label, and what each strategy saves.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))
from _grocery_embeddings import load_embeddings
from _results import append_section

STRATEGIES = ("random", "margin", "kcenter", "margin-kcenter")


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int):  # type: ignore[no-untyped-def]
    import warnings

    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore", message="The number of unique classes")  # 1-3 photos a class, early on

    clf = LogisticRegression(C=10.0, max_iter=300)
    clf.fit(x, y)
    return clf


def _probs(clf, x: np.ndarray, n_classes: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    p = np.zeros((len(x), n_classes))
    p[:, clf.classes_] = clf.predict_proba(x)
    return p


def simulate(pool_x: np.ndarray, pool_y: np.ndarray, tests: dict[str, tuple[np.ndarray, np.ndarray]],
             n_classes: int, strategy: str, rounds: int, step: int, seed: int) -> list[dict[str, float]]:
    from skulens.train.active import select

    rng = np.random.default_rng(seed)
    labelled = [int(rng.choice(np.flatnonzero(pool_y == c))) for c in range(n_classes)]  # one per product
    curve = []
    for r in range(rounds + 1):
        clf = _fit(pool_x[labelled], pool_y[labelled], n_classes)
        row = {"labels": len(labelled)}
        row.update({name: float(np.mean(clf.predict(x) == y)) for name, (x, y) in tests.items()})
        curve.append(row)
        if r == rounds:
            break
        rest = np.setdiff1d(np.arange(len(pool_y)), labelled)
        picks = select(_probs(clf, pool_x[rest], n_classes), pool_x[rest], step, strategy=strategy,
                       labelled=pool_x[labelled], seed=seed * 1000 + r)
        labelled += [int(rest[i]) for i in picks]
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "grocery-store"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--step", type=int, default=81, help="labels added per round")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-active")
    ap.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    ns = ap.parse_args()

    from skulens.data.catalogue import _stratified_split, load_catalogue

    t0 = time.perf_counter()
    e = load_embeddings("pretrained:efficientnet_lite2", ns.data)
    cat = load_catalogue(ns.data)
    train = list(cat.split("train"))
    _, held = _stratified_split(train, 0.15, seed=0)
    held_paths = {str(s.path) for s in held}
    is_held = np.array([p in held_paths for p in e.train_paths])
    pool_x, pool_y = e.train_x[~is_held], e.train_y[~is_held]
    tests = {"hold-out": (e.train_x[is_held], e.train_y[is_held]), "val": (e.val_x, e.val_y)}
    n_classes = len(e.classes)
    curves: dict[str, list[list[dict[str, float]]]] = {}
    for strategy in STRATEGIES:
        curves[strategy] = [simulate(pool_x, pool_y, tests, n_classes, strategy, ns.rounds, ns.step, seed)
                            for seed in range(ns.seeds)]
        last = np.mean([c[-1]["hold-out"] for c in curves[strategy]])
        print(f"{strategy}: {curves[strategy][0][-1]['labels']} labels -> hold-out {100 * last:.1f}", flush=True)
    # Everything labelled: the ceiling of this learner.
    full = _fit(pool_x, pool_y, n_classes)
    ceiling = {name: float(np.mean(full.predict(x) == y)) for name, (x, y) in tests.items()}
    wall = (time.perf_counter() - t0) / 60

    labels = [row["labels"] for row in curves["random"][0]]

    def mean(strategy: str, split: str, i: int) -> float:
        return 100 * float(np.mean([c[i][split] for c in curves[strategy]]))

    lines = []
    for split in ("hold-out", "val"):
        lines += [(f"**{split}** (top-1 %, mean of {ns.seeds} seeds; all {len(pool_y)} pool photos labelled: "
                  f"{100 * ceiling[split]:.1f})"), "",
                  "| labels | " + " | ".join(STRATEGIES) + " |", "|---" * (len(STRATEGIES) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(f"{mean(s, split, i):.1f}" for s in STRATEGIES) + " |"
                  for i, n in enumerate(labels)]
        lines.append("")
    for split in ("hold-out", "val"):
        target = mean("random", split, len(labels) - 1)
        need = {s: next((n for i, n in enumerate(labels) if mean(s, split, i) >= target), None) for s in STRATEGIES}
        lines.append(f"Labels needed to reach random's {labels[-1]}-label accuracy on {split} ({target:.1f}): " +
                     ", ".join(f"{s} {n if n is not None else '>' + str(labels[-1])}" for s, n in need.items()) + ".")
    # The share depends on the budget: the same question at a third and two thirds of the curve too.
    picks = sorted({len(labels) // 3, 2 * len(labels) // 3, len(labels) - 1})
    others = [s for s in STRATEGIES if s != "random"]
    lines += ["", "Labels each strategy needs to reach random's accuracy at a budget (share of that budget):", "",
              "| split | random's budget | random's top-1 | " + " | ".join(others) + " |",
              "|---" * (len(others) + 3) + "|"]
    for split in ("hold-out", "val"):
        for j in picks:
            target = mean("random", split, j)
            cells = []
            for s in others:
                n = next((n for i, n in enumerate(labels) if mean(s, split, i) >= target), None)
                cells.append(f"{n} ({100 * n / labels[j]:.0f} %)" if n is not None else f">{labels[-1]}")
            lines.append(f"| {split} | {labels[j]} | {target:.1f} | " + " | ".join(cells) + " |")
    body = "\n".join([
        (f"Pool: {len(pool_y)} train photos; hold-out: {int(is_held.sum())} train photos (15 % of each class, seeded, "
        f"same stores); val: {len(e.val_y)} photos (two other stores). Start: 1 random labelled photo per product "
        f"({n_classes}); {ns.rounds} rounds of {ns.step} labels. Learner: logistic regression (C=10) on frozen "
        "pretrained EfficientNet-Lite2 embeddings (never trained on these products); the strategies rank by its "
        "probabilities and the same embeddings (`skulens.train.active.select`, as `skulens suggest-labels` does)."),
        "", *lines, "", f"Wall time: {wall:.1f} min."])
    print(body)
    if not ns.no_write:
        append_section("Active learning by simulation on Grocery Store train",
                       shlex.join(["python", "benchmarks/active_learning_grocery.py", *sys.argv[1:]]), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
