"""`--engine ray`: predict, index build and count on a real local Ray cluster give the local engine's answers.

One cluster for the module (two CPUs); the jobs use it in-process, and one CLI run in a subprocess reaches
it through $RAY_ADDRESS, as on a real cluster. Without Ray the cluster tests skip; the usage checks run.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from skulens.cli import main
from skulens.data.catalogue import CatalogueError
from skulens.data.image_list import read_image_list
from skulens.deploy.batch_jobs import CountJob, EmbedJob, PredictJob

TOL = 1e-5
# Ray Data's own DataContext warns about its deprecated settings when it is copied; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'skulens[ray]'")
    pytest.importorskip("ray.data")
    from skulens.deploy.ray_jobs import start_local_ray

    start_local_ray(2, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The tiny catalogue's val photos, a corrupt file and a missing one: 11 inputs, 2 of them errors."""
    bad = tmp_path_factory.mktemp("bad") / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    val = sorted(str(p) for p in (tiny_catalogue.parent / "val").rglob("*.jpg"))
    return [*val[:5], str(bad), *val[5:], str(bad.with_name("missing.jpg"))]


def _rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- same answers as the local engine

def test_predict_on_ray_equals_local(ray_cluster, tiny_bundle, photos, tmp_path) -> None:
    import skulens
    from skulens.deploy.ray_jobs import run_job

    job = PredictJob(str(tiny_bundle.bundle), top_k=3, batch_size=4, device="cpu")
    res = run_job(job, photos, tmp_path / "preds.parquet", actors=2)
    assert (res.rows, res.errors, res.actors) == (11, 2, 2) and res.images_per_s > 0
    rows = _rows(tmp_path / "preds.parquet")
    local = skulens.load(tiny_bundle.bundle, device="cpu").predict(photos, top_k=3, batch_size=4)
    assert [r["source"] for r in rows] == photos  # input order
    for row, p in zip(rows, local, strict=True):
        assert (row["label"], row["level"], row["fine_label"], row["error"]) == (p.label, p.level, p.fine_label,
                                                                                 p.error)
        assert row["confidence"] == pytest.approx(p.confidence, abs=TOL)
        assert [t["label"] for t in row["top_k"]] == [lab for lab, _ in p.top_k]
        assert np.allclose([t["p"] for t in row["top_k"]], [pr for _, pr in p.top_k], atol=TOL)
    assert rows[5]["level"] == "error" and rows[5]["error"] and rows[-1]["error"]


def test_embed_on_ray_equals_local(ray_cluster, tiny_bundle, photos) -> None:
    import skulens
    from skulens.deploy.ray_jobs import embed_on_ray
    from skulens.search.embeddings import embed_paths

    got = embed_on_ray(EmbedJob(str(tiny_bundle.bundle), batch_size=4, device="cpu"), photos, actors=1)
    want = embed_paths(skulens.load(tiny_bundle.bundle, device="cpu"), photos, batch_size=4)
    assert got.kept == want.kept and got.failed == want.failed and len(got.kept) == 9
    assert got.vectors.dtype == np.float32 and np.allclose(got.vectors, want.vectors, atol=TOL)


def test_count_on_ray_equals_local(ray_cluster, detector, tiny_bundle, photos, tmp_path) -> None:
    import pyarrow.parquet as pq

    import skulens
    from skulens.deploy.ray_jobs import run_job
    from skulens.detect.count import count_products

    job = CountJob(str(detector), model=str(tiny_bundle.bundle), min_score=0.0, min_confidence=0.5, batch_size=3,
                   device="cpu")
    res = run_job(job, photos, tmp_path / "counts", actors=1)  # a folder: part files written by the workers
    assert (res.rows, res.errors) == (11, 2) and list((tmp_path / "counts").glob("*.parquet"))
    by_source = {r["source"]: r for r in pq.read_table(tmp_path / "counts").to_pylist()}
    det = skulens.load_detector(detector, device="cpu")
    clf = skulens.load(tiny_bundle.bundle, device="cpu")
    for want, _ in count_products(det, photos, model=clf, min_score=0.0, min_confidence=0.5):
        row = by_source[want.source]
        assert {c["product"]: c["count"] for c in row["counts"]} == want.counts
        assert (row["total"], row["unknown"], row["capped"], row["error"]) == (want.total, want.unknown, want.capped,
                                                                               want.error)
        assert [b["label"] for b in row["boxes"]] == [b.label for b in want.boxes]
    assert sum(r["total"] for r in by_source.values()) > 0


# --------------------------------------------------------------------------- a folder appears whole; an actor's threads

@dataclass(frozen=True)
class _PoisonJob:
    """A job whose actor raises on the path `poison` (the job fails, as a crash or a bug would), and whose rows
    say how many torch threads the actor's inference would run on."""

    poison: str = ""
    batch_size: int = 2
    kind: ClassVar[str] = "poison"

    def load(self) -> None:
        return None

    def rows(self, state: None, paths: list[str]) -> list[dict[str, Any]]:
        import torch

        if any(os.path.basename(p) == self.poison for p in paths):  # the actor reads absolute paths
            raise RuntimeError(f"poisoned photo {self.poison}")
        return [{"source": p, "threads": torch.get_num_threads(), "error": None} for p in paths]

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([("source", pa.string()), ("threads", pa.int64()), ("error", pa.string())])


@pytest.fixture
def by_value(ray_cluster):
    """This module's jobs, which Ray's workers cannot import from a test module: they travel by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def poison_job(by_value):
    return _PoisonJob


@contextlib.contextmanager
def _failing_job(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Around a job that fails: its actor holds a CPU until the job's exception is collected (on this two-CPU
    cluster the next job would wait for it for ever). Ray Data logs the exception, and pytest's capture handlers
    on its logger would keep it until the test ends: they are off meanwhile (Ray Data's own handlers print it);
    then collections free the exception's reference cycles."""
    import time

    import ray

    log = logging.getLogger("ray.data")
    captured = [h for h in log.handlers if isinstance(h, type(caplog.handler))]
    for h in captured:
        log.removeHandler(h)
    try:
        yield
    finally:
        for h in captured:
            log.addHandler(h)
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        assert time.monotonic() < deadline, "the actor of a failed job still holds its CPU"
        gc.collect()
        time.sleep(1.0)


def test_a_folder_job_that_fails_half_way_leaves_no_output_and_an_old_one_untouched(poison_job, tmp_path,
                                                                                    caplog) -> None:
    """The part files go to a temporary sibling folder that becomes `out` only when the job has finished; a job
    that fails (here on its last block, after the first were written) leaves neither `out` nor the sibling, and
    an empty `out` given beforehand stays empty. A finished job leaves `out` and nothing beside it."""
    from skulens.deploy.ray_jobs import run_job

    paths = [f"p{i:02d}.jpg" for i in range(12)]  # 3 blocks of 4 for one actor; the job never opens them
    new, empty = tmp_path / "a" / "rows", tmp_path / "b" / "rows"
    new.parent.mkdir()
    empty.mkdir(parents=True)
    for out in (new, empty):
        with _failing_job(caplog), pytest.raises(Exception, match="poisoned photo p10.jpg"):
            run_job(poison_job(poison="p10.jpg"), paths, out, actors=1)
    assert list(new.parent.iterdir()) == [] and list(empty.parent.iterdir()) == [empty]
    assert list(empty.iterdir()) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "part-0.parquet").write_bytes(b"an earlier result")
    with pytest.raises(FileExistsError, match="new or empty folder"):
        run_job(poison_job(), paths, old, actors=1)
    assert [(p.name, p.read_bytes()) for p in old.iterdir()] == [("part-0.parquet", b"an earlier result")]

    for out in (new, empty):
        res = run_job(poison_job(), paths, out, actors=1)
        assert res.out == out and (res.rows, res.errors) == (12, 0)
        assert list(out.parent.iterdir()) == [out] and list(out.glob("*.parquet"))
        assert sorted(r["source"] for r in _rows(out)) == paths


def test_a_write_still_in_flight_after_a_failure_leaves_nothing_behind(tmp_path) -> None:
    """On a cluster that outlives a failed job, a worker's write can land after the job's rows were removed (a
    fresh-clone CI once found the `.partial` folder refilled). The workers write with Ray's `try_create_dir=False`
    (pyarrow's `create_dir=False`), and the failed folder is renamed away before it is removed: a write begun
    before the removal goes with it, one begun after fails and recreates nothing."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.dataset as pads

    from skulens.deploy.ray_jobs import _discard

    partial = tmp_path / "rows.partial-1-0123abcd"
    partial.mkdir()
    table = pa.table({"source": ["a.jpg"], "error": pa.array([None], pa.string())})
    pads.write_dataset(table, partial, format="parquet", basename_template="part-0-{i}.parquet", create_dir=False)
    open_writer = (partial / "part-1.parquet").open("wb")  # a part file being written at the failure
    try:
        _discard(partial)
        open_writer.write(b"the rest of a block")
    finally:
        open_writer.close()
    with pytest.raises(OSError):  # the write that starts after the removal
        pads.write_dataset(table, partial, format="parquet", basename_template="part-2-{i}.parquet",
                           create_dir=False)
    assert list(tmp_path.iterdir()) == []
    file = tmp_path / "rows.parquet.partial-1-0123abcd"
    file.write_bytes(b"rows")
    _discard(file)
    _discard(file)  # gone already: nothing to do
    assert list(tmp_path.iterdir()) == []
    partial.mkdir()
    (tmp_path / f"{partial.name}.failed").mkdir()  # its renamed name taken (a folder not empty): removed in place
    (tmp_path / f"{partial.name}.failed" / "x").write_bytes(b"x")
    (partial / "part-0.parquet").write_bytes(b"rows")
    _discard(partial)
    assert not partial.exists()


def test_the_workers_write_into_the_folder_the_driver_made_and_never_create_it(tmp_path) -> None:
    """`_write_folder` makes the folder and has Ray's writers told not to create it (so a late write after a
    failure's removal fails instead of recreating it)."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from skulens.deploy.ray_jobs import _write_folder

    calls = []

    class Rows:
        def write_parquet(self, path: str, **options: Any) -> None:
            calls.append((Path(path).is_dir(), options))
            pq.write_table(pa.table({"source": ["a.jpg", "b.jpg"], "error": [None, "unreadable"]}),
                           Path(path) / "part-0.parquet")

    assert _write_folder(Rows(), tmp_path / "rows") == (2, 1, (("b.jpg", "unreadable"),))
    assert calls == [(True, {"try_create_dir": False})]


def test_a_job_leaves_the_partial_rows_of_another_job_alone(poison_job, tmp_path, caplog) -> None:
    """Each job writes its rows beside `out` under a name of its own: the `.partial` of another job writing the
    same `out` now, or of a killed one, is neither written to, nor removed when this job fails, nor taken for
    its output."""
    from skulens.deploy.ray_jobs import run_job

    paths = [f"p{i:02d}.jpg" for i in range(12)]
    file, folder = tmp_path / "rows.parquet", tmp_path / "rows"
    others = {tmp_path / "rows.parquet.partial": b"another job's rows",  # the one name every job once used
              tmp_path / "rows.partial-1-0123abcd" / "part-0.parquet": b"another job's part file"}
    for path, data in others.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    with _failing_job(caplog), pytest.raises(Exception, match="poisoned photo p10.jpg"):
        run_job(poison_job(poison="p10.jpg"), paths, file, actors=1)
    for out in (file, folder):
        res = run_job(poison_job(), paths, out, actors=1)
        assert (res.rows, res.errors) == (12, 0) and sorted(r["source"] for r in _rows(out)) == paths
    assert {p: p.read_bytes() for p in others} == others
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows", "rows.parquet", "rows.parquet.partial",
                                                          "rows.partial-1-0123abcd"]  # nothing of this job's


def test_actor_threads_follow_cpus_per_actor() -> None:
    from skulens.deploy.ray_jobs import actor_threads

    assert [actor_threads(c) for c in (0.25, 0.5, 1.0, 1.5, 2.0, 3.99)] == [1, 1, 1, 1, 2, 3]


def test_each_actor_runs_the_job_on_as_many_threads_as_cpus_it_reserved(poison_job, tmp_path) -> None:
    """Ray reserves --cpus-per-actor CPUs for an actor, but torch (and ONNX Runtime) would take every core, or
    $OMP_NUM_THREADS (this suite sets 2, which the cluster's workers inherit): 1.5 CPUs are 1 thread."""
    from skulens.deploy.ray_jobs import run_job

    run_job(poison_job(), [f"p{i}.jpg" for i in range(4)], tmp_path / "t.parquet", actors=1, cpus_per_actor=1.5)
    assert {r["threads"] for r in _rows(tmp_path / "t.parquet")} == {1}


class _OnnxThreadsJob(PredictJob):
    """`skulens predict --backend onnx` as the actor loads it, whose rows say the intra-op threads its real ONNX
    Runtime session was made with (0: ONNX Runtime's default, every core)."""

    def rows(self, state: Any, paths: list[str]) -> list[dict[str, Any]]:
        threads = state.runner.session.get_session_options().intra_op_num_threads
        return [{"source": p, "threads": threads, "error": None} for p in paths]

    def schema(self) -> Any:
        return _PoisonJob().schema()


def test_an_actor_runs_onnx_runtime_on_as_many_threads_as_cpus_it_reserved(by_value, tiny_bundle, tmp_path) -> None:
    """The ONNX Runtime session a bundle loads into in an actor is made with the actor's threads, as torch is."""
    pytest.importorskip("onnxruntime", reason="the onnx backend: pip install 'skulens[onnx]'")
    from skulens.deploy.onnx import export_onnx
    from skulens.deploy.ray_jobs import run_job

    job = _OnnxThreadsJob(str(export_onnx(tiny_bundle.bundle, tmp_path / "m.onnx")), backend="onnx", device="cpu")
    run_job(job, [f"p{i}.jpg" for i in range(2)], tmp_path / "t.parquet", actors=1, cpus_per_actor=1.5)
    assert {r["threads"] for r in _rows(tmp_path / "t.parquet")} == {1}


def test_an_actor_runs_litert_on_as_many_threads_as_cpus_it_reserved(tmp_path) -> None:
    """The LiteRT interpreter of an actor (JobActor, here in a process of its own) runs on the actor's threads.
    LiteRT does not say how many it was given: its XNNPACK pool, made on the first run, adds threads - 1 threads
    to the process, counted in /proc (a process of its own: Ray's and pytest's threads would blur the count)."""
    pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime: pip install 'skulens[tflite]'")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads in Linux's /proc")
    from test_tflite import _card, _handmade_tflite

    model = tmp_path / "m.tflite"
    model.write_bytes(_handmade_tflite(_card()))
    code = ("import os, sys, numpy as np\n"
            "from skulens.deploy.batch_jobs import PredictJob\n"
            "from skulens.deploy.ray_jobs import JobActor\n"
            "job, x = PredictJob(sys.argv[1], backend='tflite', device='cpu'), np.zeros((1, 3, 32, 32), np.float32)\n"
            "def added(threads):\n"
            "    before = len(os.listdir('/proc/self/task'))\n"
            "    actor = JobActor(job, threads=threads)\n"
            "    actor.state.runner.run_batch(x)\n"  # the pool lives as long as the interpreter: count before it goes
            "    return len(os.listdir('/proc/self/task')) - before\n"
            "added(1)\n"  # the first load starts a thread of its own, whatever the count
            "print(added(1), added(3))\n")
    r = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["0", "2"]


# --------------------------------------------------------------------------- the CLI

def test_cli_predict_on_ray_reads_a_csv_list_and_matches_the_local_output(ray_cluster, tiny_bundle, photos,
                                                                         tmp_path, capsys) -> None:
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sku", "path"])
        w.writerows([i, os.path.relpath(p, tmp_path)] for i, p in enumerate(photos))  # relative to the list
    model = ["--model", str(tiny_bundle.bundle), "--batch-size", "4", "--device", "cpu", "-k", "3"]
    assert main(["predict", *model, str(listing), "-o", str(tmp_path / "local.jsonl"), "-q"]) == 0
    assert main(["predict", *model, str(listing), "--engine", "ray", "-o", str(tmp_path / "out"), "-q"]) == 0
    assert "11 image(s) on Ray, 1 actor(s)" in capsys.readouterr().err
    import pyarrow.parquet as pq

    ray_rows = pq.read_table(tmp_path / "out").to_pylist()
    local = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in ray_rows) == sorted(r["source"] for r in local)
    by_source = {r["source"]: r for r in ray_rows}
    for want in local:
        got = by_source[want["source"]]
        assert (got["label"], got["level"], got["error"]) == (want["label"], want["level"], want["error"])
        assert got["confidence"] == pytest.approx(want["confidence"], abs=TOL)


def test_cli_index_build_on_ray_equals_local(ray_cluster, tiny_bundle, tiny_catalogue, tmp_path) -> None:
    from skulens.search.index import open_index

    common = ["index", "build", "--model", str(tiny_bundle.bundle), "--data", str(tiny_catalogue), "-q"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    a, b = open_index(str(tmp_path / "local")), open_index(str(tmp_path / "ray"))
    ids = sorted(r.id for r in a.records())
    assert ids == sorted(r.id for r in b.records()) and len(ids) == 24
    assert np.allclose(a.vectors(ids), b.vectors(ids), atol=TOL)


def test_cli_count_on_ray_through_ray_address(ray_cluster, detector, photos, tmp_path) -> None:
    """A separate process joins the running cluster by $RAY_ADDRESS, as `skulens` does on a real cluster; the
    photos are given relative to its current folder, which the workers do not share."""
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "OMP_NUM_THREADS": "1"}
    relative = [os.path.relpath(p, tmp_path) for p in photos]
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "count", *relative, "--detector", str(detector),
                        "--min-score", "0", "--device", "cpu", "--engine", "ray", "-o", "counts.parquet", "-q",
                        "--max-boxes", "2"],
                       capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "9 photo(s) on Ray" in r.stderr and "2 unreadable" in r.stderr
    rows = _rows(tmp_path / "counts.parquet")
    for row in rows:  # which, and why, as the local engine says (only how many before)
        assert not row["error"] or f"{row['source']}: {row['error']}" in r.stderr
    assert [row["source"] for row in rows] == relative  # named as given, read from where they are
    good = [row for row in rows if not row["error"]]
    assert len(good) == 9 and all(row["counts"] == [{"product": "product", "count": row["total"]}] for row in good)
    # photos that reached the cap are said on stderr, as the local engine says them (it was silent on Ray)
    capped = sum(row["capped"] for row in rows)
    assert capped and all(row["total"] <= 2 for row in rows)
    assert f"{capped} photo(s) reached the box cap (2)" in r.stderr, r.stderr[-2000:]


# --------------------------------------------------------------------------- inputs and usage errors (no Ray needed)

def test_the_pool_runs_no_more_actors_than_blocks() -> None:
    """15 photos with --actors 2 filled one block: one actor ran, and the summary said 2."""
    from skulens.deploy.ray_jobs import pool_size

    assert pool_size(15, 32, 2) == 1 and pool_size(11, 4, 2) == 2 and pool_size(1000, 32, 4) == 4
    assert pool_size(3, 4, 8) == 1


def test_image_lists_from_csv_and_parquet(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("\ufeffPath,label\nx/1.jpg,a\n,b\n/abs/2.jpg,c\n", encoding="utf-8")
    assert read_image_list(tmp_path / "a.csv") == [str(tmp_path / "x/1.jpg"), "/abs/2.jpg"]
    (tmp_path / "b.csv").write_text("image\n1.jpg\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="no 'path' column"):
        read_image_list(tmp_path / "b.csv")
    (tmp_path / "latin1.csv").write_bytes("path\nhyllvägg.jpg\n".encode("latin-1"))  # was a traceback
    with pytest.raises(CatalogueError, match=r"not UTF-8 \(byte 0xe4"):
        read_image_list(tmp_path / "latin1.csv")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["y.png", None], "n": [1, 2]}), tmp_path / "c.parquet")
    assert read_image_list(tmp_path / "c.parquet") == [str(tmp_path / "y.png")]
    (tmp_path / "torn.parquet").write_bytes(b"garbage")  # a pyarrow traceback, exit 1, before
    with pytest.raises(CatalogueError, match="not a readable Parquet file"):
        read_image_list(tmp_path / "torn.parquet")


def test_usage_errors_are_exit_2_before_any_work(tiny_bundle, tmp_path, capsys, monkeypatch) -> None:
    photo = str(tmp_path / "x.jpg")
    m = ["predict", "--model", str(tiny_bundle.bundle), photo]
    cases = [
        ([*m, "--engine", "ray"], "give -o OUT.parquet or -o FOLDER"),
        ([*m, "--engine", "ray", "-o", str(tmp_path / "p.parquet"), "--format", "csv"], "--format: not with"),
        ([*m, "--engine", "ray", "-o", str(tmp_path / "p.parquet"), "--actors", "0"], "--actors: must be >= 1"),
        ([*m, "--engine", "ray", "-o", str(tmp_path / "p.jsonl")], "a .parquet file or a folder"),
        ([*m, "-o", str(tmp_path / "p.parquet")], "Parquet is written by --engine ray"),
    ]
    for argv, message in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # a value argparse itself refuses (--actors 0)
            rc = e.code
        assert rc == 2, argv
        assert message in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert main([*m, "--engine", "ray", "-o", str(tmp_path / "p.parquet")]) == 2
    assert "pip install 'skulens[ray]'" in capsys.readouterr().err


def test_cuda_actors_on_a_cluster_without_a_gpu_are_refused_not_queued_forever(ray_cluster, tiny_bundle,
                                                                               photos) -> None:
    """`--engine ray --device cuda` here: Ray queued the actors for a GPU no node has, and the job hung."""
    from skulens.deploy.batch_jobs import PredictJob
    from skulens.deploy.ray_jobs import RayClusterError, job_dataset

    with pytest.raises(RayClusterError, match="0 GPU"):
        job_dataset(PredictJob(str(tiny_bundle.bundle)), photos[:2], gpus_per_actor=1.0)


def test_device_auto_gives_each_actor_a_gpu_only_where_the_cluster_has_one_for_every_actor(caplog) -> None:
    """`--engine ray --device auto` reserved no GPU, so Ray hid every GPU from the actors and "auto" ran them on
    the CPU of a GPU cluster. No GPU is needed here: the choice is a function of the cluster's GPU count."""
    import argparse

    from skulens.cli._common import engine_options
    from skulens.deploy.ray_jobs import RayClusterError, actor_gpus

    def options(device: str) -> float | None:
        ns = argparse.Namespace(actors=2, cpus_per_actor=1.0, ray_address=None, quiet=True, device=device)
        return engine_options(ns)["gpus_per_actor"]

    assert (options("auto"), options("cpu"), options("cuda"), options("cuda:1")) == (None, 0.0, 1.0, 1.0)
    assert actor_gpus(None, 4, 2) == 1.0 and actor_gpus(None, 2, 2) == 1.0  # a GPU for every actor
    assert actor_gpus(None, 0, 2) == 0.0 and not caplog.records  # a CPU cluster: quietly on the CPU
    with caplog.at_level(logging.WARNING, logger="skulens.deploy.ray_jobs"):
        assert actor_gpus(None, 1, 2) == 0.0  # one GPU for two actors: Ray would queue the second for ever
    assert "--actors 1" in caplog.text
    assert actor_gpus(0.0, 4, 2) == 0.0 and actor_gpus(1.0, 1, 2) == 1.0
    with pytest.raises(RayClusterError, match="0 GPU"):
        actor_gpus(1.0, 0, 1)


def test_ray_settings_and_outputs_refused_before_any_work(tiny_bundle, photos, tmp_path) -> None:
    """--precision fp16 on CPU actors was a page of Ray tracebacks (exit 1); -o naming the photo list replaced it
    with the predictions (local and Ray, predict and count); an empty stdin recursed until RecursionError."""
    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True,
                              timeout=300, check=False, input=stdin)

    m = ["-m", str(tiny_bundle.bundle), "-q"]
    r = run("predict", *m, photos[0], "--engine", "ray", "--precision", "fp16", "-o", str(tmp_path / "a.parquet"))
    assert r.returncode == 2 and "--device cuda" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed, table = tmp_path / "list.csv", tmp_path / "list.parquet"
    listed.write_text("path\n" + "\n".join(photos[:2]) + "\n")
    pq.write_table(pa.table({"path": photos[:2]}), table)
    before = listed.read_bytes(), table.read_bytes()
    for args in (["predict", *m, str(listed), "-o", str(listed)],
                 ["predict", *m, str(table), "--engine", "ray", "-o", str(table)]):
        r = run(*args)
        assert r.returncode == 2 and "one of the input files" in r.stderr, r.stderr[-2000:]
    assert (listed.read_bytes(), table.read_bytes()) == before
    for args in (["predict", *m, "-"], ["predict", *m]):
        r = run(*args)
        assert r.returncode == 2 and "no input images" in r.stderr and "RecursionError" not in r.stderr, r.stderr[-500:]
    r = run("predict", *m, photos[0], "-")  # an empty stdin beside a photo: that photo
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stderr[-500:]


def test_the_cli_and_job_descriptions_import_neither_ray_nor_torch() -> None:
    code = ("import sys, skulens.cli, skulens.deploy.batch_jobs as b\n"
            "skulens.cli.build_parser(); b.PredictJob('x')\n"
            "print(sorted(m for m in ('ray', 'torch', 'pyarrow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --------------------------------------------------------------------------- starting a local Ray

def test_a_local_ray_that_times_out_at_startup_is_tried_again(monkeypatch, caplog) -> None:
    """Ray gives its raylet a fixed 30 s; CI once missed it on a loaded machine. The failure is Ray's own
    exception text; a second try that starts is used, and the failure is logged. Other errors are not retried."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'skulens[ray]'")
    from skulens.deploy import ray_jobs

    calls: list[dict] = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen because ...")  # noqa: TRY002 (Ray's own)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray_jobs.time, "sleep", lambda s: None)
    with caplog.at_level(logging.WARNING, logger="skulens.deploy.ray_jobs"):
        ray_jobs.start_local_ray(3, logging_level=logging.ERROR)
    assert calls == [{"num_cpus": 3, "include_dashboard": False, "logging_level": logging.ERROR}] * 2
    assert "did not start (try 1 of 3)" in caplog.text

    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kw: (calls.append(kw), (_ for _ in ()).throw(ValueError("bad arg"))))
    with pytest.raises(ValueError, match="bad arg"):
        ray_jobs.start_local_ray(1)
    assert len(calls) == 1

    def never(**kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup.")  # noqa: TRY002 (Ray raises a bare one)

    calls.clear()
    monkeypatch.setattr(ray, "init", never)
    with pytest.raises(RuntimeError, match="did not start in 2 tries"):
        ray_jobs.start_local_ray(1, attempts=2)
    assert len(calls) == 2


def test_child_processes_left_by_a_failed_start_are_found_and_stopped() -> None:
    from skulens.deploy.ray_jobs import _child_pids, _stop_leftovers

    before = _child_pids()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    # Ray's helpers run from its package folder; another thread's child (the second, even with "/ray/" in its
    # arguments, as a virtualenv called ray would put there) is not Ray's.
    import ray

    child = subprocess.Popen([*sleep, os.path.join(os.path.dirname(os.path.realpath(ray.__file__)), "_private",
                                                   "log_monitor.py")])
    other = subprocess.Popen([*sleep, "/home/me/ray/.venv/bin/tool"])
    try:
        new = _child_pids() - before
        assert {child.pid, other.pid} <= new
        _stop_leftovers(new)
        assert child.poll() is not None  # reaped by _stop_leftovers' waitpid or killed
        assert other.poll() is None
    finally:
        child.kill()
        other.kill()
        other.wait()


def test_an_address_nothing_answers_is_one_line_at_once_and_job_files_go_absolute(tiny_bundle, tmp_path,
                                                                                   monkeypatch) -> None:
    """--ray-address to a port nothing listens on retried for minutes without a word; a relative -m failed on a
    cluster's actors ("not a skulens bundle": their current folder is not the driver's)."""
    import socket
    import time

    from skulens.deploy.ray_jobs import RayClusterError, _absolute_files, _check_reachable

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match="nothing answers there"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    _check_reachable("auto")  # Ray's to resolve
    for no_port in ("foo", "ray://nohost"):  # a ValueError traceback from ray.init; 31 s of retries
        with pytest.raises(RayClusterError, match="not host:port"):
            _check_reachable(no_port)
    if __import__("importlib").util.find_spec("ray") is not None:
        photo = tmp_path / "p.png"
        photo.write_bytes(b"x")
        # a fresh process: this one may already be in the module's Ray cluster (then no address is dialled)
        r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(tiny_bundle.bundle), str(photo),
                            "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "-o", str(tmp_path / "p.parquet"),
                            "-q"], capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 2 and "nothing answers there" in r.stderr, r.stderr[-2000:]
    monkeypatch.chdir(Path(tiny_bundle.bundle).parent)
    job = _absolute_files(PredictJob("bundle"))
    assert job.model == str(Path(tiny_bundle.bundle).resolve())
    assert _absolute_files(PredictJob("pretrained:efficientnet_lite0")).model == "pretrained:efficientnet_lite0"
