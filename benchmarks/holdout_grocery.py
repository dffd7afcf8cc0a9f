"""A recipe measured where val cannot flatter it: selected on a held-out part of Grocery Store train, scored
on val (photos of two other stores, never used for any choice in the run).

    python benchmarks/holdout_grocery.py [--fraction 0.15 | --folds K --fold I] [--preset NAME] [--flip-tta]
                                         [--decay-norm-bias] [--out DIR] [--set KEY=VALUE ...]

Train is split per class (seeded, stratified: `fraction` of each class's photos) into the photos the model
trains on and a hold-out from the same stores; the run selects its epoch, EMA/raw weights, coarse rule and
temperature on that hold-out, as `skulens train` does on val. The bundle is then evaluated on val.
`--decay-norm-bias` restores the weight decay on norm scales and biases that skulens applied before issue 9
(for the side-by-side check of that change). Appends both numbers to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section


def _decay_everything() -> None:
    from skulens.train import optim

    plain = optim.param_groups

    def decayed(cfg, model):  # type: ignore[no-untyped-def]
        return [{**g, "weight_decay": cfg.weight_decay} for g in plain(cfg, model)]

    optim.param_groups = decayed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Grocery Store dataset (default: the usual lookup)")
    ap.add_argument("--fraction", type=float, default=0.15, help="share of each class's train photos held out")
    ap.add_argument("--folds", type=int, default=None, help="k-fold: hold out fold --fold of K stratified folds of "
                    "train instead of --fraction (`skulens.data.catalogue.stratified_folds`, seed 0)")
    ap.add_argument("--fold", type=int, default=1, help="with --folds: which fold (1..K) is held out")
    ap.add_argument("--decay-norm-bias", action="store_true", help="the pre-issue-9 weight decay (all parameters)")
    ap.add_argument("--preset", default=None, help="a `skulens train --preset` recipe (best, default) before --set")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    ap.add_argument("--flip-tta", action="store_true",
                    help="also score the bundle with test-time flips (mean of the photo's and its mirror's "
                         "probabilities) on the hold-out and on val, side by side with the plain pass")
    ap.add_argument("--out", default=f"runs/bench-holdout-{time.strftime('%Y%m%d-%H%M%S')}")
    ns = ap.parse_args()

    from skulens.config import apply_preset, resolve_config
    from skulens.data.catalogue import _stratified_split, load_catalogue, stratified_folds
    from skulens.data.locate import resolve_data
    from skulens.evaluate.evaluator import evaluate_model
    from skulens.models.predictor import load_model
    from skulens.train.engine import fit

    if ns.decay_norm_bias:
        _decay_everything()
    data = resolve_data(ns.data)
    cat = load_catalogue(data)
    train = list(cat.split("train"))
    if ns.folds is not None:
        if ns.folds < 2 or not 1 <= ns.fold <= ns.folds:
            ap.error(f"need --folds >= 2 and --fold in 1..--folds, got {ns.folds} and {ns.fold}")
        held = stratified_folds(train, ns.folds, seed=0)[ns.fold - 1]
        out_of_fold = set(held)
        kept = [s for s in train if s not in out_of_fold]
        held_how = f"fold {ns.fold} of {ns.folds} stratified folds, seeded"
    else:
        kept, held = _stratified_split(train, ns.fraction, seed=0)
        held_how = f"{ns.fraction:.0%} of each class, seeded"
    holdout_cat = dataclasses.replace(cat, splits={"train": kept, "val": held})
    overrides = apply_preset(dict(item.split("=", 1) for item in ns.set), ns.preset)
    cfg = resolve_config({"data": str(data), "out": ns.out, "baseline": False, **overrides})
    t0 = time.perf_counter()
    result = fit(cfg, catalogue=holdout_cat)
    report = evaluate_model(load_model(result.bundle), data, split="val", progress=True)
    wall = time.perf_counter() - t0

    tta_lines: list[str] = []
    if ns.flip_tta:
        tta_lines = _flip_tta_rows(result.bundle, {"hold-out of train": held, "val": list(cat.split("val"))})

    hold = result.report
    variant = "weight decay on every parameter (before issue 9)" if ns.decay_norm_bias else \
        "no weight decay on norm scales and biases (skulens default)"
    body = "\n".join([
        f"Train split: {len(kept)} photos train on, {len(held)} held out ({held_how}); "
        f"every selection (epoch, EMA, coarse rule, temperature) made on the hold-out; val ({report.n} photos, "
        "two other stores) used for nothing but the last row. Recipe: "
        + (f"preset {ns.preset}" if ns.preset else "the default")
        + (f" with {', '.join(ns.set)}" if ns.set else "") + f"; {variant}.",
        "",
        "| scored on | fine top-1 | coarse top-1 | macro-F1 |",
        "|---|---|---|---|",
        (f"| hold-out of train (selection) | {100 * hold.top1:.1f} | {100 * (hold.coarse_top1 or 0):.1f} | "
         f"{100 * hold.macro_f1:.1f} |"),
        (f"| val (untouched) | {100 * report.top1:.1f} | {100 * (report.coarse_top1 or 0):.1f} | "
         f"{100 * report.macro_f1:.1f} |"),
        "",
        *tta_lines,
        f"Best epoch {result.best_epoch}; wall time {wall / 60:.1f} min.",
    ])
    command = "python benchmarks/holdout_grocery.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    append_section(f"Hold-out selection on Grocery Store train: {variant}", command, body)
    print(body)
    return 0


def _flip_tta_rows(bundle, splits) -> list[str]:  # type: ignore[no-untyped-def]
    """Top-1 with and without test-time flips (the photo and its mirror, probabilities averaged), per split."""
    from skulens.data.splits import prepare_split
    from skulens.models.predictor import load_model

    model = load_model(bundle)
    rows = [("Test-time flips (fine top-1 from one forward pass per view; the flip row averages the photo's and its "
             "mirror's probabilities):"), "", "| scored on | photos | plain | flip TTA | photos changed (right / wrong) |",
            "|---|---|---|---|---|"]
    for name, samples in splits.items():
        split = prepare_split(list(samples), model.card, desc=name, progress=False)
        plain = model.run(split.images).fine
        mirrored = model.run([t.flip(-1) for t in split.images]).fine
        y = split.fine.numpy()
        a, b = plain.argmax(1), ((plain + mirrored) / 2).argmax(1)
        fixed, broken = int(((a != y) & (b == y)).sum()), int(((a == y) & (b != y)).sum())
        rows.append(f"| {name} | {len(y)} | {100 * (a == y).mean():.1f} | {100 * (b == y).mean():.1f} | "
                    f"{fixed} / {broken} |")
    return [*rows, ""]


if __name__ == "__main__":
    raise SystemExit(main())
