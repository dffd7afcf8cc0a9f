"""Several service processes on one inventory: two real `skulens serve` subprocesses on two localhost ports share
one `--db` (a SQLite file, or a PostgreSQL database) and take concurrent intakes of the same and of different
photos. Every photo counts exactly once (0 lost, 0 double), every repeat is answered as a duplicate, whichever
process got it, and the audit log has one line per counted photo with every count step seen once."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from _serve_util import photo_bytes, serve_process

KEY = "workers-test-key"
AUTH = {"X-API-Key": KEY}


@contextlib.contextmanager
def _services(bundle: Path, db: str, cwd: Path, n: int = 2) -> Iterator[list[str]]:
    """`n` `skulens serve` processes on one database (stopped with SIGINT); their URLs."""
    env = {**os.environ, "SKULENS_API_KEYS": f"workers:{KEY}", "OMP_NUM_THREADS": "1"}
    args = ["--model", str(bundle), "--db", db, "--review-threshold", "0", "--device", "cpu"]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_process(args, cwd / f"serve-{i}.log", env, cwd=cwd)) for i in range(n)]


def test_two_service_processes_on_one_database_count_every_photo_once(tiny_bundle, inventory_db,
                                                                       tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from skulens.serve.images import content_hash

    labels = ("red-apple", "green-apple", "oat-milk")
    distinct = [photo_bytes(labels[i % 3], 900 + i) for i in range(30)]
    # Each photo three times on its own and once beside the next photo: 120 uploads in 90 requests. Neighbours
    # in this list run at once on 8 threads, alternating between the two processes.
    requests = []
    for i, data in enumerate(distinct):
        requests += [[data], [data], [data, distinct[(i + 1) % len(distinct)]]]
    rng = random.Random(0)
    for start in range(0, len(requests), 6):  # shuffled a little, the copies of a photo staying close
        window = requests[start:start + 6]
        rng.shuffle(window)
        requests[start:start + 6] = window
    sha = {content_hash(d): i for i, d in enumerate(distinct)}

    with _services(tiny_bundle.bundle, inventory_db.url("shared"), tmp_path) as urls:
        clients = [httpx.Client(base_url=url, timeout=120, headers=AUTH) for url in urls]

        def post(job: tuple[int, list[bytes]]) -> dict:
            i, photos = job
            r = clients[i % 2].post("/v1/inventory/intake",
                                    files=[("images", (f"p{i}-{j}.jpg", d, "image/jpeg")) for j, d in enumerate(photos)])
            assert r.status_code == 200, r.text
            return r.json()

        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                bodies = list(pool.map(post, enumerate(requests)))
            counts = [c.get("/v1/inventory").json()["counts"] for c in clients]
            audit = clients[1].get("/v1/inventory/audit", params={"limit": 1000}).json()
        finally:
            for c in clients:
                c.close()

    answers = [r for body in bodies for r in body["results"]]
    assert len(answers) == 4 * len(distinct) and {r["sha256"] for r in answers} == set(sha)
    assert all(r["status"] in ("counted", "duplicate") for r in answers), Counter(r["status"] for r in answers)
    # 0 lost, 0 double: one "counted" per distinct photo, whichever process took it; every repeat a duplicate.
    counted = {r["sha256"]: r["label"] for r in answers if r["status"] == "counted"}
    assert len(counted) == len(distinct) == sum(r["status"] == "counted" for r in answers)
    assert sum(r["status"] == "duplicate" for r in answers) == 3 * len(distinct)
    assert all(any(b["counted"] for b in bodies[w::2]) for w in range(2))  # both processes counted photos
    for r in answers:
        if r["status"] == "duplicate" and r["label"] is not None:  # found by the store: it says what counted
            assert r["label"] == counted[r["sha256"]] and r["previous_status"] == "counted"
    expected = Counter(counted.values())
    assert counts[0] == counts[1] == dict(expected)
    # The audit: one intake line per photo, and each product's count stepped 1, 2, ..., n: no increment lost.
    intakes = [a for a in audit if a["action"] == "intake"]
    assert sorted(a["photo"] for a in intakes) == sorted(counted) and all(a["delta"] == 1 for a in intakes)
    assert all(a["label"] == counted[a["photo"]] for a in intakes)
    for label, n in expected.items():
        assert sorted(a["count_after"] for a in intakes if a["label"] == label) == list(range(1, n + 1))
    with inventory_db.store("shared") as store:
        assert store.stats() == {"counted": len(distinct)} and store.counts() == dict(expected)
        assert store.known(sha) == dict.fromkeys(sha, "counted")
