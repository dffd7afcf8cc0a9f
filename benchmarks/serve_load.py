"""Load test of `skulens serve`: N concurrent clients posting photos for T seconds.

    python benchmarks/serve_load.py --model runs/bench5/bundle [--clients 50] [--duration 60]
                                    [--photos DIR] [--max-batch 16] [--max-wait-ms 10]

Three runs against a real `skulens serve` subprocess on this machine, each on a freshly started server:
1. one request at a time (one client, sequential) - the baseline;
2. N clients with micro-batching (the default settings);
3. N clients with --max-batch 1 (micro-batching off) - so the gain from batching is measured, not assumed.
Reports errors, p50/p99 latency, throughput and the server's peak memory; appends to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section
from _serve_common import Server, find_photos, percentile


async def _load(url: str, photos: list[bytes], clients: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < deadline:
                data = photos[i % len(photos)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files={"image": ("p.jpg", data, "image/jpeg")})
                    key = None if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                if key is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    return {"ok": len(latencies), "errors": sum(errors.values()), "error_kinds": errors, "wall_s": wall,
            "throughput": len(latencies) / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99), "mean_ms": 1000 * sum(latencies) / max(1, len(latencies))}


def _run(model: str, server_args: list[str], photos: list[bytes], clients: int, duration: float,
         log: Path) -> dict[str, float]:
    with Server(model, server_args, log=log) as server:
        asyncio.run(_load(server.url, photos[:8], 1, 2.0))  # warm-up: first batches allocate
        result = asyncio.run(_load(server.url, photos, clients, duration))
        metrics = httpx.get(f"{server.url}/metrics").text
        result["peak_rss_mb"] = server.peak_rss_mb()
    count = total = 0.0
    for line in metrics.splitlines():
        if line.startswith("skulens_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("skulens_batch_size_sum"):
            total = float(line.split()[-1])
    result["mean_batch"] = total / count if count else float("nan")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model bundle to serve")
    ap.add_argument("--photos", help="folder of photos to post (default: grocery val)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per concurrent run")
    ap.add_argument("--sequential-duration", type=float, default=None, help="seconds of the one-at-a-time run "
                    "(default: same as --duration)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--out", default="runs/bench-serve-load", help="server logs and result JSON go here")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md (smoke runs)")
    ns = ap.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = [p.read_bytes() for p in find_photos(ns.photos, limit=400)]
    batching = ["--max-batch", str(ns.max_batch), "--max-wait-ms", str(ns.max_wait_ms)]
    runs = {}
    print("one request at a time...", file=sys.stderr)
    runs["sequential"] = _run(ns.model, batching, photos, 1, ns.sequential_duration or ns.duration,
                              out / "server-sequential.log")
    print(f"{ns.clients} clients, micro-batching (max batch {ns.max_batch})...", file=sys.stderr)
    runs["batched"] = _run(ns.model, batching, photos, ns.clients, ns.duration, out / "server-batched.log")
    print(f"{ns.clients} clients, max batch 1...", file=sys.stderr)
    runs["unbatched"] = _run(ns.model, ["--max-batch", "1"], photos, ns.clients, ns.duration,
                             out / "server-unbatched.log")
    (out / "serve_load.json").write_text(json.dumps(runs, indent=2))
    rows = ["| run | clients | requests ok | errors | p50 ms | p99 ms | throughput req/s | mean batch | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|"]
    names = {"sequential": "one request at a time", "batched": f"micro-batching (max {ns.max_batch}, "
             f"wait {ns.max_wait_ms:g} ms)", "unbatched": "no batching (max batch 1)"}
    for key, r in runs.items():
        n = 1 if key == "sequential" else ns.clients
        errs = f"{r['errors']}" + (f" {r['error_kinds']}" if r["errors"] else "")
        rows.append(f"| {names[key]} | {n} | {r['ok']} | {errs} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                    f"{r['throughput']:.1f} | {r['mean_batch']:.1f} | {r['peak_rss_mb']:.0f} |")
    gain_seq = runs["batched"]["throughput"] / runs["sequential"]["throughput"]
    gain_b1 = runs["batched"]["throughput"] / runs["unbatched"]["throughput"]
    body = "\n".join([
        (f"{ns.clients} concurrent clients posting {len(photos)} distinct photos to `POST /v1/predict` for "
        f"{ns.duration:g} s against `skulens serve` (one process) on this machine; the load generator runs on the "
        "same cores. Each run starts a fresh server."), "", *rows, "",
        (f"Throughput with micro-batching vs one request at a time: {gain_seq:.2f}x; vs the same {ns.clients} "
        f"clients without batching: {gain_b1:.2f}x. Errors under load (goal 0): {runs['batched']['errors']}."),
    ])
    print(body)
    if not ns.no_results:
        cmd = "python benchmarks/serve_load.py " + shlex.join(sys.argv[1:])
        append_section("Service load: concurrent predict with micro-batching", cmd, body)
    return 0 if runs["batched"]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
