"""Near-duplicate detection over a 100k-photo FAISS index, through the ANN index (no N x N matrix).

    python benchmarks/near_duplicates.py [--n 100000] [--planted 500]

Synthetic 1280-d vectors: 10,000 products with photos scattered around each product's centre
(cosine to a same-product photo about 0.45, so only true re-uploads are near-duplicates), plus
`--planted` re-uploads of random photos with slight noise (cosine > 0.99). Reports build and scan
time and how many planted pairs `skulens.search.duplicates.near_duplicates` recovers, and any other
groups it reports (false alarms). Appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _results import append_section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--planted", type=int, default=500)
    ap.add_argument("--threshold", type=float, default=0.97)
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()
    from skulens.search.duplicates import near_duplicates
    from skulens.search.index import IndexRecord, create_index

    rng = np.random.default_rng(0)
    n, d, products = ns.n, 1280, max(1, ns.n // 10)
    centres = rng.normal(size=(products, d)).astype(np.float32)
    y = rng.integers(0, products, n)
    x = centres[y] + 0.9 * rng.normal(size=(n, d)).astype(np.float32)
    dups = rng.choice(n, ns.planted, replace=False)
    x = np.concatenate([x, x[dups] + 0.01 * rng.normal(size=(ns.planted, d)).astype(np.float32)])
    y = np.concatenate([y, y[dups]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    records = [IndexRecord(id=f"e{i}", product_id=f"p{y[i]}", label=f"p{y[i]}") for i in range(len(x))]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = create_index("faiss", Path(tmp) / "ix", d)
        index.add(records, x)
        index.optimize()
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        groups = near_duplicates(index, threshold=ns.threshold, k=5)
        scan = time.perf_counter() - t0
        ann = index.info().get("ann")
    planted = {frozenset((f"e{i}", f"e{n + j}")) for j, i in enumerate(dups)}
    found = {frozenset(g.ids) for g in groups}
    body = (f"{len(x):,} entries (1280-d; {ns.planted} planted re-uploads), FAISS `{ann}`, threshold "
            f"{ns.threshold}, k=5 neighbours per photo.\n\n| build s | scan s | groups | planted pairs found | "
            f"other groups |\n|---|---|---|---|---|\n| {build:.0f} | {scan:.0f} | {len(groups)} | "
            f"{len(planted & found)}/{ns.planted} | {len(found - planted)} |\n\nMemory stays at the index's own: "
            "photos are queried in batches through the ANN index, never as an N x N similarity matrix.")
    print(body)
    if not ns.no_write:
        append_section("Near-duplicate detection at 100k photos", "python benchmarks/near_duplicates.py "
                       + " ".join(sys.argv[1:]), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
