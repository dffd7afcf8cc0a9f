"""Inventory intake with one and with two `skulens serve` workers on one database, SQLite and PostgreSQL.

    python benchmarks/inventory_workers.py --model runs/bench9/bundle [--postgres URL] [--uploads 1000]
                                           [--duplicates 0.2] [--clients 32] [--photos DIR]

For each database (a fresh SQLite file; a fresh PostgreSQL database on the server `--postgres`, default
$SKULENS_TEST_POSTGRES, a libpq URL where this may CREATE DATABASE) and 1 or 2 workers (real `skulens serve`
processes on their own ports, one `--db`): `clients` concurrent clients post `uploads` photos, one per request,
`duplicates` of them repeats, each upload to the workers in turn (a load balancer's round robin). The review
threshold is 0, so every distinct photo counts once and the right answer is known exactly. Reported: uploads/s,
lost photos (distinct photos not in the database afterwards), double counts (counts beyond one per photo, and
"counted" answers beyond one per photo), and the database's audit lines. The workers share the machine's cores
(torch threads = cores / workers).

Then, on PostgreSQL: two workers, one killed with SIGKILL after a third of the answers; the uploads it did not
answer are sent to the survivor (what a load balancer's retry does). Nothing acknowledged may be lost, nothing
counted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import secrets
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section
from _serve_common import Server, intake_uploads, percentile

from skulens.serve.images import content_hash
from skulens.serve.inventory import InventoryStore


async def _send(urls: list[str], key: str, uploads: list[bytes], clients: int, *, kill_after: int | None = None,
                on_kill=None) -> tuple[dict[int, dict | str], list[float]]:
    """POST every upload once (upload i to urls[i % len(urls)]); {upload index: result dict or error}."""
    results: dict[int, dict | str] = {}
    queue = list(enumerate(uploads))[::-1]
    latencies: list[float] = []
    killed = False
    async with httpx.AsyncClient(timeout=120, headers={"X-API-Key": key},
                                 limits=httpx.Limits(max_connections=clients)) as c:
        async def worker() -> None:
            nonlocal killed
            while queue:
                i, data = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await c.post(f"{urls[i % len(urls)]}/v1/inventory/intake",
                                     files=[("images", (f"{i}.jpg", data, "image/jpeg"))])
                    results[i] = r.json()["results"][0] if r.status_code == 200 else f"HTTP {r.status_code}"
                    latencies.append(time.perf_counter() - t0)
                except (httpx.HTTPError, ValueError) as exc:
                    results[i] = type(exc).__name__
                if kill_after is not None and not killed and len(results) >= kill_after:
                    killed = True
                    on_kill()

        await asyncio.gather(*(worker() for _ in range(clients)))
    return results, latencies


def _database(kind: str, tmp: Path, server: str | None, tag: str) -> tuple[str, Callable[[], None]]:
    """A fresh database: (what --db takes, a cleanup callable)."""
    if kind == "sqlite":
        return str(tmp / f"{tag}.sqlite"), lambda: None
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"skulens_bench_{tag}_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    url = make_url(server).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False), drop


def _check(db: str, tmp: Path, shas: list[str], n_unique: int, answers: dict[int, dict | str]) -> dict:
    with InventoryStore(db, photo_dir=tmp / "photos", labelled_dir=tmp / "labelled") as store:
        in_db = store.known(set(shas))
        counts = store.counts()
        intake_lines = sum(a.action == "intake" for a in store.audit(limit=10 * n_unique))
    ok = [r for r in answers.values() if isinstance(r, dict)]
    counted = [r["sha256"] for r in ok if r["status"] == "counted"]
    acknowledged = {r["sha256"] for r in ok}
    return {"lost": (n_unique - len(in_db)) + len(acknowledged - set(in_db)),
            "double": (sum(counts.values()) - len(in_db)) + (len(counted) - len(set(counted))),
            "photos": len(in_db), "count_total": sum(counts.values()), "audit_intake": intake_lines,
            "answers": dict(Counter(r["status"] if isinstance(r, dict) else r for r in answers.values()))}


def _start(model: str, workers: int, db: str, tmp: Path, out: Path, tag: str) -> list[Server]:
    args = ["--db", db, "--review-threshold", "0", "--labelled-dir", str(tmp / "labelled"), "--device", "cpu"]
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    key = secrets.token_urlsafe(16)  # one API key for every worker, as behind one load balancer
    servers = [Server(model, args, log=out / f"server-{tag}-{w}.log", key=key) for w in range(workers)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(Server.start, servers))
    return servers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--photos", help="folder of photos (default: grocery train)")
    ap.add_argument("--postgres", default=os.environ.get("SKULENS_TEST_POSTGRES"),
                    help="libpq URL of a PostgreSQL server where this may CREATE DATABASE (default: "
                         "$SKULENS_TEST_POSTGRES; none: SQLite only)")
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--duplicates", type=float, default=0.2, help="fraction of uploads that repeat a photo")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--out", default="runs/bench-inventory-workers")
    ap.add_argument("--no-results", action="store_true")
    ns = ap.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    n_unique, numbered = intake_uploads(ns.photos, ns.uploads, ns.duplicates)
    uploads = [data for _, data in numbered]
    shas = [content_hash(d) for d in uploads]
    kinds = ["sqlite"] + (["postgresql"] if ns.postgres else [])
    rows, notes, ok = [], [], True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in kinds:
            for workers in (1, 2):
                tag = f"{kind[:2]}{workers}"
                db, drop = _database(kind, tmp, ns.postgres, tag)
                servers = _start(ns.model, workers, db, tmp, out, tag)
                try:
                    t0 = time.perf_counter()
                    answers, lat = asyncio.run(_send([s.url for s in servers], servers[0].key, uploads, ns.clients))
                    wall = time.perf_counter() - t0
                finally:
                    for s in servers:
                        s.stop()
                check = _check(db, tmp, shas, n_unique, answers)
                drop()
                exact = check["lost"] == 0 and check["double"] == 0 and check["audit_intake"] == n_unique and \
                    check["answers"] == {"counted": n_unique, "duplicate": ns.uploads - n_unique}
                ok &= exact
                rows.append(f"| {kind} | {workers} | {ns.uploads / wall:.1f} | {1000 * percentile(lat, 50):.0f} | "
                            f"{1000 * percentile(lat, 99):.0f} | {check['lost']} | {check['double']} | "
                            f"{check['photos']} | {check['count_total']} | {check['audit_intake']} | "
                            f"{'yes' if exact else '**NO**'} |")
                print(rows[-1], flush=True)
        if ns.postgres:  # kill -9 one of two workers mid-load; the load balancer resends what it did not answer
            db, drop = _database("postgresql", tmp, ns.postgres, "kill")
            servers = _start(ns.model, 2, db, tmp, out, "kill")
            try:
                first, _ = asyncio.run(_send([s.url for s in servers], servers[0].key, uploads, ns.clients,
                                             kill_after=ns.uploads // 3, on_kill=servers[1].kill9))
                failed = sorted(i for i, r in first.items() if not isinstance(r, dict))
                acked = {i: r for i, r in first.items() if isinstance(r, dict)}
                middle = _check(db, tmp, shas, n_unique, acked)
                acked_lost = len({r["sha256"] for r in acked.values()} - set(_known(db, tmp, shas)))
                retry, _ = asyncio.run(_send([servers[0].url], servers[0].key, [uploads[i] for i in failed],
                                             ns.clients))
            finally:
                for s in servers:
                    s.stop()
            final = _check(db, tmp, shas, n_unique, {**acked, **{failed[j]: r for j, r in retry.items()}})
            drop()
            safe = acked_lost == 0 and final["lost"] == 0 and final["double"] == 0 and \
                final["audit_intake"] == n_unique
            ok &= safe
            notes.append(f"**kill -9 of one of two workers (PostgreSQL)** after {ns.uploads // 3} answers: "
                         f"{len(acked)} uploads acknowledged, {len(failed)} failed (in flight at, or sent after, the "
                         f"kill) and were resent to the survivor. Acknowledged but missing: {acked_lost}; after the "
                         f"resend: lost {final['lost']}, double {final['double']}, {final['photos']} photos, count "
                         f"total {final['count_total']}, {final['audit_intake']} intake audit lines (expected "
                         f"{n_unique}); before the resend the database held {middle['photos']} photos. "
                         f"Safe: **{'yes' if safe else 'NO'}**.")
            print(notes[-1], flush=True)
    header = (f"{ns.uploads} uploads ({n_unique} distinct photos, {ns.uploads - n_unique} repeats), one photo per "
              f"request, {ns.clients} concurrent clients, requests to the workers in turn; review threshold 0 "
              "(every distinct photo counts once). Lost: distinct photos missing from the database; double: counts "
              "or 'counted' answers beyond one per photo. Latency in ms per request.")
    table = [("| database | workers | uploads/s | p50 | p99 | lost | double | photos in db | count total | "
              "intake audit lines | exact |"), "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    if not ns.postgres:
        notes.append("PostgreSQL: not measured (no --postgres / $SKULENS_TEST_POSTGRES).")
    body = "\n".join([header, "", *table, "", *notes])
    print(body)
    if not ns.no_results:
        append_section("Inventory intake with 1 vs 2 service workers, SQLite and PostgreSQL",
                       "python benchmarks/inventory_workers.py " + shlex.join(sys.argv[1:]), body)
    return 0 if ok else 1


def _known(db: str, tmp: Path, shas: list[str]) -> dict[str, str]:
    with InventoryStore(db, photo_dir=tmp / "photos", labelled_dir=tmp / "labelled") as store:
        return store.known(set(shas))


if __name__ == "__main__":
    raise SystemExit(main())
