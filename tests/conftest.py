"""Shared fixtures: tiny synthetic catalogues written as real image files, and one tiny trained bundle."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")

# Three products in two coarse classes; each is a coloured shape on a noisy background, so a real
# pretrained backbone separates them after a few steps.
PRODUCTS = {
    "red-apple": ("Apple", (200, 30, 30), "disc"),
    "green-apple": ("Apple", (40, 170, 40), "disc"),
    "oat-milk": ("Milk", (230, 200, 60), "box"),
}
ATTRIBUTES = {"red-apple": "colour=red", "green-apple": "colour=green", "oat-milk": "colour=yellow;lactose_free"}
TINY = {"image_size": 64, "train_image_size": 64, "baseline": False, "loggers": "", "epochs": 2,
        "batch_size": 8, "backbone": "efficientnet_lite0", "ema": False}


def make_image(label: str, rng: np.random.Generator, size: int = 72) -> Image.Image:
    _, colour, shape = PRODUCTS[label]
    arr = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    c = size // 2 + rng.integers(-6, 7, size=2)
    r = size // 3
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r**2) if shape == "disc" else (
        (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r * 0.7))
    arr[mask] = np.clip(np.array(colour) + rng.integers(-20, 21, size=3), 0, 255)
    return Image.fromarray(arr)


def write_folder_catalogue(root: Path, *, seed: int, per_class: int = 10) -> Path:
    """root/<class>/*.jpg: no val split of its own (one is carved out of train) and no attribute labels."""
    rng = np.random.default_rng(seed)
    for label in PRODUCTS:
        (root / label).mkdir()
        for i in range(per_class):
            make_image(label, rng).save(root / label / f"{label}_{i:02d}.jpg", quality=90)
    return root


def write_catalogue(root: Path, n_train: int = 8, n_val: int = 3, seed: int = 0) -> Path:
    """A CSV-manifest catalogue with train/val splits, coarse labels and attributes. Returns the manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for label, (coarse, _, _) in PRODUCTS.items():
            for i in range(n):
                rel = Path(split) / label / f"{label}_{i:03d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                make_image(label, rng).save(root / rel, quality=90)
                rows.append({"path": rel.as_posix(), "label": label, "coarse_label": coarse, "split": split,
                             "attributes": ATTRIBUTES[label], "title": label.replace("-", " ")})
    return write_rows(root / "manifest.csv", rows)


def write_rows(path: Path, rows: Sequence[dict]) -> Path:
    """A CSV of `rows` (dicts), its header the first row's keys: a manifest, filled in or made by hand."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real fine-tune of the real Lite0 weights at 64 px (a few seconds); returns its TrainResult."""
    import skulens

    out = tmp_path_factory.mktemp("run") / "tiny"
    return skulens.train(tiny_catalogue, out=str(out), progress=False, epochs=4, lr=3e-3,
                         **{k: v for k, v in TINY.items() if k != "epochs"})


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny product detector folder (random weights, 128-256 px, at most 5 boxes): the plumbing of
    count, detect and batch jobs, not accuracy."""
    import torch

    from skulens.detect.model import DetectorCard, DetectorConfig, build_detector, save_detector

    torch.manual_seed(0)
    cfg = DetectorConfig(min_size=128, max_size=256, max_detections=5)
    return save_detector(build_detector(cfg, pretrained=False), DetectorCard(cfg),
                         tmp_path_factory.mktemp("det") / "det")


def modules_loaded_by(argvs: list[list[str]], modules: Sequence[str]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after `skulens ARGV` for each ARGV (output
    swallowed): how tests keep `--help` from loading torch and other heavy packages."""
    import json
    import subprocess
    import sys

    code = ("import contextlib, io, json, sys\nfrom skulens.cli import main\n"
            f"for argv in {argvs!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            f"print(json.dumps(sorted(m for m in {list(modules)!r} if m in sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def grocery_path() -> Path | None:
    env = os.environ.get("SKULENS_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
    return p if (p / "classes.csv").is_file() else None


# -- PostgreSQL for the inventory tests --------------------------------------------------------------------

POSTGRES_ENV = "SKULENS_TEST_POSTGRES"


@pytest.fixture(scope="module")
def postgres_url(request: pytest.FixtureRequest):
    """A fresh, empty PostgreSQL database for this test module (dropped afterwards): its SQLAlchemy URL.

    The server is $SKULENS_TEST_POSTGRES, a libpq URL of a server where the tests may CREATE DATABASE
    (`.ci/run` starts Debian's PostgreSQL and sets it). Unset: the PostgreSQL variants skip, saying so; set but
    unreachable (or psycopg missing): they fail, so CI cannot pass without running them."""
    import re
    import secrets

    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(f"PostgreSQL variant: no server given (set {POSTGRES_ENV}=postgresql://... to a server where "
                    "the tests may CREATE DATABASE; .ci/run does)")
    try:
        import psycopg
        from sqlalchemy.engine import make_url
    except ImportError as exc:
        pytest.fail(f"{POSTGRES_ENV} is set but {exc.name} is missing: pip install -e '.[dev]'")
    module = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.lower())[-24:]
    name = f"skulens_{module}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.fail(f"{POSTGRES_ENV}={server}: cannot create a test database ({exc})")
    yield make_url(server).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    for attempt in range(10):  # FORCE cannot end a session another role holds there (autovacuum's): wait for it
        try:
            with psycopg.connect(server, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            break
        except psycopg.errors.InsufficientPrivilege:
            if attempt == 9:
                raise
            time.sleep(1.0)


class InventoryDB:
    """Where one test's inventories live: SQLite files in tmp_path, or (PostgreSQL) one fresh schema per name
    in the module's database, with the photo and labelled folders where a SQLite file's would be."""

    def __init__(self, backend: str, tmp_path: Path, server_url: str | None = None):
        self.backend, self.tmp_path, self._server_url = backend, tmp_path, server_url
        self._urls: dict[str, str] = {}

    def url(self, name: str = "inv") -> str:
        """What `InventoryStore(...)` and `--db` take: `tmp_path/NAME.sqlite`, or a URL whose search_path is a
        schema of its own (created on first use)."""
        if self.backend == "sqlite":
            return str(self.tmp_path / f"{name}.sqlite")
        if name not in self._urls:
            import secrets

            import psycopg
            from sqlalchemy.engine import make_url

            assert self._server_url is not None
            schema = f"t_{secrets.token_hex(6)}"
            url = make_url(self._server_url)
            with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                                 autocommit=True) as con:
                con.execute(f"CREATE SCHEMA {schema}")
            self._urls[name] = url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
                hide_password=False)
        return self._urls[name]

    def dirs(self, name: str = "inv") -> dict[str, Path]:
        """The store's photo_dir and labelled_dir: SQLite's defaults (beside the file), given for PostgreSQL."""
        if self.backend == "sqlite":
            return {}
        return {"photo_dir": self.tmp_path / f"{name}-photos", "labelled_dir": self.tmp_path / f"{name}-labelled"}

    def cli_dirs(self, name: str = "inv") -> list[str]:
        """`dirs` as the inventory commands' flags (--photo-dir, --labelled-dir): the CLI on the same folders."""
        return [a for key, d in self.dirs(name).items() for a in (f"--{key.replace('_', '-')}", str(d))]

    def store(self, name: str = "inv", **kw):
        from skulens.serve.inventory import InventoryStore

        return InventoryStore(self.url(name), **{**self.dirs(name), **kw})

    def execute(self, name: str, sql: str) -> None:
        """Run SQL on the inventory `name` directly (as another program would)."""
        import sqlalchemy as sa

        url = self.url(name)
        engine = sa.create_engine(f"sqlite:///{url}" if self.backend == "sqlite" else url)
        try:
            with engine.begin() as con:
                con.exec_driver_sql(sql)
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def inventory_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InventoryDB:
    """The inventory database of a test, once per backend (the PostgreSQL one skips without a server). A
    PostgreSQL test runs in tmp_path, where a URL's default photo and labelled folders go."""
    if request.param == "sqlite":
        return InventoryDB("sqlite", tmp_path)
    server = request.getfixturevalue("postgres_url")
    monkeypatch.chdir(tmp_path)
    return InventoryDB("postgresql", tmp_path, server)


# -- a real Milvus server (the [milvus-server] extra) -------------------------------------------------------------


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Milvus 2.3 standalone server (PyPI package `milvus`) on free localhost ports with a temporary data
    folder: a `skulens.search.milvus_server.LocalMilvusServer`, `.uri` is http://127.0.0.1:PORT. Skips, saying so,
    without the package (`pip install -e '.[dev]'` has it); a server that does not start is an error.

    Module-scoped: it starts in ~3 s, and a session-scoped one would idle through the rest of the suite. The proxy's
    time tick is 20 ms instead of 200 ms: every Strong-consistency request waits for the next tick."""
    pytest.importorskip("milvus", reason="Milvus server tests need the PyPI package 'milvus' (2.3.x): "
                        "pip install -e '.[milvus-server]'")
    import shutil

    from skulens.search.milvus_server import LocalMilvusServer

    server = LocalMilvusServer(tmp_path_factory.mktemp("milvus-server"), settings={"proxy.timeTickInterval": 20})
    server.start()
    yield server
    server.stop(timeout=1)  # its data is thrown away: no need to wait for a graceful stop
    shutil.rmtree(server.data_dir, ignore_errors=True)


@contextlib.contextmanager
def bundle_locked_elsewhere(folder: Path) -> Iterator[None]:
    """Another process holds the bundle's lock (as `skulens enroll` does from its read to its save) until the
    block ends; then it is killed, which frees the lock."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom skulens.models.swap import lock_of\n"
        f"lock = lock_of({str(folder)!r})\nlock.acquire()\nprint('held', flush=True)\ntime.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def interrupt_after_checkpoint(argv: Sequence[str], checkpoint: Path, *, wait_s: float = 240) -> tuple[int, str]:
    """Run `argv`, send it SIGINT (Ctrl-C) once `checkpoint`/state.json is written; its exit status and stderr."""
    import signal
    import subprocess

    # Ctrl-C's default action in the child: a shell's background job (`.ci/run &`, nohup) starts its commands with
    # SIGINT ignored, which they inherit, and Python then installs no KeyboardInterrupt handler at all
    import sys

    default_sigint = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", default_sigint, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait_s
    try:
        while not (checkpoint / "state.json").is_file():
            assert proc.poll() is None, f"exited before a checkpoint: {proc.stderr.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"no checkpoint within {wait_s:.0f} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err
