"""`skulens count` and `skulens detect ...` as a user runs them: real subprocesses, real detector folders."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.detect.annotations import write_coco
from skulens.detect.boxes import AnnotatedImage

FRIDGE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fridge-objects-sample"


def _skulens(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, check=False, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shelf-like photos with known boxes (COCO JSON beside them) and one corrupt file."""
    root = tmp_path_factory.mktemp("shelf")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    annotated = []
    for i in range(3):
        arr = np.full((120, 160, 3), 200, np.uint8)
        boxes = [[10 + 50 * k, 20, 50 + 50 * k, 100] for k in range(i + 1)]
        for x1, y1, x2, y2 in boxes:
            arr[y1:y2, x1:x2] = rng.integers(0, 256, 3)
        path = root / "images" / f"shelf{i}.jpg"
        Image.fromarray(arr).save(path)
        annotated.append(AnnotatedImage(path, 160, 120, np.array(boxes, np.float32), ("jam",) * len(boxes)))
    write_coco(annotated, root / "instances.json")
    return root


def test_count_needs_a_detector_and_says_which_folder_is_what(tiny_bundle, photos) -> None:
    r = _skulens("count", str(photos / "images"))
    assert r.returncode == 2 and "--detector DET is required" in r.stderr
    r = _skulens("count", str(photos / "images"), "--detector", str(tiny_bundle.bundle))
    assert r.returncode == 2 and "classification bundle" in r.stderr and "-m/--model" in r.stderr
    r = _skulens("count", str(photos / "images"), "--detector", str(photos), "--min-score", "2")
    assert r.returncode == 2


def test_bad_boxes_and_a_broken_detector_are_one_line_exit_2(photos, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    coco = json.loads((photos / "instances.json").read_text())
    coco["annotations"][1]["bbox"] = ["ten", 20, 40, 80]
    bad.write_text(json.dumps(coco))
    r = _skulens("detect", "train", "--boxes", str(bad), "--no-composites", "-o", str(tmp_path / "x"), "-q")
    assert r.returncode == 2 and "bad.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    broken = tmp_path / "det"  # a detector.json without its weights
    broken.mkdir()
    (broken / "detector.json").write_text(json.dumps({"kind": "skulens-detector"}))
    r = _skulens("count", str(photos / "images"), "--detector", str(broken))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_count_writes_json_lines_csv_and_annotated_pictures(detector, tiny_bundle, photos, tmp_path) -> None:
    bad = photos / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    try:
        # the spelling: `skulens count MODEL photos/ --detector DET`
        r = _skulens("count", str(tiny_bundle.bundle), str(photos / "images"), str(bad), "--detector", str(detector),
                     "--min-score", "0", "--min-confidence", "0", "--annotated", str(tmp_path / "pics"))
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(rows) == 4
        good = [row for row in rows if not row["error"]]
        assert len(good) == 3 and all(row["total"] == 5 and row["capped"] for row in good)
        assert all(sum(row["counts"].values()) == 5 for row in good)  # every box named at min-confidence 0
        assert "box cap" in r.stderr and "unreadable" in r.stderr
        assert len(list((tmp_path / "pics").glob("*.png"))) == 3
        r = _skulens("count", str(photos / "images"), "--detector", str(detector), "--min-score", "0",
                     "-o", str(tmp_path / "counts.csv"), "-q")
        assert r.returncode == 0, r.stderr
        table = list(csv.DictReader((tmp_path / "counts.csv").open()))
        assert [row["product"] for row in table] == ["product"] * 3 and {row["count"] for row in table} == {"5"}
    finally:
        bad.unlink()


def test_detect_evaluate_writes_a_report(detector, photos, tmp_path) -> None:
    out = tmp_path / "report"
    r = _skulens("detect", "evaluate", str(detector), "--data", str(photos / "instances.json"), "-o", str(out),
                 "--min-score", "0.0", "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 3 and report["boxes"] == 6
    assert 0 <= report["ap50"] <= 1 and report["count_mae"] == pytest.approx((4 + 3 + 2) / 3)
    assert (out / "report.md").is_file() and Image.open(out / "grid.png").size[0] > 0


def test_detect_train_on_real_boxes_then_export(photos, tmp_path) -> None:
    r = _skulens("detect", "train", "--no-composites", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "--boxes" in r.stderr
    out = tmp_path / "det"
    r = _skulens("detect", "train", "--boxes", str(photos / "instances.json"), "--no-composites", "-o", str(out),
                 "--steps", "2", "--batch-size", "2", "--eval-every", "1", "-q")
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "detector.json").read_text())
    assert card["kind"] == "skulens-detector" and card["training"]["real_photos"] == 3
    assert card["training"]["steps_run"] == 2 and len(card["training"]["history"]) == 2
    r = _skulens("detect", "export", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "detector.onnx").stat().st_size > 1_000_000


def test_several_items_are_labels_from_a_list_or_a_file(tiny_catalogue, photos, tmp_path) -> None:
    from skulens.cli._common import UsageError
    from skulens.cli.detect import several_items

    assert several_items("Lime, Plum,Lime") == ("Lime", "Plum")
    listed = tmp_path / "several.txt"
    listed.write_text("# photos of several items\nLime   # three limes\n\nPlum\n", encoding="utf-8")
    assert several_items(str(listed)) == ("Lime", "Plum")
    for bad, says in ((str(tmp_path / "missing.txt"), "no such file"), (" , ", "no product label")):
        with pytest.raises(UsageError, match=says):
            several_items(bad)
    out = tmp_path / "det"
    r = _skulens("detect", "train", "--data", str(tiny_catalogue), "-o", str(out), "--several-items", "red-apple,Nope")
    assert r.returncode == 2 and "--several-items: Nope not in the catalogue" in r.stderr
    assert not out.exists()  # refused before anything was written
    r = _skulens("detect", "train", "--boxes", str(photos / "instances.json"), "--no-composites", "-o", str(out),
                 "--several-items", "red-apple")
    assert r.returncode == 2 and "not with --no-composites" in r.stderr


@pytest.mark.dataset
def test_detect_evaluate_on_the_real_fridge_photos(detector, tmp_path) -> None:
    if not FRIDGE.exists():
        pytest.skip("../shared/datasets/fridge-objects-sample is absent")
    r = _skulens("detect", "evaluate", "--detector", str(detector), "--data", str(FRIDGE), "-o", str(tmp_path), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 6 and report["boxes"] == 12  # VOC import of real photos, end to end
    assert len(report["per_image"]) == 6 and (tmp_path / "grid.png").is_file()
