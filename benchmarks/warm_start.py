"""Warm from the first request (issue 14): first-100 p99 after a restart against the warm p99, with and without
the warm-up, for the model behind `skulens serve` and for a reopened vector index.

    python benchmarks/warm_start.py [--model runs/bench9/bundle] [--data ../shared/datasets/grocery-store]
                                    [--index-size 1000000] [--dim 1280] [--scratch /tmp/skulens-warm]

- **model**: `skulens serve` is started as a subprocess (`--warmup` and `--no-warmup`, side by side); as soon
  as /readyz answers 200, one client sends 100 val photos one at a time (the first-100 p99), then 300 more
  (the warm p99 is over the last 200). Start-up time is until /readyz is 200.
- **index**: a FAISS index of INDEX_SIZE synthetic DIM-d vectors (the Lite2 embedding size) is built once
  and saved; each run reopens it in a fresh process after evicting its files from the page cache
  (posix_fadvise DONTNEED: what a restarted machine sees), optionally calls `warm()`, then runs 100 queries
  (first-100 p99) and 1000 more (warm p99). Queries are stored vectors with noise, k=10.

Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section
from _serve_common import Server

GOAL = 2.0  # first-100 p99 within 2x of the warm p99


def _p99(ms: list[float]) -> float:
    return float(np.percentile(ms, 99))


def model_runs(model: str, photos: list[Path], scratch: Path) -> list[dict]:
    import httpx

    rows = []
    for warm in (True, False):
        t0 = time.monotonic()
        server = Server(model, ["--warmup" if warm else "--no-warmup"], log=scratch / f"serve-{warm}.log").start()
        ready_s = time.monotonic() - t0
        try:
            ms = []
            with httpx.Client(timeout=60) as client:
                for i in range(400):
                    data = photos[i % len(photos)].read_bytes()
                    t = time.perf_counter()
                    r = client.post(f"{server.url}/v1/predict", files={"image": ("p.jpg", data, "image/jpeg")})
                    ms.append(1000 * (time.perf_counter() - t))
                    r.raise_for_status()
            startup = httpx.get(f"{server.url}/readyz").json().get("startup", {})
        finally:
            server.stop()
        rows.append({"part": "model (skulens serve, 1 client)", "warmup": warm, "ready_s": ready_s,
                     "warmup_s": (startup.get("warmup") or {}).get("seconds"), "first": _p99(ms[:100]),
                     "first_max": max(ms[:100]), "warm": _p99(ms[200:])})
    return rows


_CHILD = r'''
import json, os, sys, time
import numpy as np
from skulens.search.index import open_index
path, queries, warm = sys.argv[1], np.load(sys.argv[2]), sys.argv[3] == "1"
for name in os.listdir(path):  # a cold page cache, as after a reboot: evict this index's files
    fd = os.open(os.path.join(path, name), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
t0 = time.perf_counter()
index = open_index(path)
open_s = time.perf_counter() - t0
report = index.warm() if warm else {}
ms = []
for q in queries:
    t = time.perf_counter()
    index.search(q[None, :], 10)
    ms.append(1000 * (time.perf_counter() - t))
print(json.dumps({"open_s": open_s, "warm": report, "ms": ms}))
'''


def _queries(path: Path, scratch: Path) -> Path:
    """1100 stored vectors with noise, read before the runs (the runs evict the index from the cache)."""
    manifest = json.loads((path / "index.json").read_text())
    vecs = np.load(path / manifest["files"]["vectors"], mmap_mode="r")
    rng = np.random.default_rng(7)
    rows = np.sort(rng.integers(0, len(vecs), 1100))
    q = np.asarray(vecs[rows], np.float32) + rng.normal(0, 0.02, (len(rows), vecs.shape[1])).astype(np.float32)
    out = scratch / "queries.npy"
    np.save(out, q[rng.permutation(len(q))])
    return out


def build_index(path: Path, size: int, dim: int) -> float:
    from skulens.search.index import IndexRecord, create_index

    t0 = time.time()
    index = create_index("faiss", path, dim, overwrite=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(size // 10 + 1, dim)).astype(np.float32)
    for start in range(0, size, 50_000):
        n = min(50_000, size - start)
        owner = rng.integers(0, len(centres), n)
        vecs = centres[owner] + 0.4 * rng.normal(size=(n, dim)).astype(np.float32)
        index.add([IndexRecord(f"e{start + i}", f"p{owner[i]}", "x") for i in range(n)], vecs)
    index.optimize()
    index.save()
    index.close()
    return time.time() - t0


def index_runs(path: Path, scratch: Path) -> list[dict]:
    rows = []
    queries = _queries(path, scratch)
    for warm in (True, False):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(queries), "1" if warm else "0"],
                             check=True, capture_output=True, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        ms = res["ms"]
        rows.append({"part": "index (FaissIndex reopened, cold page cache)", "warmup": warm,
                     "ready_s": res["open_s"] + (res["warm"].get("seconds") or 0),
                     "warmup_s": res["warm"].get("seconds"), "action": res["warm"].get("action", "-"),
                     "first": _p99(ms[:100]), "first_max": max(ms[:100]), "warm": _p99(ms[100:])})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/bench9/bundle")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/grocery-store"))
    ap.add_argument("--index-size", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--scratch", default="/tmp/skulens-warm")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ns = ap.parse_args()
    scratch = Path(ns.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    if not ns.skip_model:
        photos = sorted((Path(ns.data) / "val").rglob("*.jpg"))[::3][:200]
        rows += model_runs(ns.model, photos, scratch)
    if not ns.skip_index:
        path = scratch / f"index-{ns.index_size}-{ns.dim}"
        if not (path / "index.json").exists():
            notes.append(f"index built in {build_index(path, ns.index_size, ns.dim):.0f} s")
        rows += index_runs(path, scratch)
        notes.append(f"index: {ns.index_size:,} x {ns.dim}-d vectors, "
                     f"{sum(f.stat().st_size for f in path.iterdir()) / 2**30:.1f} GiB on disk")
    header = ("| part | warm-up | ready after s | of it warm-up s | first-100 p99 ms | first-100 max ms | "
              "warm p99 ms | first / warm | goal <= 2x |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = r["first"] / r["warm"]
        lines.append(f"| {r['part']} | {'on' if r['warmup'] else 'off'} | {r['ready_s']:.1f} | "
                     f"{r['warmup_s'] if r['warmup_s'] is not None else '-'} | {r['first']:.1f} | "
                     f"{r['first_max']:.1f} | {r['warm']:.1f} | {ratio:.2f}x | "
                     f"{'met' if ratio <= GOAL else 'not met'} |")
    load = os.getloadavg()[0]
    body = "\n".join(lines) + f"\n\n{'; '.join(notes)}; load average at the end {load:.1f} (2 cores)."
    command = "python benchmarks/warm_start.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    append_section("Warm start: first 100 requests after a restart (issue 14)", command.strip(), body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
