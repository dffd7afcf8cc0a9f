"""Routed photo search on Grocery Store: what visiting only the predicted coarse classes keeps and costs.

    python benchmarks/route_grocery.py [--bundle runs/default/bundle] [--data PATH] [--mass 0.8,0.9,0.95,0.99]

Real photos, a real index: the bundle embeds the train photos and the 81 catalogue photos into a FAISS index
(`skulens index build`'s path; exact search at this size, so every difference below is the routing's). The
296 val photos (two other stores) are searched through `SearchEngine.by_vector` with k=10 distinct products,
unrouted and routed at each mass (`skulens search --route MASS`, serve's `search_route`), with the coarse
probabilities of the same forward pass (`Model.embed_with_coarse`). Reported: how many of the unrouted top-10
products a routed search keeps, top-1 / top-5 product accuracy against the photo's label, the coarse classes
visited (mean, and how many photos visit 1 / 2 / 3), and search time. The latency a routed search saves on a
Milvus server partitioned by coarse class is measured by benchmarks/milvus_server.py (its routed columns).
Appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import append_section

DEFAULT_DATA = HERE.parent.parent / "shared" / "datasets" / "grocery-store"
K = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="runs/default/bundle")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--mass", default="0.8,0.9,0.95,0.99", help="route masses to compare (comma-separated)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    ns = ap.parse_args()
    masses = [float(m) for m in ns.mass.split(",")]

    import skulens
    from skulens.data.catalogue import load_catalogue
    from skulens.search.catalogue_index import build_catalogue_index
    from skulens.search.engine import ROUTE_MASS, ROUTE_MAX_CLASSES, SearchEngine, route_classes

    t_start = time.perf_counter()
    model = skulens.load(ns.bundle, device="cpu")
    cat = load_catalogue(ns.data)
    val = cat.split("val")
    paths = [str(s.path) for s in val]
    truth = [s.label for s in val]
    with tempfile.TemporaryDirectory() as tmp:
        built = build_catalogue_index(model, cat, str(Path(tmp) / "index"))
        index = built.index
        vectors, coarse = model.embed_with_coarse(paths)
        assert coarse is not None, "the bundle has no coarse classes to route by"
        t0 = time.perf_counter()
        plain = [[h.product_id for h in row] for row in SearchEngine(model, index).by_vector(vectors, k=K)]
        t_plain = time.perf_counter() - t0
        plain_entries = entries(SearchEngine(model, index), vectors, None)
        rows = [("unrouted (every class)", 1.0, 1.0, float(len(model.card.coarse_classes)), "-",
                 acc(plain, truth, 1), acc(plain, truth, 5), t_plain)]
        for mass in masses:
            engine = SearchEngine(model, index, route=mass)
            t0 = time.perf_counter()
            routed = [[h.product_id for h in row] for row in engine.by_vector(vectors, k=K, coarse=coarse)]
            seconds = time.perf_counter() - t0
            kept = float(np.mean([len(set(r) & set(p)) / len(p) for r, p in zip(routed, plain, strict=True)]))
            got = entries(engine, vectors, coarse)
            kept_entries = float(np.mean([len(g & p) / len(p) for g, p in zip(got, plain_entries, strict=True)]))
            sizes = np.bincount([len(c) for c in route_classes(coarse, mass)], minlength=ROUTE_MAX_CLASSES + 1)[1:]
            name = f"routed, mass {mass:g}" + (" (--route default)" if mass == ROUTE_MASS else "")
            rows.append((name, kept_entries, kept, float(np.dot(np.arange(1, len(sizes) + 1), sizes) / len(paths)),
                         " / ".join(str(int(n)) for n in sizes), acc(routed, truth, 1), acc(routed, truth, 5),
                         seconds))
    wall = time.perf_counter() - t_start

    lines = [
        (f"Bundle `{ns.bundle}` ({model.card.backbone}); index: its embeddings of the {built.entries} train and "
        f"catalogue photos (FAISS, exact at this size); queries: the {len(paths)} val photos (two other stores), "
        f"k = {K} distinct products. Routed: the photo's coarse classes from the same forward pass, likeliest "
        f"first until they hold the mass, at most {ROUTE_MAX_CLASSES}; the {len(model.card.coarse_classes)} "
        "classes of the card. 'kept' = share of the unrouted top-10 the routed search also returns: raw index "
         "entries (photos; the recall@10 of benchmarks/milvus_server.py) and distinct products (the default search)."),
        "",
        ("| search | top-10 entries kept | top-10 products kept | classes visited (mean) | photos visiting 1 / 2 / 3 classes "
        "| top-1 product | top-5 product | s for all queries |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, kept_entries, kept, visited, sizes, a1, a5, sec in rows:
        lines.append(f"| {name} | {kept_entries:.3f} | {kept:.3f} | {visited:.2f} | {sizes} | {100 * a1:.1f} | {100 * a5:.1f} | "
                     f"{sec:.2f} |")
    lines += ["", f"Wall time: {wall / 60:.1f} min."]
    body = "\n".join(lines)
    print(body)
    if not ns.no_write:
        append_section("Routed photo search on Grocery Store (predicted coarse classes only)",
                       shlex.join(["python", "benchmarks/route_grocery.py", *sys.argv[1:]]), body)
    return 0


def entries(engine: object, vectors: np.ndarray, coarse: np.ndarray | None) -> list[set[str]]:
    """The top-K raw index entries (photo ids) per query, routed when the engine routes."""
    rows = engine.by_vector(vectors, k=K, coarse=coarse, group_by_product=False)  # type: ignore[attr-defined]
    return [{h.record.id for h in row} for row in rows]


def acc(ranked: list[list[str]], truth: list[str], k: int) -> float:
    return float(np.mean([t in r[:k] for r, t in zip(ranked, truth, strict=True)]))


if __name__ == "__main__":
    raise SystemExit(main())
