"""The inventory store's failure paths: one request's failed write inside a merged intake transaction, and files
a crash leaves behind that no row names."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

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
            m.setattr(store, "_delete_files", lambda files: None)
            assert store.erase_user(alice, actor="support").files == 3
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
        for f in [*named.values(), half_written, other, theirs, theirs_too]:
            assert f is not None
            os.utime(f, (OLD, OLD))
        assert len((store.labelled_dir / "manifest.csv").read_text().splitlines()) == 3  # still lists alice's

        store.purge_uploads(30)

        for i, f in named.items():
            assert f is not None and f.is_file() == (i > 3), i  # alice's photos went; bob's, named, stay
        assert not half_written.exists() and other.is_file() and young.is_file()
        assert theirs.is_file() and theirs_too.is_file()
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
