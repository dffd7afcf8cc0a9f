"""Vector index build time, query latency and recall@10 against exact search, FAISS and Milvus Lite.

    python benchmarks/ann_index.py [--sizes 10000 100000 1000000] [--backends faiss milvus]
                                   [--faiss-ann auto] [--milvus-index auto] [--budget-min 20] [--no-write]

For each size the parent process generates the vectors once (written to a scratch .npy, never held
twice in memory) and the exact top-10 of every query (faiss.knn, brute force). Each backend then runs
in its own child process, so its peak RSS is its own: build (add + ANN training, then save), reopen
from disk as a server would, and 1000 single-query searches (k=10). Milvus Lite gets a time budget
per size; what did not fit is reported as not measured, not extrapolated.

Vectors (1280-d, the EfficientNet-Lite2 pooled embedding): synthetic, because random unit vectors are
unrealistically hard and nothing like image embeddings. A product / view / photo hierarchy in a
768-d subspace with a power-law spectrum, plus a shared mean direction; the parameters were chosen
so that, with ~30 photos per product, the statistics match the real fine-tuned Lite2 embeddings of
the Grocery Store train split (runs/bench5/bundle, 2640 photos, 81 products): norm of the mean vector
0.46 (real 0.45), mean cosine of random pairs 0.21 (0.20), mean cosine to the 1st / 10th / 100th
nearest neighbour 0.94 / 0.88 / 0.37 (0.94 / 0.88 / 0.35), 90% of the variance in 106 principal
components (125). The benchmark uses 10 photos per product on average (lognormal popularity, a
long tail of products with one or two photos), a harder and more catalogue-like mix: the 10 nearest
neighbours of a photo often span several products. Queries are held-out photos of indexed products.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

DIM = 1280
K = 10
PHOTOS_PER_PRODUCT = 10
SWEEP_NPROBE = (8, 16, 32, 64)


# ---------------------------------------------------------------------------------------------
# data


class Synthetic:
    """Product / view / photo embeddings (see the module docstring); ``photos`` draws unit vectors."""

    def __init__(self, n_products: int, dim: int = DIM, seed: int = 0, rank: int = 768, alpha: float = 0.3,
                 mean: float = 0.7, coarse: float = 1.0, product: float = 0.8, view: float = 0.5,
                 photo: float = 0.4, views: int = 3, n_coarse: int = 300):
        rng = np.random.default_rng(seed)
        rank = min(rank, dim)
        self.basis = np.linalg.qr(rng.standard_normal((dim, rank)).astype(np.float32))[0].T  # rank x dim
        w = (np.arange(rank) + 1.0) ** -alpha
        self.w = (w / np.sqrt((w**2).sum())).astype(np.float32)
        m = rng.standard_normal(dim).astype(np.float32)
        self.mean = mean * m / np.linalg.norm(m)
        zc = rng.standard_normal((n_coarse, rank)).astype(np.float32) * self.w * coarse
        self.coarse_of = rng.integers(0, n_coarse, n_products)
        zp = zc[self.coarse_of] + rng.standard_normal((n_products, rank)).astype(np.float32) * self.w * product
        self.zv = np.repeat(zp, views, 0) + rng.standard_normal((n_products * views, rank)).astype(np.float32) * (
            self.w * view)
        pop = rng.lognormal(0.0, 1.0, n_products)
        self.pop = pop / pop.sum()
        self.views, self.photo = views, photo

    def photos(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pid = rng.choice(len(self.pop), n, p=self.pop)
        z = self.zv[pid * self.views + rng.integers(0, self.views, n)]
        z = z + rng.standard_normal(z.shape).astype(np.float32) * (self.w * self.photo)
        x = self.mean + z @ self.basis
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), pid


def make_dataset(n: int, n_queries: int, scratch: Path, dim: int) -> dict[str, str]:
    """Writes base.npy (n x dim), queries.npy, products.npy, coarse.npy and gt.npy (exact top-10 rows)."""
    import faiss

    gen = Synthetic(max(1, n // PHOTOS_PER_PRODUCT), dim)
    rng = np.random.default_rng(1)
    base = np.lib.format.open_memmap(scratch / "base.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    products = np.empty(n, np.int64)
    for s in range(0, n, 50_000):
        base[s:s + 50_000], products[s:s + 50_000] = gen.photos(min(50_000, n - s), rng)
    queries, _ = gen.photos(n_queries, np.random.default_rng(2))
    np.save(scratch / "queries.npy", queries)
    np.save(scratch / "products.npy", products)
    np.save(scratch / "coarse.npy", gen.coarse_of[products])
    t0 = time.perf_counter()
    _, gt = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    np.save(scratch / "gt.npy", gt)
    base.flush()
    del base
    return {"ground_truth_s": f"{time.perf_counter() - t0:.1f}"}


# ---------------------------------------------------------------------------------------------
# one backend at one size (child process)


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def latency(index, queries: np.ndarray, gt: np.ndarray | None, budget_s: float, group: bool) -> dict[str, float]:
    times, hits = [], []
    start = time.perf_counter()
    for i, q in enumerate(queries):
        t = time.perf_counter()
        row = index.search(q, K, group_by_product=group)[0]
        times.append(time.perf_counter() - t)
        hits.append([int(h.record.id) for h in row])
        if time.perf_counter() - start > budget_s and i >= 99:
            break
    ms = 1000 * np.asarray(times)
    out = {"queries": len(times), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    if gt is not None:
        out["recall"] = float(np.mean([len(set(h) & set(g.tolist())) / K for h, g in zip(hits, gt)]))
    return out


def child(backend: str, scratch: Path, ann: str, budget_s: float, sweep: bool, query_threads: int) -> dict:
    from skulens.search.index import IndexRecord, create_index, open_index

    deadline = time.perf_counter() + budget_s
    base = np.load(scratch / "base.npy", mmap_mode="r")
    products, coarse = np.load(scratch / "products.npy"), np.load(scratch / "coarse.npy")
    queries, gt = np.load(scratch / "queries.npy"), np.load(scratch / "gt.npy")
    n = len(base)
    where = scratch / ("faiss-index" if backend == "faiss" else "milvus.db")
    records = [IndexRecord(str(i), f"p{products[i]}", f"p{products[i]}", coarse_label=f"c{coarse[i]}")
               for i in range(n)]  # id = row number, so hits compare with the ground truth directly
    out: dict = {"backend": backend, "n": n}
    if backend == "faiss":
        index = create_index("faiss", where, base.shape[1], ann=ann)
        t0 = time.perf_counter()
        index.add(records, base)
        out["add_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        index.optimize()
        out["ann_s"] = time.perf_counter() - t1
    else:
        index = create_index("milvus", where, base.shape[1], index_type=ann)
        t0 = time.perf_counter()
        step = 10_000
        for s in range(0, n, step):
            index.add(records[s:s + step], base[s:s + step])
            if time.perf_counter() > deadline:
                out["note"] = (f"insert stopped at {s + step:,} of {n:,} rows after {(time.perf_counter() - t0) / 60:.1f} "
                               f"min (budget {budget_s / 60:.0f} min): not measured")
                index.close()
                out["peak_rss_gb"] = peak_rss_gb()
                return out
        out["add_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        index.optimize()  # flush, then load: Milvus Lite builds each segment's index here
        out["ann_s"] = time.perf_counter() - t1
    out["build_s"] = out["add_s"] + out["ann_s"]
    t2 = time.perf_counter()
    index.save()
    out["save_s"] = time.perf_counter() - t2
    out["ann"] = index.info()["ann"]
    out["ann_params"] = index.info().get("ann_params", {})
    index.close()
    del index, base, records
    gc.collect()
    t3 = time.perf_counter()
    index = open_index(where)  # as a server would: from disk, no rebuild
    out["open_s"] = time.perf_counter() - t3
    left = max(30.0, deadline - time.perf_counter())
    from threadpoolctl import threadpool_limits

    # Queries run one thread each (OpenMP and BLAS in this thread; Milvus Lite's server threads keep
    # the default): a service spreads concurrent requests over the cores, and two threads per
    # single query on a shared 2-core machine mostly add jitter (measured: p99 3x worse).
    with threadpool_limits(query_threads):
        out["raw"] = latency(index, queries, gt, left / 2, group=False)
        out["grouped"] = latency(index, queries[:300], None, left / 4, group=True)
        out["serving_rss_gb"] = rss_gb()
        if sweep and backend == "faiss" and out["ann"].startswith("ivf"):
            import dataclasses

            out["sweep"] = {}
            for nprobe in SWEEP_NPROBE:
                index.options = dataclasses.replace(index.options, nprobe=nprobe)
                out["sweep"][nprobe] = latency(index, queries, gt, 120.0, group=False)
    index.close()
    out["peak_rss_gb"] = peak_rss_gb()
    return out


# ---------------------------------------------------------------------------------------------
# parent: sizes x backends, then the report


def run_child(args: argparse.Namespace, backend: str, scratch: Path) -> dict:
    ann = args.faiss_ann if backend == "faiss" else args.milvus_index
    cmd = [sys.executable, __file__, "--child", backend, "--scratch", str(scratch), "--ann", ann,
           "--budget-min", str(args.budget_min), "--query-threads", str(args.query_threads)] + (
               [] if args.sweep else ["--no-sweep"])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " ".join((proc.stderr or "").strip().splitlines()[-3:])[:300]
        return {"backend": backend, "note": f"failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def fmt_row(size: int, r: dict) -> str:
    if "raw" not in r:
        return f"| {size:,} | {r['backend']} | | | | | | | | | {r.get('peak_rss_gb', float('nan')):.1f} | | {r['note']} |"
    raw, grp = r["raw"], r["grouped"]
    params = ", ".join(f"{k} {v}" for k, v in r["ann_params"].items() if k != "build_s")
    return (f"| {size:,} | {r['backend']} | {r['ann']}{f' ({params})' if params else ''} | {r['build_s']:.1f} "
            f"({r['add_s']:.1f} + {r['ann_s']:.1f}) | {r['save_s']:.1f} / {r['open_s']:.1f} | {raw['p50_ms']:.2f} | "
            f"{raw['p99_ms']:.2f} | {raw['recall']:.3f} | {grp['p50_ms']:.2f} / {grp['p99_ms']:.2f} | {raw['queries']} "
            f"| {r['peak_rss_gb']:.1f} | {r['serving_rss_gb']:.1f} | {r.get('note', '')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--backends", nargs="+", default=["faiss", "milvus"], choices=["faiss", "milvus"])
    ap.add_argument("--faiss-ann", default="auto", help="FAISS ann option: auto, flat, hnsw, ivf, ivfsq8, ivfpq")
    ap.add_argument("--milvus-index", default="auto", help="Milvus index_type: auto, FLAT, IVF_FLAT, HNSW, ...")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--query-threads", type=int, default=1, help="OpenMP / BLAS threads while querying")
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--budget-min", type=float, default=20.0, help="per backend and size; Milvus Lite stops there")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the FAISS nprobe sweep")
    ap.add_argument("--scratch", default=None, help="where the vectors go (1M x 1280 is 5.1 GB)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ann", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.scratch), args.ann, 60 * args.budget_min, args.sweep,
                               args.query_threads)))
        return 0

    import faiss

    rows, sweeps = [], []
    for size in args.sizes:
        scratch = Path(tempfile.mkdtemp(prefix=f"ann-{size}-", dir=args.scratch))
        try:
            t0 = time.perf_counter()
            info = make_dataset(size, args.queries, scratch, args.dim)
            print(f"{size:,} vectors: generated in {time.perf_counter() - t0:.0f} s "
                  f"(exact ground truth {info['ground_truth_s']} s)", flush=True)
            for backend in args.backends:
                r = run_child(args, backend, scratch)
                rows.append(fmt_row(size, r))
                print(rows[-1], flush=True)
                for nprobe, s in (r.get("sweep") or {}).items():
                    sweeps.append(f"| {size:,} | {r['ann']} | {nprobe} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                                  f"{s['recall']:.3f} |")
                    print(sweeps[-1], flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    header = [("| vectors | backend | structure | build s (add + ANN) | save / open s | p50 ms | p99 ms | recall@10 "
              "| grouped p50 / p99 ms | queries | peak RSS GB | serving RSS GB | notes |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    body = "\n".join([
        (f"{args.dim}-d synthetic embeddings (product / view / photo hierarchy calibrated on real Lite2 embeddings of "
        "Grocery Store train; see the docstring of benchmarks/ann_index.py), 10 photos per product on average; "
        f"{args.queries} held-out query photos, k={K}, one query per call through `VectorIndex.search` "
        "(raw entries for latency and recall; grouped = the default distinct-product search, 300 queries). "
        "Recall@10 against exact inner-product search (faiss.knn). Build = add + ANN training / Milvus "
        "flush and index load; latency measured after reopening the saved index. "
        f"faiss {faiss.__version__}; build with {faiss.omp_get_max_threads()} threads, queries with "
        f"{args.query_threads}; FAISS ann={args.faiss_ann}, "
        f"Milvus index={args.milvus_index}; budget {args.budget_min:g} min per backend and size."),
        "",
        *header, *rows,
        *(["", "FAISS IVF nprobe sweep (same index, same queries):", "",
           "| vectors | structure | nprobe | p50 ms | p99 ms | recall@10 |", "|---|---|---|---|---|---|", *sweeps]
          if sweeps else []),
        "",
        "Goal: FAISS at 1M, p99 < 10 ms at recall@10 >= 0.95.",
    ])
    print(body)
    if not args.no_write:
        from _results import append_section

        append_section("ANN index: build, latency, recall@10", "python benchmarks/" + " ".join(
            [Path(__file__).name, *sys.argv[1:]]), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
