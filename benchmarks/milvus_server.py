"""A real Milvus server (HNSW, one partition per coarse class) beside FAISS, skulens' default, on the same vectors.

    python benchmarks/milvus_server.py [--n 1000000] [--fit] [--dim 1280] [--queries 1000] [--coarse 43]
                                       [--no-partitions] [--routed-classes 3] [--scratch DIR] [--no-write]

One run: generate N vectors once; start the Milvus 2.3 standalone server of the `[milvus-server]` extra on
localhost (skulens.search.milvus_server) and go through the skulens Milvus backend by URI: insert (one
partition per coarse class), flush and HNSW build (`optimize()`), single-query searches; stop the server and
delete its data; then the FAISS backend with its defaults (IVF-SQ8 with exact re-scoring above 20k
entries) on the same vectors and queries. Latency is one query per call through `VectorIndex.search`
(k=10): raw entries (recall@10 against exact inner-product search), filtered on the query's coarse class
(recall against exact search within the class: Milvus searches that class's partition only), and the
default distinct-product search. The Milvus collection uses Bounded consistency, as a service would;
a few queries with Strong (the skulens default) show what waiting for the server's time tick costs.

Vectors: the synthetic 1280-d embeddings of benchmarks/ann_index.py (a product / view / photo hierarchy
calibrated on real Lite2 embeddings of Grocery Store; 10 photos per product on average), here with
--coarse classes (43: Grocery Store's coarse classes). Queries are held-out photos of indexed products.

Before starting it checks free disk and memory against what the run needs (Milvus keeps each vector three
times on disk: write-ahead log, binlog, HNSW index file; at its peak the server holds it about four times in
memory) and stops, naming the largest N that fits; with --fit it runs that N instead and says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from ann_index import PHOTOS_PER_PRODUCT, Synthetic

K = 10
# Measured at 100k x 1280 (2-core machine): the server's data folder held 1.7 GB (write-ahead log 0.53, binlogs
# 0.48, HNSW files 0.45, etcd and metadata 0.2) and the server peaked at 2.6 GB RSS (all rows sit in growing
# segments until the flush, then the HNSW builds and loads beside them). Per float32 value, plus fixed parts:
# At 400k x 1280 the server peaked at 5.1 GB (about 9 B per value above the fixed part): the 100k figure
# overstates the per-value memory, so the estimate now uses 10 B.
DISK_PER_VALUE, DISK_FIXED_GB = 12.0, 0.3
SERVER_RAM_PER_VALUE, SERVER_FIXED_GB = 10.0, 0.6
CLIENT_RAM_PER_VALUE = 10.0  # this process: the vectors and records, then FAISS' copy + SQ8 codes + training


def proc_status(pid: int | str, key: str) -> float:
    """VmRSS / VmHWM of a process in GB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def du_gb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total / 2**30


def largest_fit(dim: int, scratch: Path, margin_gb: float) -> tuple[int, str]:
    """The most vectors this machine holds now (disk left for others: margin_gb), and what limits it."""
    disk = (shutil.disk_usage(scratch).free / 2**30 - margin_gb - DISK_FIXED_GB) * 2**30 / (dim * DISK_PER_VALUE)
    # the Milvus phase (server + this process's vectors) and the FAISS phase (after the server stopped)
    ram_gb = mem_available_gb() - 1.0
    ram = min((ram_gb - SERVER_FIXED_GB) * 2**30 / (dim * (SERVER_RAM_PER_VALUE + 4.0 + 1.0)),
              ram_gb * 2**30 / (dim * CLIENT_RAM_PER_VALUE))
    n, why = (disk, "disk") if disk < ram else (ram, "memory")
    return max(0, int(n) // 50_000 * 50_000), why


def make_data(n: int, dim: int, n_queries: int, n_coarse: int):
    gen = Synthetic(max(1, n // PHOTOS_PER_PRODUCT), dim, n_coarse=n_coarse)
    rng = np.random.default_rng(1)
    base = np.empty((n, dim), np.float32)
    products = np.empty(n, np.int64)
    for s in range(0, n, 50_000):
        base[s:s + 50_000], products[s:s + 50_000] = gen.photos(min(50_000, n - s), rng)
    queries, qprod = gen.photos(n_queries, np.random.default_rng(2))
    return base, products, gen.coarse_of[products], queries, gen.coarse_of[qprod]


def exact_topk(base: np.ndarray, queries: np.ndarray, coarse: np.ndarray, qcoarse: np.ndarray | None):
    """Exact top-K row numbers per query (within the query's coarse class when qcoarse is given)."""
    if qcoarse is None:
        import faiss

        return faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    out = np.empty((len(queries), K), np.int64)
    for c in np.unique(qcoarse):
        rows = np.flatnonzero(coarse == c)
        sel = np.flatnonzero(qcoarse == c)
        scores = queries[sel] @ base[rows].T
        top = np.argsort(-scores, axis=1)[:, :K]
        out[sel] = rows[top]
    return out


def routed_filters(base: np.ndarray, coarse: np.ndarray, queries: np.ndarray, qcoarse: np.ndarray,
                   n_classes: int) -> tuple[list[dict], float]:
    """Each query's coarse_label filter of a routed search (`skulens search --route`): the n_classes classes
    whose mean vector is nearest the query. The synthetic vectors have no photos for the model's coarse head,
    so a nearest-class-mean classifier on the same embeddings stands in for it; no class is given for free
    (the query's own class may be missed). Also: the share of queries whose own class is among them."""
    means = np.stack([base[coarse == c].mean(axis=0) for c in range(int(coarse.max()) + 1)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    top = np.argsort(-(queries @ means.T), axis=1)[:, :n_classes]
    hit = float(np.mean([c in row for c, row in zip(qcoarse, top)]))
    return [{"coarse_label": [f"coarse{c:02d}" for c in row]} for row in top], hit


def measure(index, queries: np.ndarray, gt: np.ndarray | None, *, group: bool = False,
            filters: list[dict] | None = None) -> dict[str, float]:
    times, hits = [], []
    for i, q in enumerate(queries):
        flt = filters[i] if filters else None
        t = time.perf_counter()
        row = index.search(q, K, group_by_product=group, filter=flt)[0]
        times.append(time.perf_counter() - t)
        hits.append([int(h.record.id) for h in row])
    ms = 1000 * np.asarray(times)
    out = {"queries": len(times), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    if gt is not None:
        out["recall"] = float(np.mean([len(set(h) & set(g.tolist())) / K for h, g in zip(hits, gt)]))
    return out


def run_backend(kind: str, where: str, base, records, queries, gts, filters, n_filtered: int, n_grouped: int,
                strong_sample: int = 0, partitions: bool = True, ef_sweep: tuple[int, ...] = (),
                routed: list[dict] | None = None) -> dict:
    from threadpoolctl import threadpool_limits

    from skulens.search.index import create_index

    out: dict = {"backend": kind}
    options = {"consistency_level": "Bounded", "partitions": partitions} if kind == "milvus" else {}
    index = create_index(kind, where, base.shape[1], **options)
    t0 = time.perf_counter()
    step = 10_000
    for s in range(0, len(base), step):
        index.add(records[s:s + step], base[s:s + step])
        if s and s % 100_000 == 0:
            print(f"  {kind}: {s:,} inserted ({time.perf_counter() - t0:.0f} s)", flush=True)
    out["insert_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    index.optimize()  # Milvus: flush, wait for the HNSW build, load; FAISS: train and fill the IVF-SQ8 lists
    out["build_s"] = time.perf_counter() - t1
    info = index.info()
    out["ann"], out["ann_params"] = info["ann"], info.get("ann_params", {})
    out["search_params"] = info.get("search_params") or {}
    print(f"  {kind}: inserted in {out['insert_s']:.0f} s, built {out['ann']} in {out['build_s']:.0f} s", flush=True)
    gt, gt_f = gts
    with threadpool_limits(1):  # this process: one thread per query, as a service handling concurrent requests
        measure(index, queries[:20], None)  # warm-up
        out["raw"] = measure(index, queries, gt)
        out["filtered"] = measure(index, queries[:n_filtered], gt_f[:n_filtered], filters=filters[:n_filtered])
        # routed: recall against the exact search over everything (what the routing may lose, it loses here)
        out["routed"] = measure(index, queries[:n_filtered], gt[:n_filtered], filters=routed[:n_filtered])
        out["grouped"] = measure(index, queries[:n_grouped], None, group=True)
        # what `skulens search --route` and serve run: routed and grouped into distinct products
        out["routed_grouped"] = measure(index, queries[:n_grouped], None, group=True, filters=routed[:n_grouped])
        if strong_sample:
            out["strong"] = strong_latency(index, queries[:strong_sample])
        out["ef_sweep"] = []
        if ef_sweep and out["ann"] == "HNSW":  # the same built index searched with other ef (beam width)
            default = dict(index.search_params)
            for ef in ef_sweep:
                index.search_params = {**default, "ef": ef}
                measure(index, queries[:20], None)
                row = {"ef": ef, "raw": measure(index, queries, gt),
                       "filtered": measure(index, queries[:n_filtered], gt_f[:n_filtered], filters=filters[:n_filtered]),
                       "routed": measure(index, queries[:n_filtered], gt[:n_filtered], filters=routed[:n_filtered])}
                out["ef_sweep"].append(row)
                print(f"  ef {ef}: {row}", flush=True)
            index.search_params = default
    out["client_rss_gb"] = proc_status("self", "VmRSS")
    index.close()
    return out


def strong_latency(index, queries: np.ndarray) -> dict[str, float]:
    """The same raw search, Strong consistency (the skulens default): each waits for the server's time tick."""
    times = []
    for q in queries:
        t = time.perf_counter()
        index.client.search(index.collection, data=[q], limit=K, output_fields=["product_id"],
                            search_params={"metric_type": "IP", "params": index.search_params},
                            consistency_level="Strong")
        times.append(time.perf_counter() - t)
    ms = 1000 * np.asarray(times)
    return {"queries": len(times), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def fmt(r: dict) -> str:
    params = ", ".join(f"{k} {v}" for k, v in {**r["ann_params"], **r["search_params"]}.items() if k != "build_s")
    raw, flt, grp, rte = r["raw"], r["filtered"], r["grouped"], r["routed"]
    return (f"| {r['backend']} | {r['ann']} ({params}) | {r['insert_s']:.0f} | {r['build_s']:.0f} | "
            f"{raw['p50_ms']:.2f} | {raw['p99_ms']:.2f} | {raw['recall']:.3f} | "
            f"{flt['p50_ms']:.2f} / {flt['p99_ms']:.2f} | {flt['recall']:.3f} | "
            f"{rte['p50_ms']:.2f} / {rte['p99_ms']:.2f} | {rte['recall']:.3f} | {grp['p50_ms']:.2f} / {grp['p99_ms']:.2f} "
            f"| {r['routed_grouped']['p50_ms']:.2f} / {r['routed_grouped']['p99_ms']:.2f} "
            f"| {r['memory']} | {r.get('disk', '')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=1280, help="1280: the EfficientNet-Lite0/Lite2 embedding")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--filtered", type=int, default=300, help="queries filtered on their coarse class")
    ap.add_argument("--grouped", type=int, default=300, help="default (distinct-product) searches")
    ap.add_argument("--coarse", type=int, default=43, help="coarse classes = Milvus partitions")
    ap.add_argument("--partitions", action=argparse.BooleanOptionalAction, default=True,
                    help="Milvus: one partition per coarse class (default), or everything in one")
    ap.add_argument("--scratch", default=None, help="where the Milvus server keeps its data (temp dir)")
    ap.add_argument("--disk-margin-gb", type=float, default=3.0, help="disk left free for everyone else")
    ap.add_argument("--fit", action="store_true", help="lower --n to the largest size that fits (in steps of 50k)")
    ap.add_argument("--ef", default="64,32",
                    help="Milvus HNSW: more search-time ef values measured on the same index (default 64,32; '' for none)")
    ap.add_argument("--routed-classes", type=int, default=3,
                    help="coarse classes a routed search visits (3: the most `skulens search --route` visits)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    ef_sweep = tuple(int(v) for v in args.ef.split(",") if v.strip())

    import faiss

    from skulens.search.index import IndexRecord
    from skulens.search.milvus_server import LocalMilvusServer

    scratch = Path(tempfile.mkdtemp(prefix="milvus-bench-", dir=args.scratch))
    try:
        fit, limit = largest_fit(args.dim, scratch, args.disk_margin_gb)
        print(f"free disk {shutil.disk_usage(scratch).free / 2**30:.1f} GB (keeping {args.disk_margin_gb:g} GB for "
              f"others), available memory {mem_available_gb():.1f} GB: room for ~{fit:,} x {args.dim} vectors "
              f"({limit} is the limit)", flush=True)
        asked = args.n
        if args.n > fit:
            if not args.fit:
                raise SystemExit(f"{args.n:,} vectors do not fit here (see above): pass --n {fit} or --fit, "
                                 "or --scratch on a larger disk")
            args.n = fit
        size_note = (f"Asked for {asked:,} vectors; {args.n:,} is what fitted ({limit}: free disk "
                     f"{shutil.disk_usage(scratch).free / 2**30:.1f} GB less {args.disk_margin_gb:g} GB kept for others, "
                     f"{mem_available_gb():.1f} GB memory available, at ~{DISK_PER_VALUE:g} B of server disk and "
                     f"~{SERVER_RAM_PER_VALUE:g} B of server memory at peak per float32 value). " if args.n < asked else "")
        t0 = time.perf_counter()
        base, products, coarse, queries, qcoarse = make_data(args.n, args.dim, args.queries, args.coarse)
        gt = exact_topk(base, queries, coarse, None)
        gt_f = exact_topk(base, queries[:args.filtered], coarse, qcoarse[:args.filtered])
        records = [IndexRecord(str(i), f"p{products[i]}", f"p{products[i]}", coarse_label=f"coarse{coarse[i]:02d}")
                   for i in range(args.n)]  # id = row number: hits compare with the exact top-k directly
        filters = [{"coarse_label": f"coarse{c:02d}"} for c in qcoarse]
        routed, own_class = routed_filters(base, coarse, queries, qcoarse, args.routed_classes)
        print(f"{args.n:,} x {args.dim} vectors, {args.coarse} coarse classes, exact top-{K}: "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        rows = []

        server = LocalMilvusServer(scratch / "milvus")
        t1 = time.perf_counter()
        server.start()
        print(f"Milvus server up in {time.perf_counter() - t1:.1f} s at {server.uri}", flush=True)
        try:
            r = run_backend("milvus", server.uri, base, records, queries, (gt, gt_f), filters, args.filtered,
                            args.grouped, strong_sample=50, partitions=args.partitions, ef_sweep=ef_sweep,
                            routed=routed)
            r["memory"] = (f"server {proc_status(server.pid, 'VmRSS'):.1f} (peak {proc_status(server.pid, 'VmHWM'):.1f})"
                           f" + client {r['client_rss_gb']:.1f}")
            r["disk"] = f"{du_gb(scratch / 'milvus'):.1f}"
            data = scratch / "milvus" / "data"
            print("  milvus data folder, GB:", {p.name: round(du_gb(p), 2) for p in data.iterdir() if p.is_dir()},
                  flush=True)
        finally:
            server.remove_data()
        rows.append(fmt(r))
        strong = r["strong"]
        sweep = [f"| {s['ef']} | {s['raw']['p50_ms']:.2f} | {s['raw']['p99_ms']:.2f} | {s['raw']['recall']:.3f} | "
                 f"{s['filtered']['p50_ms']:.2f} / {s['filtered']['p99_ms']:.2f} | {s['filtered']['recall']:.3f} | "
                 f"{s['routed']['p50_ms']:.2f} / {s['routed']['p99_ms']:.2f} | {s['routed']['recall']:.3f} |"
                 for s in r["ef_sweep"]]
        print(rows[-1], flush=True)

        before = proc_status("self", "VmRSS")
        f = run_backend("faiss", str(scratch / "faiss"), base, records, queries, (gt, gt_f), filters,
                        args.filtered, args.grouped, routed=routed)
        f["memory"] = f"index ~{f['client_rss_gb'] - before:.1f} in process (vectors + SQ8 codes)"
        f["disk"] = "(not saved)"
        rows.append(fmt(f))
        print(rows[-1], flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    import milvus
    import pymilvus

    body = "\n".join([
        (f"{size_note}{args.n:,} x {args.dim}-d synthetic embeddings (benchmarks/ann_index.py's generator, calibrated on real "
         f"Lite2 embeddings; {args.coarse} coarse classes), {args.queries} held-out query photos, k={K}, one query "
         "per call through `VectorIndex.search`. Milvus: the 2.3.5 standalone server of the `milvus` package "
         f"(pymilvus {pymilvus.__version__}) on this machine, by URI, "
         f"{'one partition per coarse class' if args.partitions else 'no partitions (--no-partitions)'}, Bounded "
         f"consistency; FAISS {faiss.__version__}: skulens' default index, in this process, queries on one thread "
         "(the server uses its own threads). Recall@10 against exact inner-product search; filtered = "
         f"coarse_label of the query's class ({args.filtered} queries, recall within the class); routed = a routed "
         f"photo search (`skulens search --route`) at its most, {args.routed_classes} classes: the {args.routed_classes} "
         "whose mean vector is nearest the query (a nearest-class-mean classifier stands in for the model's coarse "
         f"head; the query's own class among them for {100 * own_class:.1f} % of the queries), recall against "
         "exact search over everything (raw entries, like the other recall columns); grouped = the "
         f"default distinct-product search ({args.grouped} queries); routed + grouped = both, what `skulens search "
         "--route` and serve's search_route run. Insert and build in seconds; memory in GB "
         "(server RSS after the queries; the client holds the vectors and records too); disk = the server's data "
         f"folder in GB. Milvus {milvus.__version__}."),
        "",
        ("| backend | index (params) | insert s | build s | p50 ms | p99 ms | recall@10 | filtered p50 / p99 ms "
        "| filtered recall@10 | routed p50 / p99 ms | routed recall@10 | grouped p50 / p99 ms "
        "| routed + grouped p50 / p99 ms | memory GB | disk GB |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        (f"Milvus with Strong consistency (the skulens default), same raw search, {strong['queries']} queries: "
        f"p50 {strong['p50_ms']:.1f} ms, p99 {strong['p99_ms']:.1f} ms (it waits until the server's time ticks pass the "
        "request's timestamp; proxy.timeTickInterval is 200 ms)."),
        *(["", (f"Milvus HNSW, the same index searched with other ef (default {r['search_params'].get('ef')}; "
                "Bounded consistency):"), "",
           ("| ef | p50 ms | p99 ms | recall@10 | filtered p50 / p99 ms | filtered recall@10 | routed p50 / p99 ms "
           "| routed recall@10 |"),
           "|---|---|---|---|---|---|---|---|", *sweep] if sweep else []),
    ])
    print(body)
    if not args.no_write:
        from _results import append_section

        append_section("Milvus server (HNSW, partitions per coarse class) beside FAISS",
                       "python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
