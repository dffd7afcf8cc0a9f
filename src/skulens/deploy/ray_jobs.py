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
import os
import time
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

__all__ = ["JobActor", "JobSummary", "embed_on_ray", "job_dataset", "ray_session", "require_ray", "run_job",
           "start_local_ray"]

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
        ray.init(address=address, **quiet)
    else:
        start_local_ray(num_cpus, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


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


class JobActor:
    """One actor of the pool: loads the job's bundle once, then maps batches of paths to rows."""

    def __init__(self, job: BatchJob):
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


def job_dataset(job: BatchJob, paths: Sequence[str | os.PathLike], *, actors: int = 1, cpus_per_actor: float = 1.0,
                gpus_per_actor: float = 0.0) -> ray.data.Dataset:
    """The lazy dataset of the job's rows: `paths` in blocks, mapped by a pool of `actors` JobActors.

    The paths are read as absolute paths (a worker's current folder is not this process's); the rows' `source`
    is each path as given."""
    import pyarrow as pa

    ray = require_ray()
    if not paths:
        raise ValueError("no images to run the job on")
    if actors < 1 or job.batch_size < 1:
        raise ValueError(f"actors and batch_size must be >= 1, got {actors} and {job.batch_size}")
    step = _block_rows(len(paths), job.batch_size, actors)
    given = [str(p) for p in paths]
    absolute = [os.path.abspath(p) for p in given]
    blocks = [pa.table({"path": pa.array(absolute[i:i + step], pa.string()),
                        "source": pa.array(given[i:i + step], pa.string())}) for i in range(0, len(paths), step)]
    return ray.data.from_arrow(blocks).map_batches(
        JobActor, fn_constructor_kwargs={"job": job}, batch_size=job.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(blocks))), num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor)


def _tables(ds: ray.data.Dataset, schema: pa.Schema) -> Iterator[pa.Table]:
    for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield t.select(schema.names).cast(schema)


def run_job(job: BatchJob, paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, actors: int = 1,
            cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, address: str | None = None,
            progress: bool = False) -> JobSummary:
    """Run `job` over `paths` on Ray; its rows as Parquet at `out`: a `.parquet` file (streamed through this
    process, in input order) or a new folder (part files written by the workers, for jobs too big for one)."""
    import pyarrow.parquet as pq

    out = Path(out)
    to_file = out.suffix.lower() == ".parquet"
    if not to_file and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: give a new or empty folder for the Parquet part files")
    with ray_session(address, num_cpus=local_cpus(actors, cpus_per_actor)), _data_context(progress):
        t0 = time.perf_counter()
        ds = job_dataset(job, paths, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)
        schema = job.schema()
        if to_file:
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            rows = errors = 0
            try:
                with pq.ParquetWriter(partial, schema) as writer:
                    for t in _tables(ds, schema):
                        writer.write_table(t)
                        rows += t.num_rows
                        errors += t.num_rows - t.column("error").null_count
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.replace(out)
        else:
            ds.write_parquet(str(out))
            errors_col = pq.read_table(out, columns=["error"]).column("error")
            rows, errors = len(errors_col), len(errors_col) - errors_col.null_count
        seconds = time.perf_counter() - t0
    return JobSummary(rows, errors, seconds, out)


def embed_on_ray(job: EmbedJob, paths: Sequence[str | os.PathLike], *, actors: int = 1, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0, address: str | None = None, progress: bool = False) -> EmbeddedImages:
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
