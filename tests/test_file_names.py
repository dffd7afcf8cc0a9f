"""Photos whose file names are not UTF-8 (Latin-1 from an old camera or a Windows zip): refused when the inputs are
listed, naming the file, before any work. They used to end in a UnicodeEncodeError partway through the results: a
CSV of the photos before it, an inventory batch rolled back on every rerun, an empty report.md."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from skulens.cli import main

LATIN1 = os.fsdecode(b"caf\xe9.jpg")  # what Python lists for those bytes: a lone surrogate, no UTF-8 form


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    try:
        for name in ("a.jpg", LATIN1, "z.jpg"):
            Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / name, format="JPEG")
    except (OSError, UnicodeEncodeError):  # a file system that takes only UTF-8 names (macOS)
        pytest.skip("this file system does not take a Latin-1 file name")
    return folder


def test_the_inputs_are_refused_with_the_name_escaped(photos: Path) -> None:
    from skulens.cli._common import UsageError, expand_inputs
    from skulens.data.image_list import non_utf8_names

    assert non_utf8_names([photos / "a.jpg", "ü.jpg"]) is None  # UTF-8, accents included
    for given in ([str(photos)], [str(photos / "*.jpg")], [str(photos / LATIN1)]):
        with pytest.raises(UsageError, match=r"1 file name\(s\) not in UTF-8.*caf\\xe9\.jpg; rename them"):
            expand_inputs(given)


def test_predict_count_and_inventory_scan_refuse_before_writing(photos: Path, tiny_bundle, detector: Path,
                                                                tmp_path: Path, capsys) -> None:
    runs = {"predict": ["predict", str(photos), "-m", str(tiny_bundle.bundle), "-o", str(tmp_path / "p.csv")],
            "count": ["count", str(photos), "--detector", str(detector), "-o", str(tmp_path / "c.csv")],
            "inventory": ["inventory", "scan", str(photos), "-m", str(tiny_bundle.bundle), "--db",
                          str(tmp_path / "inv.sqlite")]}
    for argv in runs.values():
        assert main([*argv, "-q"]) == 2, argv
        assert "caf\\xe9.jpg; rename them" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no results file, no database


def test_annotations_with_such_a_photo_are_refused(photos: Path, tmp_path: Path) -> None:
    from skulens.detect.annotations import AnnotationError, load_annotations

    yolo = tmp_path / "yolo"
    shutil.copytree(photos, yolo / "images")
    (yolo / "labels").mkdir()
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    (yolo / "classes.txt").write_text("can\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"caf\\xe9\.jpg; rename them"):
        load_annotations(yolo)
    (yolo / "images" / LATIN1).unlink()
    assert [len(im) for im in load_annotations(yolo)] == [1, 0]


def test_a_folder_leaves_out_hidden_files_as_inventory_scan_does(tmp_path: Path) -> None:
    from skulens.cli._common import expand_inputs

    for name in ("a.jpg", "._a.jpg", ".cache/b.jpg", "sub/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "c.png")]
    assert expand_inputs([str(tmp_path / "._a.jpg")]) == [str(tmp_path / "._a.jpg")]  # named: taken as given


def test_photo_folders_reached_through_links_are_read_once_as_training_catalogues_are(tmp_path: Path) -> None:
    """predict, count and inventory scan left out sub-folders that are symbolic links (a shop linking each day's
    shoot into one folder), where `skulens train` reads them; a link back up the tree is walked once."""
    from skulens.cli._common import expand_inputs
    from skulens.serve.intake import find_images

    shoot = tmp_path / "shoot-monday"
    shoot.mkdir()
    (shoot / "b.jpg").write_bytes(b"x")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"x")
    (photos / "monday").symlink_to(shoot, target_is_directory=True)
    (photos / "sub" / "loop").symlink_to(photos, target_is_directory=True)  # a cycle
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link is no photo
    want = [photos / "a.jpg", photos / "monday" / "b.jpg"]
    assert find_images(photos) == want
    assert expand_inputs([str(photos)]) == [str(p) for p in want]
