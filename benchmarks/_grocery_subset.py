"""A Grocery Store catalogue restricted to some products, for experiments where the rest must stay unseen.

    python benchmarks/_grocery_subset.py --keep-seen 60 --out /tmp/grocery-seen60

Writes the grocery layout (classes.csv renumbered, train.txt, val.txt and the catalogue folder) with the
photos hard-linked from the original (copied where links cannot be made), outside the repository: the
data is not ours to copy in. The kept products are the first N of the same seeded permutation the search
benchmark uses (numpy default_rng(0).permutation(81)), so "seen" means the same products everywhere.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "grocery-store"


def seen_new_split(n_classes: int, seen: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (in classes.csv order) of the seen and the new products."""
    perm = np.random.default_rng(seed).permutation(n_classes)
    return np.sort(perm[:seen]), np.sort(perm[seen:])


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_subset(data: Path, out: Path, keep: set[str]) -> Path:
    """The grocery layout at `out` with only the classes named in `keep` (fine names)."""
    with (data / "classes.csv").open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r in reader if r]
    kept = [r for r in rows if r[0] in keep]
    if len(kept) != len(keep):
        raise SystemExit(f"unknown classes: {sorted(keep - {r[0] for r in kept})}")
    fine_id = {int(r[1]): i for i, r in enumerate(kept)}
    coarse_ids = sorted({int(r[3]) for r in kept})
    coarse_id = {c: i for i, c in enumerate(coarse_ids)}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "classes.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in kept:
            w.writerow([r[0], fine_id[int(r[1])], r[2], coarse_id[int(r[3])], r[4], r[5]])
            for rel in (r[4], r[5]):
                _link(data / rel.lstrip("/"), out / rel.lstrip("/"))
    for split in ("train.txt", "val.txt"):
        lines = []
        for line in (data / split).read_text(encoding="utf-8").splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 3 or int(parts[1]) not in fine_id:
                continue
            _link(data / parts[0], out / parts[0])
            lines.append(f"{parts[0]}, {fine_id[int(parts[1])]}, {coarse_id[int(parts[2])]}")
        (out / split).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--keep-seen", type=int, default=60)
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args()
    from skulens.data.catalogue import load_catalogue

    names = list(load_catalogue(ns.data).classes)  # in class-id order, as the search benchmark sees them
    seen, _ = seen_new_split(len(names), ns.keep_seen)
    write_subset(ns.data, ns.out, {names[i] for i in seen})
    print(f"{ns.out}: {ns.keep_seen} of {len(names)} products")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
