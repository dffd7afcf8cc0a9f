"""Box annotation import: Pascal VOC, COCO JSON and YOLO txt to AnnotatedImage, and COCO back."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.detect import annotations as ann
from skulens.detect.annotations import (
    AnnotationError,
    detect_format,
    load_annotations,
    read_coco,
    read_voc,
    read_yolo,
    write_coco,
)
from skulens.detect.boxes import AnnotatedImage

FRIDGE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fridge-objects-sample"


def _image(path: Path, width: int = 100, height: int = 50, orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", (width, height), (120, 80, 40)).save(path, exif=exif)
    return path


def _voc(folder: Path, name: str, objects: list[tuple[str, tuple[object, ...]]],
         size: tuple[int, int] = (100, 50), image: str | None = None) -> Path:
    """A VOC file whose k-th <object> opens on line 4 + 4k and its <bndbox> on line 6 + 4k."""
    lines = ["<annotation>", f"  <filename>{image or name + '.jpg'}</filename>",
             f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for label, (x1, y1, x2, y2) in objects:
        corners = f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        lines += ["  <object>", f"    <name>{label}</name>", f"    <bndbox>{corners}</bndbox>", "  </object>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.xml").write_text("\n".join([*lines, "</annotation>", ""]), encoding="utf-8")
    return folder / f"{name}.xml"


def _yolo(root: Path, labels: dict[str, str], names: str | None = "classes.txt") -> Path:
    for stem, text in labels.items():
        _image(root / "images" / f"{stem}.jpg")
        (root / "labels").mkdir(parents=True, exist_ok=True)
        if text is not None:
            (root / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
    if names == "classes.txt":
        (root / "classes.txt").write_text("milk\ncan\n", encoding="utf-8")
    elif names == "data.yaml":
        (root / "data.yaml").write_text("path: .\nnames:\n  0: milk\n  1: can\n", encoding="utf-8")
    return root


def _coco(folder: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    _image(folder / "images" / "a.jpg")
    _image(folder / "images" / "b.jpg", 80, 60)
    doc = {"images": images or [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
                                {"id": 2, "file_name": "b.jpg", "width": 80, "height": 60}],
           "annotations": annotations, "categories": [{"id": 3, "name": "milk"}, {"id": 4, "name": "can"}]}
    (folder / "instances.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder / "instances.json"


def _error(fn: Callable[..., object], *args: object, match: str) -> str:
    with pytest.raises(AnnotationError, match=match) as info:
        fn(*args)
    return str(info.value)


# ---- YOLO ----------------------------------------------------------------------------------------------


def test_yolo_values_names_and_empty_images(tmp_path: Path) -> None:
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.4\n\n1 0.25 0.5 0.5 1.0\n", "b": "", "c": None})
    images = read_yolo(root)
    assert [im.path.name for im in images] == ["a.jpg", "b.jpg", "c.jpg"]
    a = images[0]
    assert (a.width, a.height) == (100, 50) and a.labels == ("milk", "can")
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 0, 50, 50]])
    assert a.boxes.dtype == np.float32
    assert [len(im) for im in images[1:]] == [0, 0]  # empty and missing label file: a photo with no products


@pytest.mark.parametrize("names, expected", [("data.yaml", ("can",)), (None, ("1",))])
def test_yolo_names_from_yaml_or_ids(tmp_path: Path, names: str | None, expected: tuple[str, ...]) -> None:
    assert read_yolo(_yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.2"}, names=names))[0].labels == expected


def test_yolo_size_follows_exif_rotation(tmp_path: Path) -> None:
    _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.4"})
    _image(tmp_path / "images" / "a.jpg", 100, 50, orientation=6)  # stored landscape, shown portrait
    im = read_yolo(tmp_path)[0]
    assert (im.width, im.height) == (50, 100)
    np.testing.assert_allclose(im.boxes, [[20, 30, 30, 70]])


@pytest.mark.parametrize("line, match", [
    ("0 0.5 0.5", "line 2: expected 5 numbers 'class cx cy w h', got 3"),
    ("0 0.5 0.5 0.2 0.2 0.9", "got 6 .a sixth number is a prediction's confidence"),  # it said "polygons"
    ("0 0.1 0.1 0.2 0.1 0.2 0.2", "got 7 .segmentation polygons are not supported"),
    ("0 0.5 x 0.2 0.2", "line 2: not a number"),
    ("0 0.5 1.2 0.2 0.2", r"line 2: cx cy w h must be fractions in \[0, 1\]"),
    ("2 0.5 0.5 0.2 0.2", "line 2: class 2 is not one of the 2 class ids"),
    ("0 0.5 0.5 0 0.2", "line 2: degenerate box"),
    ("0 0.05 0.5 0.2 0.2", "line 2: box .* sticks out of the 100x50 image by 5 px"),
])
def test_yolo_errors_name_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    _yolo(tmp_path, {"img3": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    message = _error(read_yolo, tmp_path, match=match)
    assert message.startswith(str(tmp_path / "labels" / "img3.txt"))


def test_yolo_missing_image_and_empty_folder(tmp_path: Path) -> None:
    _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2"})
    (tmp_path / "labels" / "gone.txt").write_text("0 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    gone = re.escape(str(tmp_path / "labels" / "gone.txt"))
    _error(read_yolo, tmp_path, match=gone + ": its image is missing")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    _error(read_yolo, tmp_path / "empty", match="no images")


def test_yolo_label_files_in_any_case_one_photo_a_name_and_names_in_labels(tmp_path: Path) -> None:
    """a.TXT was skipped (the photo an empty shelf); a.jpg beside a.png both took labels/a.txt; data.yaml in
    labels/ was never read, though the warning said it was looked for there."""
    root = _yolo(tmp_path / "y", {"a": None}, names=None)
    (root / "labels" / "a.TXT").write_text("1 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    (root / "labels" / "data.yaml").write_text("names: [milk, can]\n", encoding="utf-8")
    (a,) = read_yolo(root)
    assert a.labels == ("can",)
    _image(root / "images" / "a.png")
    _error(read_yolo, root, match="a.jpg has the same name")


# ---- Pascal VOC ----------------------------------------------------------------------------------------


def test_voc_values_sibling_images_and_no_objects(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    _voc(tmp_path / "annotations", "a", [("milk", (10, 5, 30, 25)), ("can", (99, 40, 101.5, 51))])
    _voc(tmp_path / "annotations", "b", [])
    for where in (tmp_path, tmp_path / "annotations"):
        a, b = read_voc(where)
        assert a.path == tmp_path / "images" / "a.jpg" and a.labels == ("milk", "can")
        np.testing.assert_allclose(a.boxes, [[10, 5, 30, 25], [99, 40, 100, 50]])  # 1.5 px over: clipped
        assert len(b) == 0 and b.boxes.shape == (0, 4) and (b.width, b.height) == (100, 50)


def test_a_stated_size_that_is_not_the_photos_is_an_error(tmp_path: Path) -> None:
    # stored landscape, shown portrait: boxes drawn on the stored grid would land in the wrong place
    _image(tmp_path / "voc" / "images" / "a.jpg", 100, 50, orientation=6)
    _voc(tmp_path / "voc" / "annotations", "a", [("milk", (10, 5, 30, 25))], size=(100, 50))
    msg = _error(read_voc, tmp_path / "voc", match=r"a\.xml: line 3: the annotation says the image is 100x50")
    assert "is 50x100 as displayed" in msg and "EXIF orientation" in msg
    _image(tmp_path / "voc" / "images" / "a.jpg", 120, 50)  # simply another size
    msg = _error(read_voc, tmp_path / "voc", match="says the image is 100x50")
    assert "120x50" in msg and "EXIF" not in msg
    path = _coco(tmp_path / "coco", [], images=[{"id": 1, "file_name": "a.jpg", "width": 50, "height": 100}])
    msg = _error(read_coco, path, match=r"images\[0\]: the annotation says the image is 50x100 but .* is 100x50")
    assert "EXIF" not in msg  # swapped sides of a photo with no EXIF turn: the hint blamed the orientation


def test_a_square_photo_turned_by_exif_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A square photo's stated size cannot tell a turned grid from the stored one: boxes drawn on the stored
    pixels loaded unchanged and landed elsewhere, unsaid."""
    _image(tmp_path / "voc" / "images" / "a.jpg", 80, 80, orientation=6)
    _voc(tmp_path / "voc" / "annotations", "a", [("milk", (10, 5, 30, 25))], size=(80, 80))
    with caplog.at_level("WARNING"):
        read_voc(tmp_path / "voc")
    assert "is square and turned by its EXIF orientation" in caplog.text
    caplog.clear()
    _image(tmp_path / "voc" / "images" / "a.jpg", 80, 80)  # not turned: nothing to say
    with caplog.at_level("WARNING"):
        read_voc(tmp_path / "voc")
    assert "EXIF" not in caplog.text


def test_voc_image_beside_xml_or_via_path_element(tmp_path: Path) -> None:
    _image(tmp_path / "x" / "a.jpg")
    _voc(tmp_path / "x", "a", [("milk", (1, 1, 9, 9))])
    assert read_voc(tmp_path / "x" / "a.xml")[0].path == tmp_path / "x" / "a.jpg"
    _image(tmp_path / "pics" / "b.png")
    xml = _voc(tmp_path / "y", "b", [], image="b.png")
    xml.write_text(xml.read_text().replace("<annotation>", "<annotation><path>../pics/b.png</path>"))
    assert read_voc(xml)[0].path == tmp_path / "pics" / "b.png"


@pytest.mark.parametrize("box, match", [
    ((10, 5, "ten", 25), "a.xml: line 10: <xmax> is not a number: 'ten'"),
    ((30, 5, 10, 25), r"a.xml: line 10: degenerate box \[30, 5, 10, 25\]"),
    ((120, 5, 130, 25), "a.xml: line 10: box .* lies wholly outside the 100x50 image"),
    ((10, 5, 30, 80), "a.xml: line 10: box .* sticks out of the 100x50 image by 30 px"),
])
def test_voc_box_errors_name_file_and_line(tmp_path: Path, box: tuple[object, ...], match: str) -> None:
    _image(tmp_path / "a.jpg")
    _voc(tmp_path, "a", [("milk", (1, 1, 9, 9)), ("can", box)])
    _error(read_voc, tmp_path, match=match)


def test_voc_structure_errors(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    xml = _voc(tmp_path, "a", [("milk", (1, 1, 9, 9))])
    xml.write_text(xml.read_text().replace("<ymax>9</ymax>", ""))
    _error(read_voc, xml, match="a.xml: line 6: <bndbox> has no <ymax>")
    xml.write_text(xml.read_text().replace("</object>", "</objekt>"))
    _error(read_voc, xml, match="a.xml: line 7: malformed XML")
    _voc(tmp_path, "a", [("milk", (1, 1, 9, 9))], image="gone.jpg")
    _error(read_voc, xml, match="a.xml: image 'gone.jpg' not found")
    _error(read_voc, tmp_path / "nothing", match="no Pascal VOC .xml files")


def test_voc_refuses_entity_declarations(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    laughs = ('<?xml version="1.0"?>\n<!DOCTYPE annotation [\n <!ENTITY lol "lol">\n'
              ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n]>\n'
              "<annotation><filename>a.jpg</filename><object><name>&lol2;</name></object></annotation>\n")
    (tmp_path / "a.xml").write_text(laughs, encoding="utf-8")
    _error(read_voc, tmp_path / "a.xml", match="a.xml: line 2: DOCTYPE/ENTITY declarations are refused")


# ---- COCO ----------------------------------------------------------------------------------------------


def test_coco_values_crowd_and_image_without_boxes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 5, 20, 10]}])
    for where in (path, tmp_path):
        a, b = read_coco(where)
        assert a.path == tmp_path / "images" / "a.jpg" and a.labels == ("can",)
        np.testing.assert_allclose(a.boxes, [[10, 5, 30, 15]])
        assert len(b) == 0 and (b.width, b.height) == (80, 60)
    # a photo with a crowd region (many products as one RLE blob) is left out, said: kept, the products under
    # the region were background in training and false boxes in `detect evaluate`
    crowd = {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 50], "iscrowd": 1}
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 5, 20, 10]}, crowd])
    with caplog.at_level("WARNING"):
        (b,) = read_coco(path)
    assert len(b) == 0 and (b.width, b.height) == (80, 60) and "1 photo(s) with iscrowd regions left out" in caplog.text


def test_coco_boxes_written_as_fractions_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0.1, 0.1, 0.5, 0.5]}])
    with caplog.at_level("WARNING"):
        read_coco(path)
    assert "every box is under 2 px" in caplog.text


@pytest.mark.parametrize("annotation, match", [
    ({"image_id": 9, "category_id": 3, "bbox": [1, 1, 5, 5]}, r"annotations\[1\]: unknown image_id 9"),
    ({"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}, r"annotations\[1\]: unknown category_id 7"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 1, "5", 5]}, r"annotations\[1\]: bbox must be 4 numbers"),
    # said in the file's [x, y, width, height]: it named the corners [10, 10, 5, 30], which are not in the file
    ({"image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 5]}, r"annotations\[1\]: bbox \[1, 1, 0, 5\]: width and h"),
    ({"image_id": 1, "category_id": 3, "bbox": [10, 10, -5, 20]}, r"bbox \[10, 10, -5, 20\]: width and height"),
    # a crowd flag written as a string was read as "crowd" (any non-empty string is true): the box was dropped
    ({"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": "0"}, r"iscrowd must be 0 or 1, got '0'"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 2}, r"iscrowd must be 0 or 1, got 2"),
])
def test_coco_errors_name_file_and_index(tmp_path: Path, annotation: dict, match: str) -> None:
    good = {"image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]}
    path = _coco(tmp_path, [good, annotation])
    assert _error(read_coco, path, match=match).startswith(str(path))


def test_a_duplicate_coco_category_id_is_refused(tmp_path: Path) -> None:
    """The last category of an id won: every box of the first took the second's name, silently."""
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    doc = json.loads(path.read_text())
    doc["categories"].append({"id": 3, "name": "dup"})
    path.write_text(json.dumps(doc))
    _error(read_coco, path, match=r"categories\[\d+\]: duplicate category id 3")


def test_a_photo_annotated_twice_is_refused(tmp_path: Path) -> None:
    from skulens.detect.annotations import load_annotations

    path = _coco(tmp_path, [])
    doc = json.loads(path.read_text())
    doc["images"].append({**doc["images"][0], "id": 99})  # the same file under another id
    path.write_text(json.dumps(doc))
    _error(load_annotations, path, match="a.jpg is annotated twice")


def test_a_coco_file_without_annotations_is_refused(tmp_path: Path) -> None:
    """Read as photos without products, every detection scored as a false box (a COCO image_info file)."""
    path = _coco(tmp_path, [])
    doc = json.loads(path.read_text())
    assert read_coco(path) and doc["annotations"] == []  # an empty list: photos without products, as before
    doc["annotations"] = None
    path.write_text(json.dumps(doc))
    _error(read_coco, path, match="no 'annotations' list")
    del doc["annotations"]
    path.write_text(json.dumps(doc))
    _error(read_coco, path, match="no 'annotations' list")


def test_coco_missing_image_bad_json_and_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _coco(tmp_path, [], images=[{"id": 1, "file_name": "gone.jpg", "width": 10, "height": 10}])
    _error(read_coco, path, match=r"instances.json: images\[0\]: image 'gone.jpg' not found")
    path.write_text('{"images": [\n  {"id": 1,,}]}')
    _error(read_coco, path, match="invalid JSON .*line 2")
    path.write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError traceback before
    _error(read_coco, path, match="invalid JSON .nested too deeply")
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    path.write_text(path.read_text().replace("[1, 1, 5, 5]", "[" + "9" * 400 + ", 1, 5, 5]"))  # an OverflowError
    _error(read_coco, path, match=r"annotations\[0\]: bbox .*a number too large for a box")
    monkeypatch.setattr(ann, "_MAX_JSON", 10)
    _error(read_coco, path, match="over the 0 MB limit")


def test_write_coco_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "images"
    images = [AnnotatedImage(_image(folder / "a.jpg"), 100, 50, [[0.5, 1.25, 30.1, 20.7]], ("milk",)),
              AnnotatedImage(_image(folder / "b.jpg"), 100, 50),
              AnnotatedImage(_image(folder / "c.jpg"), 100, 50, [[1, 2, 3, 4], [5, 6, 99, 49]],
                             ("can", "milk"))]
    path = write_coco(images, tmp_path / "cache" / "instances.json", root=folder)
    doc = json.loads(path.read_text())
    assert doc["categories"] == [{"id": 1, "name": "can"}, {"id": 2, "name": "milk"}]
    assert [im["file_name"] for im in doc["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    back = read_coco(path)
    assert [(im.path, im.width, im.height, im.labels) for im in back] == \
        [(im.path, im.width, im.height, im.labels) for im in images]
    for got, want in zip(back, images, strict=True):
        np.testing.assert_array_equal(got.boxes, want.boxes)
    with pytest.raises(ValueError, match="must be"):
        write_coco(images, tmp_path / "x.json", root=tmp_path / "elsewhere")


# ---- detection and the real sample ---------------------------------------------------------------------


def test_detect_format_and_load(tmp_path: Path) -> None:
    _yolo(tmp_path / "yolo", {"a": "0 0.5 0.5 0.2 0.2"})
    _image(tmp_path / "voc" / "images" / "a.jpg")
    _voc(tmp_path / "voc" / "annotations", "a", [("milk", (1, 1, 9, 9))])
    coco = _coco(tmp_path / "coco", [])
    for where, fmt in [("yolo", "yolo"), ("voc", "voc"), ("voc/annotations/a.xml", "voc"), ("coco", "coco"),
                       ("coco/instances.json", "coco")]:
        assert detect_format(tmp_path / where) == fmt
        assert len(load_annotations(tmp_path / where)) >= 1
    assert len(load_annotations(coco, format="coco")) == 2
    (tmp_path / "nothing").mkdir()
    _error(detect_format, tmp_path / "nothing", match=r"looked for Pascal VOC .* COCO .* YOLO images/ \+")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        load_annotations(coco, format="csv")


@pytest.mark.dataset
def test_real_fridge_sample() -> None:
    if not FRIDGE.is_dir():
        pytest.skip("fridge-objects-sample not found in ../shared/datasets")
    images = load_annotations(FRIDGE)
    assert len(images) == 6 and [len(im) for im in images] == [2] * 6
    assert load_annotations(FRIDGE / "annotations")[0].path == images[0].path
    first = images[0]
    assert first.path.name == "10.jpg" and first.labels == ("carton", "milk_bottle")
    np.testing.assert_array_equal(first.boxes, [[86, 102, 216, 439], [150, 377, 445, 490]])


def test_training_checks_every_annotated_photo_decodes_before_it_starts(tmp_path: Path) -> None:
    from skulens.detect.train import _RealBoxes

    good, bad = _image(tmp_path / "a.jpg", 100, 50), tmp_path / "b.jpg"
    _image(bad, 100, 50)
    bad.write_bytes(bad.read_bytes()[:200])  # the header reads, the pixels do not: a truncated upload
    images = [AnnotatedImage(p, 100, 50, np.array([[10, 5, 30, 25]], np.float32), ("milk",)) for p in (good, bad)]
    _error(_RealBoxes, images, 64, match=r"1 annotated photo\(s\) cannot be decoded: .*b\.jpg")
    assert len(_RealBoxes(images[:1], 64)) == 1


def test_every_batch_mixing_real_boxes_and_composites_holds_both() -> None:
    from skulens.detect.train import DetectorRecipe, real_photos_per_batch

    assert real_photos_per_batch(DetectorRecipe(batch_size=8, real_share=0.5)) == 4
    assert real_photos_per_batch(DetectorRecipe(batch_size=3, real_share=0.1)) == 1  # round(0.3) would be 0
    assert real_photos_per_batch(DetectorRecipe(batch_size=4, real_share=1.0)) == 3  # one composite stays
    assert real_photos_per_batch(DetectorRecipe(batch_size=4, real_share=0.0)) == 0
    with pytest.raises(ValueError, match="batch_size >= 2"):
        real_photos_per_batch(DetectorRecipe(batch_size=1, real_share=0.5))


def test_coco_json_in_an_annotations_folder_finds_images_beside_it(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg")  # COCO's own layout: annotations/instances.json and images/
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 10]}],
           "categories": [{"id": 3, "name": "milk"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(doc), encoding="utf-8")
    (im,) = read_coco(tmp_path / "annotations" / "instances.json")
    assert im.path == tmp_path / "images" / "a.jpg" and im.labels == ("milk",)


def test_a_yolo_data_yaml_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "y", {"a": ""}, names=None)
    (root / "data.yaml").write_text("names: " + "[" * 50_000 + "]" * 50_000, encoding="utf-8")
    _error(load_annotations, root, match="data.yaml: invalid YAML .nested too deeply")
