"""What a catalogue's text files may say (review of data ingestion, session 35): a quote left open, a column
named twice or misspelt, labels that are one class spelt two ways, JSON values that are not text, and the same
checks for products.csv. Each was read in silence before: rows swallowed, photos in the wrong split or class."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from skulens.data.catalogue import CatalogueError, load_catalogue

ROWS = [("img/a0.jpg", "Milk"), ("img/a1.jpg", "Milk"), ("img/a2.jpg", "Milk"),
        ("img/b0.jpg", "Bread"), ("img/b1.jpg", "Bread"), ("img/b2.jpg", "Bread")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for path, _ in ROWS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / path)
    return tmp_path


def _csv(root: Path, header: str, lines: list[str]) -> Path:
    (root / "manifest.csv").write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return root


def _plain() -> list[str]:
    return [f"{p},{label}" for p, label in ROWS]


def test_a_quote_left_open_is_refused_not_read_as_one_long_label(root: Path) -> None:
    lines = _plain()
    lines[3] = 'img/b0.jpg,"Bread'  # before: 3 photos of Milk, and one label holding every row after it
    with pytest.raises(CatalogueError, match=r"manifest.csv: row 5: bad CSV .*never closed"):
        load_catalogue(_csv(root, "path,label", lines))


def test_a_quote_closed_rows_later_is_refused_by_its_line_break(root: Path) -> None:
    lines = _plain()
    lines[3], lines[5] = 'img/b0.jpg,"Bread', 'img/b2.jpg,Bread"'
    with pytest.raises(CatalogueError, match="label cell holds a line break"):
        load_catalogue(_csv(root, "path,label", lines))


def test_a_misspelt_column_is_refused_and_an_unknown_one_is_named(root: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CatalogueError, match="'spilt'.*did you mean 'split'"):
        load_catalogue(_csv(root, "path,label,spilt", [line + ",val" for line in _plain()]))
    with caplog.at_level(logging.WARNING):
        cat = load_catalogue(_csv(root, "path,label,sku,label_id,test", [line + ",123,7,x" for line in _plain()]))
    assert sorted(cat.classes) == ["Bread", "Milk"]  # columns of their own, not typos: said, not refused
    assert "column(s) label_id, sku, test not read" in caplog.text


def test_a_column_named_twice_is_refused(root: Path) -> None:
    with pytest.raises(CatalogueError, match="'label' is named twice"):
        load_catalogue(_csv(root, "path,label,Label", [line + ",x" for line in _plain()]))


@pytest.mark.parametrize("other", ["milk", "MILK ", "Mi\u0308lk", "Milk\u200b"])  # a zero-width space: one more Milk
def test_labels_that_differ_only_in_case_or_form_are_refused(root: Path, other: str) -> None:
    lines = _plain()
    lines[0] = f"img/a0.jpg,{other}"
    lines[1] = "img/a1.jpg,Mi\u0308lk" if other != "Mi\u0308lk" else "img/a1.jpg,M\u00efLK"
    with pytest.raises(CatalogueError, match="differ only in case, spaces or Unicode form"):
        load_catalogue(_csv(root, "path,label", lines))


@pytest.mark.parametrize("bad, message", [
    ({"label": 7}, "'label' must be a string, got int 7"),
    ({"label": ["Milk", "Bread"]}, "'label' must be a string"),
    ({"split": None, "path": 3}, "'path' must be a string"),
    ({"attributes": {"organic": True}}, "'attributes' must be a string"),
    ({"attributes": ["a", None]}, "'attributes' must be a string"),
    ({"Label": "Milk"}, "key 'label' given twice"),
])
def test_jsonl_values_that_are_not_text_are_refused(root: Path, bad: dict, message: str) -> None:
    records = [{"path": p, "label": label} for p, label in ROWS]
    records[-1] = {**records[-1], **bad}
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"manifest.jsonl: line 6: " + message.replace("[", r"\[")):
        load_catalogue(root)


def test_products_csv_gets_the_manifest_checks(root: Path) -> None:
    _csv(root, "path,label", _plain())
    products = root / "products.csv"
    products.write_text("label,title,description\nMilk,Whole milk,Fresh, cold and creamy\nBread,Bread,Rye\n")
    with pytest.raises(CatalogueError, match=r"products.csv: row 2: 4 cell\(s\) for 3 columns"):
        load_catalogue(root)
    products.write_text('label,title,description\nMilk,Whole milk,"Fresh\nBread,Bread,Rye\n')
    with pytest.raises(CatalogueError, match="products.csv: row 2: bad CSV .*never closed"):
        load_catalogue(root)
    products.write_text("label,title,descripton\nMilk,Whole milk,Fresh\n")
    with pytest.raises(CatalogueError, match="did you mean 'description'"):
        load_catalogue(root)
    products.write_text('label,title,description\nMilk,Whole milk,"Fresh,\ncold"\n')  # a text may span lines
    assert load_catalogue(root).products["Milk"].description == "Fresh,\ncold"


def test_jfif_photos_are_read_and_heic_ones_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for label in ("Milk", "Bread"):
        (tmp_path / "c" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (10 * i, 50, 90)).save(tmp_path / "c" / label / f"{i}.jfif", "JPEG")
    (tmp_path / "c" / "Milk" / "IMG_1.HEIC").write_bytes(b"not read")
    with caplog.at_level(logging.WARNING):
        cat = load_catalogue(tmp_path / "c", val_fraction=0)
    assert len(cat.split("train")) == 6  # .jfif is JPEG (it was skipped, unsaid)
    assert "1 photo(s) in formats skulens does not read were left out (e.g." in caplog.text and "IMG_1.HEIC" in caplog.text


def test_a_large_jpeg_wanted_small_is_checked_at_the_size_it_is_decoded(tmp_path: Path) -> None:
    """A 48 MP phone JPEG wanted at 224 px decodes at 1/8 (libjpeg's draft): the pixel limit refused it."""
    from skulens.data.decode import ImageDecodeError, decode_image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (400, 300), (120, 30, 200)).save(path, quality=90)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(path, max_pixels=10_000)
    small = decode_image(path, max_pixels=10_000, reduce_to=20)  # drafted to 50 x 38 (1/8): 1900 pixels
    assert min(small.size) == 20
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(path, max_pixels=1_000, reduce_to=20)  # still over the limit as decoded


def test_a_folder_of_catalogue_photos_is_not_a_class(tmp_path: Path) -> None:
    for label in ("Milk", "Bread"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (10 * i, 50, 90)).save(tmp_path / label / f"{i}.jpg")
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "cat" / "milk.jpg")
    (tmp_path / "products.csv").write_text("label,title,image\nMilk,Whole milk,cat/milk.jpg\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="folder 'cat' holds only catalogue photos"):
        load_catalogue(tmp_path, val_fraction=0)  # it was a class "cat", trained on the catalogue photo
    (tmp_path / "cat").rename(tmp_path / ".catalogue")
    (tmp_path / "products.csv").write_text("label,title,image\nMilk,Whole milk,.catalogue/milk.jpg\n")
    cat = load_catalogue(tmp_path, val_fraction=0)
    assert cat.classes == ["Bread", "Milk"] and cat.products["Milk"].image == tmp_path / ".catalogue" / "milk.jpg"
    (tmp_path / "Jam").mkdir()  # a class whose only photo is its own catalogue photo is a class, as before
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "Jam" / "0.jpg")
    (tmp_path / "products.csv").write_text("label,title,image\nMilk,Whole milk,.catalogue/milk.jpg\n"
                                           "Jam,Jam,Jam/0.jpg\n")
    assert load_catalogue(tmp_path, val_fraction=0).classes == ["Bread", "Jam", "Milk"]


def test_photos_a_folders_manifest_leaves_out_are_named(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stray manifest.csv in a folder-per-class catalogue: the manifest wins, and its other photos and classes
    were left out without a word."""
    (root / "Apple").mkdir()
    Image.new("RGB", (8, 8)).save(root / "Apple" / "a.jpg")
    with caplog.at_level(logging.WARNING):
        cat = load_catalogue(_csv(root, "path,label", _plain()))
    assert "Apple" not in cat.classes
    assert "1 photo(s) under the folder are not in its manifest" in caplog.text and "Apple/a.jpg" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_catalogue(root / "manifest.csv")  # the manifest named itself: it says what the catalogue is
    assert "not in its manifest" not in caplog.text


def test_one_file_reached_under_two_labels_is_refused(tmp_path: Path) -> None:
    """A link inside a class folder back to the catalogue's root: Milk's photos were Bread too, one of them in
    val; a manifest reached through a linked folder could list one photo by two spellings."""
    for label in ("Milk", "Bread"):
        (tmp_path / "c" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (10 * i, 50, 90)).save(tmp_path / "c" / label / f"{i}.jpg")
    (tmp_path / "c" / "Bread" / "loop").symlink_to(tmp_path / "c")
    with pytest.raises(CatalogueError, match="reached another way"):
        load_catalogue(tmp_path / "c")
    (tmp_path / "c" / "Bread" / "loop").unlink()
    (tmp_path / "c" / "manifest.csv").write_text(
        f"path,label,split\nMilk/0.jpg,Milk,train\nMilk/1.jpg,Milk,train\nBread/0.jpg,Bread,train\n"
        f"Bread/1.jpg,Bread,train\n{tmp_path / 'c' / 'Milk' / '0.jpg'},Bread,val\n", encoding="utf-8")
    (tmp_path / "link").symlink_to(tmp_path / "c")
    with pytest.raises(CatalogueError, match="reached another way"):
        load_catalogue(tmp_path / "link")


def test_a_filled_in_suggest_labels_manifest_reads_without_column_warnings(root: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    lines = [f"{line},train,{i},Milk,0.4,0.1" for i, line in enumerate(_plain())]
    with caplog.at_level(logging.WARNING):
        load_catalogue(_csv(root, "path,label,split,rank,guess,confidence,margin", lines))
    assert "not read" not in caplog.text  # skulens' own columns for the person labelling
