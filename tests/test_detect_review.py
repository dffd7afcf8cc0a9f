"""Fixes from a review of detection and counting: each test fails on the code before its fix."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.cli import main
from skulens.detect.boxes import AnnotatedImage

ORANGE = (255, 145, 0)  # draw.UNKNOWN


def _noise(path: Path, w: int = 160, h: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def own_detector(detector: Path, tmp_path: Path) -> Path:
    """A copy of the tiny untrained detector, free to be written over."""
    return Path(shutil.copytree(detector, tmp_path / "det"))


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two annotated photos as COCO JSON."""
    from skulens.detect.annotations import write_coco

    root = tmp_path_factory.mktemp("boxes")
    images = []
    for i in range(2):
        path = _noise(root / f"p{i}.png", 128, 128, seed=i)
        images.append(AnnotatedImage(path, 128, 128, [[16, 16, 64, 64], [70, 70, 120, 120]], ("jam", "tea")))
    return write_coco(images, root / "instances.json")


# --------------------------------------------------------------------------- 1. train -o over a detector

def test_train_refuses_an_out_holding_a_detector_and_the_init_folder(own_detector, boxes, capsys) -> None:
    before = {f.name: f.read_bytes() for f in own_detector.iterdir()}
    quick = ["--steps", "1", "--batch-size", "2", "--eval-every", "1", "-q"]
    rc = main(["detect", "train", "--boxes", str(boxes), "--no-composites", "-o", str(own_detector), *quick])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "already holds a detector" in err and "--force" in err
    rc = main(["detect", "train", "--boxes", str(boxes), "--no-composites", "--init", str(own_detector),
               "-o", str(own_detector.parent / "x" / ".." / "det"), "--force", *quick])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--init" in err
    assert {f.name: f.read_bytes() for f in own_detector.iterdir()} == before  # nothing was touched


def test_force_replaces_the_detector_and_its_stale_onnx(own_detector, boxes) -> None:
    (own_detector / "detector.onnx").write_bytes(b"an export of the old weights")
    rc = main(["detect", "train", "--boxes", str(boxes), "--no-composites", "-o", str(own_detector), "--force",
               "--steps", "1", "--batch-size", "2", "--eval-every", "1", "-q"])
    assert rc == 0
    assert not (own_detector / "detector.onnx").exists()  # it would have run with the new card
    card = json.loads((own_detector / "detector.json").read_text())
    assert card["training"]["real_photos"] == 2 and card["training"]["steps_run"] == 1


def test_new_weights_remove_a_stale_onnx_export(tmp_path) -> None:
    from skulens.detect.model import DetectorCard, DetectorConfig, build_detector, save_detector

    cfg = DetectorConfig(min_size=128, max_size=256)
    (tmp_path / "detector.onnx").write_bytes(b"an export of other weights")
    save_detector(build_detector(cfg, pretrained=False), DetectorCard(cfg), tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["detector.json", "detector.safetensors"]


def test_a_failed_onnx_export_leaves_no_tmp_and_the_old_export(own_detector, monkeypatch) -> None:
    from skulens.detect import onnx
    from skulens.detect.model import DetectorError

    def fail(*_: object) -> None:
        raise DetectorError("the ONNX graph does not reproduce PyTorch's cls_logits")

    (own_detector / "detector.onnx").write_bytes(b"old export")
    monkeypatch.setattr(onnx, "_check", fail)
    with pytest.raises(DetectorError, match="does not reproduce"):
        onnx.export_detector(own_detector)
    assert sorted(f.name for f in own_detector.glob("detector.onnx*")) == ["detector.onnx"]
    assert (own_detector / "detector.onnx").read_bytes() == b"old export"


# --------------------------------------------------------------------------- 2. a part inside a whole box

def test_merge_keeps_the_whole_box_over_a_better_scored_part_from_another_pass() -> None:
    from skulens.detect.tiling import merge_boxes

    whole_and_part = np.array([[0, 0, 100, 100], [30, 30, 60, 60]], np.float32)
    assert merge_boxes(whole_and_part, np.array([0.7, 0.9]), np.array([0, 1])).tolist() == [0]
    assert merge_boxes(whole_and_part, np.array([0.9, 0.7]), np.array([0, 1])).tolist() == [0]
    # within one pass a small product in front of a big one is a second product
    assert merge_boxes(whole_and_part, np.array([0.7, 0.9]), np.array([0, 0])).tolist() == [1, 0]
    # two boxes that merely overlap are both kept
    apart = np.array([[0, 0, 100, 100], [60, 0, 160, 100]], np.float32)
    assert merge_boxes(apart, np.array([0.7, 0.9]), np.array([0, 1])).tolist() == [1, 0]


def test_a_faint_whole_box_below_the_count_threshold_never_removes_confident_parts() -> None:
    """A tiled photo's whole-photo pass gives a 0.06 box around two products a tile found at 0.95 and 0.9: the faint
    box must not take them (it would, and then the threshold would drop it too: nothing counted)."""
    from skulens.detect.tiling import merge_boxes

    boxes = np.array([[0, 0, 200, 100], [5, 5, 95, 95], [105, 5, 195, 95]], np.float32)
    scores, passes = np.array([0.06, 0.95, 0.9], np.float32), np.array([0, 1, 1])
    kept = merge_boxes(boxes, scores, passes, min_score=0.5)
    assert sorted(kept.tolist()) == [0, 1, 2]
    assert [i for i in kept.tolist() if scores[i] >= 0.5] == [1, 2]  # what a count at 0.5 keeps
    # a whole box that counts still takes its parts, and a faint one the parts it outscores
    assert merge_boxes(boxes, np.array([0.6, 0.95, 0.9], np.float32), passes, min_score=0.5).tolist() == [0]
    assert merge_boxes(boxes, np.array([0.3, 0.2, 0.9], np.float32), passes, min_score=0.5).tolist() == [2, 0]


# --------------------------------------------------------------------------- 3. counting without a recogniser

def test_without_a_recogniser_boxes_are_products_not_unknown(detector, tmp_path) -> None:
    from skulens.deploy.batch_jobs import count_row
    from skulens.detect.count import count_products, write_counts
    from skulens.detect.detector import load_detector

    det = load_detector(detector, device="cpu")
    (r, pil), = count_products(det, [str(_noise(tmp_path / "shelf.png"))], min_score=0.0)
    assert r.total == 5 and r.unknown == 0 and r.counts == {"product": 5}
    assert {b["label"] for b in r.to_dict()["boxes"]} == {"product"}
    row = count_row(r)
    assert row["unknown"] == 0 and {b["label"] for b in row["boxes"]} == {"product"}
    table = list(csv.reader(io.StringIO(write_counts([r], tmp_path / "c.csv").read_text())))
    assert table[1][1:5] == ["product", "5", "5", "0"]
    grey = Image.new("RGB", pil.size, (128, 128, 128))
    drawn = np.asarray(r.annotated(grey)).reshape(-1, 3)
    assert not (drawn == ORANGE).all(axis=1).any()  # no box in the unknown colour
    assert (drawn == (0, 200, 83)).all(axis=1).any()  # drawn as found products


# --------------------------------------------------------------------------- 5. YOLO names from the parent

def _yolo_split(root: Path, line: str = "1 0.5 0.5 0.2 0.2") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (100, 80), (200, 200, 200)).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_text(line + "\n")
    return root


def test_a_roboflow_yolo_split_takes_its_names_from_the_parent_data_yaml(tmp_path) -> None:
    from skulens.detect.annotations import AnnotationError, load_annotations

    ds = tmp_path / "ds"
    _yolo_split(ds / "train")
    _yolo_split(ds / "valid", "0 0.5 0.5 0.2 0.2")
    (ds / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['jam', 'tea']\n")
    assert [im.labels for im in load_annotations(ds / "train")] == [("tea",)]
    assert [im.labels for im in load_annotations(ds / "valid")] == [("jam",)]
    with pytest.raises(AnnotationError, match=r"split into train, valid; point at one of them"):
        load_annotations(ds)


def test_yolo_ids_as_labels_are_a_warning(tmp_path, caplog) -> None:
    from skulens.detect.annotations import load_annotations

    with caplog.at_level(logging.WARNING, logger="skulens.detect.annotations"):
        images = load_annotations(_yolo_split(tmp_path / "plain"))
    assert images[0].labels == ("1",)
    assert "labels are the class ids" in caplog.text and "data.yaml" in caplog.text


# --------------------------------------------------------------------------- 6. evaluate with a bad photo

def test_evaluate_leaves_out_an_undecodable_photo_and_lists_it(detector, boxes, tmp_path, capsys) -> None:
    from skulens.detect.annotations import load_annotations, write_coco

    images = load_annotations(boxes)
    good = images[0].path.read_bytes()
    Image.open(io.BytesIO(good)).save(tmp_path / "cut.jpg", quality=90)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    cut = AnnotatedImage(tmp_path / "cut.jpg", 128, 128, images[0].boxes, images[0].labels)
    coco = write_coco([*images, cut], tmp_path / "all.json", root=tmp_path)
    out = tmp_path / "report"
    rc = main(["detect", "evaluate", str(detector), "--data", str(coco), "-o", str(out), "--min-score", "0", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 2 and report["boxes"] == 4 and len(report["per_image"]) == 2
    assert [s["file"] for s in report["skipped"]] == [str(tmp_path / "cut.jpg")]
    assert "truncated" in report["skipped"][0]["error"]
    assert "cut.jpg" in (out / "report.md").read_text() and "cut.jpg" in err


def test_evaluate_with_no_decodable_photo_is_one_error(detector, tmp_path) -> None:
    from skulens.data.decode import ImageDecodeError
    from skulens.detect.detector import load_detector
    from skulens.detect.evaluate import evaluate_counting

    bad = []
    for i in range(2):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff not really")
        bad.append(AnnotatedImage(tmp_path / f"{i}.jpg", 10, 10))
    with pytest.raises(ImageDecodeError, match="none of the other 1 photos"):
        evaluate_counting(load_detector(detector, device="cpu"), bad, progress=False)


# --------------------------------------------------------------------------- 7. real boxes, shrunk

def test_real_boxes_scale_each_axis_by_its_own_ratio(tmp_path) -> None:
    from skulens.detect.train import _RealBoxes

    path = tmp_path / "tall.png"
    Image.new("RGB", (100, 2000), (90, 90, 90)).save(path)
    x, target = _RealBoxes([AnnotatedImage(path, 100, 2000, [[0, 0, 100, 2000]], ("a",))], 512)[0]
    assert tuple(x.shape) == (3, 512, 26)  # 100 x 0.256 rounds to 26: the axes' ratios differ
    assert target["boxes"].tolist() == [[0.0, 0.0, 26.0, 512.0]]


# --------------------------------------------------------------------------- 8. --label-map from Excel

def test_label_map_reads_a_csv_with_a_byte_order_mark(tmp_path) -> None:
    from skulens.cli.detect import _label_map

    path = tmp_path / "map.csv"
    path.write_bytes("jam,Strawberry-Jam\ntea,Green-Tea\n".encode("utf-8-sig"))
    mapping = _label_map(str(path))
    assert mapping["jam"] == "Strawberry-Jam" and mapping["tea"] == "Green-Tea"  # the BOM is not in the first key
    path.write_text("annotation,model_label\njam,Strawberry-Jam\n", encoding="utf-8")  # the help's header row
    assert _label_map(str(path)) == {"jam": "Strawberry-Jam"}  # no mapping of a name "annotation"
    from skulens.cli._common import UsageError

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("gräddfil,Arla-Sour-Cream\n".encode("latin-1"))  # was a UnicodeDecodeError traceback
    with pytest.raises(UsageError, match=r"--label-map .*not UTF-8 \(byte 0xe4"):
        _label_map(str(latin1))
    bad = tmp_path / "bad.csv"  # the line in the file (it counted only the rows kept: "line 1")
    bad.write_text("annotation,model_label\n# a comment\n\nmilk,Milk,extra\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"line 4: expected"):
        _label_map(str(bad))
    bad.write_text("milk,Milk\njam,Jam\nmilk,Oat-Milk\n", encoding="utf-8")  # the last row won, unsaid
    with pytest.raises(UsageError, match=r"line 3: 'milk' is mapped on line 1 already"):
        _label_map(str(bad))


def test_detect_train_refuses_the_same_boxes_twice(tmp_path, capsys) -> None:
    """Its photos were trained on twice (real_photos 8 for 4), unsaid."""
    from skulens.cli import main

    (tmp_path / "voc").mkdir()
    assert main(["detect", "train", "--boxes", str(tmp_path / "voc"), "--boxes", str(tmp_path / "voc") + "/",
                 "--no-composites", "-o", str(tmp_path / "det"), "-q"]) == 2
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "det").exists()


# --------------------------------------------------------------------------- 9. count's -o and --min-similarity

def test_count_refuses_a_json_out_and_a_similarity_outside_0_1(detector, tmp_path, capsys) -> None:
    photo = str(_noise(tmp_path / "shelf.png"))
    rc = main(["count", photo, "--detector", str(detector), "-o", str(tmp_path / "counts.json"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and ".jsonl" in err and ".csv" in err
    assert not (tmp_path / "counts.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["count", photo, "--detector", str(detector), "--min-similarity", "1.5", "-q"])
    assert e.value.code == 2 and "--min-similarity" in capsys.readouterr().err


# --------------------------------------------------------------------------- 4. photos over 40 MP

def test_a_48_megapixel_photo_is_counted(detector, tmp_path, monkeypatch) -> None:
    """Decoded whole (a 48 MP phone photo is over decode's 40 MP default) and handed to the detector; the network
    itself is stubbed here: end to end a 48 MP photo took about 2 GB and 20-35 s on 2 shared cores."""
    from skulens.detect.boxes import Detections
    from skulens.detect.count import count_products
    from skulens.detect.detector import Detector, load_detector

    seen = []

    def look(self: Detector, pil: Image.Image, tiles: str, batch_size: int, min_score: float) -> Detections:
        seen.append(pil.size)
        return Detections([[1000, 1000, 1600, 2000]], [0.9], *pil.size)

    monkeypatch.setattr(Detector, "_detect_one", look)
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (8064, 6048), (180, 180, 180)).save(path, quality=70)
    det = load_detector(detector, device="cpu")
    (r, _), = count_products(det, [str(path)], min_score=0.0)
    assert r.error is None and (r.width, r.height) == (8064, 6048) and r.total == 1
    assert det.detect([str(path)])[0].width == 8064 and seen == [(8064, 6048)] * 2
    big = tmp_path / "bomb.png"
    Image.new("RGB", (9500, 9000), (180, 180, 180)).save(big, compress_level=1)  # 85.5 MP: still refused
    (r, _), = count_products(det, [str(big)])
    assert "too many pixels" in r.error


# --------------------------------------------------------------------------- second review (session 23)

def test_count_checks_its_outputs_before_any_work_and_writes_each_photo_as_it_is_counted(detector, tmp_path,
                                                                                         capsys) -> None:
    from skulens.detect.count import CountsWriter, PhotoCount

    photo = str(_noise(tmp_path / "shelf.png"))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.jsonl").mkdir()
    for flag, value in (("-o", tmp_path / "afile" / "x.jsonl"), ("-o", tmp_path / "adir.jsonl"),
                        ("--annotated", tmp_path / "afile")):
        rc = main(["count", photo, "--detector", str(detector), flag, str(value), "-q"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and str(value) in err, err
    rc = main(["count", photo, "--detector", str(detector), "--min-similarity", "0.7", "-q"])
    assert rc == 2 and "--index" in capsys.readouterr().err  # a setting of --index, not silently ignored
    # a run cut short keeps what it counted: each line is on disk before the next photo
    with CountsWriter(tmp_path / "partial.jsonl") as writer:
        writer.write(PhotoCount("a.jpg", 10, 10, (), False, None, {"jam": 2}, True))
        assert json.loads((tmp_path / "partial.jsonl").read_text())["counts"] == {"jam": 2}
    with CountsWriter(tmp_path / "partial.csv") as writer:
        writer.write(PhotoCount("a.jpg", 10, 10, (), False, None, {"jam": 2, "tea": 1}, True))
        rows = list(csv.reader(io.StringIO((tmp_path / "partial.csv").read_text())))
        assert rows[0][:3] == ["source", "product", "count"] and [r[1:3] for r in rows[1:]] == [["jam", "2"],
                                                                                                ["tea", "1"]]
    with CountsWriter(tmp_path / "formula.csv") as writer:  # a product or photo a spreadsheet would run
        writer.write(PhotoCount("=cmd|' /C calc'!A0.jpg", 10, 10, (), False, None, {"+tea": 1, "jam": 2}, False))
    rows = list(csv.reader(io.StringIO((tmp_path / "formula.csv").read_text())))
    assert [r[:3] for r in rows[1:]] == [["'=cmd|' /C calc'!A0.jpg", "'+tea", "1"],
                                         ["'=cmd|' /C calc'!A0.jpg", "jam", "2"]]


def test_count_in_python_refuses_one_path_instead_of_counting_its_letters(detector, tmp_path) -> None:
    import skulens

    with pytest.raises(TypeError, match="list of images"):
        skulens.count(str(_noise(tmp_path / "shelf.png")), detector)


def test_evaluate_skips_a_photo_whose_header_is_junk_when_its_size_is_stated(detector, tmp_path, capsys) -> None:
    """README: a photo that cannot be decoded is left out of the scores and listed. A junk header stopped the
    import of the whole folder; VOC states the size, so the photo is imported and skipped where it is decoded."""
    (tmp_path / "images").mkdir()
    _noise(tmp_path / "images" / "good.png", 128, 128)
    (tmp_path / "images" / "junk.jpg").write_bytes(b"junk\n" * 40)
    for name in ("good.png", "junk.jpg"):
        (tmp_path / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>128</width><height>128</height></size>"
            "<object><name>jam</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>60</ymax></bndbox>"
            "</object><object><name>tea</name><difficult>1</difficult><bndbox><xmin>70</xmin><ymin>70</ymin>"
            "<xmax>120</xmax><ymax>120</ymax></bndbox></object></annotation>")  # difficult: a product all the same
    out = tmp_path / "report"
    rc = main(["detect", "evaluate", str(detector), "--data", str(tmp_path), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 1 and report["boxes"] == 2
    assert [Path(s["file"]).name for s in report["skipped"]] == ["junk.jpg"] and "junk.jpg" in err
    rc = main(["detect", "evaluate", str(detector), "--data", str(tmp_path), "-o", str(tmp_path / "good.xml"), "-q"])
    assert rc == 2 and "a file is there" in capsys.readouterr().err  # refused before any photo is scored


def test_a_corrupt_onnx_detector_is_one_line_exit_2(own_detector, tmp_path, capsys) -> None:
    """A truncated detector.onnx was onnxruntime's InvalidProtobuf traceback, exit 1 (count, detect evaluate and
    inventory scan); a corrupt detector.json or weights file was already one line."""
    pytest.importorskip("onnxruntime")
    from skulens.detect.onnx import export_detector

    onnx_file = export_detector(own_detector)
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    photo = tmp_path / "shelf.jpg"
    Image.new("RGB", (96, 96), (200, 180, 40)).save(photo)
    assert main(["count", str(photo), "--detector", str(own_detector), "--backend", "onnx", "-q"]) == 2
    err = capsys.readouterr().err
    assert "not a readable ONNX detector" in err and "skulens detect export" in err and "Traceback" not in err, err


def test_an_onnx_export_to_another_folder_loads_from_there(own_detector, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from skulens.detect.model import DetectorCard, DetectorError
    from skulens.detect.onnx import export_detector, load_onnx_detector

    path = export_detector(own_detector, tmp_path / "exports" / "shelf.onnx")
    assert (path.parent / "detector.json").read_bytes() == (own_detector / "detector.json").read_bytes()
    assert load_onnx_detector(path).card.config == DetectorCard.read(own_detector / "detector.json").config
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "detector.json").write_text("{}")
    (tmp_path / "other" / "fridge.onnx").write_bytes(b"another detector's graph")
    with pytest.raises(DetectorError, match="the card of fridge.onnx"):
        export_detector(own_detector, tmp_path / "other" / "shelf.onnx")
    assert not (tmp_path / "other" / "shelf.onnx").exists()
    assert (tmp_path / "other" / "detector.json").read_text() == "{}"
    # the same export again after a retrain (its card changed): replaced, card and all
    card = json.loads((own_detector / "detector.json").read_text())
    card["config"]["min_score"] = 0.42
    (own_detector / "detector.json").write_text(json.dumps(card))
    export_detector(own_detector, path)
    assert load_onnx_detector(path).card.config.min_score == 0.42
    with pytest.raises(DetectorError, match="a folder"):  # -o naming a folder: refused, nothing written
        export_detector(own_detector, tmp_path / "exports")


def test_a_time_budget_must_be_positive_and_no_held_out_scores_are_made_up(boxes, tmp_path, capsys) -> None:
    from skulens.detect.train import DetectorRecipe

    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="max_minutes"):
            DetectorRecipe(max_minutes=bad)
    rc = main(["detect", "train", "--boxes", str(boxes), "--no-composites", "-o", str(tmp_path / "det"), "--steps",
               "1", "--batch-size", "2", "--eval-every", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "held-out products: AP" not in err and "nothing was measured" in err


def test_inventory_scan_of_nothing_readable_fails_and_counts_writes_into_a_new_folder(tiny_bundle, tmp_path,
                                                                                      capsys) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"not a photo")
    db = tmp_path / "inv.sqlite"
    rc = main(["inventory", "scan", str(tmp_path / "photos"), "-m", str(tiny_bundle.bundle), "--db", str(db), "-q"])
    assert rc == 1, capsys.readouterr().err
    rc = main(["inventory", "counts", "--db", str(db), "-o", str(tmp_path / "sub" / "counts.csv")])
    assert rc == 0 and (tmp_path / "sub" / "counts.csv").read_text().startswith("label,count")


def test_count_and_evaluate_run_the_onnx_detector(own_detector, tmp_path, capsys) -> None:
    """The detector exports to ONNX; `count` and `detect evaluate` could not run the export (Python API only)."""
    pytest.importorskip("onnxruntime")
    photo = str(_noise(tmp_path / "shelf.png", 200, 150))
    assert main(["count", photo, "--detector", str(own_detector), "--backend", "onnx", "-q"]) == 2
    assert "skulens detect export" in capsys.readouterr().err  # no detector.onnx yet: says how to make one
    assert main(["detect", "export", str(own_detector)]) == 0
    capsys.readouterr()
    counts = {}
    for backend in ("torch", "onnx"):
        assert main(["count", photo, "--detector", str(own_detector), "--backend", backend, "--min-score", "0",
                     "--device", "cpu", "-q"]) == 0
        counts[backend] = json.loads(capsys.readouterr().out)
    assert counts["onnx"]["total"] == counts["torch"]["total"] > 0
    assert np.allclose([b["score"] for b in counts["onnx"]["boxes"]], [b["score"] for b in counts["torch"]["boxes"]],
                       atol=1e-3)
    assert main(["count", photo, "--detector", str(own_detector), "--backend", "onnx", "--device", "cuda", "-q"]) == 2
    assert "on the CPU" in capsys.readouterr().err
    from skulens.deploy.batch_jobs import CountJob

    with pytest.raises(ValueError, match="on the CPU"):  # the Python API's job checks the same
        CountJob(str(own_detector), backend="onnx", device="cuda")


def test_count_in_python_takes_a_box_cap_and_draws_on_the_photo_as_given(detector, tmp_path) -> None:
    """`skulens.count` had no --max-boxes; `annotated(path)` was an AttributeError, and on a photo turned by its
    EXIF orientation the boxes of the upright photo were drawn on the stored one (off the picture)."""
    import skulens

    stored = Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 200, 3), dtype=np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view
    photo = tmp_path / "turned.jpg"
    stored.save(photo, exif=exif)
    det = skulens.load_detector(detector)
    own_cap = det.config.max_detections
    [free] = skulens.count([photo], det, min_score=0.0)
    [capped] = skulens.count([photo], det, min_score=0.0, max_boxes=1)
    assert (free.width, free.height) == (80, 200) and len(free.boxes) > 1
    assert len(capped.boxes) == 1 and capped.capped
    assert det.config.max_detections == own_cap  # the caller's detector keeps its own cap
    for given in (photo, photo.read_bytes(), Image.open(photo)):
        assert capped.annotated(given).size == (80, 200)  # upright, as the boxes were found
    with pytest.raises(ValueError, match="max_boxes must be a whole number"):
        skulens.count([photo], det, max_boxes=0)
    # the classifier's threshold with no classifier: every box stayed "product", whatever it said
    with pytest.raises(ValueError, match="min_confidence is a setting of the classifier naming the boxes: give the"):
        skulens.count([photo], det, min_confidence=1.0)


def test_load_detector_names_an_onnx_export_and_count_checks_tiles_at_the_call(tmp_path) -> None:
    import skulens
    from skulens.detect.count import count_products
    from skulens.detect.model import DetectorError

    onnx = tmp_path / "det.onnx"
    onnx.write_bytes(b"an exported detector")
    with pytest.raises(DetectorError, match="an exported detector \\(ONNX\\): load it with backend='onnx'"):
        skulens.load_detector(onnx)  # it said "no such detector folder (train one ...)"

    class _Any:  # never asked: the settings are checked before any photo is read
        config = None

    with pytest.raises(ValueError, match="tiles must be one of"):
        count_products(_Any(), [str(tmp_path / "a.jpg")], tiles="bogus")  # a lazy stream raised only when read
