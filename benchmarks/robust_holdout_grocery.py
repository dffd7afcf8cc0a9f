"""Robustness fine-tunes selected on a hold-out of Grocery Store train, scored on the hold-out and on val.

    python benchmarks/robust_holdout_grocery.py [--base runs/hold-control/bundle] [--arms control,frozen]
                                                [--epochs 6] [--corrupt-fraction 0.75] [--seed 0] [--work DIR]

`benchmarks/robustness_grocery.py` selects each fine-tune's epoch on val, the split it then reports. Here the
split is the one `benchmarks/holdout_grocery.py` makes (15 % of each class's train photos, seed 0): BASE must be
a bundle that trained on the other 85 % with selection on that hold-out (`python benchmarks/holdout_grocery.py
--out runs/hold-control` makes it; it is trained here when missing, about 30 minutes on 2 cores). Each arm is the
robustness fine-tune of the robustness sections (`--init-from BASE --teacher BASE --corrupt-fraction F --epochs E
--monitor robust_top1 --lr 3e-4 --warmup-epochs 0.5`: BASE's soft targets on the clean photos, a share of each
batch degraded for the student) with its epoch selected on the hold-out's clean and degraded photos; `frozen` adds
`batch_norm=frozen` (every BatchNorm keeps BASE's statistics while the weights train), `control` adds nothing.
Then BASE and every arm are scored under the six corruptions at severities 1, 3, 5 (`evaluate_robustness`, fp32,
no attacks) on the hold-out and on val (other stores, used for no choice). Appends a table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section

ARMS = {"control": {}, "frozen": {"batch_norm": "frozen"}}
COLUMNS = ("gaussian_noise", "gaussian_blur", "jpeg", "brightness", "rotation", "occlusion")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--base", type=Path, default=Path("runs/hold-control/bundle"))
    ap.add_argument("--arms", default="control,frozen", help=f"fine-tunes beside BASE: {', '.join(ARMS)}")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--corrupt-fraction", type=float, default=0.75)
    ap.add_argument("--seed", type=int, default=0, help="the fine-tunes' seed (batch order, augmentations, "
                    "corruptions); the hold-out split stays seed 0")
    ap.add_argument("--max-steps", type=int, default=None, help="stop each fine-tune after N steps (a smoke check)")
    ap.add_argument("--limit", type=int, default=None, help="score N photos of each split (seeded sample), not all")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not append it to RESULTS.md")
    ap.add_argument("--work", type=Path, default=Path(f"runs/bench-robust-holdout-{time.strftime('%Y%m%d-%H%M%S')}"))
    ns = ap.parse_args()
    arms = list(dict.fromkeys(a.strip() for a in ns.arms.split(",") if a.strip()))
    if unknown := sorted(set(arms) - set(ARMS)):
        ap.error(f"--arms: no arm {unknown}; they are {', '.join(ARMS)}")

    from skulens.config import resolve_config
    from skulens.data.catalogue import _stratified_split, load_catalogue
    from skulens.data.locate import resolve_data
    from skulens.data.splits import prepare_split
    from skulens.evaluate.robustness import evaluate_robustness
    from skulens.models.bundle import load_bundle, read_card
    from skulens.train.engine import fit

    t0 = time.perf_counter()
    data = resolve_data(ns.data)
    cat = load_catalogue(data)
    kept, held = _stratified_split(list(cat.split("train")), 0.15, seed=0)
    holdout_cat = dataclasses.replace(cat, splits={"train": kept, "val": held})
    notes = []
    if ns.base.name in ("card.json", "model.safetensors"):
        ns.base = ns.base.parent
    if not (ns.base / "model.safetensors").is_file():
        if ns.base.name != "bundle" or ns.base.parent.exists():
            ap.error(f"--base {ns.base}: no bundle there; give a bundle, or RUN/bundle of a new folder RUN to train "
                     "it here")
        t = time.perf_counter()
        result = fit(resolve_config({"data": str(data), "out": str(ns.base.parent), "baseline": False}),
                     catalogue=holdout_cat)
        ns.base = result.bundle
        notes.append(f"BASE trained here (the default recipe on the 85 %) in {(time.perf_counter() - t) / 60:.1f} min.")
    sizes = (read_card(ns.base).dataset or {}).get("sizes")
    if sizes != {"train": len(kept), "val": len(held)}:
        ap.error(f"--base {ns.base} trained on {sizes}, not on this split's {len(kept)} photos with {len(held)} held "
                 "out: its 'hold-out' would be photos it trained on (make it with benchmarks/holdout_grocery.py)")
    bundles = {"base (no robustness fine-tune)": ns.base}
    for arm in arms:
        out = ns.work / arm
        t = time.perf_counter()
        result = fit(resolve_config({
            "data": str(data), "out": str(out), "baseline": False, "init_from": str(ns.base), "teacher": str(ns.base),
            "corrupt_fraction": ns.corrupt_fraction, "epochs": ns.epochs, "monitor": "robust_top1", "lr": 3e-4,
            "warmup_epochs": 0.5, "max_steps": ns.max_steps, "seed": ns.seed, **ARMS[arm]}), catalogue=holdout_cat)
        notes.append(f"{arm}: {(time.perf_counter() - t) / 60:.1f} min, epoch {result.best_epoch} selected.")
        bundles[arm] = result.bundle

    if ns.limit or ns.max_steps:
        notes.append(f"Smoke settings: --limit {ns.limit}, --max-steps {ns.max_steps} (not a measurement).")
    scored = {"hold-out": held, "val": list(cat.split("val"))}
    if ns.limit:
        rng = np.random.default_rng(0)
        scored = {k: [v[i] for i in sorted(rng.choice(len(v), min(ns.limit, len(v)), replace=False))]
                  for k, v in scored.items()}
    rows = []
    for name, bundle in bundles.items():
        net, card = load_bundle(bundle)
        for split, samples in scored.items():
            prepared = prepare_split(list(samples), card, desc=split, progress=False)
            rep = evaluate_robustness(net, card, prepared.images, prepared.fine.numpy(), attacks=(),
                                      severities=(1, 3, 5))
            means = rep.corruption_mean()
            cells = [100 * rep.clean_top1, 100 * float(np.mean(list(means.values())))]
            cells += [100 * means[c] for c in COLUMNS]
            rows.append(f"| {name} | {split} ({rep.n_images}) | " + " | ".join(f"{x:.1f}" for x in cells) + " |")
            print(rows[-1], flush=True)
    body = "\n".join([
        (f"BASE `{ns.base}`; hold-out: {len(held)} train photos (15 % of each class, seed 0), every arm's epoch selected "
        f"on it; val ({len(cat.split('val'))} photos, two other stores) chose nothing. Arms: {', '.join(arms)}; "
        f"{ns.epochs} epochs, corrupt fraction {ns.corrupt_fraction}, teacher BASE, monitor robust_top1, lr 3e-4, "
        f"warm-up 0.5 epochs, seed {ns.seed}. Corruptions at severities 1, 3, 5, fp32; clean is the fine head's raw top-1 in fp32 "
        "(not the evaluator's calibrated coarse rule)."), "",
        "| model | scored on | clean | mean corruption | noise | blur | JPEG | brightness | rotation | occlusion |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, "", *notes,
        f"Wall time: {(time.perf_counter() - t0) / 60:.1f} min."])
    command = "python benchmarks/robust_holdout_grocery.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    if not ns.no_write:
        append_section("Robustness fine-tunes selected on a hold-out of train (issue 12)", command, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
