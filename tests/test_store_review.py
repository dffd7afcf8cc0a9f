"""The inventory store's failure paths: one request's failed write inside a merged intake transaction, and files
a crash leaves behind that no row names."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from skulens.serve.inventory import IntakePhoto, InventoryStore
from skulens.serve.privacy import Pseudonymizer

OLD = time.time() - 2 * 86400  # a file's mtime two days ago: what a crash long before the sweep leaves


def _photo(i: int, conf: float = 0.9, label: str = "oat-milk", user: str | None = None) -> IntakePhoto:
    return IntakePhoto(f"{i:064x}", f"p{i}.jpg", label, conf, ((label, conf),), b"jpeg %d" % i, user)


def _unwritable(store: InventoryStore, p: IntakePhoto) -> None:
    """Make the photo's kept file impossible to write (a real OSError at write time: its path is a folder)."""
    (store.photo_dir / f"{p.sha256}.jpg").mkdir(parents=True)


# -- one request's failure in a merged intake ---------------------------------------------------------


def test_a_failed_request_does_not_fail_the_requests_merged_with_it(inventory_db) -> None:
    with inventory_db.store() as store:
        retried = _photo(9)
        store.intake([retried], threshold=0.5, actor="t")  # committed before: a client's retry sends it again
        bad = _photo(2, conf=0.2)  # for review: its photo is kept, and that write fails
        _unwritable(store, bad)
        a, b, c, d = [_photo(1)], [_photo(3), bad], [_photo(1), _photo(4, conf=0.2)], [retried]

        out = store.intake_batches([a, b, c, d], threshold=0.5, actor=["a", "b", "c", "d"])

        assert isinstance(out[1], OSError)  # only the request that cannot be written fails
        assert [[r.status for r in res] for res in (out[0], out[2], out[3])] == [
            ["counted"], ["duplicate", "review"], ["duplicate"]]
        assert out[0][0].count == 2  # photo 9, then photo 1
        assert store.counts() == {"oat-milk": 2}  # photos 9 and 1, each once; nothing of request b
        assert set(store.known(f"{i:064x}" for i in range(10))) == {f"{i:064x}" for i in (1, 4, 9)}
        assert [e.photo for e in store.audit() if e.action == "intake"] == [f"{1:064x}", f"{9:064x}"]
        assert store.photo_file(f"{4:064x}") is not None  # the other request's kept photo is there
        # and no file of the failed request (the folder in its photo's place aside), not even a temporary
        assert sorted(f.name for f in store.photo_dir.iterdir()) == [f"{2:064x}.jpg", f"{4:064x}.jpg"]
        (store.photo_dir / f"{bad.sha256}.jpg").rmdir()  # fixed: the client's retry of b counts once
        again = store.intake_batches([b, a], threshold=0.5, actor=["b", "a"])
        assert [[r.status for r in res] for res in again] == [["counted", "review"], ["duplicate"]]
        assert store.counts() == {"oat-milk": 3}


def test_the_service_writer_answers_each_request_with_its_own_fate(inventory_db,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.serve.settings import ServeSettings
    from skulens.serve.state import ServiceState

    monkeypatch.delenv("SKULENS_PSEUDONYM_KEY", raising=False)
    settings = ServeSettings(model="unused", db=inventory_db.url(), labelled_dir=str(inventory_db.tmp_path / "lab"),
                             review_threshold=0.5)
    state = ServiceState(settings, SimpleNamespace(path=None))  # the writer needs no model
    bad = _photo(2, conf=0.2)
    assert state.store is not None and state.writer is not None
    _unwritable(state.store, bad)

    async def three_requests() -> list[object]:
        await state.start()
        try:
            return await asyncio.gather(state.record_intake([_photo(1)], "a"), state.record_intake([bad], "b"),
                                        state.record_intake([_photo(3), _photo(1)], "c"), return_exceptions=True)
        finally:
            await state.stop()

    a, b, c = asyncio.run(three_requests())
    assert isinstance(b, OSError) and not isinstance(a, Exception) and not isinstance(c, Exception), (a, c)
    assert state.writer.batches == 1  # the three requests were one merged batch
    assert [r.status for r in a] == ["counted"] and [r.status for r in c] == ["counted", "duplicate"]
    with inventory_db.store() as store:
        assert store.counts() == {"oat-milk": 2}


# -- files no row names -------------------------------------------------------------------------------


def test_purge_sweeps_the_files_a_crash_left_and_keeps_the_named_ones(inventory_db,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pseudonymizer(b"0123456789abcdef-test-key")
    alice, bob = p("alice"), p("bob")
    with inventory_db.store() as store:
        store.intake([_photo(1, user=alice), _photo(2, 0.2, user=alice), _photo(3, 0.2, "red-apple", alice),
                      _photo(4, user=bob), _photo(5, 0.2, user=bob), _photo(6, 0.2, "red-apple", bob)],
                     threshold=0.5, actor="t", keep_photos=True)
        for i in (3, 6):
            store.resolve(f"{i:064x}", "red-apple", actor="reviewer")  # into the labelled folder
        named = {i: store.photo_file(f"{i:064x}") for i in range(1, 7)}
        with monkeypatch.context() as m:  # the process dies between the erasure's commit and its file deletions
            m.setattr(store, "_finish_erasure", lambda *args: None)
            assert store.erase_user(alice, actor="support").files == 3
        # alice's files, set aside under names of the store's temporaries until the commit (and left there)
        aside = [*store.photo_dir.glob(".*.tmp"), *(store.labelled_dir / "red-apple").glob(".*.tmp")]
        assert len(aside) == 3 and all(not named[i].exists() for i in (1, 2, 3))
        half_written = store.photo_dir / f".{7:064x}.jpg.4242.tmp"  # an intake killed mid-write
        half_written.write_bytes(b"half")
        other = store.photo_dir / "notes.txt"  # not the store's: never touched
        other.write_text("mine")
        young = store.photo_dir / f"{8:064x}.jpg"  # an intake whose transaction has not committed yet
        young.write_bytes(b"in flight")
        theirs = store.labelled_dir / "pear" / f"{9:064x}.jpg"  # another store's photos in a shared labelled folder:
        theirs.parent.mkdir()  # under a label this store never saw,
        theirs.write_bytes(b"their pear")
        theirs_too = store.labelled_dir / "red-apple" / f"{10:064x}.jpg"  # and under one both stores use
        theirs_too.write_bytes(b"their apple")
        for f in [*(named[i] for i in (4, 5, 6)), *aside, half_written, other, theirs, theirs_too]:
            assert f is not None
            os.utime(f, (OLD, OLD))
        assert len((store.labelled_dir / "manifest.csv").read_text().splitlines()) == 3  # still lists alice's

        store.purge_uploads(30)

        for i, f in named.items():
            assert f is not None and f.is_file() == (i > 3), i  # alice's photos went; bob's, named, stay
        assert not half_written.exists() and other.is_file() and young.is_file()
        assert not any(f.exists() for f in aside) and theirs.is_file() and theirs_too.is_file()
        entry = store.audit(limit=1)[0]
        assert (entry.action, entry.detail) == ("sweep_files", {"files": 4, "labelled": 1})
        assert [r.split(",")[0] for r in (store.labelled_dir / "manifest.csv").read_text().splitlines()] == [
            "path", f"red-apple/{6:064x}.jpg"]
        assert store.purge_uploads(30) == 0 and store.audit(limit=1)[0].action == "sweep_files"  # nothing more


def test_a_database_error_fails_the_merged_requests_at_once_without_a_solo_retry_each(
        inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    with inventory_db.store() as store:
        calls = []

        def locked(batches, *a, **kw):
            calls.append(len(batches))
            raise sqlite3.OperationalError("database is locked")  # everyone's error, not one request's

        monkeypatch.setattr(store, "_intake_merged", locked)
        out = store.intake_batches([[_photo(1)], [_photo(2)], [_photo(3)]], threshold=0.5, actor="t")
        assert calls == [3] and all(isinstance(e, sqlite3.OperationalError) for e in out)


# -- a full disk is everyone's --------------------------------------------------------------------------


def _full_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int, *, room: int = 0) -> list[str]:
    """Make writes into `folder` fail as a full (over-quota, read-only) disk fails them, after `room` files
    still fit: half the bytes written, then the OSError. Returns the names whose write was attempted."""
    import pathlib

    attempts: list[str] = []
    write_bytes = pathlib.Path.write_bytes

    def write(path: pathlib.Path, data: bytes) -> int:
        if path.parent != folder:
            return write_bytes(path, data)
        attempts.append(path.name.split(".")[1])  # .SHA.jpg.PID.tmp: the photo's sha256
        if len(attempts) <= room:
            return write_bytes(path, data)
        write_bytes(path, data[: len(data) // 2])
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(pathlib.Path, "write_bytes", write)
    return attempts


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS], ids=errno.errorcode.get)
def test_a_full_disk_fails_the_merged_requests_at_once_with_nothing_left_behind(
        inventory_db, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    with inventory_db.store() as store:
        # Photo 1 still fits (the disk is full after it); photo 2 does not. All go to review: all are kept.
        attempts = _full_disk(monkeypatch, store.photo_dir, code, room=1)
        a, b, c = [_photo(1, 0.2)], [_photo(2, 0.2), _photo(3, 0.2)], [_photo(4, 0.2)]

        out = store.intake_batches([a, b, c], threshold=0.5, actor=["a", "b", "c"])

        assert isinstance(out[0], OSError) and out[0].errno == code
        assert all(e is out[0] for e in out)  # the same error for every request: no request is blamed alone
        assert attempts == [f"{1:064x}", f"{2:064x}"]  # each photo written at most once: no solo retries
        assert store.known(f"{i:064x}" for i in range(1, 5)) == {} and store.counts() == {} and store.audit() == []
        assert list(store.photo_dir.iterdir()) == []  # neither photo 1's file nor photo 2's half-written one


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOENT],
                         ids=errno.errorcode.get)
def test_a_files_own_write_error_is_still_one_requests(code: int) -> None:
    from skulens.serve.inventory.errors import one_requests_error, storage_failure

    exc = OSError(code, os.strerror(code), "x.jpg")
    assert storage_failure(exc) is None and one_requests_error(exc)


def test_storage_failure_knows_a_full_disk_from_the_os_and_from_either_database() -> None:
    import sqlite3

    from skulens.serve.inventory.errors import one_requests_error, storage_failure

    assert [storage_failure(OSError(c, "")) for c in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)] == [
        "full", "full", "unavailable", "unavailable"]
    db = sqlite3.connect(":memory:")
    db.executescript("PRAGMA max_page_count = 2; CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.OperationalError) as full:  # a real SQLITE_FULL: the database cannot grow
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    # (Python 3.10's sqlite3 errors carry no error code: a full database there is everyone's error, not "full")
    assert storage_failure(full.value) == ("full" if sys.version_info >= (3, 11) else None)
    assert not one_requests_error(full.value)
    errors = pytest.importorskip("psycopg.errors")
    assert storage_failure(errors.DiskFull("could not extend file")) == "full"


def _service(inventory_db, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ServiceState on the test's inventory whose model is stubbed: every photo is an unsure oat-milk (kept, for
    review), and oat-milk is the one product a review may name."""
    import io

    from PIL import Image

    from skulens.models.predictor import Prediction
    from skulens.serve.settings import ApiKey, ServeSettings
    from skulens.serve.state import ServiceState

    monkeypatch.delenv("SKULENS_PSEUDONYM_KEY", raising=False)
    settings = ServeSettings(model="unused", db=inventory_db.url(), labelled_dir=str(inventory_db.tmp_path / "lab"),
                             review_threshold=0.5, api_keys=(ApiKey("till", "s3cret-key"),))
    state = ServiceState(settings, SimpleNamespace(path=None, card=SimpleNamespace(classes=("oat-milk",))))
    assert state.store is not None

    async def unsure(image: object, **_: object) -> Prediction:  # below the threshold: the photo is kept
        return Prediction("upload", "oat-milk", "fine", 0.2, "oat-milk", 0.2, top_k=(("oat-milk", 0.2),))

    monkeypatch.setattr(state.recognizer, "decode", lambda data, full=False: Image.open(io.BytesIO(data)))
    monkeypatch.setattr(state.recognizer, "predict", unsure)
    return state


@contextmanager
def _client(state: Any) -> Iterator[Any]:
    """A client of the inventory and people (users) routes alone, on `state` (started and stopped with it)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from skulens.serve.routers import inventory as inventory_router
    from skulens.serve.routers import users as users_router

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.skulens = state
        await state.start()
        yield
        await state.stop()

    app = FastAPI(lifespan=lifespan)
    app.include_router(inventory_router.router)
    app.include_router(users_router.router)
    with TestClient(app, headers={"X-API-Key": "s3cret-key"}) as client:
        yield client


def _jpegs(n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    import io

    from PIL import Image

    photos = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(buf, format="JPEG")
        photos.append(("images", (f"{i}.jpg", buf.getvalue(), "image/jpeg")))
    return photos


# A storage failure's answer says when to try again only when waiting can help (a read-only or failing database or
# disk); waiting makes no room on a full disk.
_RETRY_AFTER = {503: "30", 507: None}


def _retry_after(r: Any) -> str | None:
    return r.headers.get("Retry-After")


def _read_only(store: InventoryStore) -> None:
    """From now on the store's database takes no writes, and says so with its own error, as a read-only database
    does: SQLite's query_only (SQLITE_READONLY "attempt to write a readonly database", as for a read-only file or
    mount), PostgreSQL's read-only transactions (SQLSTATE 25006, as on a hot standby)."""
    import sqlalchemy as sa

    sql = "PRAGMA query_only = ON" if store.backend == "sqlite" else "SET TRANSACTION READ ONLY"
    sa.event.listen(store._engine, "begin", lambda conn: conn.exec_driver_sql(sql))


@pytest.mark.parametrize(("code", "status"), [pytest.param(errno.ENOSPC, 507, id="ENOSPC-507"),
                                               pytest.param(errno.EDQUOT, 507, id="EDQUOT-507"),
                                               pytest.param(errno.EROFS, 503, id="EROFS-503")])
def test_intake_on_a_full_disk_answers_507_and_counts_nothing(inventory_db, monkeypatch: pytest.MonkeyPatch,
                                                              code: int, status: int) -> None:
    state = _service(inventory_db, monkeypatch)
    attempts = _full_disk(monkeypatch, state.store.photo_dir, code)
    with _client(state) as client:
        r = client.post("/v1/inventory/intake", files=_jpegs(2))
    assert r.status_code == status, r.text
    assert _retry_after(r) == _RETRY_AFTER[status]
    assert os.strerror(code) in r.json()["detail"] and str(state.store.photo_dir) not in r.text
    assert len(attempts) == 1  # the first photo's write failed: the second was never tried
    assert list(state.store.photo_dir.iterdir()) == []  # not even the half-written temporary
    with inventory_db.store() as store:
        assert store.counts() == {} and store.stats() == {} and store.audit() == []


def test_intake_on_a_read_only_database_answers_503_and_loses_nothing(inventory_db,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    state = _service(inventory_db, monkeypatch)
    state.store.intake([_photo(1), _photo(2, 0.2)], threshold=0.5, actor="t")  # stored before the database went
    before = (state.store.counts(), state.store.stats(), state.store.audit(), sorted(state.store.photo_dir.iterdir()))
    _read_only(state.store)
    with _client(state) as client:
        r = client.post("/v1/inventory/intake", files=_jpegs(2))
    assert r.status_code == 503, r.text
    assert _retry_after(r) == _RETRY_AFTER[503]
    assert r.json()["detail"] == ("the inventory cannot store photos now (the database is read-only); "
                                  "nothing was counted")
    with inventory_db.store(photo_dir=state.store.photo_dir) as store:  # writable again: all there, nothing more
        assert (store.counts(), store.stats(), store.audit(), sorted(store.photo_dir.iterdir())) == before


def test_storage_failure_knows_a_read_only_database() -> None:
    import sqlite3

    from skulens.serve.inventory.errors import one_requests_error, storage_failure

    # Python 3.10's sqlite3 errors carry no error code: a read-only database there is everyone's error, not named
    named = "unavailable" if sys.version_info >= (3, 11) else None
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x)")
    db.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError, match="readonly database") as query_only:
        db.execute("INSERT INTO t VALUES (1)")
    assert storage_failure(query_only.value) == named and not one_requests_error(query_only.value)
    errors = pytest.importorskip("psycopg.errors")
    read_only = errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    assert storage_failure(read_only) == "unavailable" and not one_requests_error(read_only)


# -- the review queue's writes on a full disk -----------------------------------------------------------


@pytest.mark.parametrize(("failure", "status"), [
    pytest.param("ENOSPC", 507, id="copy-ENOSPC-507"), pytest.param("EDQUOT", 507, id="copy-EDQUOT-507"),
    pytest.param("EROFS", 503, id="copy-EROFS-503"), pytest.param("manifest", 507, id="manifest-ENOSPC-507"),
    pytest.param("database", 503, id="read-only-database-503")])
def test_a_review_on_a_full_disk_answers_507_and_the_item_stays_in_the_queue(
        inventory_db, monkeypatch: pytest.MonkeyPatch, failure: str, status: int) -> None:
    state = _service(inventory_db, monkeypatch)
    store = state.store
    store.intake([_photo(1, 0.2), _photo(2, 0.2)], threshold=0.5, actor="t")
    store.resolve(f"{1:064x}", "oat-milk", actor="reviewer")  # in the labelled folder and its manifest already
    item = f"{2:064x}"
    manifest = (store.labelled_dir / "manifest.csv").read_text()
    before = (store.counts(), store.audit(), [i.id for i in store.review_queue()], store.photo_file(item))
    labelled_before = sorted(store.labelled_dir.rglob("*"))
    with monkeypatch.context() as m:
        if failure == "database":
            _read_only(store)
            code = None
        else:  # the photo's copy in the labelled folder, or the new manifest beside the old one
            code = errno.ENOSPC if failure == "manifest" else getattr(errno, failure)
            folder = store.labelled_dir if failure == "manifest" else store.labelled_dir / "oat-milk"
            attempts = _full_disk(m, folder, code)
        with _client(state) as client:
            r = client.post(f"/v1/inventory/review/{item}", json={"label": "oat-milk"})
        assert r.status_code == status, r.text
        assert _retry_after(r) == _RETRY_AFTER[status]
        reason = "the database is read-only" if code is None else os.strerror(code)
        assert r.json()["detail"] == (f"the inventory cannot store a review now ({reason}); it was not recorded, "
                                      "the item is still waiting for review")
        if code is not None:
            assert attempts == ["manifest" if failure == "manifest" else item]
    with inventory_db.store(photo_dir=store.photo_dir, labelled_dir=store.labelled_dir) as again:  # nothing lost
        assert (again.counts(), again.audit(), [i.id for i in again.review_queue()], again.photo_file(item)) == before
        assert sorted(again.labelled_dir.rglob("*")) == labelled_before
        assert (again.labelled_dir / "manifest.csv").read_text() == manifest
        assert again.resolve(item, "oat-milk", actor="reviewer").status == "confirmed"  # the disk has room again
        assert again.counts() == {"oat-milk": 2} and again.review_queue() == []
        assert (again.labelled_dir / "manifest.csv").read_text().count("oat-milk/") == 2


# -- the sweep, a chunk at a time -----------------------------------------------------------------------


def test_the_sweep_checks_files_a_chunk_at_a_time_and_sweeps_as_before(inventory_db,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.serve.inventory import IntakeBox, ShelfPhoto
    from skulens.serve.inventory import store as inventory

    p = Pseudonymizer(b"0123456789abcdef-test-key")
    with inventory_db.store() as store:
        crop = IntakeBox((0, 0, 5, 5), 0.9, "oat-milk", 0.2, "oat-milk", b"crop")  # unsure: its crop is kept
        shelf = ShelfPhoto(f"{40:064x}", "shelf.jpg", (crop, crop, replace(crop, crop=None)), image=b"shelf")
        store.intake([_photo(i, 0.2 if i % 2 else 0.9, user=p("alice") if i < 5 else p("bob")) for i in range(1, 17)]
                     + [shelf], threshold=0.5, actor="t", keep_photos=True)
        store.resolve(f"{7:064x}", None, actor="reviewer")  # rejected: its file went, its row still names it
        for i in (3, 5):
            store.resolve(f"{i:064x}", "oat-milk", actor="reviewer")  # into the labelled folder
        with monkeypatch.context() as m:  # the process dies between the erasure's commit and its file deletions
            m.setattr(store, "_finish_erasure", lambda *args: None)
            assert store.erase_user(p("alice"), actor="support").files == 4  # photos 1 to 4 (3: labelled)
        rejected_again = store.photo_dir / f"{7:064x}.jpg"  # a rejection's unlink that a crash cut short
        rejected_again.write_bytes(b"rejected")
        strays = [store.photo_dir / f"{i:064x}.jpg" for i in (20, 21, 22)]  # written, never committed
        strays += [store.photo_dir / f".{23:064x}.jpg.4242.tmp", store.photo_dir / f"{40:064x}-7.jpg"]
        for f in strays:
            f.write_bytes(b"stray")
        theirs = store.labelled_dir / "oat-milk" / f"{30:064x}.jpg"  # another store's, in a shared labelled folder
        theirs.write_bytes(b"theirs")
        young = store.photo_dir / f"{24:064x}.jpg"  # an intake whose transaction has not committed yet
        young.write_bytes(b"in flight")
        files = [f for d in (store.photo_dir, *store.labelled_dir.iterdir()) if d.is_dir() for f in d.iterdir()]
        for f in files:
            if f != young:
                os.utime(f, (OLD, OLD))
        named = {f for f in files if f not in {*strays, rejected_again, theirs, young}}
        named_by_rows = {f.name for f in named}
        assert len(named_by_rows) > 3 * 3  # more rows than three chunks hold
        # set aside under names of the store's temporaries until the commit (and left there)
        erased = {f for f in named if f.name in {f".{i:064x}.jpg.{os.getpid()}.erasing.tmp" for i in range(1, 5)}}
        assert len(erased) == 4

        reads: list[tuple[int, int]] = []  # (photos asked about, rows answered) per query
        asked: list[str] = []
        read = store._read

        def counted(sql, params=None):
            rows = read(sql, params)
            asked.extend((params or {}).get("shas", ()))
            reads.append((len((params or {}).get("shas", ())), len(rows)))
            return rows

        with monkeypatch.context() as m:
            m.setattr(inventory, "_SWEEP_CHUNK", 3)
            m.setattr(store, "_read", counted)
            swept = store.sweep_uploads(actor="t")

        assert {f for f in files if f.exists()} == (named - erased) | {theirs, young}
        assert swept == len(strays) + 1 + len(erased)
        entry = store.audit(limit=1)[0]
        assert (entry.action, entry.detail) == ("sweep_files", {"files": swept, "labelled": 1})
        assert f"{24:064x}" not in asked  # a young file is never looked up
        # Every query asked about one chunk of photos (3) and got at most their rows and their boxes' (1 + 2 each),
        # never every name the store holds; together they asked about every old file in the folders.
        sweep_reads = [(n, rows) for n, rows in reads if n]
        assert sweep_reads and max(n for n, _ in sweep_reads) <= 3 and max(rows for _, rows in reads) <= 3 * 3
        assert len(sweep_reads) >= (len(files) - 1) // 3
        assert [r.split(",")[0] for r in (store.labelled_dir / "manifest.csv").read_text().splitlines()] == [
            "path", f"oat-milk/{5:064x}.jpg"]


def test_a_disk_that_fills_during_the_solo_retries_ends_them(inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merged intake fails on one request's error; written alone, the second request meets a full disk:
    the third is not tried (it would fail alike, after most of its bytes), it gets the same error."""
    with inventory_db.store() as store:
        real, calls = store._intake_merged, []

        def merged(batches, *args):  # type: ignore[no-untyped-def]
            calls.append(len(batches))
            if len(batches) > 1:
                raise ValueError("one request's refused value")
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(batches, *args)

        monkeypatch.setattr(store, "_intake_merged", merged)
        out = store.intake_batches([[_photo(1, 0.9)], [_photo(2, 0.9)], [_photo(3, 0.9)]], threshold=0.5,
                                   actor=["a", "b", "c"])
        assert calls == [3, 1, 1]  # merged, a alone, b alone; c never
        assert not isinstance(out[0], Exception)
        assert isinstance(out[1], OSError) and out[2] is out[1]


@pytest.mark.parametrize("database_back", [True, False], ids=["audit-written", "database-still-down"])
def test_a_sweep_that_stops_on_a_database_error_still_audits_what_it_deleted(
        inventory_db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, database_back: bool) -> None:
    import sqlite3

    from skulens.serve.inventory import store as inventory

    with inventory_db.store() as store:
        store.intake([_photo(1, 0.2)], threshold=0.5, actor="t")  # named: never swept
        strays = [store.photo_dir / f"{i:064x}.jpg" for i in range(20, 25)]  # written, never committed
        for f in [*strays, store.photo_dir / f"{1:064x}.jpg"]:
            f.write_bytes(b"stray")
            os.utime(f, (OLD, OLD))
        lost = sqlite3.OperationalError("disk I/O error")  # the database fails at the second chunk's query
        named_files, asked = store._named_files, []

        def still_down(*_: object) -> None:
            raise sqlite3.OperationalError("disk I/O error, again")

        def failing(shas):  # type: ignore[no-untyped-def]
            asked.append(shas)
            if len(asked) == 2:
                if not database_back:  # and the audit line's write fails too
                    monkeypatch.setattr(store, "_write", still_down)
                raise lost
            return named_files(shas)

        monkeypatch.setattr(inventory, "_SWEEP_CHUNK", 2)
        monkeypatch.setattr(store, "_named_files", failing)
        with pytest.raises(sqlite3.OperationalError) as raised:
            store.sweep_uploads(actor="t")

        assert raised.value is lost  # the sweep's own error, as before (not the audit's)
        gone = [f for f in strays if not f.exists()]
        assert 1 <= len(gone) <= 2 and (store.photo_dir / f"{1:064x}.jpg").is_file()  # the first chunk only
        assert f"deleted {len(gone)} file(s)" in caplog.text  # said in the log whatever the database does
        monkeypatch.undo()
        entry = store.audit(limit=1)[0]
        if database_back:  # the audit line says what went, and that the sweep did not finish
            assert (entry.action, entry.detail) == ("sweep_files", {"files": len(gone), "labelled": 0,
                                                                    "stopped": "OperationalError"})
        else:
            assert entry.action == "review_queued" and "audit line of a stopped sweep could not be written" in caplog.text
        assert store.sweep_uploads(actor="t") == len(strays) - len(gone)  # the next sweep deletes the rest
        assert store.audit(limit=1)[0].detail == {"files": len(strays) - len(gone), "labelled": 0}


# -- a stock adjustment and a user's erasure on a full disk or a read-only database ----------------------------


def _database_full(store: InventoryStore) -> None:
    """From now on the store's database answers its audit line's INSERT as a full disk does, with the driver's own
    error (SQLite: SQLITE_FULL "database or disk is full"; PostgreSQL: SQLSTATE 53100), after the statements
    before it in the transaction ran."""
    import sqlite3

    import sqlalchemy as sa

    def full(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not statement.startswith("INSERT INTO audit"):
            return
        if store.backend == "postgresql":
            import psycopg.errors

            raise psycopg.errors.DiskFull("could not extend file: No space left on device")
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode, exc.sqlite_errorname = 13, "SQLITE_FULL"  # type: ignore[attr-defined]
        raise exc

    sa.event.listen(store._engine, "before_cursor_execute", full)


@pytest.mark.parametrize(("failure", "status"), [pytest.param("read-only", 503, id="read-only-database-503"),
                                                  pytest.param("full", 507, id="full-database-507")])
def test_an_adjustment_on_a_read_only_or_full_database_answers_503_or_507_and_changes_nothing(
        inventory_db, monkeypatch: pytest.MonkeyPatch, failure: str, status: int) -> None:
    state = _service(inventory_db, monkeypatch)
    state.store.adjust("oat-milk", count=5, actor="till", reason="stock take")
    before = (state.store.stock(), state.store.audit())
    if failure == "read-only":
        _read_only(state.store)
    else:  # the count's change has run when the audit line's write fails: it is rolled back with it
        _database_full(state.store)
    with _client(state) as client:
        r = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -2, "reason": "sold"})
    assert r.status_code == status, r.text
    assert _retry_after(r) == _RETRY_AFTER[status]
    reason = "the database is read-only" if failure == "read-only" else "the database's disk is full"
    assert r.json()["detail"] == (f"the inventory cannot store a stock change now ({reason}); the adjustment was not "
                                  "recorded, the count is unchanged")
    with inventory_db.store() as store:  # writable again: the count and its audit log as they were
        assert (store.stock(), store.audit()) == before
        assert store.adjust("oat-milk", delta=-2, actor="till", reason="sold") == 3


def _erasable(inventory_db, monkeypatch: pytest.MonkeyPatch, events_csv: Path | None = None) -> Any:
    """`_service` with a pseudonym key, and alice's data: 2 events, a counted photo kept, one waiting for review and
    one reviewed into the labelled folder (3 files); bob's event and reviewed photo, which stay."""
    from skulens.recommend.shopping_log import Event
    from skulens.serve.people import People

    state = _service(inventory_db, monkeypatch)
    key = Pseudonymizer(b"0123456789abcdef-test-key")
    state.people = People(store=state.store, pseudonym=key, events_csv=str(events_csv) if events_csv else None,
                          fit=None)
    alice, bob = key("alice"), key("bob")
    store = state.store
    store.record_events([Event(alice, "oat-milk", "view", 1.0), Event(bob, "oat-milk", "cart", 2.0),
                         Event(alice, "oat-milk", "purchase", 3.0)])
    store.intake([_photo(1, user=alice), _photo(2, 0.2, user=alice), _photo(3, 0.2, user=alice),
                  _photo(4, 0.2, user=bob)], threshold=0.5, actor="t", keep_photos=True)
    for i in (3, 4):
        store.resolve(f"{i:064x}", "oat-milk", actor="reviewer")
    return state


def _everything(store: InventoryStore) -> tuple[Any, ...]:
    """What an erasure changes, and what it must not: the rows, the audit log, and every file in the folders."""
    files = {p.relative_to(d).as_posix(): p.read_bytes() for d in (store.photo_dir, store.labelled_dir)
             for p in d.rglob("*") if p.is_file()}
    return (store.events(), store.counts(), store.audit(), [i.to_dict() for i in store.review_queue()],
            {i: store.photo_file(f"{i:064x}") for i in range(1, 5)}, files)


def _read_only_folder(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` a read-only disk's: a file in it is not written, renamed or unlinked (EROFS)."""
    import pathlib

    for name in ("write_bytes", "rename", "replace", "unlink"):
        real = getattr(pathlib.Path, name)

        def refuse(path: pathlib.Path, *args: Any, _real: Any = real, **kw: Any) -> Any:
            if path.parent == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return _real(path, *args, **kw)

        monkeypatch.setattr(pathlib.Path, name, refuse)


@pytest.mark.parametrize(("failure", "status"), [
    pytest.param("database", 503, id="read-only-database-503"),
    pytest.param("photos", 503, id="read-only-photo-folder-503"),
    pytest.param("manifest", 507, id="manifest-ENOSPC-507"),
    pytest.param("full-database", 507, id="full-database-507")])
def test_an_erasure_on_a_full_disk_or_read_only_database_answers_507_or_503_and_erases_nothing(
        inventory_db, monkeypatch: pytest.MonkeyPatch, failure: str, status: int) -> None:
    state = _erasable(inventory_db, monkeypatch)
    store = state.store
    before = _everything(store)
    assert len(before[-1]) == 5 and all(f is not None for f in before[-2].values())  # 4 photos and the manifest
    with monkeypatch.context() as m:
        if failure == "database":
            _read_only(store)
            reason = "the database is read-only"
        elif failure == "full-database":
            _database_full(store)
            reason = "the database's disk is full"
        elif failure == "photos":  # alice's kept photos cannot be deleted
            _read_only_folder(m, store.photo_dir)
            reason = os.strerror(errno.EROFS)
        else:  # the manifest without alice's photo cannot be written
            attempts = _full_disk(m, store.labelled_dir, errno.ENOSPC)
            reason = os.strerror(errno.ENOSPC)
        with _client(state) as client:
            r = client.delete("/v1/users/alice")
        assert r.status_code == status, r.text
        assert _retry_after(r) == _RETRY_AFTER[status]
        assert r.json()["detail"] == f"the inventory cannot erase a user now ({reason}); nothing was erased"
        assert str(store.photo_dir) not in r.text and str(store.labelled_dir) not in r.text
        if failure == "manifest":
            assert attempts == ["manifest"]
    with inventory_db.store(photo_dir=store.photo_dir, labelled_dir=store.labelled_dir) as again:
        assert _everything(again) == before  # every row, audit line and file as it was: no file half-erased
        state.store = state.people.store = again  # the disk and the database take writes again
        with _client(state) as client:
            r = client.delete("/v1/users/alice")
        assert r.status_code == 200, r.text
        assert (r.json()["events"], r.json()["photos"], r.json()["files"]) == (2, 3, 3)
        assert [i for i, f in _everything(again)[-2].items() if f is not None] == [4]  # bob's photo only
        assert (again.labelled_dir / "manifest.csv").read_text().count("oat-milk/") == 1


def test_recording_events_on_a_read_only_database_answers_503_and_records_none(
        inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _erasable(inventory_db, monkeypatch)
    store = state.store
    before = store.events()
    events = {"events": [{"user_id": "carol", "product_id": "oat-milk", "event": "view"},
                         {"user_id": "carol", "product_id": "oat-milk", "event": "cart"}]}
    _read_only(store)
    with _client(state) as client:
        r = client.post("/v1/events", json=events)
    assert r.status_code == 503, r.text
    assert _retry_after(r) == _RETRY_AFTER[503]
    assert r.json()["detail"] == ("the events were not recorded (the database is read-only); none of them was kept; "
                                  "send them again")
    with inventory_db.store(photo_dir=store.photo_dir, labelled_dir=store.labelled_dir) as again:
        assert again.events() == before
        state.store = state.people.store = again
        with _client(state) as client:
            r = client.post("/v1/events", json=events)
        assert r.status_code == 202 and r.json() == {"recorded": 2}, r.text
        assert len(again.events()) == len(before) + 2


def test_the_background_purge_on_a_read_only_database_logs_one_line_and_the_refit_still_runs(
        inventory_db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from skulens.serve.people import People

    state = _erasable(inventory_db, monkeypatch)
    fitted: list[int] = []
    people = People(store=state.store, pseudonym=state.people.pseudonym, events_csv=None,
                    fit=lambda events: fitted.append(len(events)) or object(), refit_s=0.0, retention_days=1e-9)
    _read_only(state.store)  # kept uploads are due for deletion, and the database takes no writes
    with caplog.at_level("INFO", logger="skulens.serve.people"):
        people.tick()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None, caplog.text
    assert "the retention purge did not run (the database is read-only); it is tried again in an hour" in caplog.text
    assert fitted == [3]  # the events were read and the recommender fitted all the same
    assert state.store.photo_file(f"{1:064x}") is not None  # nothing was deleted


def test_erasing_a_user_without_labelled_photos_needs_no_room_in_the_labelled_folder(
        inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a labelled photo's erasure rewrites the manifest: a user whose photo waits for review is erased even
    when the labelled folder's disk is full (an erasure is also how room is made)."""
    state = _erasable(inventory_db, monkeypatch)
    store = state.store
    carol = state.people.user_ref("carol")
    store.intake([_photo(5, 0.2, user=carol)], threshold=0.5, actor="t", keep_photos=True)  # waiting for review
    manifest = (store.labelled_dir / "manifest.csv").read_bytes()
    assert store.photo_file(f"{5:064x}") is not None
    with monkeypatch.context() as m:
        attempts = _full_disk(m, store.labelled_dir, errno.ENOSPC)
        with _client(state) as client:
            r = client.delete("/v1/users/carol")
        assert r.status_code == 200, r.text
        assert attempts == []  # no manifest was staged
    assert (r.json()["photos"], r.json()["files"]) == (1, 1)
    assert store.photo_file(f"{5:064x}") is None
    assert (store.labelled_dir / "manifest.csv").read_bytes() == manifest


def test_an_erasure_whose_events_log_cannot_be_rewritten_answers_507_and_says_what_was_done(
        inventory_db, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from skulens.recommend import shopping_log
    from skulens.recommend.shopping_log import Event, read_events, write_events

    log = tmp_path / "events.csv"
    write_events(log, [Event("alice", "oat-milk", "view", 1.0), Event("bob", "oat-milk", "view", 2.0)])
    logged = log.read_bytes()
    state = _erasable(inventory_db, monkeypatch, log)
    real = shopping_log.write_rows

    def full(path: Path, rows: Any, **kwargs: Any) -> None:  # half the log written, then the disk is full
        real(path, list(rows)[:1], **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as m:
        m.setattr(shopping_log, "write_rows", full)
        with _client(state) as client:
            r = client.delete("/v1/users/alice")
    assert r.status_code == 507, r.text
    assert _retry_after(r) == _RETRY_AFTER[507]
    assert r.json()["detail"] == (f"the events log cannot be rewritten now ({os.strerror(errno.ENOSPC)}); the "
                                  "user's 2 events and 3 files were erased from the inventory, but not their events "
                                  "in the log: erase the user again")
    assert str(tmp_path) not in r.text
    assert log.read_bytes() == logged and sorted(p.name for p in tmp_path.glob(".events.csv*.tmp")) == []
    assert [e.user_id for e in state.store.events()] == [state.people.user_ref("bob")]
    assert state.store.audit(limit=1)[0].action == "erase_user"
    with _client(state) as client:  # the disk has room again: the same request finishes the erasure
        r = client.delete("/v1/users/alice")
    assert r.status_code == 200, r.text
    assert (r.json()["events"], r.json()["log_events"], r.json()["files"]) == (0, 1, 0)
    assert [e.user_id for e in read_events(log)] == ["bob"]


def test_cli_erase_user_on_a_read_only_database_says_so_in_one_line(
        inventory_db, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    state = _erasable(inventory_db, monkeypatch)
    before = _everything(state.store)
    key = tmp_path / "secrets" / "key"  # not beside the database: refused there
    key.parent.mkdir()
    key.write_bytes(b"0123456789abcdef-test-key")
    erase = InventoryStore.erase_user

    def on_read_only(store: InventoryStore, *args: Any, **kw: Any) -> Any:  # the database went read-only
        _read_only(store)
        return erase(store, *args, **kw)

    monkeypatch.setattr(InventoryStore, "erase_user", on_read_only)
    argv = ["inventory", "erase-user", "alice", "--db", inventory_db.url(), "--pseudonym-key-file", str(key)]
    capsys.readouterr()
    assert main(argv) == 3  # the storage's exit code, not a usage error's
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == ("skulens: storage unavailable: the inventory cannot erase a user now (the "
                                    "database is read-only); nothing was erased")
    monkeypatch.undo()
    with inventory_db.store(photo_dir=state.store.photo_dir, labelled_dir=state.store.labelled_dir) as again:
        assert _everything(again) == before


def test_cli_write_on_a_read_only_database_exits_3_in_one_line(
        inventory_db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The store's write on a read-only database fails with the driver's own error, not a StorageError (here a
    purge that writes, as one with old uploads to delete does): the CLI finds it as the storage's, one line, exit 3."""
    from skulens.cli import main

    def on_read_only(store: InventoryStore, *args: Any, **kw: Any) -> Any:
        _read_only(store)
        return store.adjust("oat-milk", delta=1, actor="retention", known={"oat-milk"})

    monkeypatch.setattr(InventoryStore, "purge_uploads", on_read_only)
    with inventory_db.store():
        pass  # the database exists, with its tables
    capsys.readouterr()
    assert main(["inventory", "purge", "--db", inventory_db.url(), "--older-than-days", "0"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("skulens: storage unavailable: ")


def test_cli_storage_failure_is_found_through_the_chain_of_causes() -> None:
    from skulens.cli._errors import storage_failure

    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = RuntimeError("could not write the checkpoint")
    wrapped.__cause__ = full
    assert storage_failure(full) == "full" and storage_failure(wrapped) == "full"
    assert storage_failure(OSError(errno.EROFS, "Read-only file system")) == "unavailable"
    assert storage_failure(SimpleNamespace(orig=full, __cause__=None)) == "full"  # SQLAlchemy's DBAPIError shape
    assert storage_failure(OSError(errno.ENOENT, "No such file")) is None
    assert storage_failure(OSError(errno.EMFILE, "Too many open files")) is None  # not the disk's
    odd = RuntimeError("an expression, not an error, in `orig`")
    odd.orig = "x + 1"  # type: ignore[attr-defined]  (sympy's PolificationFailed has such an `orig`)
    assert storage_failure(odd) is None
    assert storage_failure(ValueError("bad label")) is None


def test_the_writing_routes_document_their_storage_answers(inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _service(inventory_db, monkeypatch)
    with _client(state) as client:
        spec = client.get("/openapi.json").json()
    for path, method in [("/v1/inventory/intake", "post"), ("/v1/inventory/products/{label}/adjust", "post"),
                         ("/v1/inventory/review/{item}", "post"), ("/v1/users/{user_id}", "delete"),
                         ("/v1/events", "post")]:
        answers = spec["paths"][path][method]["responses"]
        assert {"503", "507"} <= set(answers), (path, sorted(answers))


@pytest.mark.parametrize("inventory_db", ["sqlite", "postgresql"], indirect=True)
def test_a_review_whose_photo_another_process_kept_elsewhere_is_refused_with_nothing_changed(
        inventory_db, monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo queued by a scan with other folders (run from another directory): the service's review said
    "corrected" and counted it, and the photo never reached the labelled data (the CLI refused it)."""
    state = _service(inventory_db, monkeypatch)
    store = state.store
    store.intake([_photo(1, 0.2)], threshold=0.5, actor="t")
    item = f"{1:064x}"
    kept = store.photo_file(item)
    assert kept is not None
    kept.rename(kept.with_name("elsewhere.jpg"))  # where another process's folders hold it
    before = (store.counts(), store.audit(), [i.id for i in store.review_queue()])
    with _client(state) as client:
        r = client.post(f"/v1/inventory/review/{item}", json={"label": "oat-milk"})
    assert r.status_code == 409 and "nothing was changed" in r.json()["detail"], r.text
    assert (store.counts(), store.audit(), [i.id for i in store.review_queue()]) == before
    assert store.resolve(item, None, actor="reviewer").status == "rejected"  # a rejection needs no photo


@pytest.mark.parametrize("inventory_db", ["sqlite", "postgresql"], indirect=True)
def test_readiness_pings_beside_writes_lose_no_acknowledged_write(inventory_db) -> None:
    """/readyz's database check used the store's one shared SQLite connection from another thread: SQLAlchemy
    rolled the writer's transaction back (81 of 300 acknowledged adjustments lost, in a review)."""
    import threading

    with inventory_db.store() as store:
        store.intake([_photo(1)], threshold=0.5, actor="t")
        done, errors = threading.Event(), []

        def ping() -> None:
            while not done.is_set():
                try:
                    store.ping()
                except Exception as exc:  # noqa: BLE001 - a ping that fails is a finding too
                    errors.append(exc)

        pinger = threading.Thread(target=ping)
        pinger.start()
        try:
            for _ in range(150):
                store.adjust("oat-milk", delta=1, actor="t")
        finally:
            done.set()
            pinger.join()
        assert store.counts() == {"oat-milk": 151} and errors == []
