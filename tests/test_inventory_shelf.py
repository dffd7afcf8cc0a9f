"""Shelf photos through the inventory: every product of a photo counts in one transaction, unsure boxes go to
review as crops, a reviewer's correction becomes labelled data; the store, `inventory scan --detector` and
`POST /v1/inventory/intake` with a detector (real SQLite, a real untrained detector, the real tiny model)."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from _serve_util import bad_uploads, has_gps, photo_bytes
from skulens.data.catalogue import load_catalogue
from skulens.serve.images import stripped_jpeg
from skulens.serve.inventory import (
    SCHEMA_VERSION,
    IntakeBox,
    IntakePhoto,
    InventoryError,
    InventoryStore,
    ShelfPhoto,
)

BOXES = 4  # the test detector's cap: with min_score 0 every photo has exactly this many boxes


def untrained_detector(out: Path) -> Path:
    """A real detector folder with seeded random weights: no training, deterministic boxes."""
    import torch

    from skulens.detect.model import DetectorCard, DetectorConfig, build_detector, save_detector

    torch.manual_seed(0)
    config = DetectorConfig(min_size=128, max_size=256, max_detections=BOXES)
    return save_detector(build_detector(config, pretrained=False), DetectorCard(config), out)


@pytest.fixture(scope="session")
def detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_detector(tmp_path_factory.mktemp("detector") / "det")


def _shelf(i: int, *boxes: IntakeBox, image: bytes | None = None) -> ShelfPhoto:
    return ShelfPhoto(f"{i:064x}", f"shelf{i}.jpg", tuple(boxes), 640, 480, False, image)


def _box(label: str | None, conf: float, guess: str | None = None, crop: bytes | None = None, x: float = 0) -> IntakeBox:
    return IntakeBox((x, 10.0, x + 50, 90.0), 0.8, label, conf, guess or label, crop)


CROP = stripped_jpeg(photo_bytes("green-apple", 11))


def _mixed(i: int) -> ShelfPhoto:
    """Two oat milks and an apple that count, an unknown box and one named below the threshold (review)."""
    return _shelf(i, _box("oat-milk", 0.9), _box("oat-milk", 0.8, x=60), _box("red-apple", 0.7, x=120),
                  _box(None, 0.3, "green-apple", CROP, x=180), _box("oat-milk", 0.4, crop=CROP, x=240))


# -- the store ------------------------------------------------------------------------------------------


def test_a_shelf_photo_counts_every_named_product_once(inventory_db) -> None:
    with inventory_db.store() as store:
        [res, photo] = store.intake([_mixed(1), IntakePhoto(f"{2:064x}", "p.jpg", "oat-milk", 0.9)], threshold=0.6,
                                    actor="cam")
        assert (res.status, photo.status, photo.count) == ("counted", "counted", 3)
        assert res.shelf is not None and res.shelf.counts == {"oat-milk": 2, "red-apple": 1}
        assert [b.status for b in res.shelf.boxes] == ["counted"] * 3 + ["review"] * 2
        assert [b.to_dict()["label"] for b in res.shelf.boxes][3:] == ["unknown", "oat-milk"]
        assert store.counts() == {"oat-milk": 3, "red-apple": 1}
        # +N per product: one audit line per product, naming the boxes; one per box queued for review.
        audit = {(a.action, a.label): a for a in store.audit()}
        assert audit["intake", "oat-milk"].detail == {"boxes": [0, 1]} and audit["intake", "oat-milk"].delta == 2
        assert audit["review_queued", "green-apple"].detail["box"] == 3
        # The same shelf photo again (alone, or twice in one batch) changes nothing.
        again = store.intake([_mixed(1), _mixed(1)], threshold=0.0, actor="cam")
        assert [r.status for r in again] == ["duplicate", "duplicate"] and again[0].previous_status == "counted"
        assert store.counts() == {"oat-milk": 3, "red-apple": 1}
        assert store.box_stats() == {"counted": 3, "review": 2} and store.stats() == {"counted": 2}
        queue = store.review_queue()
        assert [(q.kind, q.id, q.predicted_label, q.has_photo) for q in queue] == [
            ("box", f"{1:064x}:3", "green-apple", True), ("box", f"{1:064x}:4", "oat-milk", True)]
        assert queue[0].box == [180.0, 10.0, 230.0, 90.0] and store.review_size() == 2
        assert store.photo_file(f"{1:064x}:3").read_bytes() == CROP
        assert store.photo_file(f"{1:064x}") is None  # the shelf photo itself is not kept unless asked
        assert store.photo_file(f"{1:064x}:0") is None  # nor the crops of boxes that counted


def test_reviewing_boxes_counts_them_and_writes_labelled_crops(inventory_db, tmp_path: Path) -> None:
    with inventory_db.store() as store:
        store.intake([_mixed(1), _shelf(2, _box(None, 0.2, "oat-milk", CROP)),
                      IntakePhoto(f"{3:064x}", "p.jpg", "oat-milk", 0.1, image=CROP)], threshold=0.6, actor="cam")
        assert [q.kind for q in store.review_queue()] == ["box", "box", "box", "photo"]  # one queue
        box = store.resolve(f"{1:064x}:3", "green-apple", actor="ana")  # the guess: confirmed
        assert (box.status, box.kind, box.label, box.reviewed_by) == ("confirmed", "box", "green-apple", "ana")
        assert store.resolve(f"{1:064x}:4", "red-apple", actor="ana").status == "corrected"
        assert store.resolve(f"{2:064x}:0", None, actor="ana").status == "rejected"
        assert store.resolve(f"{3:064x}", "oat-milk", actor="ana").status == "confirmed"  # photos as before
        assert store.counts() == {"oat-milk": 3, "red-apple": 2, "green-apple": 1}
        with pytest.raises(InventoryError, match="not waiting for review"):
            store.resolve(f"{1:064x}:3", "oat-milk", actor="ana")
        with pytest.raises(InventoryError, match="not waiting for review"):
            store.resolve(f"{1:064x}:0", "oat-milk", actor="ana")  # a box that counted at once
        with pytest.raises(InventoryError, match="not in the inventory"):
            store.resolve(f"{1:064x}:9", "oat-milk", actor="ana")
        with pytest.raises(InventoryError, match="not in the inventory"):
            store.resolve(f"{1:064x}:x", "oat-milk", actor="ana")
        corrected = next(a for a in store.audit() if a.action == "review_corrected")
        assert corrected.detail["box"] == 4 and corrected.detail["predicted"] == "oat-milk"
        assert store.review_queue() == [] and store.photo_file(f"{2:064x}:0") is None  # rejected: deleted
        assert store.photo_file(f"{1:064x}:4") == tmp_path / "inv-labelled" / "red-apple" / f"{1:064x}-4.jpg"
    # The reviewed crops are labelled data for `skulens retrain --extra` (load_catalogue reads the manifest).
    cat = load_catalogue(tmp_path / "inv-labelled", val_fraction=0)
    assert sorted((s.path.name, s.label) for s in cat.split("train")) == [
        (f"{1:064x}-3.jpg", "green-apple"), (f"{1:064x}-4.jpg", "red-apple"), (f"{3:064x}.jpg", "oat-milk")]
    assert not list((tmp_path / "inv-photos").iterdir())


_PG_FAIL_BOX = """
CREATE FUNCTION fail_box() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.idx = 4 THEN RAISE EXCEPTION 'disk I/O error (test)'; END IF; RETURN NEW; END $$;
CREATE TRIGGER fail_box BEFORE INSERT ON boxes FOR EACH ROW EXECUTE FUNCTION fail_box();
"""


def test_a_failure_in_the_middle_of_a_shelf_intake_leaves_nothing_half_counted(inventory_db) -> None:
    path = inventory_db.url()
    with inventory_db.store() as store:
        store.intake([IntakePhoto(f"{9:064x}", "p.jpg", "oat-milk", 0.9)], threshold=0.6, actor="t")
        before = (store.counts(), store.audit(), store.known([f"{9:064x}"]))
        # A real failure from inside the database after the counts, the photo rows and two boxes were written
        # (as a full disk or an I/O error would fail the fourth box insert).
        if inventory_db.backend == "sqlite":
            con = sqlite3.connect(path)
            con.execute("CREATE TRIGGER fail_box BEFORE INSERT ON boxes WHEN NEW.idx = 4 "
                        "BEGIN SELECT RAISE(ABORT, 'disk I/O error (test)'); END")
            con.commit()
            error: type[Exception] = sqlite3.IntegrityError
        else:
            import psycopg

            inventory_db.execute("inv", _PG_FAIL_BOX)
            error = psycopg.Error  # the driver's own error, as sqlite3's is
        batch = [IntakePhoto(f"{8:064x}", "p8.jpg", "red-apple", 0.9), _mixed(1)]
        with pytest.raises(error, match="disk I/O error"):
            store.intake(batch, threshold=0.6, actor="t")
        assert (store.counts(), store.audit(), store.known([f"{9:064x}", f"{8:064x}", f"{1:064x}"])) == before
        assert store.box_stats() == {} and store.review_queue() == []
        assert not list(store.photo_dir.glob("*"))  # the crops written for boxes 3 and 4 went with the rollback
        if inventory_db.backend == "sqlite":
            con.execute("DROP TRIGGER fail_box")
            con.commit()
            con.close()
        else:
            inventory_db.execute("inv", "DROP TRIGGER fail_box ON boxes")
        store.intake(batch, threshold=0.6, actor="t")  # the retry counts everything, once
        assert store.counts() == {"oat-milk": 3, "red-apple": 2}
        assert store.box_stats() == {"counted": 3, "review": 2}


def test_a_shelf_photo_sent_concurrently_counts_once(inventory_db) -> None:
    """Eight threads on two connections send the same shelf photos at once: each counts once."""
    with inventory_db.store() as store, inventory_db.store() as other:
        barrier = threading.Barrier(8)

        def send(w: int) -> list[str]:
            barrier.wait()
            target = store if w % 2 else other
            return [r.status for i in range(5) for r in target.intake([_mixed(i)], threshold=0.6, actor=f"w{w}")]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = [s for out in pool.map(send, range(8)) for s in out]
        assert Counter(statuses) == {"counted": 5, "duplicate": 35}
        assert store.counts() == {"oat-milk": 10, "red-apple": 5}
        assert store.box_stats() == {"counted": 15, "review": 10}
        assert sum(a.action == "intake" for a in store.audit(limit=1000)) == 10  # two products per photo


# The schema the first inventory release created (schema 1), as its code wrote it.
_V1 = """
CREATE TABLE stock (label TEXT PRIMARY KEY, count INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL);
CREATE TABLE photos (
    sha256 TEXT PRIMARY KEY, source TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('counted', 'review', 'confirmed', 'corrected', 'rejected')),
    predicted_label TEXT, confidence REAL NOT NULL, top_k TEXT NOT NULL DEFAULT '[]', label TEXT, stored TEXT,
    created_at TEXT NOT NULL, reviewed_at TEXT, reviewed_by TEXT);
CREATE INDEX photos_status ON photos (status, created_at);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    label TEXT, delta INTEGER NOT NULL DEFAULT 0, count_after INTEGER, photo TEXT, detail TEXT NOT NULL DEFAULT '{}');
INSERT INTO stock VALUES ('oat-milk', 7, '2024-05-01T10:00:00.000+00:00');
INSERT INTO photos VALUES ('%(a)s', 'a.jpg', 'counted', 'oat-milk', 0.9, '[["oat-milk", 0.9]]', 'oat-milk', NULL,
    '2024-05-01T10:00:00.000+00:00', NULL, NULL);
INSERT INTO photos VALUES ('%(b)s', 'b.jpg', 'review', 'red-apple', 0.2, '[["red-apple", 0.2]]', NULL, NULL,
    '2024-05-01T10:00:01.000+00:00', NULL, NULL);
INSERT INTO audit (ts, actor, action, label, delta, count_after, photo) VALUES
    ('2024-05-01T10:00:00.000+00:00', 'cam', 'intake', 'oat-milk', 1, 7, '%(a)s');
PRAGMA user_version = 1;
"""


def test_a_schema_1_database_migrates_and_keeps_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(_V1 % {"a": f"{1:064x}", "b": f"{2:064x}"})
    con.close()
    opened = []  # two processes' stores opening the old file at once migrate it once
    threads = [threading.Thread(target=lambda: opened.append(InventoryStore(path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in opened:
        s.close()
    with InventoryStore(path) as store:
        assert store.counts() == {"oat-milk": 7} and store.stats() == {"counted": 1, "review": 1}
        assert store.known([f"{1:064x}"]) == {f"{1:064x}": "counted"}
        assert [(q.kind, q.id) for q in store.review_queue()] == [("photo", f"{2:064x}")]
        assert store.resolve(f"{2:064x}", "red-apple", actor="ana").status == "confirmed"
        store.intake([_mixed(3), IntakePhoto(f"{1:064x}", "a.jpg", "oat-milk", 0.9)], threshold=0.6, actor="t")
        assert store.counts() == {"oat-milk": 9, "red-apple": 2}
        assert [a.action for a in store.audit()][-1] == "intake"
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert con.execute("SELECT kind, COUNT(*) FROM photos GROUP BY kind").fetchall() == [("photo", 2), ("shelf", 1)]
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


# -- the intake rule -------------------------------------------------------------------------------------


def test_shelf_photo_keeps_crops_of_unsure_boxes_only_and_never_exif() -> None:
    from PIL import Image

    from skulens.detect.count import CountedBox, PhotoCount
    from skulens.serve.intake import shelf_photo

    raw = photo_bytes("oat-milk", 3, gps=True)
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    result = PhotoCount("s.jpg", 72, 72, (
        CountedBox((4.0, 4.0, 30.0, 40.0), 0.9, "oat-milk", 0.8, "oat-milk"),
        CountedBox((30.0, 4.0, 60.0, 40.0), 0.9, None, 0.3, "red-apple"),
        CountedBox((10.0, 40.0, 40.0, 70.0), 0.9, "Apple", 0.9, "green-apple"),  # only the coarse class: unknown
    ), counts={"oat-milk": 1, "Apple": 1})
    photo = shelf_photo(raw, "h", "s.jpg", result, image, threshold=0.6)
    assert [(b.label, b.guess, b.crop is None) for b in photo.boxes] == [
        ("oat-milk", "oat-milk", True), (None, "red-apple", False), (None, "green-apple", False)]
    crop = Image.open(io.BytesIO(photo.boxes[1].crop))
    assert crop.format == "JPEG" and not has_gps(photo.boxes[1].crop) and 30 <= crop.width <= 34
    assert photo.image is None and (photo.width, photo.height) == (72, 72)
    kept = shelf_photo(raw, "h", "s.jpg", result, image, threshold=0.6, keep_photos=True).image
    assert kept == stripped_jpeg(raw) and not has_gps(kept)


# -- `skulens inventory scan --detector` ---------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, check=False,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_scan_counts_every_product_of_shelf_photos(tiny_bundle, detector_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "shelves"
    photos.mkdir()
    for i, label in enumerate(("oat-milk", "red-apple", None)):
        (photos / f"{i}.jpg").write_bytes(photo_bytes(label, 20 + i, gps=True))
    (photos / "notes.jpg").write_bytes(b"not a photo")
    Image.new("RGB", (3000, 2), (200, 10, 10)).save(photos / "strip.png")  # decodes, but nothing to look into
    db = tmp_path / "inv.sqlite"
    args = ["inventory", "scan", str(photos), "-m", str(tiny_bundle.bundle), "--db", str(db), "--detector",
            str(detector_dir), "--min-score", "0", "--threshold", "0.6", "--device", "cpu", "--batch-size", "2"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    errors = [ln for ln in lines if ln["status"] == "error"]
    assert len(errors) == 2 and any(k in ln["error"] for ln in errors for k in ("too narrow", "extreme aspect ratio"))  # never a counted photo of nothing
    shelves = [ln for ln in lines if ln["status"] == "counted"]
    assert len(shelves) == 3
    for ln in shelves:
        assert ln["shelf"]["boxes"]["counted"] + ln["shelf"]["boxes"]["review"] == BOXES
        assert sum(ln["shelf"]["counts"].values()) == ln["shelf"]["boxes"]["counted"] and ln["shelf"]["capped"]
    added = sum((Counter(ln["shelf"]["counts"]) for ln in shelves), Counter())
    review = sum(ln["shelf"]["boxes"]["review"] for ln in shelves)
    with InventoryStore(db) as store:
        assert store.counts() == dict(added) and store.review_size() == review
        assert all(not has_gps(store.photo_file(q.id).read_bytes()) for q in store.review_queue())
    assert f"3 shelf photos: {sum(added.values())} products counted, {review} boxes for review" in done.stderr
    # every photo reached the detector's cap: said at the time and kept in the audit log with the photo
    assert done.stderr.count("reached the box cap") == 3
    assert all(f"{ln['path']} reached the box cap" in done.stderr for ln in shelves)  # which photo (it named none)
    with InventoryStore(db) as store:
        capped = [a for a in store.audit(limit=1000) if a.action == "box_cap_reached"]
        assert len(capped) == 3 and {a.photo for a in capped} == {q.photo for q in store.audit(limit=1000)
                                                                   if q.action in ("intake", "review_queued")}
    fewer = [*args, "--max-boxes", "2", "--tiles", "off"]
    fewer[fewer.index("--db") + 1] = str(tmp_path / "inv2.sqlite")
    done2 = _cli(*fewer, "-q")
    assert done2.returncode == 0, done2.stderr
    with InventoryStore(tmp_path / "inv2.sqlite") as store:
        assert sum(store.counts().values()) + store.review_size() == 3 * 2  # the cap is a setting
    no_detector = [a for a in fewer if a not in ("--detector", str(detector_dir))]
    bad = _cli(*no_detector)
    assert bad.returncode == 2 and "settings of --detector" in bad.stderr
    again = _cli(*args, "-q")  # idempotent: a second scan finds every photo in the store
    assert again.returncode == 0 and "0 shelf photos: 0 products counted" in again.stderr
    assert "3 photos already in the inventory, 2 unreadable" in again.stderr
    wrong = _cli(*args[:-2], "--detector", str(tiny_bundle.bundle))
    assert wrong.returncode == 2 and "not a detector folder" in wrong.stderr and "-m/--model" in wrong.stderr


# -- the service ------------------------------------------------------------------------------------------

KEY = "shelf-test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def model(tiny_bundle):
    import skulens

    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


def _settings(tiny_bundle, detector_dir: Path, db: Path, **kw):
    from skulens.serve.settings import ApiKey, ServeSettings

    values = {"model": str(tiny_bundle.bundle), "device": "cpu", "api_keys": (ApiKey("shelf", KEY),), "db": str(db),
              "detector": str(detector_dir), "detector_min_score": 0.0, "review_threshold": 0.6}
    return ServeSettings(**{**values, **kw})


@pytest.fixture(scope="module")
def server(tiny_bundle, model, detector_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("uvicorn")
    from _serve_util import running_server
    from skulens.serve.app import create_app

    root = tmp_path_factory.mktemp("shelf-serve")
    with running_server(create_app(_settings(tiny_bundle, detector_dir, root / "inv.sqlite"), model=model)) as url:
        yield url, root


def _expected(model, detector_dir: Path, data: bytes) -> tuple[Counter[str], int]:
    """What the service should count for a photo: the same detector, classifier and rule, in process."""
    from skulens.data.decode import decode_image
    from skulens.detect.detector import load_detector
    from skulens.serve.intake import count_shelf, shelf_photo
    from skulens.serve.inventory import is_counted

    image = decode_image(data)
    result = count_shelf(load_detector(detector_dir, device="cpu"), model, image, threshold=0.6, min_score=0.0)
    photo = shelf_photo(data, "h", "x", result, image, threshold=0.6)
    counted = [b.label for b in photo.boxes if is_counted(b.label, b.confidence, 0.6)]
    return Counter(counted), len(photo.boxes) - len(counted)


def test_service_intake_counts_every_product_then_review_lands_in_the_manifest(server, model,
                                                                              detector_dir: Path) -> None:
    httpx = pytest.importorskip("httpx")
    url, root = server
    shots = [photo_bytes(label, 30 + i, gps=True) for i, label in enumerate(("oat-milk", "red-apple", None))]
    expected = [_expected(model, detector_dir, d) for d in shots]
    assert sum(n for _, n in expected) >= 1 and sum(sum(c.values()) for c, _ in expected) >= 1  # both kinds
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as c:
        files = [("images", (f"shelf{i}.jpg", d, "image/jpeg")) for i, d in enumerate(shots)]
        r = c.post("/v1/inventory/intake", files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["counted"] == 3 and body["errors"] == 0
        for res, (counts, review) in zip(body["results"], expected, strict=True):
            shelf = res["shelf"]
            assert shelf["counts"] == dict(counts) and len(shelf["boxes"]) == BOXES and shelf["capped"]
            assert (shelf["width"], shelf["height"]) == (72, 72)
            assert sum(b["status"] == "review" for b in shelf["boxes"]) == review
            assert all((b["label"] == "unknown") == (b["status"] == "review") for b in shelf["boxes"])
            assert {"box", "label", "confidence", "status", "score", "index"} <= set(shelf["boxes"][0])
        total = sum((c for c, _ in expected), Counter())
        assert c.get("/v1/inventory").json()["counts"] == dict(total)
        again = c.post("/v1/inventory/intake", files=files[:1]).json()  # the same photo twice counts once
        assert again["duplicate"] == 1 and c.get("/v1/inventory").json()["counts"] == dict(total)
        # The unsure boxes wait as crops (EXIF-free), in the one queue; a correction counts and is labelled data.
        queue = c.get("/v1/inventory/review").json()
        assert len(queue) == sum(n for _, n in expected) and {q["kind"] for q in queue} == {"box"}
        first = queue[0]
        assert first["id"] == f"{first['sha256']}:{first['index']}" and len(first["box"]) == 4
        crop = c.get(f"/v1/inventory/photos/{first['id']}")
        assert crop.status_code == 200 and crop.content[:3] == b"\xff\xd8\xff" and not has_gps(crop.content)
        assert httpx.get(f"{url}/v1/inventory/photos/{first['id']}").status_code == 401  # crops need a key
        done = c.post(f"/v1/inventory/review/{first['id']}", json={"label": "green-apple"})
        assert done.status_code == 200 and done.json()["status"] in ("confirmed", "corrected"), done.text
        assert c.post(f"/v1/inventory/review/{first['id']}", json={"label": "green-apple"}).status_code == 409
        assert c.post(f"/v1/inventory/review/{first['sha256']}:99", json={"reject": True}).status_code == 404
        total["green-apple"] += 1
        assert c.get("/v1/inventory").json()["counts"] == dict(total)
        if len(queue) > 1:
            assert c.post(f"/v1/inventory/review/{queue[1]['id']}", json={"reject": True}).json()["status"] == "rejected"
            assert c.get("/v1/inventory").json()["counts"] == dict(total)
    cat = load_catalogue(root / "inv-labelled", val_fraction=0)
    [sample] = cat.split("train")
    assert sample.label == "green-apple" and sample.path.name == f"{first['sha256']}-{first['index']}.jpg"


def test_service_counts_a_shelf_photo_sent_concurrently_once(server) -> None:
    httpx = pytest.importorskip("httpx")
    url, _ = server
    data = photo_bytes("oat-milk", 77)
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as c:
        before = c.get("/v1/inventory").json()["counts"]

        def post(_: int) -> dict:
            return c.post("/v1/inventory/intake", files=[("images", ("s.jpg", data, "image/jpeg"))]).json()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(post, range(6)))
        assert sum(b["counted"] for b in bodies) == 1 and sum(b["duplicate"] for b in bodies) == 5
        [shelf] = [b["results"][0]["shelf"] for b in bodies if b["counted"]]
        after = Counter(c.get("/v1/inventory").json()["counts"])
        assert after - Counter(before) == Counter(shelf["counts"])


def test_service_bad_uploads_are_4xx_in_shelf_mode(server) -> None:
    httpx = pytest.importorskip("httpx")
    url, _ = server
    with httpx.Client(base_url=url, timeout=60, headers=AUTH) as c:
        for case, (name, data, ctype) in bad_uploads(photo_bytes("oat-milk", 1)).items():
            r = c.post("/v1/inventory/intake", files=[("images", (name, data, ctype))])
            assert 400 <= r.status_code < 500 and name in r.json()["detail"], (case, r.status_code, r.text)
        buf = io.BytesIO()
        Image.new("RGB", (3000, 2), (200, 10, 10)).save(buf, format="PNG")  # decodes, but nothing to look into
        r = c.post("/v1/inventory/intake", files=[("images", ("strip.png", buf.getvalue(), "image/png"))])
        assert 400 <= r.status_code < 500 and any(k in r.json()["detail"] for k in ("too narrow", "extreme aspect ratio")), r.text
        assert c.get("/healthz").status_code == 200


def test_a_detector_setting_that_is_not_a_detector_fails_at_startup(tiny_bundle, detector_dir, tmp_path) -> None:
    from skulens.config import ConfigError
    from skulens.serve.settings import resolve_settings

    with pytest.raises(ConfigError, match="not a detector folder.*classification bundle"):
        _settings(tiny_bundle, tiny_bundle.bundle, tmp_path / "inv.sqlite")
    with pytest.raises(ConfigError, match="not a detector folder"):
        resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(tmp_path)})
    with pytest.raises(ConfigError, match="detector_min_score"):
        _settings(tiny_bundle, detector_dir, tmp_path / "inv.sqlite", detector_min_score=1.5)
    ok = resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(detector_dir), "detector_min_score": "0"})
    assert ok.detector == str(detector_dir) and ok.detector_min_score == 0.0
    for bad, match in (({"detector_max_boxes": "0"}, "detector_max_boxes must be >= 1"),
                       ({"detector_max_boxes": "many"}, r"detector_max_boxes: cannot use 'many' \(expected int\)"),
                       ({"detector_tiles": "sometimes"}, "detector_tiles must be one of auto, on, off")):
        with pytest.raises(ConfigError, match=match):
            resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(detector_dir), **bad})
    capped = resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(detector_dir),
                               "detector_max_boxes": "7", "detector_tiles": "off"})
    assert (capped.detector_max_boxes, capped.detector_tiles) == (7, "off")
    from skulens.serve.state import _load_detector

    assert _load_detector(capped).config.max_detections == 7  # the service's detector takes the cap


def test_scan_and_the_service_run_the_onnx_detector(tiny_bundle, detector_dir: Path, tmp_path: Path) -> None:
    """`inventory scan --detector-backend onnx` and the service's detector_backend count a shelf photo as the
    PyTorch detector does (they ran it in PyTorch only)."""
    pytest.importorskip("onnxruntime")
    import shutil

    from skulens.config import ConfigError
    from skulens.detect.onnx import export_detector
    from skulens.serve.settings import resolve_settings
    from skulens.serve.state import _load_detector

    det = tmp_path / "det"
    shutil.copytree(detector_dir, det)  # the session's detector stays without an export
    photos = tmp_path / "shelves"
    photos.mkdir()
    for i, label in enumerate(("oat-milk", "red-apple")):
        (photos / f"{i}.jpg").write_bytes(photo_bytes(label, 40 + i))
    base = ["inventory", "scan", str(photos), "-m", str(tiny_bundle.bundle), "--detector", str(det),
            "--min-score", "0", "--threshold", "0.6", "--device", "cpu", "-q"]
    missing = _cli(*base, "--db", str(tmp_path / "none.sqlite"), "--detector-backend", "onnx")
    assert missing.returncode == 2 and "skulens detect export" in missing.stderr  # no detector.onnx yet
    assert not (tmp_path / "none.sqlite").exists()  # told before the inventory was made (it was made first)
    export_detector(det)
    counts = {}
    for backend in ("torch", "onnx"):
        db = tmp_path / f"{backend}.sqlite"
        done = _cli(*base, "--db", str(db), "--detector-backend", backend)
        assert done.returncode == 0, done.stderr
        with InventoryStore(db) as store:
            counts[backend] = (store.counts(), store.review_size())
    assert counts["onnx"] == counts["torch"] and sum(counts["torch"][0].values()) + counts["torch"][1] == 2 * BOXES
    gpu = _cli(*base, "--db", str(tmp_path / "gpu.sqlite"), "--detector-backend", "onnx", "--device", "cuda")
    assert gpu.returncode == 2 and "on the CPU" in gpu.stderr
    bare = [a for a in base if a not in ("--detector", str(det), "--min-score", "0")]
    alone = _cli(*bare, "--db", str(tmp_path / "alone.sqlite"), "--detector-backend", "onnx")
    assert alone.returncode == 2 and "settings of --detector" in alone.stderr

    settings = resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(det), "detector_backend": "onnx"})
    from skulens.detect.onnx import _OrtBackbone

    assert isinstance(_load_detector(settings).net.backbone, _OrtBackbone)  # the service runs the export
    assert not isinstance(_load_detector(resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(det)}))
                          .net.backbone, _OrtBackbone)
    for bad, match in (({"detector_backend": "tensorrt"}, "detector backend must be 'torch' or 'onnx'"),
                       ({"detector_backend": "onnx", "device": "cuda"}, "on the CPU"),
                       ({"detector_backend": "onnx", "detector": None}, r"detector_backend: setting\(s\) of the detector")):
        with pytest.raises(ConfigError, match=match):
            resolve_settings({"model": str(tiny_bundle.bundle), "db": str(tmp_path / "inv.sqlite"), "detector": str(det), **bad})
