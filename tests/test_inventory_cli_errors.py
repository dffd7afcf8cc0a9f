"""The inventory commands on a user's mistakes: a mistyped or unreachable --db, bad retention values, review
without an id, copies of an unreadable photo; and what a duplicate answers (a new user's review, session 24)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _serve_util import photo_bytes
from skulens.config import ConfigError
from skulens.serve.images import content_hash, stripped_jpeg
from skulens.serve.inventory import IntakePhoto, InventoryError, InventoryStore
from skulens.serve.settings import ServeSettings


def _photo(i: int, label: str = "oat-milk", conf: float = 0.9, image: bytes | None = None) -> IntakePhoto:
    data = photo_bytes(label, i)
    return IntakePhoto(content_hash(data), f"p{i}.jpg", label, conf, ((label, conf),), image)


def test_read_commands_refuse_a_database_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    typo = tmp_path / "invv.sqlite"
    for args in (["counts"], ["audit"], ["review"], ["purge", "--older-than-days", "30"]):
        assert main(["inventory", *args, "--db", str(typo)]) == 2, args
        assert "no inventory at" in capsys.readouterr().err
    assert not typo.exists() and not list(tmp_path.iterdir())  # nothing was created: no file, no folders
    with pytest.raises(InventoryError, match="no inventory at"):
        InventoryStore(typo, create=False)
    with InventoryStore(typo) as store:  # the default creates it, as scan and serve do
        assert store.counts() == {}
    assert main(["inventory", "counts", "--db", str(typo)]) == 0


def test_another_programs_database_is_not_made_an_inventory(inventory_db, capsys: pytest.CaptureFixture[str]) -> None:
    """`inventory counts --db` on another program's SQLite file made the inventory's tables in it (exit 0); one
    with its own `stock` table was "no such column: label", a traceback. A new database is made only by the
    commands that make one (scan, serve)."""
    import sqlalchemy as sa

    from skulens.cli import main

    url = inventory_db.url("theirs")
    inventory_db.execute("theirs", "CREATE TABLE notes (body TEXT)")

    def tables() -> set[str]:
        engine = sa.create_engine(f"sqlite:///{url}" if inventory_db.backend == "sqlite" else url)
        try:
            with engine.connect() as conn:
                return set(sa.inspect(conn).get_table_names())
        finally:
            engine.dispose()

    for args in (["counts"], ["audit"]):
        assert main(["inventory", *args, "--db", url]) == 2, args
        assert "no inventory at" in capsys.readouterr().err
    assert tables() == {"notes"}  # left as it was
    inventory_db.execute("theirs", "CREATE TABLE stock (a TEXT)")
    with pytest.raises(InventoryError, match="a table 'stock' that is not a skulens inventory's"):
        InventoryStore(url, **inventory_db.dirs("theirs"))  # even where a database may be made
    assert tables() == {"notes", "stock"}


def test_a_bad_database_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    not_a_db = tmp_path / "counts.csv"
    not_a_db.write_text("label,count\noat-milk,3\n")
    cases = {str(tmp_path): "is a folder",
             str(not_a_db): "cannot open inventory",
             "postgresql://u@127.0.0.1:notaport/shop": "not a database URL",
             "postgresql://u@127.0.0.1:1/shop": "cannot open inventory"}  # nothing listens on port 1
    for db, message in cases.items():
        assert main(["inventory", "counts", "--db", db]) == 2, db
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not_a_db.read_text() == "label,count\noat-milk,3\n"  # the file it was given is untouched


def test_review_with_a_decision_but_no_id_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    db = tmp_path / "inv.sqlite"
    with InventoryStore(db) as store:
        store.intake([_photo(1, conf=0.1)], threshold=0.6, actor="t")
    for decision in (["--reject"], ["--label", "oat-milk"]):
        assert main(["inventory", "review", "--db", str(db), *decision]) == 2
        assert "give its id" in capsys.readouterr().err
    with InventoryStore(db) as store:
        assert [i.status for i in store.review_queue()] == ["review"]  # nothing was resolved


@pytest.mark.parametrize("days", [float("nan"), float("inf"), 1e10, -1.0])
def test_retention_must_be_a_number_of_days(tmp_path: Path, days: float) -> None:
    with pytest.raises(ConfigError, match="upload_retention_days must be between 0 and"):
        ServeSettings(model="m", db=str(tmp_path / "inv.sqlite"), upload_retention_days=days)
    with InventoryStore(tmp_path / "inv.sqlite") as store, pytest.raises(InventoryError, match="between 0 and"):
        store.purge_uploads(days)


def test_rejected_item_has_no_photo_and_duplicates_answer_what_is_stored(tmp_path: Path) -> None:
    with InventoryStore(tmp_path / "inv.sqlite") as store:
        img = stripped_jpeg(photo_bytes("red-apple", 3))
        queued, counted = _photo(1, "red-apple", 0.1, img), _photo(2, "oat-milk", 0.9)
        store.intake([queued, counted], threshold=0.6, actor="t")
        assert store.photo(queued.sha256).has_photo
        store.resolve(queued.sha256, None, actor="t")  # rejected: not a product, its file goes
        item = store.photo(queued.sha256)
        assert item.status == "rejected" and not item.has_photo and store.photo_file(queued.sha256) is None
        known = store.known_results([counted.sha256, queued.sha256, "f" * 64], source="again.jpg")
        assert set(known) == {counted.sha256, queued.sha256}
        dup = known[counted.sha256]
        assert (dup.status, dup.label, dup.confidence, dup.previous_status, dup.source) == \
            ("duplicate", "oat-milk", pytest.approx(0.9), "counted", "again.jpg")
        assert store.known([counted.sha256]) == {counted.sha256: "counted"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, check=False,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_scan_copies_of_a_photo_share_its_answer(tiny_bundle, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    truncated = photo_bytes("oat-milk", 7)[:400]
    (photos / "a.jpg").write_bytes(truncated)
    (photos / "b.jpg").write_bytes(truncated)  # a copy of an unreadable photo is unreadable, not "in the inventory"
    db = tmp_path / "inv.sqlite"
    args = ["inventory", "scan", str(photos), "-m", str(tiny_bundle.bundle), "--db", str(db), "--device", "cpu"]
    done = _cli(*args)
    lines = {Path(ln["path"]).name: ln for ln in map(json.loads, done.stdout.splitlines())}
    assert {n: ln["status"] for n, ln in lines.items()} == {"a.jpg": "error", "b.jpg": "error"}, done.stdout
    assert done.returncode == 1 and "0 already in the inventory, 2 unreadable" in done.stderr  # nothing was read
    good = photo_bytes("oat-milk", 8)
    (photos / "a.jpg").write_bytes(good)
    (photos / "b.jpg").write_bytes(good)
    done = _cli(*args)
    lines = {Path(ln["path"]).name: ln for ln in map(json.loads, done.stdout.splitlines())}
    first, copy = lines["a.jpg"], lines["b.jpg"]
    assert first["status"] in ("counted", "review") and copy["status"] == "duplicate"
    assert copy["previous_status"] == first["status"] and copy["label"] == first["label"]  # what it was taken in as
    assert copy["source"] == str(photos / "b.jpg") and first["source"] == str(photos / "a.jpg")
    again = _cli(*args)  # both already stored now: the stored label, not null
    assert {ln["label"] for ln in map(json.loads, again.stdout.splitlines())} == {first["label"]}


def test_scan_of_a_folder_that_is_not_there_is_one_line_in_the_commands_words(tiny_bundle, tmp_path: Path,
                                                                              capsys) -> None:
    from skulens.cli import main

    db = tmp_path / "inv.sqlite"
    assert main(["inventory", "scan", str(tmp_path / "nope"), "-m", str(tiny_bundle.bundle), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"skulens inventory: {tmp_path / 'nope'}: no such file or folder" and not db.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_scan_on_a_gpu_this_machine_lacks_makes_no_database(tiny_bundle, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from skulens.cli import main

    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "a.jpg")
    db = tmp_path / "inv.sqlite"
    assert main(["inventory", "scan", str(tmp_path), "-m", str(tiny_bundle.bundle), "--db", str(db),
                 "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not db.exists()  # it made an empty inventory
