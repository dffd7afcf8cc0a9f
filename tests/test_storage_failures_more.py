"""More of the inventory's storage failures: what a 503 tells the client (Retry-After), a SQLite database whose disk
fails (SQLITE_IOERR), and a PostgreSQL database that is read-only before the store opens it."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from _serve_util import photo_bytes
from skulens.serve.inventory import InventoryStore, StorageError, storage_error, storage_failure
from test_store_review import _client, _photo, _service

# -- one answer for every route: 507, or 503 with Retry-After ------------------------------------------------------


def test_storage_refused_answers_507_for_a_full_disk_and_503_with_retry_after_for_the_rest() -> None:
    from skulens.serve.deps import storage_refused

    full = storage_refused(StorageError("the inventory cannot store photos now (full); nothing was counted", "full"))
    down = storage_refused(StorageError("the inventory cannot store photos now (read-only); nothing was counted",
                                        "unavailable"))
    assert (full.status_code, full.detail, full.headers) == (
        507, "the inventory cannot store photos now (full); nothing was counted", None)
    assert (down.status_code, down.detail, down.headers) == (
        503, "the inventory cannot store photos now (read-only); nothing was counted", {"Retry-After": "30"})


def test_the_openapi_description_names_the_503s_retry_after(inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _service(inventory_db, monkeypatch)
    with _client(state) as client:
        spec = client.get("/openapi.json").json()
    for path, method in [("/v1/inventory/intake", "post"), ("/v1/users/{user_id}", "delete")]:
        answers = spec["paths"][path][method]["responses"]
        assert set(answers["503"].get("headers", {})) == {"Retry-After"}, path
        assert "headers" not in answers["507"], path


# -- SQLite: a disk I/O error (SQLITE_IOERR) is the storage's, as a read-only database is -------------------------


@contextmanager
def _failing_wal(store: InventoryStore) -> Iterator[None]:
    """While inside, every write of the store's SQLite connection to its WAL file fails in the OS (EBADF: its file
    descriptor is swapped for a read-only one of the same file), as a failing disk's writes do; SQLite reports a
    real SQLITE_IOERR_WRITE ("disk I/O error"). Afterwards the descriptor is the writable one again."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd (Linux) to find the database's open files")
    assert store.path is not None
    wal = f"{store.path.resolve()}-wal"
    fds = [int(fd) for fd in os.listdir("/proc/self/fd") if _target(fd) == wal]
    assert len(fds) == 1, fds  # the store's one connection has its WAL open
    fd = fds[0]
    saved, read_only = os.dup(fd), os.open(wal, os.O_RDONLY)
    os.dup2(read_only, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(read_only)


def _target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # closed meanwhile (the listing's own descriptor)
        return None


def test_a_sqlite_disk_io_error_is_unavailable(tmp_path: Path) -> None:
    with InventoryStore(tmp_path / "inv.sqlite") as store:
        store.adjust("oat-milk", count=5, actor="till")
        with _failing_wal(store), pytest.raises(sqlite3.OperationalError, match="disk I/O error") as failed:
            store.adjust("oat-milk", delta=-1, actor="till")
        assert failed.value.sqlite_errorname.startswith("SQLITE_IOERR")  # type: ignore[attr-defined]
        assert storage_failure(failed.value) == "unavailable"
        error = storage_error(failed.value, "the inventory cannot store a stock change now", "nothing was changed")
        assert error is not None and error.failure == "unavailable"
        assert str(error) == ("the inventory cannot store a stock change now (the database's disk reports I/O errors); "
                              "nothing was changed")
        assert store.counts() == {"oat-milk": 5}
        assert store.adjust("oat-milk", delta=-1, actor="till") == 4  # the disk works again: so does the store


@pytest.mark.parametrize("code", [10, 266, 778, 1290], ids=["IOERR", "IOERR_READ", "IOERR_WRITE", "IOERR_FSYNC"])
def test_every_extended_sqlite_ioerr_code_is_unavailable_and_a_missing_code_is_no_storage_failure(code: int) -> None:
    exc = sqlite3.OperationalError("disk I/O error")
    assert storage_failure(exc) is None  # no code (as every sqlite3 error on Python 3.10): not guessed from the text
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]  (what Python 3.11's sqlite3 sets)
    assert storage_failure(exc) == "unavailable"
    exc.sqlite_errorcode = "10"  # type: ignore[attr-defined]  (not an int: ignored, not a crash)
    assert storage_failure(exc) is None


@pytest.mark.parametrize("inventory_db", ["sqlite"], indirect=True)
def test_an_adjustment_on_a_failing_sqlite_disk_answers_503_with_retry_after(inventory_db,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    state = _service(inventory_db, monkeypatch)
    state.store.adjust("oat-milk", count=5, actor="till", reason="stock take")
    before = (state.store.stock(), state.store.audit())
    with _client(state) as client:
        with _failing_wal(state.store):
            r = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -2, "reason": "sold"})
        assert (r.status_code, r.headers.get("Retry-After")) == (503, "30"), r.text
        assert r.json()["detail"] == ("the inventory cannot store a stock change now (the database's disk reports I/O "
                                      "errors); the adjustment was not recorded, the count is unchanged")
        assert (state.store.stock(), state.store.audit()) == before
        again = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -2, "reason": "sold"})
    assert (again.status_code, again.json()) == (200, {"label": "oat-milk", "count": 3})


# -- PostgreSQL: a database that is read-only before the store opens it --------------------------------------------


@pytest.fixture
def read_only_database(postgres_url: str) -> Iterator[Any]:
    """A function that makes this module's PostgreSQL database read-only for every new session, as an operator does
    (`ALTER DATABASE ... SET default_transaction_read_only = on`); reset afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    database = make_url(postgres_url).database

    def alter(setting: str) -> None:
        with psycopg.connect(os.environ["SKULENS_TEST_POSTGRES"], autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" {setting}')

    yield lambda: alter("SET default_transaction_read_only = on")
    alter("RESET default_transaction_read_only")


def _tables(url: str) -> list[str]:
    """The tables in the store's own schema (the first of its search_path), read in a read-only session."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            return sorted(con.exec_driver_sql("SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = current_schema()").scalars())
    finally:
        engine.dispose()


@pytest.mark.parametrize("inventory_db", ["postgresql"], indirect=True)
def test_a_new_inventory_on_a_read_only_postgresql_database_fails_with_a_storage_error(
        inventory_db, read_only_database: Any) -> None:
    url = inventory_db.url("new")  # its schema is made while the database still takes writes
    read_only_database()
    with pytest.raises(StorageError) as failed:
        InventoryStore(url, **inventory_db.dirs("new"))
    assert failed.value.failure == "unavailable"
    assert str(failed.value) == (f"the inventory cannot set up its tables in {url} (the database is read-only); "
                                 "nothing was changed: schema version 3 needs one open where the database takes "
                                 "writes")
    assert _tables(url) == []


@pytest.mark.parametrize("inventory_db", ["postgresql"], indirect=True)
def test_a_read_only_postgresql_database_with_its_schema_opens_reads_and_answers_writes_503(
        inventory_db, monkeypatch: pytest.MonkeyPatch, read_only_database: Any) -> None:
    with inventory_db.store() as store:  # made while the database took writes
        store.intake([_photo(1), _photo(2, 0.2)], threshold=0.5, actor="t")
        before = (store.stock(), store.audit(), [i.id for i in store.review_queue()])
    read_only_database()
    state = _service(inventory_db, monkeypatch)  # opens the store: nothing to create, nothing written
    assert (state.store.stock(), state.store.audit(), [i.id for i in state.store.review_queue()]) == before
    with _client(state) as client:
        counts = client.get("/v1/inventory")
        r = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -1, "reason": "sold"})
    assert (counts.status_code, counts.json()["counts"], counts.json()["review_queue"]) == (200, {"oat-milk": 1}, 1)
    assert (r.status_code, r.headers.get("Retry-After")) == (503, "30"), r.text
    assert r.json()["detail"] == ("the inventory cannot store a stock change now (the database is read-only); the "
                                  "adjustment was not recorded, the count is unchanged")
    assert (state.store.stock(), state.store.audit()) == before[:2]


@pytest.mark.parametrize("inventory_db", ["postgresql"], indirect=True)
def test_cli_on_a_new_read_only_postgresql_database_says_so_in_one_line(
        inventory_db, read_only_database: Any, tiny_bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    url = inventory_db.url("new")
    read_only_database()
    capsys.readouterr()
    # a command that reads an inventory: there is none (it would have made one)
    assert main(["inventory", "purge", "--db", url, "--older-than-days", "30"]) == 2
    assert "no inventory at" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(photo_bytes("oat-milk", 1))
    # one that makes it: the database refuses (before the model loads)
    assert main(["inventory", "scan", str(tmp_path / "photos"), "-m", str(tiny_bundle.bundle), "--db", url,
                 *inventory_db.cli_dirs("new"), "-q"]) == 3  # the storage's exit code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"skulens: storage unavailable: the inventory cannot set up its tables in {url} "
                                    "(the database is read-only); nothing was changed: schema version 3 needs one "
                                    "open where the database takes writes")


# -- an erasure cut short before its commit: the sweep puts its files back ----------------------------------------

OLD = time.time() - 2 * 86400  # a file's mtime two days ago: the sweep comes long after the crash


def _erasure_killed_before_commit(store: InventoryStore, user: str, monkeypatch: pytest.MonkeyPatch, *,
                                  age: bool = True) -> list[Path]:
    """Erase `user` and let the process die after the erasure set the files aside and before its commit (its
    rollback's put-back never runs, as in a crash; a labelled photo's erasure stages a manifest there, and that is
    where it dies). The files set aside, aged."""

    def killed(*_: Any) -> None:
        raise SystemExit("killed")

    with monkeypatch.context() as m:
        m.setattr(store, "_stage_manifest", killed)
        m.setattr(store, "_put_back", lambda aside: None)
        with pytest.raises(SystemExit):
            store.erase_user(user, actor="support")
    aside = sorted(p for d in (store.photo_dir, *store.labelled_dir.iterdir()) if d.is_dir() for p in d.glob(".*.tmp"))
    for f in aside if age else ():
        os.utime(f, (OLD, OLD))
    return aside


def test_the_sweep_puts_back_an_erasures_files_of_photos_taken_in_the_last_hour(inventory_db,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename keeps a file's mtime: an aside file is as young as its photo, and the sweep's hour of grace for
    young files must not leave it aside (the photo would be missing until a later sweep)."""
    from skulens.serve.privacy import Pseudonymizer

    alice = Pseudonymizer(b"0123456789abcdef-test-key")("alice")
    with inventory_db.store() as store:
        store.intake([_photo(1, 0.2, user=alice)], threshold=0.5, actor="t", keep_photos=True)
        store.resolve(f"{1:064x}", "oat-milk", actor="reviewer")  # labelled: its erasure stages a manifest
        kept = store.photo_file(f"{1:064x}")
        assert kept is not None
        (aside,) = _erasure_killed_before_commit(store, alice, monkeypatch, age=False)
        assert store.photo_file(f"{1:064x}") is None and aside.stat().st_mtime > time.time() - 600  # young
        assert store.sweep_uploads(actor="t") == 0
        assert store.photo_file(f"{1:064x}") == kept and not aside.exists()
        assert store.audit(limit=1)[0].detail == {"files": 0, "labelled": 0, "restored": 1}
        assert kept.read_bytes() and f"oat-milk/{1:064x}.jpg" in (store.labelled_dir / "manifest.csv").read_text()


def test_the_sweep_puts_back_the_files_of_an_erasure_cut_short_before_its_commit(
        inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.recommend.shopping_log import Event
    from skulens.serve.privacy import Pseudonymizer

    key = Pseudonymizer(b"0123456789abcdef-test-key")
    alice, bob = key("alice"), key("bob")
    with inventory_db.store() as store:
        store.record_events([Event(alice, "oat-milk", "view", 1.0), Event(bob, "oat-milk", "view", 2.0)])
        store.intake([_photo(1, user=alice), _photo(2, 0.2, user=alice), _photo(3, 0.2, user=alice),
                      _photo(4, 0.2, user=bob)], threshold=0.5, actor="t", keep_photos=True)
        store.resolve(f"{3:064x}", "oat-milk", actor="reviewer")  # labelled data, in the manifest
        files = {i: store.photo_file(f"{i:064x}") for i in range(1, 5)}
        kept = {i: f.read_bytes() for i, f in files.items() if f is not None}
        manifest = (store.labelled_dir / "manifest.csv").read_text()
        assert len(kept) == 4 and f"oat-milk/{3:064x}.jpg" in manifest

        aside = _erasure_killed_before_commit(store, alice, monkeypatch)

        assert len(aside) == 3 and [store.photo_file(f"{i:064x}") for i in (1, 2, 3)] == [None] * 3
        assert len(store.events()) == 2  # nothing was erased: the rows still name the files
        assert store.sweep_uploads(actor="t") == 0  # nothing deleted: every file put back where it was
        assert {i: store.photo_file(f"{i:064x}") for i in range(1, 5)} == files
        assert {i: f.read_bytes() for i, f in files.items() if f is not None} == kept
        assert not any(p.exists() for p in aside)
        assert (store.labelled_dir / "manifest.csv").read_text() == manifest
        entry = store.audit(limit=1)[0]
        assert (entry.action, entry.detail) == ("sweep_files", {"files": 0, "labelled": 0, "restored": 3})
        done = store.erase_user(alice, actor="support")  # the user's request, again: now it is done
        assert (done.events, done.photos, done.files) == (1, 3, 3)
        assert [i for i in range(1, 5) if store.photo_file(f"{i:064x}")] == [4]
        assert not (store.labelled_dir / "manifest.csv").exists()  # no labelled photo is left
        assert store.sweep_uploads(actor="t") == 0 and store.audit(limit=1)[0].action == "erase_user"


def test_the_sweep_deletes_an_aside_file_whose_name_holds_a_file_again(inventory_db,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An erasure's aside file whose row still names it, but whose own name holds a file again, is a leftover: the
    file under the name stays, the aside one is swept."""
    from skulens.serve.privacy import Pseudonymizer

    alice = Pseudonymizer(b"0123456789abcdef-test-key")("alice")
    with inventory_db.store() as store:
        store.intake([_photo(1, 0.2, user=alice)], threshold=0.5, actor="t", keep_photos=True)
        path = store.resolve(f"{1:064x}", "oat-milk", actor="reviewer") and store.photo_file(f"{1:064x}")
        assert path is not None and path.parent == store.labelled_dir / "oat-milk"

        (aside,) = _erasure_killed_before_commit(store, alice, monkeypatch)

        assert aside.parent == path.parent and not path.exists()
        path.write_bytes(b"written again")
        os.utime(path, (OLD, OLD))
        assert store.sweep_uploads(actor="t") == 1
        assert not aside.exists() and path.read_bytes() == b"written again"
        assert store.audit(limit=1)[0].detail == {"files": 1, "labelled": 1}


# -- PostgreSQL: the database's own disk failing it (SQLSTATE 58030, io_error) is the storage's, as SQLITE_IOERR is -


def test_a_postgresql_io_error_is_unavailable() -> None:
    """psycopg's own error for SQLSTATE 58030: what PostgreSQL raises when the OS fails a read or write of its files
    with EIO ("could not read file ...: Input/output error")."""
    errors = pytest.importorskip("psycopg.errors")
    exc = errors.lookup("58030")('could not write to file "pg_wal/xlogtemp.123": Input/output error')
    assert (type(exc).__name__, exc.sqlstate) == ("IoError", "58030")
    assert storage_failure(exc) == "unavailable"
    error = storage_error(exc, "the inventory cannot store a stock change now", "nothing was changed")
    assert error is not None and error.failure == "unavailable"
    assert str(error) == ("the inventory cannot store a stock change now (the database's disk reports I/O errors); "
                          "nothing was changed")


@pytest.mark.parametrize("inventory_db", ["postgresql"], indirect=True)
def test_an_adjustment_on_a_postgresql_database_whose_disk_fails_answers_503_with_retry_after(
        inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's own io_error, raised in the adjustment's transaction (by a trigger: a real failing disk needs
    privileges the tests do not have), is answered as a SQLite database's disk I/O error is."""
    state = _service(inventory_db, monkeypatch)
    state.store.adjust("oat-milk", count=5, actor="till", reason="stock take")
    before = (state.store.stock(), state.store.audit())
    inventory_db.execute("inv", "CREATE FUNCTION disk_fails() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE "
                                "EXCEPTION 'could not write to file \"base/1/2\": Input/output error' USING ERRCODE = "
                                "'io_error'; END $$")
    inventory_db.execute("inv", "CREATE TRIGGER disk_fails BEFORE UPDATE ON stock FOR EACH ROW EXECUTE FUNCTION "
                                "disk_fails()")
    with _client(state) as client:
        r = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -2, "reason": "sold"})
        assert (r.status_code, r.headers.get("Retry-After")) == (503, "30"), r.text
        assert r.json()["detail"] == ("the inventory cannot store a stock change now (the database's disk reports I/O "
                                      "errors); the adjustment was not recorded, the count is unchanged")
        assert (state.store.stock(), state.store.audit()) == before
        inventory_db.execute("inv", "DROP TRIGGER disk_fails ON stock")  # the disk works again: so does the store
        again = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -2, "reason": "sold"})
    assert (again.status_code, again.json()) == (200, {"label": "oat-milk", "count": 3})


# -- PostgreSQL gone for a while: 503 with Retry-After, /readyz says so, back by itself ----------------------------


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder under /tmp with a short path (a Unix socket's path must stay under 108 bytes), removed after."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class _SocketProxy:
    """A Unix-socket forwarder to the PostgreSQL server: psycopg connects to FOLDER/.s.PGSQL.5432 (host=FOLDER) and
    the bytes go to the server's own socket. cut() drops every connection and the socket itself, as a database that
    went away; restore() brings it back."""

    def __init__(self, target: str, folder: Path):
        self.target, self.path = target, folder / ".s.PGSQL.5432"
        self.pairs: list[Any] = []
        self.listener: Any = None

    def restore(self) -> None:
        import socket
        import threading

        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: Any) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.target)
            self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: Any, b: Any) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        self.listener.close()
        self.path.unlink()
        for pair in self.pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.pairs.clear()


@pytest.mark.parametrize("inventory_db", ["postgresql"], indirect=True)
def test_a_postgresql_that_goes_away_is_a_503_readyz_says_so_and_the_service_comes_back(
        inventory_db, tiny_bundle, tiny_catalogue: Path, short_tmp: Path) -> None:
    """Every inventory call answered a bare 500 and logged a traceback while PostgreSQL was down, /readyz said
    "ready" (a load balancer kept sending intakes), and `inventory scan` ended in a traceback."""
    from fastapi.testclient import TestClient
    from sqlalchemy.engine import make_url

    from skulens.cli._errors import storage_failure as cli_storage_failure
    from skulens.serve.app import create_app
    from test_serve import AUTH, _settings, _upload

    url = make_url(inventory_db.url())
    proxy = _SocketProxy(f"{url.query['host']}/.s.PGSQL.{url.port or 5432}", short_tmp)
    proxy.restore()
    proxied = url.update_query_dict({"host": str(short_tmp)}).render_as_string(hide_password=False)
    photos = sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))
    app = create_app(_settings(tiny_bundle, db=proxied, labelled_dir=str(inventory_db.dirs()["labelled_dir"]),
                               warmup=False))
    with TestClient(app) as client:
        assert client.post("/v1/inventory/intake", files=_upload(photos[0].read_bytes(), field="images"),
                           headers=AUTH).status_code == 200
        proxy.cut()
        down = [client.post("/v1/inventory/intake", files=_upload(photos[1].read_bytes(), field="images"),
                            headers=AUTH),
                client.get("/v1/inventory", headers=AUTH), client.get("/v1/inventory/audit", headers=AUTH)]
        for r in down:
            assert (r.status_code, r.headers.get("Retry-After")) == (503, "30"), r.text
            assert "the database cannot be reached" in r.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "the inventory database cannot be reached" in ready.json()["problems"]
        proxy.restore()
        back = client.get("/readyz")
        assert back.status_code == 200, back.json()
        again = client.post("/v1/inventory/intake", files=_upload(photos[1].read_bytes(), field="images"),
                            headers=AUTH)
        assert again.status_code == 200 and again.json()["results"][0]["status"] != "duplicate"
        assert sum(client.get("/v1/inventory").json()["counts"].values()) + \
            client.get("/v1/inventory").json()["review_queue"] == 2  # both photos, once each
    # the CLI: a store whose database went away mid-run is the storage's failure (one line, exit 3)
    store = InventoryStore(proxied, **inventory_db.dirs())
    try:
        proxy.cut()
        with pytest.raises(Exception) as lost:
            store.stock()
        assert cli_storage_failure(lost.value) == "unavailable" and storage_failure(lost.value) == "unavailable"
    finally:
        store.close()
