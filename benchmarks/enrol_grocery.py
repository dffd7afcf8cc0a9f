"""New products from one photo: `skulens enroll` on Grocery Store, ranked among all 81 products (val).

    python benchmarks/enrol_grocery.py [--bundle runs/enrol-seen60/bundle] [--draws 2] [--work DIR]
                                       [--retrain "1 catalogue photo + description,5 shop photos"]

A model is trained on 60 of the 81 products (the seeded split of benchmarks/_grocery_subset.py; the
subset is hard-linked outside the repository and `skulens train --data SUBSET` runs with the default
recipe when --bundle does not exist yet, about 15 minutes on 2 cores). Then, for each condition, a copy
of the bundle gets the 21 other products through `skulens.search.enroll.enroll` (the path behind
`skulens enroll`), one product at a time, and `skulens.load(bundle).predict` answers every val photo:

- 1 catalogue photo, as it is (`studio_views=0`: enrolment as it was before the studio views);
- 1 catalogue photo (the product's iconic photo on white, also seen in enroll()'s 16 studio views, and those
  views once more as the catalogue-to-shop map learned on the 60 seen products puts them; the same without
  the map, as enrolment was before session 30);
- 1 catalogue photo + its description (the description reaches the model through the bundle's text
  aligner, learned here on the 60 seen products when the bundle has none), with and without the map;
- 1, 3 and 5 shop photos (drawn from the new product's train photos; --draws seeded draws, averaged).

Reported per condition: top-1 among all 81 on the val photos of the 21 new products, top-1 of the 60
seen products' val photos after enrolling (before: the bundle as trained), and how often a new product's
photo is taken for another new product vs a seen one. Appends to RESULTS.md.

`--retrain NAMES` (conditions by name, comma-separated): for each, the first draw is enrolled keeping its
photos, then `skulens retrain` folds the 21 enrolled products into a normal fine-tune of the bundle (its
recorded recipe, on the 60 products' catalogue plus the enrolled photos; selection on the 60 seen products' val)
and the retrained bundle answers every val photo: the path a shop takes after enrolling, next to enrolment
alone. Each retrain is a full run (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _grocery_subset import DEFAULT_DATA, seen_new_split, write_subset
from _results import append_section


def train_seen_bundle(data: Path, work: Path, out: Path, seen: list[str]) -> Path:
    subset = write_subset(data, work / "grocery-seen60", set(seen))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "skulens.cli", "train", "--data", str(subset), "--out", str(out.parent)],
                   check=True)
    print(f"trained {out} in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    return out


def ensure_aligner(bundle: Path) -> str:
    """The bundle's text aligner, learned on its own (seen) products' photos and texts when it has none."""
    import skulens
    from skulens.data.catalogue import load_catalogue
    from skulens.models.bundle import read_card
    from skulens.search.align import align_catalogue, load_aligner

    existing = load_aligner(bundle)
    if existing is not None and existing.info.get("products") != 60:
        raise SystemExit(f"{bundle}: its text aligner knows {existing.info.get('products')} products, not the 60 "
                         "seen ones (it may have read the new products' texts); delete text_align.safetensors")
    if existing is None:
        aligner, products, photos = align_catalogue(skulens.load(bundle), load_catalogue(read_card(bundle).dataset["path"]))
        aligner.save(bundle)
        return f"learned here on the {products} seen products ({photos} photos)"
    return "the bundle's own, learned on the 60 seen products"


def evaluate(bundle: Path, val_paths: list[str], val_labels: np.ndarray, new: set[str]) -> dict:
    import skulens

    model = skulens.load(bundle)
    preds = [p.fine_label for p in model.predict(val_paths, top_k=1)]  # top-1 fine, before any abstention
    preds = np.array(preds, dtype=object)
    is_new = np.array([lab in new for lab in val_labels])
    right = preds == val_labels
    pred_new = np.array([p in new for p in preds])
    return {"new": float(right[is_new].mean()), "seen": float(right[~is_new].mean()),
            "new_as_other_new": float((~right & pred_new)[is_new].mean()),
            "new_as_seen": float((~right & ~pred_new)[is_new].mean()),
            "seen_as_new": float(pred_new[~is_new].mean()), "n_new": int(is_new.sum()), "n_seen": int((~is_new).sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--bundle", type=Path, default=Path("runs/enrol-seen60/bundle"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "skulens-enrol")
    ap.add_argument("--draws", type=int, default=2, help="seeded draws of the shop photos per k")
    ap.add_argument("--shots", default="1,3,5")
    ap.add_argument("--retrain", default="", help="conditions (names, comma-separated) whose first draw is also "
                    "retrained after enrolment")
    ap.add_argument("--only-retrain", action="store_true", help="measure only the --retrain conditions")
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()
    from skulens.data.catalogue import load_catalogue
    from skulens.search.enroll import enroll

    t0 = time.perf_counter()
    cat = load_catalogue(ns.data)
    names = list(cat.classes)  # in class-id order: the seeded split picks the same products everywhere
    seen_i, new_i = seen_new_split(len(names), 60)
    seen, new = [names[i] for i in seen_i], [names[i] for i in new_i]
    if not (ns.bundle / "model.safetensors").is_file():
        train_seen_bundle(ns.data, ns.work, ns.bundle, seen)
    val = cat.split("val")
    val_paths, val_labels = [str(s.path) for s in val], np.array([s.label for s in val], dtype=object)
    train_by = {}
    for s in cat.split("train"):
        train_by.setdefault(s.label, []).append(s.path)

    # name, enroll() options, per draw: product -> (photos, text)
    conditions: list[tuple[str, dict, list[dict]]] = []
    iconic = [{p: ([cat.products[p].image], "") for p in new}]
    conditions.append(("1 catalogue photo, as it is (no studio views: before issue 13's part 3)",
                       {"studio_views": 0}, iconic))
    described = [{p: ([cat.products[p].image], cat.products[p].description) for p in new}]
    conditions.append(("1 catalogue photo, studio views, no catalogue-to-shop map (before session 30)",
                       {"shop_map": False}, iconic))
    conditions.append(("1 catalogue photo + description, no catalogue-to-shop map (before session 30)",
                       {"shop_map": False}, described))
    conditions.append(("1 catalogue photo", {}, iconic))
    conditions.append(("1 catalogue photo + description", {}, described))
    for k in (int(x) for x in ns.shots.split(",")):
        draws = []
        for d in range(ns.draws):
            r = np.random.default_rng(1000 * k + d)
            draws.append({p: ([train_by[p][i] for i in r.choice(len(train_by[p]), size=k, replace=False)], "")
                          for p in new})
        conditions.append((f"{k} shop photo{'s' if k > 1 else ''}", {}, draws))

    retrain = [x.strip() for x in ns.retrain.split(",") if x.strip()]
    unknown = set(retrain) - {name for name, _, _ in conditions}
    if unknown:
        raise SystemExit(f"--retrain: no condition named {sorted(unknown)}; they are "
                         f"{[name for name, _, _ in conditions]}")
    if ns.only_retrain:
        conditions = [c for c in conditions if c[0] in retrain]
    aligned = ensure_aligner(ns.bundle)
    from skulens.models.bundle import load_bundle
    from skulens.search.enroll import catalogue_map, reference_bank

    net, card = load_bundle(ns.bundle)
    bank = reference_bank(ns.bundle, net, card, None)  # cached in the bundle: every copy reuses it
    catalogue_map(ns.bundle, net, card, bank)  # the trained products' catalogue views too (once per bundle)
    before = evaluate(ns.bundle, val_paths, val_labels, set(new))
    print(f"before: seen {before['seen']:.3f}", flush=True)
    rows, retrained = [], []
    for name, options, draws in conditions:
        results = []
        for d, plan in enumerate(draws):
            copy = ns.work / "bundles" / f"{name.replace(' ', '_').replace('+', 'and')}-{d}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(ns.bundle, copy)
            t = time.perf_counter()
            kept = name in retrain and d == 0
            for product in new:
                photos, text = plan[product]
                info = cat.products[product]
                enroll(copy, product, photos, text=text, title=info.title, keep_photos=kept,
                       coarse=info.coarse_label, **options)
            secs = (time.perf_counter() - t) / len(new)
            results.append(evaluate(copy, val_paths, val_labels, set(new)) | {"s_per_product": secs})
            print(name, d, results[-1], flush=True)
            if kept:
                out = ns.work / "retrained" / copy.name
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "skulens.cli", "retrain", "--model", str(copy), "--out",
                                str(out), "-q"], check=True)
                minutes = (time.perf_counter() - t) / 60
                retrained.append((name, evaluate(out / "bundle", val_paths, val_labels, set(new)), minutes))
                print(name, "retrained", retrained[-1], flush=True)
        mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        rows.append((name, len(draws), mean))
    table = ["| enrolled from | draws | new products: top-1 among all 81 | taken for another new | taken for a seen one "
             "| seen products: top-1 (before: %.1f) | seen photos taken for a new product | s per product |"
             % (100 * before["seen"]), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, n, m in rows:
        table.append(f"| {name} | {n} | {100 * m['new']:.1f} | {100 * m['new_as_other_new']:.1f} | "
                     f"{100 * m['new_as_seen']:.1f} | {100 * m['seen']:.1f} | {100 * m['seen_as_new']:.1f} | "
                     f"{m['s_per_product']:.1f} |")
    if retrained:
        table += ["", ("Then retrained (`skulens retrain --model ENROLLED --out RUN`: the first draw's enrolled "
                       "bundle, its enrolled photos folded into a normal fine-tune):"), "",
                  ("| enrolled from, then retrained | new products: top-1 among all 81 | taken for another new | "
                   "taken for a seen one | seen products: top-1 | seen photos taken for a new product | retrain min |"),
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, m, minutes in retrained:
            table.append(f"| {name} | {100 * m['new']:.1f} | {100 * m['new_as_other_new']:.1f} | "
                         f"{100 * m['new_as_seen']:.1f} | {100 * m['seen']:.1f} | {100 * m['seen_as_new']:.1f} | "
                         f"{minutes:.1f} |")
    body = (f"Bundle `{ns.bundle}`: trained on 60 of the 81 products (seeded split), then the other 21 enrolled one "
            f"at a time by `skulens.search.enroll.enroll`; val photos: {before['n_new']} of the 21 new products, "
            f"{before['n_seen']} of the 60 seen ones; every prediction is among all 81. Text aligner: {aligned}.\n\n"
            + "\n".join(table)
            + f"\n\nWall time: {(time.perf_counter() - t0) / 60:.1f} min.")
    print(body)
    if not ns.no_write:
        append_section("One-photo enrolment among all 81 grocery products (issue 13)",
                       "python benchmarks/enrol_grocery.py " + shlex.join(sys.argv[1:]), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
