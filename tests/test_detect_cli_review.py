"""Detection as a new user runs it (a review's findings): exports that would overwrite a detector, output paths
checked before the work, settings that would be ignored, a hand-edited card, an index of another model,
capped photos in an evaluation, globs, YOLO photos that cannot be read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.cli import main


def _noise(path: Path, w: int = 160, h: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def own(detector: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(detector, tmp_path / "det"))


def test_export_never_overwrites_a_detector(own: Path, detector: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    weights, card = (own / "detector.safetensors").read_bytes(), (own / "detector.json").read_bytes()
    for target in ("detector.safetensors", "detector.json"):  # its own files, named as the output
        assert main(["detect", "export", str(own), "-o", str(own / target)]) == 2
        assert "name a .onnx file" in capsys.readouterr().err
    other = Path(shutil.copytree(detector, tmp_path / "other"))
    edited = json.loads((other / "detector.json").read_text())
    edited["config"]["min_score"] = 0.9
    (other / "detector.json").write_text(json.dumps(edited))
    assert main(["detect", "export", str(own), "-o", str(other / "x.onnx")]) == 2  # another detector's folder
    assert "holds another detector" in capsys.readouterr().err
    assert json.loads((other / "detector.json").read_text())["config"]["min_score"] == 0.9
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["detect", "export", str(own), "-o", str(afile / "x.onnx")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert ((own / "detector.safetensors").read_bytes(), (own / "detector.json").read_bytes()) == (weights, card)
    # an export under its own name, in a folder of its own, runs from the CLI by that name
    assert main(["detect", "export", str(own), "-o", str(tmp_path / "elsewhere" / "x.onnx")]) == 0
    photo = str(_noise(tmp_path / "p.png"))
    assert main(["count", photo, "--detector", str(tmp_path / "elsewhere"), "--backend", "onnx", "-q"]) == 2
    assert "x.onnx: name that file" in capsys.readouterr().err
    assert main(["count", photo, "--detector", str(tmp_path / "elsewhere" / "x.onnx"), "--backend", "onnx",
                 "--min-score", "0", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] > 0
    assert main(["count", photo, "--detector", str(tmp_path / "elsewhere" / "x.onnx"), "-q"]) == 2
    assert "run it with the onnx backend" in capsys.readouterr().err
    # evaluated without -o, its report goes beside the file (it was built under x.onnx/ and failed after the work)
    from skulens.detect.annotations import write_coco
    from skulens.detect.boxes import AnnotatedImage

    write_coco([AnnotatedImage(Path(photo), 160, 120, np.array([[10, 10, 60, 60]], np.float32), ("a",))],
               tmp_path / "coco.json")
    assert main(["detect", "evaluate", str(tmp_path / "elsewhere" / "x.onnx"), "--backend", "onnx",
                 "--data", str(tmp_path / "coco.json"), "-q"]) == 0
    assert (tmp_path / "elsewhere" / "eval-coco" / "report.json").is_file()


def test_output_paths_and_seeds_are_checked_before_the_work(tmp_path: Path, tiny_catalogue: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["detect", "train", "--data", str(tiny_catalogue), "-o", str(afile), "--steps", "1"]) == 2
    assert "a file is there" in capsys.readouterr().err
    for out, match in ((afile / "x.png", "is a file, not a folder"), (tmp_path, "a folder is there"),
                       (tmp_path / "grid.jpg", "name a .png file")):
        assert main(["detect", "preview", "--data", str(tiny_catalogue), "-o", str(out)]) == 2
        assert match in capsys.readouterr().err
    for cmd in (["detect", "train", "--data", str(tiny_catalogue), "-o", str(tmp_path / "d")],
                ["detect", "preview", "--data", str(tiny_catalogue)]):
        with pytest.raises(SystemExit):
            main([*cmd, "--seed", "-1"])
        assert "--seed" in capsys.readouterr().err
    from skulens.detect.train import DetectorRecipe

    with pytest.raises(ValueError, match="seed must be"):
        DetectorRecipe(seed=-1)


def test_a_hand_edited_detector_card_is_one_line(own: Path, tmp_path: Path, capsys) -> None:
    photo = str(_noise(tmp_path / "p.png"))
    good = json.loads((own / "detector.json").read_text())
    for edit in ({"min_score": 2}, {"min_size": "abc"}, None, b"\xff\xfe not utf-8"):
        if isinstance(edit, bytes):
            (own / "detector.json").write_bytes(edit)
        else:
            doc = json.loads(json.dumps(good))
            doc["config"] = None if edit is None else {**doc["config"], **edit}
            (own / "detector.json").write_text(json.dumps(doc))
        assert main(["count", photo, "--detector", str(own), "-q"]) == 2, edit
        err = capsys.readouterr().err
        assert "detector.json" in err and "Traceback" not in err, err


def test_settings_that_would_be_ignored_are_refused(detector: Path, tiny_bundle, tmp_path: Path, capsys) -> None:
    photo = str(_noise(tmp_path / "p.png"))
    cases = [
        (["count", photo, "--detector", str(detector), "--min-confidence", "0.9"], "needs -m/--model"),
        (["count", photo, "--detector", str(detector), "--actors", "3"], "settings of --engine ray"),
        (["count", photo, "--detector", str(detector), "--batch-size", "4"], "a setting of --engine ray"),
        (["detect", "evaluate", str(detector), "--data", str(tmp_path), "--label-map", str(tmp_path / "m.csv")],
         "needs -m/--model"),
    ]
    for argv, match in cases:
        assert main([*argv, "-q"] if argv[0] == "count" else argv) == 2, argv
        assert match in capsys.readouterr().err, argv
    import importlib.util

    if importlib.util.find_spec("ray") is not None:  # NaN CPUs per actor: refused, not a crash inside Ray
        assert main(["count", photo, "--detector", str(detector), "--engine", "ray", "--cpus-per-actor", "nan",
                     "-o", str(tmp_path / "r.parquet"), "-q"]) == 2
        assert "--cpus-per-actor a number > 0" in capsys.readouterr().err


def test_count_refuses_an_index_of_another_model(detector: Path, tiny_bundle, tmp_path: Path, capsys) -> None:
    pytest.importorskip("faiss")
    photos = [_noise(tmp_path / "cat" / f"{i}.png", 96, 96, seed=i) for i in range(3)]
    from skulens.models.predictor import pretrained_model
    from skulens.search.index import IndexRecord, create_index

    other = pretrained_model("efficientnet_lite0", image_size=64, device="cpu")  # not the tiny bundle
    index = create_index("faiss", tmp_path / "idx", other.card.embedding_dim)
    index.add([IndexRecord(f"p{i}", f"p{i}", f"p{i}", image=str(p)) for i, p in enumerate(photos)],
              other.embed([str(p) for p in photos]))
    index.save()
    assert main(["count", str(photos[0]), "--detector", str(detector), "-m", str(tiny_bundle.bundle),
                 "--index", str(tmp_path / "idx"), "-q"]) == 2
    assert "built with another model" in capsys.readouterr().err


def test_evaluate_says_when_photos_reach_the_box_cap(detector: Path, tmp_path: Path, capsys) -> None:
    from skulens.detect.annotations import write_coco
    from skulens.detect.boxes import AnnotatedImage

    photos = [_noise(tmp_path / "ph" / f"{i}.png", 200, 150, seed=i) for i in range(2)]
    write_coco([AnnotatedImage(p, 200, 150, np.array([[10, 10, 60, 60]], np.float32), ("a",)) for p in photos],
               tmp_path / "coco.json")
    assert main(["detect", "evaluate", str(detector), "--data", str(tmp_path / "coco.json"), "--min-score", "0",
                 "--max-boxes", "2", "-o", str(tmp_path / "ev"), "-q"]) == 0
    captured = capsys.readouterr()
    assert "2 of 2 photo(s) reached the box cap" in captured.err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["capped"] == 2 and all(r["capped"] for r in report["per_image"])
    assert "box cap" in (tmp_path / "ev" / "report.md").read_text()


def test_evaluate_names_its_report_folder_without_json_and_fails_as_a_run_when_no_photo_reads(own: Path, tmp_path: Path,
                                                                                            capsys) -> None:
    """Without -o the report went into a folder named eval-coco.json; with no readable photo the run exited 2 (a
    usage error) where `count` and the README say 1. And --detector naming detector.json itself was told it had
    no detector.json, a missing folder that it was not a detector folder."""
    from skulens.detect.annotations import write_coco
    from skulens.detect.boxes import AnnotatedImage

    bad = [tmp_path / "ph" / f"{i}.jpg" for i in range(2)]
    for p in bad:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"not a photo")
    write_coco([AnnotatedImage(p, 200, 150, np.array([[10, 10, 60, 60]], np.float32), ("a",)) for p in bad],
               tmp_path / "broken.json")
    assert main(["detect", "evaluate", str(own), "--data", str(tmp_path / "broken.json"), "-q"]) == 1
    assert "none of the other 1 photos could be decoded" in capsys.readouterr().err
    good = _noise(tmp_path / "ok" / "0.png", 200, 150)
    write_coco([AnnotatedImage(good, 200, 150, np.array([[10, 10, 60, 60]], np.float32), ("a",))], tmp_path / "shelf.json")
    assert main(["detect", "evaluate", str(own), "--data", str(tmp_path / "shelf.json"), "--min-score", "0", "-q"]) == 0
    assert (own / "eval-shelf" / "report.json").is_file() and not (own / "eval-shelf.json").exists()
    assert main(["count", str(good), "--detector", str(own / "detector.json"), "-q"]) == 2
    assert f"give the detector's folder, {own}" in capsys.readouterr().err
    assert main(["count", str(good), "--detector", str(tmp_path / "nodir"), "-q"]) == 2
    assert "nodir: no such folder" in capsys.readouterr().err


def test_a_quoted_glob_reads_folders_and_lists(tmp_path: Path) -> None:
    from skulens.cli._common import expand_inputs

    a = _noise(tmp_path / "photos" / "a.png")
    b = _noise(tmp_path / "more" / "b.png")
    (tmp_path / "list.csv").write_text(f"path\n{b}\n")
    assert expand_inputs([str(tmp_path / "phot*")]) == [str(a)]  # a folder matched: its photos
    assert expand_inputs([str(tmp_path / "l*.csv")]) == [str(b)]  # a list matched: its paths
    assert expand_inputs([str(tmp_path / "nothing*")]) == []


def test_a_yolo_photo_that_cannot_be_read_is_listed_not_fatal(detector: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    _noise(root / "images" / "ok.png", 200, 150)
    (root / "labels" / "ok.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "images" / "bad.jpg").write_bytes(b"not a photo at all")
    (root / "labels" / "bad.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("thing\n")
    assert main(["detect", "evaluate", str(detector), "--data", str(root), "--min-score", "0",
                 "-o", str(tmp_path / "ev"), "-q"]) == 0
    assert "bad.jpg" in capsys.readouterr().err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["images"] == 1 and [Path(s["file"]).name for s in report["skipped"]] == ["bad.jpg"]


def test_count_takes_its_first_input_as_the_model_in_every_form_m_takes(detector: Path, tiny_bundle, tmp_path: Path,
                                                                        capsys) -> None:
    """`count RUN photos/` counted the run's report plots as photos, and `count BUNDLE/card.json photos/` the card
    as an unreadable photo, both without a classifier and exit 0."""
    photo = _noise(tmp_path / "p.png", 96, 96)
    assert main(["count", str(tiny_bundle.run_dir), str(photo), "--detector", str(detector), "-q"]) == 2
    assert "a training run's bundle is RUN/bundle" in capsys.readouterr().err
    for alone in (tiny_bundle.run_dir, tiny_bundle.bundle):  # the model and no photos: never a folder of photos
        assert main(["count", str(alone), "--detector", str(detector), "-q"]) == 2
        assert "no input photos after the model" in capsys.readouterr().err
    out = tmp_path / "c.jsonl"
    assert main(["count", str(Path(tiny_bundle.bundle) / "card.json"), str(photo), "--detector", str(detector),
                 "--min-score", "0", "--min-confidence", "0", "-o", str(out), "-q"]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["source"] == str(photo) and row["total"] > 0 and "product" not in row["counts"]  # named by the model


def test_evaluate_on_photos_without_boxes_says_n_a_and_train_keeps_out_of_a_bundle(detector: Path, tiny_bundle,
                                                                                   tmp_path: Path, capsys) -> None:
    """With no true box there is no AP or recall: the summary said nan where the report says n/a (null). And
    `detect train -o BUNDLE` wrote a detector into a classification bundle's folder."""
    from skulens.detect.annotations import write_coco
    from skulens.detect.boxes import AnnotatedImage
    from skulens.detect.train import DetectorError, check_out

    photo = _noise(tmp_path / "ph" / "0.png", 200, 150)
    write_coco([AnnotatedImage(photo, 200, 150, np.zeros((0, 4), np.float32), ())], tmp_path / "coco.json")
    assert main(["detect", "evaluate", str(detector), "--data", str(tmp_path / "coco.json"), "-o",
                 str(tmp_path / "ev"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "AP@0.5 n/a, AP@[.5:.95] n/a, recall n/a" in err and "nan" not in err
    with pytest.raises(DetectorError, match="is a classification bundle"):
        check_out(tiny_bundle.bundle)
