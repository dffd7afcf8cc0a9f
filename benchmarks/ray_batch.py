"""Batch predict throughput: the local engine vs `--engine ray` with 1 and 2 actors, side by side in one run.

    python benchmarks/ray_batch.py [--bundle runs/bench9/bundle] [--images 500] [--batch-size 32]

The photos: `--images` real Grocery Store photos (train + val, every k-th of the sorted list, so all classes
appear). Local: `skulens.load` then `Model.predict`, as `skulens predict` runs them (torch's threads: every
core). Ray: a local cluster of this machine's cores, started once (its start is reported apart); each actor
reserves cores / actors CPUs (Ray sets its torch threads to that), so every configuration uses the whole
machine. A Ray run's wall time is `run_job` end to end (actors start, each loads the bundle, the rows are
written to one Parquet file); "steady" takes off the time of a job of one batch per actor with the same pool
(start + loads + one batch). Agreement: every Ray run's top-1 labels against the local run's, and the largest difference of a
top-1 probability.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from _results import append_section

DATA = HERE.parent.parent / "shared" / "datasets" / "grocery-store"


def grocery_photos(root: Path, n: int) -> list[str]:
    listed = []
    for split in ("train.txt", "val.txt"):
        listed += [line.split(",")[0].strip() for line in (root / split).read_text().splitlines() if line.strip()]
    listed = sorted(listed)
    step = max(1, len(listed) // n)
    return [str(root / p) for p in listed[::step][:n]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(HERE.parent / "runs" / "bench9" / "bundle"))
    ap.add_argument("--data", default=os.environ.get("SKULENS_DATA", str(DATA)))
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ns = ap.parse_args()
    if not (Path(ns.data) / "train.txt").is_file():
        raise SystemExit(f"{ns.data}: not the Grocery Store dataset (set --data or SKULENS_DATA)")
    if not (Path(ns.bundle) / "card.json").is_file():
        raise SystemExit(f"{ns.bundle}: no bundle (train one: python benchmarks/train_grocery.py)")

    import json

    import numpy as np
    import pyarrow.parquet as pq
    import ray

    import skulens
    from skulens.deploy.batch_jobs import PredictJob
    from skulens.deploy.ray_jobs import run_job, start_local_ray

    backbone = json.loads((Path(ns.bundle) / "card.json").read_text())["backbone"]
    paths = grocery_photos(Path(ns.data), ns.images)
    n, bs, cores = len(paths), ns.batch_size, os.cpu_count() or 1
    print(f"{n} photos, batch {bs}, {cores} cores", file=sys.stderr)
    load_start = os.getloadavg()[0]

    t0 = time.perf_counter()
    model = skulens.load(ns.bundle)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    local = model.predict(paths, batch_size=bs)
    t_local = time.perf_counter() - t0
    del model
    rows = [("local (this process)", f"{cores} torch threads", t_load + t_local, n / (t_load + t_local),
             n / t_local, "-")]

    t0 = time.perf_counter()
    start_local_ray(cores, logging_level=logging.WARNING)
    t_cluster = time.perf_counter() - t0
    job = PredictJob(ns.bundle, batch_size=bs)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for actors in ns.actors:
                cpus = max(1, cores // actors)
                # one batch per actor: the pool's start, its bundle loads and one batch, in parallel
                one = run_job(job, paths[:bs * actors], Path(tmp) / f"warm{actors}.parquet", actors=actors,
                              cpus_per_actor=cpus)
                res = run_job(job, paths, Path(tmp) / f"ray{actors}.parquet", actors=actors, cpus_per_actor=cpus)
                got = pq.read_table(res.out, columns=["fine_label", "fine_confidence"]).to_pydict()
                same = sum(g == p.fine_label for g, p in zip(got["fine_label"], local, strict=True))
                dp = float(np.max(np.abs(np.array(got["fine_confidence"]) - [p.fine_confidence for p in local])))
                steady = (n - bs * actors) / max(res.seconds - one.seconds, 1e-9)
                rows.append((f"ray, {actors} actor(s)", f"{cpus:g} CPU(s) each", res.seconds, res.images_per_s,
                             steady, f"{same}/{n} top-1, max Δp {dp:.1e}"))
                print(rows[-1], file=sys.stderr)
    finally:
        ray.shutdown()

    table = ["| engine | threads | wall s | images/s (end to end) | images/s (steady) | same answers as local |",
             "|---|---|---|---|---|---|"]
    table += [f"| {e} | {t} | {w:.1f} | {ips:.1f} | {st:.1f} | {agree} |" for e, t, w, ips, st, agree in rows]
    body = "\n".join([
        (f"Bundle `{ns.bundle}` ({backbone}), {n} Grocery Store photos (train + val, every k-th), batch {bs}: "
         "decode + preprocessing + inference (Ray: and the rows written to one Parquet file). Local end to end "
         f"includes the bundle load ({t_load:.1f} s); a Ray run includes its actors' start and bundle loads; "
         "steady takes off the time of a run of one batch per actor with the same pool. The local Ray cluster's "
         f"own start ({t_cluster:.1f} s) is in no row. Load average (1 min) {load_start:.1f} at the start, "
         f"{os.getloadavg()[0]:.1f} at the end: on a shared machine, other jobs' load is in every row."),
        "",
        *table,
    ])
    command = ("python benchmarks/ray_batch.py " + shlex.join(sys.argv[1:])).strip()
    append_section("Batch predict on Ray Data: local vs 1 and 2 actors (grocery photos)", command, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
