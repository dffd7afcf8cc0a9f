"""The service's start on an inventory whose database takes no writes: the start-up sweep (or retention purge) that
cannot write its audit line is one error line, not a failed start; the service answers reads and refuses writes
(503), as it does when the database goes read-only later. Through the real app (`create_app`, the tiny bundle)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

import skulens
from skulens.serve.app import create_app
from skulens.serve.inventory import InventoryStore
from skulens.serve.settings import ApiKey, ServeSettings
from test_storage_failures_more import OLD, _erasure_killed_before_commit, read_only_database  # noqa: F401 - a fixture
from test_store_review import _photo, _read_only

KEY = "test-secret-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


def _settings(tiny_bundle, inventory_db, **kw: Any) -> ServeSettings:
    return ServeSettings(model=str(tiny_bundle.bundle), api_keys=(ApiKey("tester", KEY),), device="cpu",
                         db=inventory_db.url("inventory"), labelled_dir=str(inventory_db.tmp_path / "lab"),
                         warmup=False, **kw)


def _read_only_from_now_on(inventory_db, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store opened from now on finds its database taking no writes, and saying so with its own error:
    PostgreSQL's `default_transaction_read_only` for the database (as an operator sets it; a hot standby's
    SQLSTATE 25006), SQLite's query_only from the moment the store has opened it (SQLITE_READONLY, as for a
    read-only file or mount: the tests run as root, whom no file mode stops)."""
    if inventory_db.backend == "postgresql":
        request.getfixturevalue("read_only_database")()
        return
    migrate = InventoryStore._migrate

    def then_read_only(store: InventoryStore) -> None:
        migrate(store)
        _read_only(store)

    monkeypatch.setattr(InventoryStore, "_migrate", then_read_only)


def _leave(store: InventoryStore, leftover: str, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """What a start finds to do, made while the database still takes writes: a file no row names ("orphan", swept),
    the files of an erasure cut short before its commit ("aside", put back), a kept upload past its retention
    ("expired", purged). The files concerned."""
    from skulens.serve.privacy import Pseudonymizer

    if leftover == "orphan":
        orphan = store.photo_dir / f"{0xdead:064x}.jpg"
        orphan.write_bytes(b"left by a crash")
        os.utime(orphan, (OLD, OLD))
        return [orphan]
    if leftover == "aside":
        alice = Pseudonymizer(b"0123456789abcdef-test-key")("alice")
        store.intake([_photo(7, 0.2, user=alice), _photo(8, 0.2, user=alice)], threshold=0.5, actor="t",
                     keep_photos=True)
        store.resolve(f"{8:064x}", "oat-milk", actor="reviewer")  # labelled: its erasure stages a manifest
        return _erasure_killed_before_commit(store, alice, monkeypatch)
    expired = store.photo_file(f"{2:064x}")
    assert expired is not None
    return [expired]


@pytest.mark.parametrize("leftover", ["orphan", "aside", "expired"])
def test_a_service_on_a_read_only_database_starts_serves_reads_and_refuses_writes(
        tiny_bundle, tiny_catalogue: Path, model, inventory_db, leftover: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tiny_bundle, inventory_db, upload_retention_days=30 if leftover == "expired" else None)
    with InventoryStore(settings.db, labelled_dir=settings.labelled_path) as store:  # the service's own store
        store.intake([_photo(1), _photo(2, 0.2)], threshold=0.5, actor="t", keep_photos=True)
        files = _leave(store, leftover, monkeypatch)
        before = (store.stock(), store.audit())
    if leftover == "expired":  # taken in long ago
        inventory_db.execute("inventory", "UPDATE photos SET created_at = '2000-01-01T00:00:00.000+00:00'")
    _read_only_from_now_on(inventory_db, request, monkeypatch)
    photo = (tiny_catalogue.parent / "val" / "red-apple" / "red-apple_000.jpg").read_bytes()

    with caplog.at_level(logging.WARNING), TestClient(create_app(settings, model=model)) as client:
        at_start = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
        counts = client.get("/v1/inventory")
        predicted = client.post("/v1/predict", files={"image": ("p.jpg", photo, "image/jpeg")})
        refused = client.post("/v1/inventory/products/oat-milk/adjust", json={"delta": -1, "reason": "sold"},
                              headers=AUTH)
        store = client.app.state.skulens.store  # type: ignore[attr-defined]
        after = (store.stock(), store.audit())

    assert (counts.status_code, counts.json()["counts"]) == (200, {lab: n for lab, n, _ in before[0]}), counts.text
    assert predicted.status_code == 200 and predicted.json()["prediction"]["top_k"], predicted.text
    assert (refused.status_code, refused.headers.get("Retry-After")) == (503, "30"), refused.text
    assert after == before  # no audit line, no count changed
    doing = "the retention purge and sweep" if leftover == "expired" else "the sweep"
    said = (f"inventory {store.url}: {doing} of the upload folders at start did not finish (the database is "
            "read-only); the service starts without it, and the next start sweeps again (files it did delete or put "
            "back may have no audit line)")
    assert at_start == [("skulens.serve.state", said)]  # one line, the start's
    if leftover == "orphan":  # the disk takes writes: the file went, its audit line did not come
        assert not files[0].exists()
    elif leftover == "aside":  # put back under their own names: the rows still name them
        assert not any(f.exists() for f in files)
        assert all(store.photo_file(f"{i:064x}") is not None for i in (7, 8))
    else:  # nothing purged: the purge's rows and files change together or not at all
        assert files[0].exists()


@pytest.mark.parametrize("inventory_db", ["sqlite"], indirect=True)
def test_another_error_of_the_start_up_sweep_still_fails_the_start(tiny_bundle, model, inventory_db,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: InventoryStore, **_: Any) -> int:
        raise RuntimeError("a bug in the sweep")

    monkeypatch.setattr(InventoryStore, "sweep_uploads", broken)
    with pytest.raises(RuntimeError, match="a bug in the sweep"), TestClient(
            create_app(_settings(tiny_bundle, inventory_db), model=model)):
        pass


def test_database_passwords_are_hidden_in_every_form_and_a_scheme_in_capitals_is_read(tmp_path: Path) -> None:
    """A libpq `password` in the query string was logged and put in error messages as it was, and so was a
    password with an unencoded '#', '?' or '/' (SQLAlchemy reads it, and connects); `PostgreSQL://` passed serve's
    settings check, then failed after the model loaded ('unsupported database')."""
    from skulens.serve.inventory import InventoryError, InventoryStore
    from skulens.serve.settings import ApiKey, ServeSettings, hide_password

    assert hide_password("postgresql://u:pa#ss/99@localhost/db") == "postgresql://u:***@localhost/db"
    assert hide_password("postgresql://u@localhost/db?sslmode=require&password=Sekr3t&x=1") == \
        "postgresql://u@localhost/db?sslmode=require&password=***&x=1"
    url = "postgresql://u:pa#ss/99@127.0.0.1:1/db?password=Sekr3tPW&connect_timeout=2"
    with pytest.raises(InventoryError) as refused:  # port 1: nothing listens
        InventoryStore(url)
    assert "Sekr3tPW" not in str(refused.value) and "pa#ss" not in str(refused.value)
    shown = ServeSettings(model="m", db=url, api_keys=(ApiKey("a", "k" * 12),)).public()["db"]
    assert "Sekr3tPW" not in shown and "pa#ss" not in shown
    with InventoryStore(f"SQLite:///{tmp_path / 'caps.sqlite'}") as store:
        assert store.backend == "sqlite" and not store.stock()
