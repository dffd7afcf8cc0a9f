"""Data about people: pseudonymous user ids, events in the database, a user's erasure, upload retention."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from _serve_util import photo_bytes
from skulens.config import ConfigError
from skulens.recommend.shopping_log import Event, read_events, write_events
from skulens.serve.images import content_hash, stripped_jpeg
from skulens.serve.inventory import IntakeBox, IntakePhoto, InventoryError, ShelfPhoto
from skulens.serve.privacy import Pseudonymizer, is_pseudonym, load_pseudonymizer

KEY = b"0123456789abcdef-test-key"


def _photo(i: int, label: str, conf: float, user: str | None) -> IntakePhoto:
    data = photo_bytes(label, i)
    return IntakePhoto(content_hash(data), f"p{i}.jpg", label, conf, ((label, conf),), stripped_jpeg(data), user)


# -- pseudonyms ---------------------------------------------------------------------------------------


def test_pseudonyms_are_keyed_stable_and_not_the_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p, other = Pseudonymizer(KEY), Pseudonymizer(b"another key of 16+ bytes")
    a = p("alice@example.com")
    assert is_pseudonym(a) and a == p("alice@example.com") and a != p("bob@example.com")
    assert a != other("alice@example.com")  # without the key, nobody can recompute (or test a guess)
    assert "alice" not in a and p(a) == a  # a pseudonym passes through: a pseudonymised log is read as is
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        Pseudonymizer(b"short")
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    assert load_pseudonymizer(key)("alice@example.com") == a  # surrounding whitespace is not part of the key
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "k").write_bytes(KEY)
    with pytest.raises(ConfigError, match="inside the data folder"):
        load_pseudonymizer(data / "keys" / "k", data_dirs=[data])
    with pytest.raises(ConfigError, match="not found"):
        load_pseudonymizer(tmp_path / "missing")
    monkeypatch.delenv("SKULENS_PSEUDONYM_KEY", raising=False)
    assert load_pseudonymizer() is None
    monkeypatch.setenv("SKULENS_PSEUDONYM_KEY", KEY.decode())
    assert load_pseudonymizer()("alice@example.com") == a
    # a command line's id (or key) that is not UTF-8 reaches Python as lone surrogates: a UnicodeEncodeError
    odd = "al\udcffice"
    assert is_pseudonym(p(odd)) and p(odd) == p(odd) != p("alice")
    monkeypatch.setenv("SKULENS_PSEUDONYM_KEY", "0123456789abcdef\udcff")
    assert is_pseudonym(load_pseudonymizer()("alice"))


# -- the store ----------------------------------------------------------------------------------------


def test_store_keeps_pseudonyms_only(inventory_db) -> None:
    p = Pseudonymizer(KEY)
    with inventory_db.store() as store:
        with pytest.raises(InventoryError, match="pseudonym"):
            store.record_events([Event("alice", "oat-milk", "view", 1.0)])
        with pytest.raises(InventoryError, match="pseudonym"):
            store.intake([_photo(0, "oat-milk", 0.9, "alice")], threshold=0.5, actor="t")
        assert store.events() == [] and store.counts() == {}  # the refused batch wrote nothing
        assert store.record_events([Event(p("alice"), "oat-milk", "view", 1.5),
                                    Event(p("bob"), "red-apple", "purchase", 2.0)]) == 2
        assert store.events() == [Event(p("alice"), "oat-milk", "view", 1.5),
                                  Event(p("bob"), "red-apple", "purchase", 2.0)]
        assert store.events_version()[0] == 2


def test_erase_user_deletes_their_events_and_photos_but_not_the_counts(inventory_db) -> None:
    p = Pseudonymizer(KEY)
    alice, bob = p("alice"), p("bob")
    with inventory_db.store() as store:
        store.record_events([Event(alice, "oat-milk", "view", 1.0), Event(bob, "oat-milk", "view", 2.0),
                             Event(alice, "red-apple", "cart", 3.0)])
        counted, queued, labelled = _photo(1, "oat-milk", 0.9, alice), _photo(2, "oat-milk", 0.2, alice), \
            _photo(3, "red-apple", 0.2, alice)
        crop = stripped_jpeg(photo_bytes("red-apple", 9))
        shelf_bytes = photo_bytes("oat-milk", 4)
        shelf = ShelfPhoto(content_hash(shelf_bytes), "shelf.jpg",
                           (IntakeBox((0, 0, 10, 10), 0.9, "oat-milk", 0.95, "oat-milk"),
                            IntakeBox((10, 0, 20, 10), 0.9, None, 0.3, "red-apple", crop)),
                           width=20, height=10, image=stripped_jpeg(shelf_bytes), user_ref=alice)
        bobs = _photo(5, "red-apple", 0.2, bob)
        store.intake([counted, queued, labelled, shelf, bobs], threshold=0.5, actor="t", keep_photos=True)
        store.resolve(labelled.sha256, "red-apple", actor="reviewer")  # now training data in the labelled folder
        files = {sha: store.photo_file(sha) for sha in (counted.sha256, queued.sha256, labelled.sha256, shelf.sha256,
                                                        f"{shelf.sha256}:1", bobs.sha256)}
        assert all(f is not None and f.is_file() for f in files.values())
        assert len((store.labelled_dir / "manifest.csv").read_text().splitlines()) == 2  # header + that photo
        before = store.counts()

        done = store.erase_user(alice, actor="support")

        assert (done.events, done.photos, done.files) == (2, 4, 5)
        assert [e.user_id for e in store.events()] == [bob]
        for sha, path in files.items():
            assert path.is_file() == (sha == bobs.sha256), sha  # only bob's photo is still on disk
            assert (store.photo_file(sha) is not None) == (sha == bobs.sha256)
        assert not (store.labelled_dir / "manifest.csv").exists()  # its one photo was alice's
        assert store.counts() == before  # stock that was counted stays counted
        queue = {i.id: i for i in store.review_queue()}
        assert not queue[queued.sha256].has_photo and queue[bobs.sha256].has_photo  # still reviewable by label
        entry = store.audit(limit=1)[0]
        assert (entry.action, entry.actor) == ("erase_user", "support")
        assert entry.detail == {"user": alice, "events": 2, "photos": 4, "files": 5}  # no "missing": all found
        # The same photo sent again is still a duplicate: erasure keeps idempotency.
        again = store.intake([_photo(1, "oat-milk", 0.9, None)], threshold=0.5, actor="t")
        assert again[0].status == "duplicate" and store.counts() == before
        assert store.erase_user(alice, actor="support").files == 0  # a second erasure finds nothing
        assert all(i.source == "" for i in store.review_queue() if i.id == queued.sha256)  # names can be personal


def test_an_erased_file_name_is_not_left_in_the_sqlite_files(tmp_path: Path) -> None:
    """The erasure cleared `photos.source` ("anna_kitchen_0.jpg" can name a person), but the old values stayed in
    inv.sqlite-wal, and in the main file's freed pages, while the store was open."""
    from dataclasses import replace

    from skulens.serve.inventory import InventoryStore

    alice = Pseudonymizer(KEY)("alice")
    with InventoryStore(tmp_path / "inv.sqlite") as store:
        store.intake([replace(_photo(i, "oat-milk", 0.9, alice), source=f"anna_kitchen_{i}.jpg") for i in range(5)],
                     threshold=0.5, actor="t", keep_photos=True)
        store.erase_user(alice, actor="t")
        for name in ("inv.sqlite", "inv.sqlite-wal"):  # the store still open, as a running service's is
            f = tmp_path / name
            assert not f.exists() or b"anna_kitchen" not in f.read_bytes(), name


def _reviewed(store, photo: IntakePhoto) -> Path:
    """`photo` taken in for review and labelled by a reviewer: its file in the labelled folder."""
    store.intake([photo], threshold=0.5, actor="t")
    store.resolve(photo.sha256, photo.predicted_label, actor="reviewer")
    path = store.photo_file(photo.sha256)
    assert path is not None and path.is_file()
    return path


def test_erase_user_reports_files_it_could_not_find(inventory_db, tmp_path: Path) -> None:
    """A store opened with other folders than the ones that hold a user's files (a CLI without the service's
    --labelled-dir) must not report them as erased: `missing` counts them, the audit entry names them."""
    p = Pseudonymizer(KEY)
    alice = p("alice")
    photo = _photo(1, "oat-milk", 0.2, alice)
    with inventory_db.store(labelled_dir=tmp_path / "service-labelled") as store:
        labelled = _reviewed(store, photo)
        assert labelled.is_relative_to(tmp_path / "service-labelled")
    with inventory_db.store(labelled_dir=tmp_path / "elsewhere") as store:
        with pytest.raises(InventoryError, match="nothing was erased: 1 of the user's files"):
            store.erase_user(alice, actor="cli")  # the rows stay: a run with the right folders finds the file
        assert store.audit(limit=1)[0].action != "erase_user"
        done = store.erase_user(alice, actor="cli", missing_ok=True)  # files deleted by hand: said, not hidden
        assert (done.photos, done.files, done.missing) == (1, 0, 1)
        assert store.audit(limit=1)[0].detail["missing"] == [labelled.name]
        assert store.labelled() == []  # the manifest no longer offers the erased photo for training
    assert labelled.is_file()  # still there: the report says so instead of "1 file erased"
    # in the service's own folders, a reviewed photo deleted by hand: its erasure rewrites the manifest too
    bob = p("bob")
    other = _photo(2, "oat-milk", 0.2, bob)
    with inventory_db.store(labelled_dir=tmp_path / "service-labelled") as store:
        gone = _reviewed(store, other)
        manifest = store.labelled_dir / "manifest.csv"
        assert gone.name in manifest.read_text()
        gone.unlink()
        assert store.erase_user(bob, actor="support", missing_ok=True).missing == 1
        assert not manifest.exists() or gone.name not in manifest.read_text()


def test_retention_purges_old_unlabelled_uploads(inventory_db) -> None:
    with inventory_db.store() as store:
        old_kept, old_queued, old_labelled, new = (_photo(i, "oat-milk", c, None)
                                                   for i, c in ((1, 0.9), (2, 0.2), (3, 0.2), (4, 0.9)))
        store.intake([old_kept, old_queued, old_labelled], threshold=0.5, actor="t", keep_photos=True)
        store.resolve(old_labelled.sha256, "oat-milk", actor="reviewer")
        inventory_db.execute("inv", "UPDATE photos SET created_at = '2020-01-01T00:00:00.000+00:00'")
        store.intake([new], threshold=0.5, actor="t", keep_photos=True)
        paths = {p.sha256: store.photo_file(p.sha256) for p in (old_kept, old_queued, old_labelled, new)}
        with pytest.raises(InventoryError, match="between 0 and"):
            store.purge_uploads(-1)
        # another photo folder than the service's: the rows were cleared and audited, the files left, unnamed
        with inventory_db.store(photo_dir=inventory_db.tmp_path / "elsewhere") as wrong:
            assert wrong.purge_uploads(30) == 0
        assert paths[old_kept.sha256].is_file() and store.photo_file(old_kept.sha256) == paths[old_kept.sha256]
        assert [e.action for e in store.audit() if e.action == "retention_purge"] == []

        assert store.purge_uploads(30) == 2
        assert store.photo(old_kept.sha256).source == ""  # its upload's name went with its file

        assert not paths[old_kept.sha256].exists() and not paths[old_queued.sha256].exists()
        assert paths[old_labelled.sha256].is_file() and paths[new.sha256].is_file()  # labelled, and recent
        assert store.audit(limit=1)[0].action == "retention_purge"
        assert store.review_queue()[0].sha256 == old_queued.sha256  # the item waits on, without its photo
        assert store.purge_uploads(30) == 0 and store.audit(limit=1)[0].action == "retention_purge"
        assert len([e for e in store.audit() if e.action == "retention_purge"]) == 1  # no line for nothing


# -- the service --------------------------------------------------------------------------------------


@pytest.fixture
def service(inventory_db, tiny_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A service with an inventory, a behaviour log with raw ids, and a pseudonym key file outside the data."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import skulens
    from skulens.serve.app import create_app
    from skulens.serve.settings import ApiKey, ServeSettings

    monkeypatch.delenv("SKULENS_PSEUDONYM_KEY", raising=False)
    key = tmp_path / "secrets" / "pseudonym.key"
    key.parent.mkdir()
    key.write_bytes(KEY)
    events = tmp_path / "events.csv"
    rows = [Event(f"u{u}", p, "purchase", 1_700_000_000 + u * 10 + i)
            for u in range(20) for i, p in enumerate(("red-apple", "oat-milk") if u % 2 else ("green-apple",))]
    write_events(events, rows + [Event("alice", "green-apple", "purchase", 1_800_000_000)])
    settings = ServeSettings(model=str(tiny_bundle.bundle), db=inventory_db.url(), events=str(events), device="cpu",
                             api_keys=(ApiKey("t", "write-key-123"),), pseudonym_key_file=str(key),
                             keep_uploads=True, warmup=False, recommend_refit_s=0.01,
                             **({"labelled_dir": str(tmp_path / "inv-labelled")}
                                if inventory_db.backend == "postgresql" else {}))
    model = skulens.load(tiny_bundle.bundle, device="cpu", precision="off")
    with TestClient(create_app(settings, model=model), headers={"X-API-Key": "write-key-123"}) as c:
        yield c, events


def _recs(client, user: str) -> list[str]:
    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 3, "exclude_seen": "false"})
    assert r.status_code == 200, r.text
    return [x["product_id"] for x in r.json()]


def test_service_records_events_and_erases_a_user(service) -> None:
    client, events_csv = service
    state = client.app.state.skulens
    r = client.post("/v1/events", json={"events": [
        {"user_id": "carol", "product_id": "red-apple", "event": "purchase", "timestamp": 1_900_000_000},
        {"user_id": "carol", "product_id": "oat-milk", "event": "cart"}]})
    assert r.status_code == 202 and r.json() == {"recorded": 2}
    assert client.post("/v1/events", json={"events": [{"user_id": "x", "product_id": "y", "event": "like"}]}
                       ).status_code == 422
    for spaced in (" carol", "carol\n", "carol "):  # another user than the log's "carol" (its reader strips ids)
        r = client.post("/v1/events", json={"events": [{"user_id": spaced, "product_id": "oat-milk", "event": "view"}]})
        assert r.status_code == 422, (spaced, r.text)
    # made-up product ids (each would be a row and a column of the recommender's item matrix) and a NaN time
    r = client.post("/v1/events", json={"events": [{"user_id": "x", "product_id": f"fake-{i}", "event": "view"}
                                                   for i in range(3)]})
    assert r.status_code == 422 and "fake-0" in r.json()["detail"]
    r = client.post("/v1/events", content=b'{"events": [{"user_id": "x", "product_id": "red-apple", "event": "view",'
                    b' "timestamp": NaN}]}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    # milliseconds (JavaScript's Date.now()) and past the year 9999: the CSV log refuses them, so does the API
    for stamp in (1.7e12, 1e300):
        r = client.post("/v1/events", json={"events": [{"user_id": "x", "product_id": "red-apple", "event": "view",
                                                        "timestamp": stamp}]})
        assert r.status_code == 422, r.text
    stored = state.store.events()
    assert {e.user_id for e in stored} == {state.people.user_ref("carol")} and "carol" not in str(stored)
    state.people.refit_if_changed()  # the background loop does this within recommend_refit_s
    assert "red-apple" in _recs(client, "carol")  # carol's own events now drive her recommendations
    assert _recs(client, "alice")[0] == "green-apple"  # from the CSV log, looked up by pseudonym
    r = client.get("/v1/users/nobody/recommendations", params={"seed": ["red-apple", "red-appel"]})
    assert r.status_code == 422 and "red-appel" in r.json()["detail"]  # a typo used to give the plain list
    assert client.get("/v1/users/nobody/recommendations", params={"seed": "red-apple"}).status_code == 200

    photo = photo_bytes("oat-milk", 7)
    r = client.post("/v1/inventory/intake", files={"images": ("mine.jpg", photo, "image/jpeg")},
                    data={"user": "carol"})
    assert r.status_code == 200, r.text
    sha = r.json()["results"][0]["sha256"]
    kept = state.store.photo_file(sha)
    assert kept is not None and kept.is_file()

    r = client.delete("/v1/users/carol")
    assert r.status_code == 200, r.text
    assert r.json() == {"user": state.people.user_ref("carol"), "events": 2, "log_events": 0, "photos": 1,
                        "files": 1, "missing": 0}
    assert state.store.events() == [] and not kept.exists()
    assert _recs(client, "carol") == _recs(client, "someone-new")  # her history has left the recommender
    assert client.get(f"/v1/inventory/photos/{sha}").status_code == 404

    r = client.post("/v1/events", json={"events": [{"user_id": "shop/42", "product_id": "oat-milk", "event": "view"}]})
    assert r.status_code == 202
    for path in ("/v1/users/shop%2F42", "/v1/users/shop/42"):  # an id with a slash is erasable, encoded or not
        r = client.delete(path)
        assert r.status_code == 200, r.text
        assert r.json()["user"] == state.people.user_ref("shop/42")
    assert client.get("/v1/users/shop/42/recommendations").status_code == 200
    assert client.delete("/v1/users/carol/").status_code == 422  # a trailing slash is not a user named "carol/"
    # ... so no photo is kept under such a user either: it could never be erased (intake took it)
    r = client.post("/v1/inventory/intake", files={"images": ("x.jpg", photo_bytes("oat-milk", 8), "image/jpeg")},
                    data={"user": "shop/42/"})
    assert r.status_code == 422 and "user" in r.text, r.text
    r = client.delete("/v1/users/alice")  # a user known only to the CSV log
    assert r.json()["log_events"] == 1
    assert "alice" not in {e.user_id for e in read_events(events_csv)}
    assert len(read_events(events_csv)) == 30  # everybody else's events are still there
    audit = client.get("/v1/inventory/audit").json()
    erased = [e for e in audit if e["action"] == "erase_user"]
    assert len(erased) == 4 and all(e["actor"] == "t" and "carol" not in json.dumps(e) for e in erased)  # + shop/42 x2
    assert client.delete("/v1/users/carol", headers={"X-API-Key": "wrong-key-000"}).status_code == 401


def test_an_erasure_from_the_cli_reaches_a_running_services_recommender(service, inventory_db,
                                                                         tmp_path: Path) -> None:
    """The service refitted only when the database's events changed: a user whose history was in the `--events`
    log, erased by `skulens inventory erase-user --events`, kept driving recommendations until a restart. The
    erasure's audit now has the log's part too (its erase_user line is written before the log is rewritten)."""
    from skulens.cli import main

    client, events_csv = service
    state = client.app.state.skulens
    state.people.refit_if_changed()

    def reasons(user: str) -> list[str]:
        return [x["reason"] for x in client.get(f"/v1/users/{user}/recommendations",
                                                params={"k": 3, "exclude_seen": "false"}).json()]

    assert reasons("alice") != reasons("someone-new")  # her history drives hers
    key = tmp_path / "secrets" / "pseudonym.key"  # the fixture's
    assert main(["inventory", "erase-user", "alice", "--db", inventory_db.url(), "--events", str(events_csv),
                 "--pseudonym-key-file", str(key), *inventory_db.cli_dirs()]) == 0
    time.sleep(0.02)  # recommend_refit_s
    assert state.people.refit_if_changed() is True  # the log changed; the database's events did not
    assert reasons("alice") == reasons("someone-new") and _recs(client, "alice") == _recs(client, "someone-new")
    audit = client.get("/v1/inventory/audit").json()
    [log_line] = [e for e in audit if e["action"] == "erase_user_log"]
    assert log_line["detail"]["log_events"] == 1 and log_line["detail"]["user"] == state.people.user_ref("alice")


def test_without_a_key_nothing_about_people_is_kept(inventory_db, tiny_bundle, monkeypatch) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import skulens
    from skulens.serve.app import create_app
    from skulens.serve.settings import ApiKey, ServeSettings

    monkeypatch.delenv("SKULENS_PSEUDONYM_KEY", raising=False)
    settings = ServeSettings(model=str(tiny_bundle.bundle), db=inventory_db.url(), device="cpu", warmup=False,
                             api_keys=(ApiKey("t", "write-key-123"),),
                             **({"labelled_dir": str(inventory_db.tmp_path / "l")}
                                if inventory_db.backend == "postgresql" else {}))
    model = skulens.load(tiny_bundle.bundle, device="cpu", precision="off")
    with TestClient(create_app(settings, model=model), headers={"X-API-Key": "write-key-123"}) as c:
        r = c.post("/v1/events", json={"events": [{"user_id": "a", "product_id": "b", "event": "view"}]})
        assert r.status_code == 409 and "pseudonym key" in r.json()["detail"]
        assert c.delete("/v1/users/a").status_code == 409
        r = c.post("/v1/inventory/intake", files={"images": ("a.jpg", photo_bytes("oat-milk", 1), "image/jpeg")},
                   data={"user": "a"})
        assert r.status_code == 409 and c.get("/v1/inventory").json()["counts"] == {}
        assert c.get("/v1/users/a/recommendations").json() == []  # no events yet: nothing to recommend from
    with pytest.raises(ConfigError, match="upload_retention_days needs an inventory"):
        ServeSettings(model="m", upload_retention_days=30)


# -- the command line ---------------------------------------------------------------------------------


def test_cli_pseudonymise_erase_and_purge(inventory_db, tmp_path: Path, monkeypatch, capsys) -> None:
    from skulens.cli import main

    monkeypatch.delenv("SKULENS_PSEUDONYM_KEY", raising=False)
    log, out, key = tmp_path / "log.csv", tmp_path / "pseudo.csv", tmp_path / "secrets" / "key"
    key.parent.mkdir()
    key.write_bytes(KEY)
    beside = tmp_path / "key"  # in the log's folder: a copy of the folder would carry the key that undoes it
    beside.write_bytes(KEY)
    assert main(["recommend", "pseudonymise", "--events", str(log), "-o", str(out),
                 "--pseudonym-key-file", str(beside)]) == 2
    assert "lies beside" in capsys.readouterr().err and not out.exists()
    write_events(out, [Event(Pseudonymizer(KEY)("alice"), "oat-milk", "view", 1.0)])
    # asked by a raw id without the key: every user looked new (the popular list, unsaid)
    assert main(["recommend", "for", "--events", str(out), "--kind", "popularity", "--user", "alice"]) == 2
    assert "pseudonyms" in capsys.readouterr().err
    out.unlink()
    write_events(log, [Event("alice", "oat-milk", "view", 1.0), Event("bob", "red-apple", "cart", 2.0)])
    assert main(["recommend", "pseudonymise", "--events", str(log), "-o", str(out)]) == 2  # no key: usage error
    assert "no pseudonym key" in capsys.readouterr().err
    assert main(["recommend", "pseudonymise", "--events", str(log), "-o", str(out),
                 "--pseudonym-key-file", str(key)]) == 0
    p = Pseudonymizer(KEY)
    assert [e.user_id for e in read_events(out)] == [p("alice"), p("bob")]
    assert "alice" not in out.read_text()

    with inventory_db.store() as store:
        store.record_events([Event(p("alice"), "oat-milk", "view", 3.0)])
        store.intake([_photo(1, "oat-milk", 0.2, p("alice"))], threshold=0.5, actor="t")
    folders = inventory_db.cli_dirs()
    capsys.readouterr()
    typo = str(tmp_path / "invv.sqlite")  # a mistyped --db: not a new, empty inventory that "erased" nothing
    assert main(["inventory", "erase-user", "alice", "--db", typo, "--pseudonym-key-file", str(key)]) == 2
    assert "no inventory at" in capsys.readouterr().err and not Path(typo).exists()
    # the same with --events: it made the empty inventory, erased nothing there and exited 0
    assert main(["inventory", "erase-user", "alice", "--db", typo, "--events", str(out),
                 "--pseudonym-key-file", str(key)]) == 2
    assert "no inventory at" in capsys.readouterr().err and not Path(typo).exists()
    assert [e.user_id for e in read_events(out)] == [p("alice"), p("bob")]  # nothing erased
    assert main(["inventory", "erase-user", "alice", "--db", inventory_db.url(), "--events", str(tmp_path / "no.csv"),
                 "--pseudonym-key-file", str(key), *folders]) == 2  # told before anything is erased
    assert "nothing was erased" in capsys.readouterr().err
    for argv in (["inventory", "erase-user", " alice", "--db", inventory_db.url(), "--events", str(out),
                  "--pseudonym-key-file", str(key), *folders],  # erased nothing (no id has spaces), exit 0
                 ["recommend", "for", "--events", str(out), "--user", "alice ", "--pseudonym-key-file", str(key)]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and "has spaces around it" in capsys.readouterr().err
    assert [e.user_id for e in read_events(out)] == [p("alice"), p("bob")]
    assert main(["inventory", "erase-user", "alice", "--db", inventory_db.url(), "--events", str(out),
                 "--pseudonym-key-file", str(key), *folders]) == 0
    assert json.loads(capsys.readouterr().out) == {"user": p("alice"), "events": 1, "log_events": 1, "photos": 1,
                                                   "files": 1, "missing": 0}
    assert [e.user_id for e in read_events(out)] == [p("bob")]
    # a service run with --events only: the log alone, said so
    assert main(["inventory", "erase-user", "bob", "--events", str(out), "--pseudonym-key-file", str(key)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["log_events"] == 1 and "no audit entry" in captured.err
    assert read_events(out, allow_empty=True) == []
    assert main(["inventory", "erase-user", "bob", "--pseudonym-key-file", str(key)]) == 2
    # the inventory's folders without the inventory: accepted and never looked at
    assert main(["inventory", "erase-user", "bob", "--events", str(out), "--pseudonym-key-file", str(key),
                 "--photo-dir", str(tmp_path / "nowhere"), "--missing-ok"]) == 2
    assert "--photo-dir, --missing-ok: the inventory's files (give its --db)" in capsys.readouterr().err
    assert main(["inventory", "purge", "--db", inventory_db.url(), "--older-than-days", "0", *folders]) == 0
    assert "deleted 0 file(s)" in capsys.readouterr().err  # alice's photo already went with her
    for bad in ("-1", "nan", "inf", "1e10"):
        assert main(["inventory", "purge", "--db", inventory_db.url(), "--older-than-days", bad]) == 2, bad


def test_the_service_log_holds_no_user_id(tiny_bundle, tmp_path: Path) -> None:
    """uvicorn's access log wrote every asked id (`GET /v1/users/alice@example.com/...`), next to the erasure's
    pseudonym line: a table from ids to pseudonyms that outlived the erasure. A real `skulens serve`."""
    import os

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from _serve_util import serve_process

    key = tmp_path / "secrets" / "key"
    key.parent.mkdir()
    key.write_bytes(KEY)
    log = tmp_path / "serve.log"
    env = {**os.environ, "SKULENS_API_KEYS": "ops:0123456789abcdef", "OMP_NUM_THREADS": "1"}
    args = ["--model", str(tiny_bundle.bundle), "--db", str(tmp_path / "data" / "inv.sqlite"),
            "--pseudonym-key-file", str(key), "--device", "cpu", "--no-warmup"]
    with serve_process(args, log, env) as url:
        auth = {"X-API-Key": "0123456789abcdef"}
        who = "alice@example.com"
        r = httpx.post(f"{url}/v1/events", json={"events": [{"user_id": who, "product_id": "oat-milk",
                                                              "event": "purchase"}]}, headers=auth)
        assert r.status_code == 202, r.text
        assert httpx.get(f"{url}/v1/users/{who}/recommendations", headers=auth).status_code == 200
        assert httpx.delete(f"{url}/v1/users/{who}", headers=auth).status_code == 200
    text = log.read_text()
    assert "GET /v1/users/~/recommendations" in text and "DELETE /v1/users/~ " in text  # the lines are there
    assert "alice" not in text, [line for line in text.splitlines() if "alice" in line]


def test_the_access_log_filter_takes_out_ids_with_slashes_too() -> None:
    """`{user_id:path}`: "shop/42" is one id; the filter took out its first segment only (`/v1/users/~/42`)."""
    import logging

    from skulens.serve.privacy import UserIdsOutOfAccessLog

    def line(path: str) -> str:
        record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:5000", "GET", path, "1.1", 200), None)
        assert UserIdsOutOfAccessLog().filter(record)
        return record.getMessage()

    assert "/v1/users/~ " in line("/v1/users/shop/42")
    assert "/v1/users/~/recommendations?k=5&seed=oat-milk " in line("/v1/users/shop/42/recommendations?k=5&seed=oat-milk")
    assert "42" not in line("/v1/users/shop/42/recommendations") and "/v1/predict " in line("/v1/predict")


def test_a_csv_only_service_whose_log_was_emptied_drops_its_recommender(tmp_path: Path) -> None:
    """An erasure of the log's last user (`erase-user --events` without --db) left a header-only log: the refit
    of a CSV-only service raised on it every tick, and the old recommender, with that user's history, served on."""
    from skulens.recommend.shopping_log import remove_users
    from skulens.serve.people import People

    log = tmp_path / "events.csv"
    write_events(log, [Event("alice", "oat-milk", "view", 1.0)])
    people = People(store=None, pseudonym=None, events_csv=str(log), fit=lambda events: list(events), refit_s=0)
    assert people.refit() == [Event("alice", "oat-milk", "view", 1.0)]
    assert remove_users(log, lambda u: u == "alice") == 1
    assert people.refit_if_changed() is True and people.recommender is None


def test_erasing_a_user_from_the_log_keeps_every_other_row_as_it_was(tmp_path: Path) -> None:
    """The rewrite kept four columns and ISO timestamps: a shop's own price and store columns went for every user
    who was never erased, and their unix-second timestamps were rewritten."""
    from skulens.recommend.shopping_log import remove_users

    log = tmp_path / "log.csv"
    text = ("\ufeffuser_id,product_id,event,timestamp,price,store\r\n"
            "u1,Kiwi,purchase,1767225600,2.50,Oslo\r\n"
            "u2,Lemon,view,2026-01-02 10:00:00,,Bergen\r\n"
            "u1,Lemon,view,1767225700,,Oslo\r\n"
            "u3,\"Oat milk, 1 l\",cart,1767225800,1.10,\"Oslo, sentrum\"\r\n")
    log.write_bytes(text.encode("utf-8"))
    assert remove_users(log, lambda u: u == "u1") == 2
    assert log.read_bytes().decode("utf-8") == (
        "\ufeffuser_id,product_id,event,timestamp,price,store\r\n"
        "u2,Lemon,view,2026-01-02 10:00:00,,Bergen\r\n"
        "u3,\"Oat milk, 1 l\",cart,1767225800,1.10,\"Oslo, sentrum\"\r\n")
    assert remove_users(log, lambda u: u == "nobody") == 0
    assert [e.user_id for e in read_events(log)] == ["u2", "u3"]


def test_an_unreadable_events_log_stops_an_erasure_before_anything_is_erased(inventory_db, tmp_path: Path,
                                                                             capsys) -> None:
    """The database's part committed, then the log's bad row raised: the service answered a bare 500 and the CLI
    a class name, and neither said that half of the erasure was done."""
    from skulens.cli import main
    from skulens.serve.people import ErasureRefused, People

    p = Pseudonymizer(KEY)
    log = tmp_path / "log.csv"
    write_events(log, [Event(p("alice"), "oat-milk", "view", 1.0)])
    with log.open("a") as f:
        f.write("u3,oat-milk,bogus,1767225600\n")
    key = tmp_path / "secrets" / "key"
    key.parent.mkdir()
    key.write_bytes(KEY)
    before = log.read_bytes()
    with inventory_db.store() as store:
        store.record_events([Event(p("alice"), "oat-milk", "view", 3.0)])
        people = People(store=store, pseudonym=p, events_csv=str(log), fit=None)
        with pytest.raises(ErasureRefused, match="line 3: unknown event 'bogus'.*nothing was erased"):
            people.erase("alice", actor="t")
        assert [e.user_id for e in store.events()] == [p("alice")]
    assert log.read_bytes() == before
    assert main(["inventory", "erase-user", "alice", "--db", inventory_db.url(), "--events", str(log),
                 "--pseudonym-key-file", str(key), *inventory_db.cli_dirs()]) == 2
    err = capsys.readouterr().err
    assert "nothing was erased" in err and "Error:" not in err
    with inventory_db.store() as store:
        assert [e.user_id for e in store.events()] == [p("alice")]
        log.unlink()  # a log gone since the service started holds nothing of anyone: the rest is erased
        served = People(store=store, pseudonym=p, events_csv=str(log), fit=lambda events: list(events))
        served.recommender = ["alice's history"]  # what a service fitted at its start
        done = served.erase("alice", actor="t")  # its refit cannot read the log: no 500 after the erasure
        assert (done.events, done.log_events) == (1, 0) and store.events() == []
        assert served.recommender is None  # dropped, not left answering from the erased history
        calls: list[int] = []

        def flaky(events):  # fits, then fails once (the erasure's refit), then fits again
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("a refit that fails once")
            return list(events)

        write_events(log, [Event(p("bob"), "oat-milk", "view", 5.0)])
        again = People(store=store, pseudonym=p, events_csv=str(log), fit=flaky, refit_s=0)
        assert again.refit() == [Event(p("bob"), "oat-milk", "view", 5.0)]
        again.erase("nobody", actor="t")  # nothing of theirs: the events' version does not change
        assert again.recommender is None
        assert again.refit_if_changed() is True and again.recommender is not None  # not off until a restart
