"""Inventory intake under load and across a crash, against a real `skulens serve --db`.

    python benchmarks/inventory_intake.py --model runs/bench5/bundle [--uploads 1000] [--duplicates 0.2]
                                          [--clients 50] [--photos DIR]

1. Exactness: `uploads` concurrent uploads to POST /v1/inventory/intake, `duplicates` of them repeats of
   photos already in the set; every photo must be counted once (the threshold is 0 here, so every unique
   photo counts and the expected total is known exactly).
2. Crash: the same uploads on a fresh database; the server is killed with SIGKILL after a third of them
   were answered, restarted on the same database, and the client sends every upload again (what a client
   that retries does). Afterwards: every unique photo is in the database exactly once, counts sum to the
   number of unique photos, one audit line per counted photo, SQLite integrity check ok.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section
from _serve_common import Server, intake_uploads, percentile


async def _send(url: str, key: str, uploads: list[tuple[int, bytes]], clients: int, stop_after: int | None = None,
                on_stop=None) -> dict[int, dict | str]:
    """POST every upload once with `clients` concurrent clients; {upload index: result dict or error}."""
    results: dict[int, dict | str] = {}
    queue = list(enumerate(uploads))
    answered = 0
    latencies: list[float] = []
    stopped = asyncio.Event()

    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"X-API-Key": key},
                                 limits=httpx.Limits(max_connections=clients)) as c:
        async def worker() -> None:
            nonlocal answered
            while queue and not stopped.is_set():
                i, (photo_id, data) = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/inventory/intake", files=[("images", (f"{photo_id}.jpg", data, "image/jpeg"))])
                    results[i] = r.json()["results"][0] if r.status_code == 200 else f"HTTP {r.status_code}"
                    latencies.append(time.perf_counter() - t0)
                except (httpx.HTTPError, ValueError) as exc:
                    results[i] = type(exc).__name__
                answered += 1
                if stop_after is not None and answered >= stop_after and not stopped.is_set():
                    stopped.set()
                    on_stop()

        await asyncio.gather(*(worker() for _ in range(clients)))
    results["_latencies"] = latencies  # type: ignore[index]
    return results


def _db_check(db: Path) -> dict[str, int | str]:
    con = sqlite3.connect(db)
    try:
        return {"photos": con.execute("SELECT COUNT(*) FROM photos").fetchone()[0],
                "distinct_photos": con.execute("SELECT COUNT(DISTINCT sha256) FROM photos").fetchone()[0],
                "counted_rows": con.execute("SELECT COUNT(*) FROM photos WHERE status='counted'").fetchone()[0],
                "count_total": con.execute("SELECT COALESCE(SUM(count), 0) FROM stock").fetchone()[0],
                "audit_intake": con.execute("SELECT COUNT(*) FROM audit WHERE action='intake'").fetchone()[0],
                "integrity": con.execute("PRAGMA integrity_check").fetchone()[0]}
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--photos", help="folder of photos (default: grocery train)")
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--duplicates", type=float, default=0.2, help="fraction of uploads that repeat a photo")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--out", default="runs/bench-inventory")
    ap.add_argument("--no-results", action="store_true")
    ns = ap.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    n_unique, uploads = intake_uploads(ns.photos, ns.uploads, ns.duplicates)
    # Threshold 0: every unique photo counts, so the right total is known exactly.
    args = ["--review-threshold", "0", "--max-batch", "16"]
    lines = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        # 1. exactness under concurrency
        db = Path(tmp) / "exact.sqlite"
        with Server(ns.model, [*args, "--db", str(db)], log=out / "server-exact.log") as server:
            t0 = time.perf_counter()
            res = asyncio.run(_send(server.url, server.key, uploads, ns.clients))
            wall = time.perf_counter() - t0
            lat = res.pop("_latencies")
            counts = httpx.get(f"{server.url}/v1/inventory").json()["counts"]
            rss = server.peak_rss_mb()
        statuses = Counter(r["status"] if isinstance(r, dict) else r for r in res.values())
        first_labels = Counter(r["label"] for r in res.values() if isinstance(r, dict) and r["status"] == "counted")
        check = _db_check(db)
        exact = (statuses.get("counted", 0) == n_unique and statuses.get("duplicate", 0) == ns.uploads - n_unique
                 and sum(counts.values()) == n_unique and dict(first_labels) == counts
                 and check["photos"] == n_unique and check["audit_intake"] == n_unique)
        ok &= exact
        lines += [(f"**Exactness**: {ns.uploads} uploads ({n_unique} distinct photos, {ns.uploads - n_unique} repeats), "
                  f"{ns.clients} concurrent clients, {wall:.1f} s ({ns.uploads / wall:.1f} uploads/s, p50 "
                  f"{1000 * percentile(lat, 50):.0f} ms, p99 {1000 * percentile(lat, 99):.0f} ms, server peak RSS "
                  f"{rss:.0f} MB)."), "",
                  f"- answers: {dict(statuses)}",
                  (f"- counts total {sum(counts.values())} over {len(counts)} products (expected {n_unique}); per-product "
                  f"counts equal the labels the counted answers reported: {dict(first_labels) == counts}"),
                  f"- database: {check}",
                  f"- exact: **{'yes' if exact else 'NO'}**", ""]

        # 2. kill -9 mid-intake, restart, client resends everything
        db = Path(tmp) / "crash.sqlite"
        server = Server(ns.model, [*args, "--db", str(db)], log=out / "server-crash.log").start()
        killed_at: list[float] = []

        def kill() -> None:
            killed_at.append(time.perf_counter())
            server.kill9()

        first = asyncio.run(_send(server.url, server.key, uploads, ns.clients, stop_after=ns.uploads // 3,
                                  on_stop=kill))
        first.pop("_latencies")
        answered_ok = sum(isinstance(r, dict) for r in first.values())
        failed = sum(not isinstance(r, dict) for r in first.values())
        before = _db_check(db)
        server = Server(ns.model, [*args, "--db", str(db)], port=server.port, log=out / "server-crash.log").start()
        second = asyncio.run(_send(server.url, server.key, uploads, ns.clients))
        second.pop("_latencies")
        counts = httpx.get(f"{server.url}/v1/inventory").json()["counts"]
        server.stop()
        after = _db_check(db)
        statuses2 = Counter(r["status"] if isinstance(r, dict) else r for r in second.values())
        safe = (after["photos"] == n_unique and after["distinct_photos"] == n_unique
                and after["count_total"] == n_unique == sum(counts.values()) and after["audit_intake"] == n_unique
                and after["integrity"] == "ok" and all(isinstance(r, dict) for r in second.values()))
        ok &= safe
        lines += [(f"**kill -9 mid-intake**: the server was killed after {answered_ok} answered uploads "
                  f"({failed} requests in flight or unsent failed); {before['photos']} photos were committed. "
                  "Restarted on the same database, the client sent all uploads again."), "",
                  f"- second pass answers: {dict(statuses2)}",
                  f"- database after: {after}",
                  f"- no photo lost, none counted twice: **{'yes' if safe else 'NO'}**"]
    body = "\n".join(lines)
    print(body)
    if not ns.no_results:
        append_section("Inventory intake: concurrency, duplicates and kill -9",
                       "python benchmarks/inventory_intake.py " + shlex.join(sys.argv[1:]), body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
