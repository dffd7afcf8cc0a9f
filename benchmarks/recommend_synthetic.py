"""Recommenders on a SYNTHETIC shopping log over the Grocery Store catalogue: HitRate@10 / NDCG@10.

    python benchmarks/recommend_synthetic.py [--data PATH] [--bundle runs/bench5/bundle] [--users 5000]

No public behaviour log ships with skulens, so the log is generated (`skulens.recommend.shopping_log`:
users with a latent taste over coarse categories, Zipf popularity, sessions, noise, repeats), written
to CSV and read back. Product content vectors: MiniLM text embeddings of title and description,
concatenated with the bundle's image embeddings of the catalogue photo when ``--bundle``
is given. Leave-last-out evaluation of popularity (baseline), co-occurrence only, content only and the
hybrid default; then the cold-start case (every event of 10% of the products hidden from training);
then the same on a small log. Appends a section to benchmarks/RESULTS.md (``--no-results``: print only).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section

from skulens.data.catalogue import Product, load_catalogue
from skulens.recommend.recommenders import (
    ContentRecommender,
    HybridRecommender,
    PopularityRecommender,
    RecommendationReport,
    Recommender,
    cold_start_split,
    evaluate,
    leave_last_out,
)
from skulens.recommend.shopping_log import Event, generate_shopping_log, read_events, write_events

K = 10
COLD_FRACTION = 0.1
Table = list[tuple[str, RecommendationReport]]
GROCERY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store"


def content_vectors(products: list[Product], bundle: str | None) -> tuple[dict[str, np.ndarray], str]:
    """Text (and, with a bundle, catalogue-photo) embeddings: the library's `item_vectors`."""
    from skulens.recommend.recommenders import item_vectors

    model = None
    source = "MiniLM text embedding of `product_text` (title and description)"
    if bundle:
        import skulens

        model = skulens.load(bundle)
        source += f" + image embedding of the catalogue photo ({bundle}), concatenated"
    return item_vectors({p.label: p for p in products}, model), source


def log_stats(events: list[Event], n_products: int) -> str:
    counts = np.sort(np.array(list(Counter(e.product_id for e in events).values())))[::-1]
    top = counts[: max(1, round(0.2 * n_products))].sum() / counts.sum()
    kinds = Counter(e.event for e in events)
    users = len({e.user_id for e in events})
    return (f"{users} users, {len(events)} events ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
            f"{len(counts)} of {n_products} products touched; the top 20% of products get {100 * top:.0f}% "
            "of events")


def repeats_held_out(events: list[Event], test: dict[str, str]) -> int:
    """Test users who had touched their held-out product before some other product (a repeat)."""
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    for position, e in enumerate(events):
        if e.user_id in test:
            by_user.setdefault(e.user_id, []).append((e.timestamp, position, e.product_id))
    count = 0
    for user, history in by_user.items():
        products = [p for _, _, p in sorted(history)]
        last_other = max(i for i, p in enumerate(products) if p != test[user])
        count += test[user] in products[:last_other]
    return count


def rows(reports: Table, cold: bool = False) -> list[str]:
    if cold:
        out = ["| recommender | recall@10 of hidden products | NDCG@10 | users |", "|---|---|---|---|"]
    else:
        out = ["| recommender | HitRate@10 | NDCG@10 | coverage | fit s | recommend s |",
               "|---|---|---|---|---|---|"]
    for label, r in reports:
        se = math.sqrt(max(r.hit_rate * (1 - r.hit_rate), 1e-12) / max(r.n_users, 1))
        if cold:
            out.append(f"| {label} | {r.hit_rate:.3f} ± {se:.3f} | {r.ndcg:.3f} | {r.n_users} |")
        else:
            out.append(f"| {label} | {r.hit_rate:.3f} ± {se:.3f} | {r.ndcg:.3f} | {r.coverage:.2f} | "
                       f"{r.fit_seconds:.2f} | {r.recommend_seconds:.2f} |")
    return out


def run_all(train: list[Event], test: dict[str, str], vectors: dict[str, np.ndarray], catalogue: list[str]
            ) -> Table:
    contenders: list[tuple[str, Recommender]] = [
        ("popularity (baseline)", PopularityRecommender()),
        ("co-occurrence only (hybrid without content)", HybridRecommender()),
        ("content only", ContentRecommender(vectors)),
        ("**hybrid (skulens default)**", HybridRecommender(vectors)),
    ]
    out = []
    for label, rec in contenders:
        report = evaluate(rec, train, test, K, catalogue=catalogue)
        if report.details:
            label += f" alpha={report.details['alpha']:.1f}, beta={report.details['beta']:.2f}"
        print(f"  {label}: {report.summary()}", flush=True)
        out.append((label, report))
    return out


def reading(main_rows: Table, cold_rows: Table, small_rows: Table) -> str:
    """The tables in plain words, from the numbers (rows: popularity, co-occurrence, content, hybrid)."""
    def gain(table: Table, a: int, b: int) -> str:
        hit = 100 * (table[a][1].hit_rate - table[b][1].hit_rate)
        return f"{hit:+.1f} HitRate / {100 * (table[a][1].ndcg - table[b][1].ndcg):+.1f} NDCG points"

    small = (f" and {gain(small_rows, 3, 1)} on the small log, whose blend is tuned on a few hundred users"
             if small_rows else "")
    return (f"Reading: the hybrid is {gain(main_rows, 3, 0)} against popularity. Against co-occurrence "
            f"alone, adding content changes {gain(main_rows, 3, 1)} on products with events{small}: no clear "
            "gain, "
            "because the only link the generator puts between content and behaviour is the coarse "
            "category, which a few thousand users teach co-occurrence anyway. Content is what "
            "reaches products without events: the hybrid recovers "
            f"{100 * cold_rows[3][1].hit_rate:.1f}% of held-out cold-start products in its top 10 (content "
            f"alone {100 * cold_rows[2][1].hit_rate:.1f}%, popularity {100 * cold_rows[0][1].hit_rate:.1f}%, "
            f"co-occurrence alone {100 * cold_rows[1][1].hit_rate:.1f}%); its blend is tuned for all users, "
            "so it gives new products less room than pure content does. Not shown: anything about real "
            "shoppers, cross-category complements, or fine-grained similarity within a category (the "
            "generator has none).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(GROCERY))
    ap.add_argument("--bundle", default=None, help="add image embeddings from this bundle to the content")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--small-users", type=int, default=500, help="a second, sparse log (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=f"runs/recommend-synthetic-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ns = ap.parse_args()
    t0 = time.perf_counter()
    cat = load_catalogue(ns.data)
    products = [cat.products[label] for label in cat.classes]
    catalogue = [p.label for p in products]
    vectors, source = content_vectors(products, ns.bundle)
    print(f"content vectors: {source}", flush=True)

    pairs = [(p.label, p.coarse_label or p.label) for p in products]
    singletons = sum(1 for n in Counter(c for _, c in pairs).values() if n == 1)
    path = write_events(Path(ns.out) / "synthetic_log.csv", generate_shopping_log(pairs, n_users=ns.users,
                                                                                  seed=ns.seed))
    events = read_events(path)
    train, test = leave_last_out(events)
    print(f"log {path}: {log_stats(events, len(products))}; {len(test)} test users", flush=True)
    main_rows = run_all(train, test, vectors, catalogue)
    novel_train, novel_test = leave_last_out(events, novel=True)
    print(f"discovery protocol: {len(novel_test)} test users", flush=True)
    novel_rows = run_all(novel_train, novel_test, vectors, catalogue)

    cold_train, cold_test, hidden = cold_start_split(events, fraction=COLD_FRACTION, seed=ns.seed)
    print(f"cold start: {len(hidden)} products hidden, {len(cold_test)} test users", flush=True)
    cold_rows = run_all(cold_train, cold_test, vectors, catalogue)

    small: list[str] = []
    small_rows: Table = []
    if ns.small_users:
        small_events = generate_shopping_log(pairs, n_users=ns.small_users, seed=ns.seed + 1)
        s_train, s_test = leave_last_out(small_events)
        print(f"small log: {log_stats(small_events, len(products))}", flush=True)
        small_rows = run_all(s_train, s_test, vectors, catalogue)
        small = [(f"Small log, {ns.small_users} users (seed {ns.seed + 1}; {len(s_test)} test users): "
                  f"{log_stats(small_events, len(products))}."), "", *rows(small_rows), ""]
    wall = time.perf_counter() - t0

    synthetic = ("**The behaviour log is synthetic.** No public shopping log ships with skulens; this one is "
                 "made by `skulens.recommend.shopping_log.generate_shopping_log` (users with a Dirichlet taste "
                 "over coarse categories, Zipf popularity within a category in a random order, sessions that "
                 "tend to stay in a category, 10% random noise, 10% repeat purchases, a view/cart/purchase "
                 "funnel). These numbers say how well the recommenders recover *that* generative story; they "
                 "are not evidence about real shoppers.")
    setup = (f"Catalogue: Grocery Store, {len(products)} products in {len(cat.coarse_classes)} coarse "
             f"categories ({singletons} of them a single product). Content vectors: {source}. Log (seed "
             f"{ns.seed}, written to and read back from `{path}`): {log_stats(events, len(products))}.")
    protocol = (f"Leave-last-out: each user's last product is held out (users with two or more distinct "
                f"products: {len(test)}); all that user's events on it leave train, so "
                f"{repeats_held_out(events, test)} held-out repeats are scored as discoveries. Seen products "
                "are excluded. ± is the binomial standard error of HitRate. Coverage: share of the catalogue "
                "in some top-10 list. The hybrid's blend weights (alpha: content, beta: popularity) are "
                "tuned on a leave-last-out split of the training log only (its fit time includes that); its "
                "other defaults (asymmetric cosine 0.8, cold-start borrowing from 3 content neighbours) were "
                "picked on a log with another seed (123), never on this one.")
    novel = ("Discovery protocol (`leave_last_out(novel=True)`): the held-out product is each user's most "
             "recent *first-time* product, and the user's history is cut just before it (no repeat is ever a "
             f"target; {len(novel_test)} test users):")
    cold = (f"Cold-start products: every training event of {len(hidden)} random products "
            f"({100 * COLD_FRACTION:.0f}%) hidden; scored on the {len(cold_test)} users whose held-out "
            "product is one of them (the products stay in the catalogue, so only content can reach them):")
    body = "\n".join([synthetic, "", setup, "", protocol, "", *rows(main_rows), "", novel, "",
                      *rows(novel_rows), "", cold, "", *rows(cold_rows, cold=True), "", *small,
                      reading(main_rows, cold_rows, small_rows), "",
                      f"Wall time of the benchmark (encoders, generation, fits, evaluations): {wall:.0f} s."])
    if ns.no_results:
        print(body)
    else:
        command = "python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]])
        append_section("Recommendations on a synthetic shopping log (grocery catalogue)", command, body)
        print(f"appended to benchmarks/RESULTS.md ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
