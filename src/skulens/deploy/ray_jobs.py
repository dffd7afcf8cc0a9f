"""Batch jobs on Ray Data: `skulens predict | index build | count --engine ray`.

The paths are cut into blocks; an actor pool maps a job (`skulens.deploy.batch_jobs`) over batches of them,
each actor loading the bundle once; the rows come back in input order. A job's rows are the local engine's
(the same functions make them), so the engine changes where the work runs, never the answers.

Where it runs: `address`, else $RAY_ADDRESS, names a running cluster (`ray start --head` on one machine,
`ray start --address=HEAD:6379` on the others); with neither, a local Ray is started for the job and stopped
after it. A Ray already initialised in this process (a notebook, the tests) is used as it is. On a cluster
every node needs skulens installed and the image paths readable (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .batch_jobs import BatchJob, EmbedJob

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from ..search.embeddings import EmbeddedImages

__all__ = ["JobActor", "JobSummary", "RayClusterError", "actor_threads", "embed_on_ray", "job_dataset", "ray_session",
           "require_ray", "run_job", "start_local_ray"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'skulens[ray]'"
STARTUP_ATTEMPTS = 3  # Ray gives its raylet a fixed 30 s to register; a loaded machine can miss that once
STARTUP_TIMEOUT = "timed out during startup"  # the words of Ray's exception when the node did not come up
BLOCKS_PER_ACTOR = 4  # enough blocks that every actor of the pool gets work and a slow one is not waited on


def require_ray() -> Any:
    """The `ray` module with Ray Data, or an ImportError naming the extra."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(f"--engine ray needs Ray Data: {INSTALL_HINT}") from exc
    return ray


@dataclass(frozen=True)
class JobSummary:
    rows: int
    errors: int  # rows whose image could not be read
    seconds: float  # the job, from the dataset to the last row written (not the cluster's start)
    out: Path
    first_errors: tuple[tuple[str, str], ...] = ()  # (source, error) of the first few unreadable rows
    actors: int = 1  # actors the pool ran: --actors, or fewer when there were fewer blocks of photos

    def errors_line(self) -> str:
        """The first unreadable photos and why, as the local engine names them ('' when none)."""
        shown = "; ".join(f"{source}: {error}" for source, error in self.first_errors)
        more = f" and {self.errors - len(self.first_errors)} more" if self.errors > len(self.first_errors) else ""
        return f"{shown}{more}" if shown else ""

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration: the running cluster at `address` / $RAY_ADDRESS, else a local one (num_cpus)."""
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:  # a traceback before (a cluster that wants a token, one that went away)
            raise RayClusterError(f"Ray cluster at {address}: cannot join it ({exc}); a cluster started with "
                                  "`ray start --head` may need RAY_AUTH_MODE=token and its token here too") \
                from None
    else:
        start_local_ray(num_cpus, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


class RayClusterError(ConnectionError):
    """The Ray cluster named by --ray-address / $RAY_ADDRESS cannot be reached or joined (a user error: one line
    in the CLI)."""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address ("host:port", "ray://host:port") whose port answers a TCP connect within `timeout_s`:
    `ray.init` retried a dead address for minutes without a word. "auto" and "local" are Ray's to resolve; any
    other address without a port is refused."""
    import socket

    target = address.split("://", 1)[-1].rstrip("/")
    if target in ("auto", "local"):
        return
    if ":" not in target.rsplit("]", 1)[-1]:  # ray.init raised a ValueError traceback ("foo"), or retried 30 s
        raise RayClusterError(f"Ray cluster at {address}: not host:port (e.g. ray://head:10001, or head:6379 on a "
                              "node of the cluster)")
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise RayClusterError(f"Ray cluster at {address}: not host:port") from None
    except OSError as exc:
        raise RayClusterError(f"Ray cluster at {address}: nothing answers there ({exc.strerror or exc}); start it "
                              "with `ray start --head` or check --ray-address / $RAY_ADDRESS") from None


def start_local_ray(num_cpus: int | None = None, *, attempts: int = STARTUP_ATTEMPTS, **init_kwargs: Any) -> None:
    """`ray.init` of a local cluster (no dashboard), tried up to `attempts` times when the node does not come up.

    Ray waits a fixed 30 s for its raylet to register with the GCS; on a loaded machine that can fail once
    and pass on the next try. Each failed try is logged with the end of the raylet's log, its processes are
    stopped, and the last failure is raised with that log. Any other error is raised at once."""
    ray = require_ray()
    for attempt in range(1, attempts + 1):
        before = _child_pids()
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **init_kwargs)
            return
        except Exception as exc:
            if STARTUP_TIMEOUT not in str(exc):
                raise
            log = _raylet_log_tail()
            _stop_leftovers(_child_pids() - before)
            ray.shutdown()
            if attempt == attempts:
                raise RuntimeError(f"a local Ray did not start in {attempts} tries: {exc}\n{log}") from exc
            logger.warning("a local Ray did not start (try %d of %d): %s\n%s", attempt, attempts, exc, log)
            time.sleep(2.0 * attempt)


def _child_pids() -> set[int]:
    """This process's children (Linux /proc; elsewhere none are known and none are stopped)."""
    me = str(os.getpid())
    pids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            # the fields after the command (which may hold spaces) start after its closing parenthesis
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                pids.add(int(stat.parent.name))
    return pids


def _is_ray_process(pid: int) -> bool:
    """Whether the process runs something of Ray's: its GCS and raylet binaries and its Python helpers all
    live in the installed `ray` package's folder (a folder named ray elsewhere, e.g. a virtualenv's, is not it)."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.origin:
        return False
    homes = tuple({os.fsencode(os.path.dirname(p)) + b"/" for p in (spec.origin, os.path.realpath(spec.origin))})
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.startswith(homes) for a in args)


def _stop_leftovers(pids: set[int]) -> None:
    """SIGKILL the processes a failed `ray.init` left behind (its GCS, raylet, log monitor...): only Ray's, so a
    child another thread started meanwhile lives on."""
    import signal

    pids = {pid for pid in pids if _is_ray_process(pid)}
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)


def _raylet_log_tail(lines: int = 20) -> str:
    """The last lines of the newest Ray session's raylet and GCS logs, for the error message."""
    import tempfile

    logs = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray" / "session_latest" / "logs"
    parts = []
    for name in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err"):
        with contextlib.suppress(OSError):
            text = (logs / name).read_text(errors="replace").splitlines()[-lines:]
            if text:
                parts.append(f"--- {logs / name} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(parts) or f"(no raylet or GCS log under {logs})"


@contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Rows in input order (the single-file output and the embeddings rely on it); without progress, Ray
    Data's bars and its INFO lines (execution plans, progress logged where stderr is not a terminal) are off."""
    ray = require_ray()
    ctx = ray.data.DataContext.get_current()
    # ray.data._internal.progress: its one line, "progress bars disabled", is what -q asked for
    logs = {name: logging.WARNING if name == "ray.data" else logging.ERROR
            for name in ("ray.data", "ray.data._internal.progress")}
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    saved_levels = {name: logging.getLogger(name).level for name in logs}
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, progress
    if not progress:
        for name, level in logs.items():
            logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def local_cpus(actors: int, cpus_per_actor: float) -> int:
    # +1: Ray Data's own tasks (the folder writer) must fit beside a full actor pool
    return max(os.cpu_count() or 1, int(np.ceil(actors * cpus_per_actor)) + 1)


def actor_threads(cpus_per_actor: float) -> int:
    """The threads an actor's inference runs on: the whole CPUs Ray reserved for it, at least one."""
    return max(1, math.floor(cpus_per_actor))


class JobActor:
    """One actor of the pool: loads the job's bundle once, then maps batches of paths to rows.

    `threads`: the intra-op threads of the actor's inference: torch's, set before the bundle loads, and those of
    the ONNX Runtime session or LiteRT interpreter the bundle loads into (`--backend onnx | tflite`). Without it
    torch and ONNX Runtime take every core (or $OMP_NUM_THREADS, which the workers inherit from wherever Ray was
    started), so a pool of actors that each reserved one CPU would run many threads on each core."""

    def __init__(self, job: BatchJob, threads: int | None = None):
        from ..models.onnx_runtime import runtime_threads

        if threads:
            import torch

            torch.set_num_threads(threads)
        with runtime_threads(threads):
            self.job, self.state, self.schema = job, job.load(), job.schema()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        rows = pa.Table.from_pylist(self.job.rows(self.state, batch.column("path").to_pylist()), schema=self.schema)
        # each row names its image as it was given, as the local engine does; the path read is absolute
        return rows.set_column(self.schema.get_field_index("source"), "source", batch.column("source"))


def _block_rows(n: int, batch_size: int, actors: int) -> int:
    """Rows per block: whole batches (the engine's batches are the local engine's forward passes), and
    BLOCKS_PER_ACTOR blocks per actor where there are enough images."""
    batches = -(-n // batch_size)
    return batch_size * max(1, -(-batches // (actors * BLOCKS_PER_ACTOR)))


def pool_size(n: int, batch_size: int, actors: int) -> int:
    """The actors a job's pool runs: `actors`, or one per block when the photos fill fewer blocks."""
    return min(actors, -(-n // _block_rows(n, batch_size, actors))) if n else actors


def _absolute_files(job: BatchJob) -> BatchJob:
    """The job with its model, detector and index as absolute paths: an actor's current folder is not this
    process's (a relative -m failed on a cluster as "not a skulens bundle")."""
    import dataclasses

    changes = {name: os.path.abspath(value) for name in ("model", "detector", "index")
               if isinstance(value := getattr(job, name, None), (str, os.PathLike))
               and not str(value).startswith("pretrained:") and os.path.exists(value)}
    return dataclasses.replace(job, **changes) if changes and dataclasses.is_dataclass(job) else job


def actor_gpus(requested: float | None, cluster_gpus: float, pool: int) -> float:
    """The GPUs each actor of a pool of `pool` reserves: `requested`, or with None (`--device auto`) one each when
    the cluster has a GPU for every actor, else none (the actors run on the CPU: Ray hides every GPU from an actor
    that reserved none, so "auto" inside it finds none). A cluster with too few GPUs for a pool that asks one each
    is a RayClusterError: Ray would queue the actors for them, and the job wait forever."""
    if requested is None:
        if 0 < cluster_gpus < pool:
            logger.warning("--device auto: the Ray cluster has %g GPU(s) for %d actors: the actors run on the CPU "
                           "(give --actors %d to run one on each GPU)", cluster_gpus, pool, int(cluster_gpus))
        return 1.0 if cluster_gpus >= pool else 0.0
    if requested > 0 and cluster_gpus < requested:
        raise RayClusterError(f"--device cuda: the Ray cluster has {cluster_gpus:g} GPU(s), each actor asks for "
                              f"{requested:g}: run on the CPU, or on a cluster with GPUs")
    return requested


def job_dataset(job: BatchJob, paths: Sequence[str | os.PathLike], *, actors: int = 1, cpus_per_actor: float = 1.0,
                gpus_per_actor: float | None = 0.0) -> ray.data.Dataset:
    """The lazy dataset of the job's rows: `paths` in blocks, mapped by a pool of `actors` JobActors, each
    reserving `cpus_per_actor` CPUs and `gpus_per_actor` GPUs (None: `actor_gpus`' choice for `--device auto`)
    and running on `actor_threads(cpus_per_actor)` torch threads.

    The paths are read as absolute paths (a worker's current folder is not this process's); the rows' `source`
    is each path as given."""
    import pyarrow as pa

    ray = require_ray()
    if not paths:
        raise ValueError("no images to run the job on")
    if actors < 1 or job.batch_size < 1:
        raise ValueError(f"actors and batch_size must be >= 1, got {actors} and {job.batch_size}")
    size = pool_size(len(paths), job.batch_size, actors)
    gpus = actor_gpus(gpus_per_actor, ray.cluster_resources().get("GPU", 0) if gpus_per_actor != 0 else 0, size)
    job = _absolute_files(job)
    step = _block_rows(len(paths), job.batch_size, actors)
    given = [str(p) for p in paths]
    absolute = [os.path.abspath(p) for p in given]
    blocks = [pa.table({"path": pa.array(absolute[i:i + step], pa.string()),
                        "source": pa.array(given[i:i + step], pa.string())}) for i in range(0, len(paths), step)]
    return ray.data.from_arrow(blocks).map_batches(
        JobActor, fn_constructor_kwargs={"job": job, "threads": actor_threads(cpus_per_actor)},
        batch_size=job.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size), num_cpus=cpus_per_actor, num_gpus=gpus)


def _tables(ds: ray.data.Dataset, schema: pa.Schema) -> Iterator[pa.Table]:
    for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield t.select(schema.names).cast(schema)


def run_job(job: BatchJob, paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, actors: int = 1,
            cpus_per_actor: float = 1.0, gpus_per_actor: float | None = 0.0, address: str | None = None,
            progress: bool = False) -> JobSummary:
    """Run `job` over `paths` on Ray; its rows as Parquet at `out`: a `.parquet` file (streamed through this
    process, in input order) or a folder (part files written by the workers, for jobs too big for one).

    `out` appears whole or not at all: the rows are written beside it, under a name of this job's own
    (`OUT.partial-PID-XXXXXXXX`, a file or a folder), and renamed to `out` only when the job has finished; a job
    that fails or is interrupted removes that and leaves whatever was at `out` as it was (a process killed
    outright leaves it behind). Another job's `.partial` (running at the same time, or a killed one's) is never
    written, read or removed. An existing `.parquet` file is replaced; a folder must be new or empty
    (FileExistsError otherwise, before any work), so part files of two runs never mix."""
    out = Path(out)
    to_file = out.suffix.lower() == ".parquet"
    if not to_file and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: give a new or empty folder for the Parquet part files")
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside `out`, so the rename stays on one filesystem; the pid names the job that left one behind
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with ray_session(address, num_cpus=local_cpus(actors, cpus_per_actor)), _data_context(progress):
            t0 = time.perf_counter()
            ds = job_dataset(job, paths, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)
            rows, errors, first = _write_file(ds, job.schema(), partial) if to_file else _write_folder(ds, partial)
            seconds = time.perf_counter() - t0
    except BaseException:
        _discard(partial)
        raise
    _move_into_place(partial, out)
    return JobSummary(rows, errors, seconds, out, first, pool_size(len(paths), job.batch_size, actors))


_FIRST_ERRORS = 3  # unreadable rows named on the command line


def _failed(t: pa.Table, room: int) -> list[tuple[str, str]]:
    """(source, error) of up to `room` rows of `t` that have an error."""
    if room <= 0 or t.column("error").null_count == t.num_rows:
        return []
    pairs = zip(t.column("source").to_pylist(), t.column("error").to_pylist(), strict=True)
    return [(str(s), str(e)) for s, e in pairs if e is not None][:room]


def _write_file(ds: ray.data.Dataset, schema: pa.Schema, path: Path) -> tuple[int, int, tuple[tuple[str, str], ...]]:
    """The rows, in input order, as one Parquet file written by this process: (rows, errors, the first errors)."""
    import pyarrow.parquet as pq

    rows = errors = 0
    first: list[tuple[str, str]] = []
    with pq.ParquetWriter(path, schema) as writer:
        for t in _tables(ds, schema):
            writer.write_table(t)
            rows += t.num_rows
            errors += t.num_rows - t.column("error").null_count
            first += _failed(t, _FIRST_ERRORS - len(first))
    return rows, errors, tuple(first)


def _write_folder(ds: ray.data.Dataset, path: Path) -> tuple[int, int, tuple[tuple[str, str], ...]]:
    """The rows as Parquet part files in a new folder, written by the workers: (rows, errors, the first errors)."""
    import pyarrow.parquet as pq

    path.mkdir()
    ds.write_parquet(str(path), try_create_dir=False)  # a write still in flight after a failure recreates nothing
    t = pq.read_table(path, columns=["source", "error"])
    return t.num_rows, t.num_rows - t.column("error").null_count, tuple(_failed(t, _FIRST_ERRORS))


def _discard(partial: Path) -> None:
    """Remove the rows of a job that failed. On a cluster that outlives the job (an address given, or Ray already
    running here) a worker's write task may still be in flight after the failure: the folder is first renamed
    away, so such a write finds no folder (the workers never create it, see `_write_folder`) instead of refilling
    one after its removal; a part file it already has open goes with the renamed folder. Never raises (it runs
    while the job's own error is on its way); what cannot be removed is named in a warning."""
    try:
        if not partial.is_dir():
            partial.unlink(missing_ok=True)
            return
    except OSError as exc:
        logger.warning("%s: the failed job's rows could not be removed (%s)", partial, exc)
        return
    doomed = partial.with_name(f"{partial.name}.failed")
    try:
        partial.rename(doomed)
    except FileNotFoundError:
        return
    except OSError:  # a folder of that name already, or a file open where renaming it is refused: remove in place
        doomed = partial
    shutil.rmtree(doomed, ignore_errors=True)
    if doomed.exists():  # an open file on NFS or Windows, a write that began just before the rename
        logger.warning("%s: the failed job's rows could not all be removed; delete the folder", doomed)


def _move_into_place(partial: Path, out: Path) -> None:
    """Rename the finished `partial` to `out`. An empty folder at `out` (checked before the job) is replaced;
    when the rename fails (a folder at `out` filled up meanwhile) the rows stay at `partial`, which the error
    names."""
    try:
        if partial.is_dir() and out.is_dir():
            out.rmdir()  # empty: a folder is renamed onto a free name everywhere (onto an empty one only on POSIX)
        partial.replace(out)
    except OSError as exc:
        raise OSError(f"{out}: the finished rows could not be moved here ({exc}); they are in {partial}") from exc


def embed_on_ray(job: EmbedJob, paths: Sequence[str | os.PathLike], *, actors: int = 1, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float | None = 0.0, address: str | None = None, progress: bool = False
                 ) -> EmbeddedImages:
    """`embed_paths` on Ray: the embeddings come back here (to write an index, which is not distributed)."""
    from ..search.embeddings import EmbeddedImages

    parts: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    with ray_session(address, num_cpus=local_cpus(actors, cpus_per_actor)), _data_context(progress):
        ds = job_dataset(job, paths, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)
        start = 0
        for t in _tables(ds, job.schema()):
            errors = t.column("error").to_pylist()
            ok = [i for i, e in enumerate(errors) if e is None]
            if ok:
                vectors = t.column("embedding").take(ok).combine_chunks().flatten()
                parts.append(np.asarray(vectors, dtype=np.float32).reshape(len(ok), -1))
            kept += [start + i for i in ok]
            failed += [(str(paths[start + i]), e) for i, e in enumerate(errors) if e is not None]
            start += t.num_rows
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    return EmbeddedImages(vectors, kept, failed)
