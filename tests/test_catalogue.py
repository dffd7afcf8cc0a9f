"""Tests for skulens.data.catalogue: the three layouts, every validation rule, splits and fingerprints."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from skulens.data.catalogue import Catalogue, CatalogueError, Product, Sample, load_catalogue

GROCERY_HEADER = (
    "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    "Iconic Image Path (str),Product Description Path (str)"
)


def _image(path: Path, colour: tuple[int, int, int] = (10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "JPEG")
    Image.new("RGB", (4, 4), colour).save(path, fmt)
    return path


def _folders(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        for i in range(count):
            _image(root / label / f"{label}_{i:03d}.jpg")
    return root


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _grocery(root: Path) -> Path:
    """A three-class Grocery-Store look-alike whose id order differs from alphabetical order."""
    classes = [("Zucchini", 0, "Vegetable", 1), ("Granny-Smith", 1, "Apple", 0), ("Banana", 2, "Fruit", 2)]
    rows = [GROCERY_HEADER]
    for name, class_id, coarse, coarse_id in classes:
        base = f"iconic/{coarse}/{name}/{name}"
        _image(root / f"{base}_Iconic.jpg")
        if name != "Banana":  # Banana's description is missing on purpose
            (root / f"{base}_Description.txt").write_text(f"About {name}.\n", encoding="utf-8")
        rows.append(f"{name},{class_id},{coarse},{coarse_id},/{base}_Iconic.jpg,/{base}_Description.txt")
    _csv(root / "classes.csv", rows)
    train, val = [], []
    for name, class_id, coarse, coarse_id in classes:
        for i in range(3):
            rel = f"train/{coarse}/{name}/{name}_{i:03d}.jpg"
            _image(root / rel)
            train.append(f"{rel}, {class_id}, {coarse_id}")
        rel = f"val/{coarse}/{name}/{name}_000.jpg"
        _image(root / rel)
        val.append(f"{rel}, {class_id}, {coarse_id}")
    _csv(root / "train.txt", train)
    _csv(root / "val.txt", val)
    return root


def _paths(samples: list[Sample]) -> list[Path]:
    return [s.path for s in samples]


# --- folders -------------------------------------------------------------------------------------


def test_flat_folders_generate_a_val_split(tmp_path: Path) -> None:
    root = _folders(tmp_path / "ds", {"b": 10, "a": 4})
    cat = load_catalogue(root, val_fraction=0.2)
    assert cat.layout == "folders" and cat.root == root
    assert cat.classes == ["a", "b"]
    assert cat.val_was_generated is True
    assert sorted(s.label for s in cat.split("val")) == ["a", "b", "b"]
    assert len(cat.split("train")) == 11
    assert cat.coarse_classes == [] and cat.hierarchy == {} and cat.attributes == [] and cat.products == {}
    assert all(s.path.is_absolute() and s.path.is_file() for s in cat.split("train"))


def test_folder_extensions_are_case_insensitive_and_litter_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "cat" / "one.JPG")
    _image(root / "cat" / "sub" / "two.png")
    _image(root / "cat" / "three.WebP")
    (root / "cat" / "notes.txt").write_text("not an image")
    _image(root / "cat" / ".hidden" / "four.jpg")
    _image(root / ".ipynb_checkpoints" / "x" / "five.jpg")
    cat = load_catalogue(root, val_fraction=0)
    assert [p.name for p in _paths(cat.split("train"))] == ["one.JPG", "two.png", "three.WebP"]
    assert cat.classes == ["cat"] and "val" not in cat.splits and not cat.val_was_generated


def test_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _folders(root / "train", {"a": 2, "b": 1, "c": 1})  # every class has a train photo (else refused)
    _folders(root / "val", {"a": 1, "b": 1})
    _folders(root / "test", {"a": 1, "c": 1})
    cat = load_catalogue(root)
    assert list(cat.splits) == ["train", "val", "test"]
    assert [len(cat.split(name)) for name in ("train", "val", "test")] == [4, 2, 2]
    assert cat.classes == ["a", "b", "c"] and not cat.val_was_generated


def test_empty_class_folder(tmp_path: Path) -> None:
    root = _folders(tmp_path / "ds", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("nothing here")
    with pytest.raises(CatalogueError, match=r"empty class 'b'") as info:
        load_catalogue(root)
    assert str(root / "b") in str(info.value)


def test_val_folder_without_train(tmp_path: Path) -> None:
    _folders(tmp_path / "ds" / "val", {"a": 1})
    with pytest.raises(CatalogueError, match="no train/"):
        load_catalogue(tmp_path / "ds")


def test_split_folders_mixed_with_class_folders(tmp_path: Path) -> None:
    _folders(tmp_path / "ds" / "train", {"a": 1})
    _folders(tmp_path / "ds", {"stray": 1})
    with pytest.raises(CatalogueError, match="stray"):
        load_catalogue(tmp_path / "ds")


def test_no_class_folders_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(CatalogueError, match="no class folders"):
        load_catalogue(tmp_path / "ds")
    with pytest.raises(CatalogueError, match="not found"):
        load_catalogue(tmp_path / "nowhere")


def test_broken_symlink_counts_as_missing(tmp_path: Path) -> None:
    root = _folders(tmp_path / "ds", {"a": 2})
    (root / "a" / "ghost.jpg").symlink_to(tmp_path / "does-not-exist.jpg")
    with pytest.raises(CatalogueError, match=r"1 image file\(s\) missing: .*ghost\.jpg"):
        load_catalogue(root)


@pytest.mark.parametrize(("folder", "split"), [("validation", "val"), ("valid", "val"), ("testing", "test")])
def test_split_folder_aliases(tmp_path: Path, folder: str, split: str) -> None:
    root = tmp_path / "ds"
    _folders(root / "training", {"a": 2, "b": 2})
    _folders(root / folder, {"a": 1, "b": 1})
    cat = load_catalogue(root, val_fraction=0)
    assert list(cat.splits) == ["train", split]
    assert [len(cat.split(name)) for name in ("train", split)] == [4, 2]


def test_keras_layout_train_and_validation(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _folders(root / "train", {"a": 3})
    _folders(root / "validation", {"a": 1})
    cat = load_catalogue(root)
    assert [len(cat.split(name)) for name in ("train", "val")] == [3, 1] and not cat.val_was_generated


def test_two_folders_for_one_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for name in ("train", "val", "validation"):
        _folders(root / name, {"a": 1})
    with pytest.raises(CatalogueError, match=r"val/ and validation/ are both the val split"):
        load_catalogue(root)


def test_validation_folder_without_train(tmp_path: Path) -> None:
    _folders(tmp_path / "ds" / "validation", {"a": 1})
    with pytest.raises(CatalogueError, match="has validation split folders but no train/"):
        load_catalogue(tmp_path / "ds")


# --- folders: symlinks into a data store ---------------------------------------------------------


def test_symlinked_split_folder(tmp_path: Path) -> None:
    store = _folders(tmp_path / "store" / "val", {"a": 1, "b": 1})
    root = tmp_path / "ds"
    _folders(root / "train", {"a": 2, "b": 2})
    (root / "val").symlink_to(store, target_is_directory=True)
    cat = load_catalogue(root)
    assert len(cat.split("val")) == 2 and not cat.val_was_generated
    assert all(s.path.is_relative_to(root / "val") for s in cat.split("val"))
    copy = tmp_path / "copy"
    _folders(copy / "train", {"a": 2, "b": 2})
    _folders(copy / "val", {"a": 1, "b": 1})
    assert cat.fingerprint() == load_catalogue(copy).fingerprint()


def test_symlinked_class_folder(tmp_path: Path) -> None:
    store = _folders(tmp_path / "store", {"b": 3})
    root = _folders(tmp_path / "ds", {"a": 2})
    (root / "b").symlink_to(store / "b", target_is_directory=True)
    cat = load_catalogue(root, val_fraction=0)
    assert cat.classes == ["a", "b"]
    linked = [p.name for p in _paths(cat.split("train")) if p.parent.name == "b"]
    assert linked == ["b_000.jpg", "b_001.jpg", "b_002.jpg"]


def test_symlinked_image_file(tmp_path: Path) -> None:
    outside = _image(tmp_path / "store" / "photo.jpg")
    root = _folders(tmp_path / "ds", {"a": 1})
    (root / "a" / "linked.jpg").symlink_to(outside)
    cat = load_catalogue(root, val_fraction=0)
    assert root / "a" / "linked.jpg" in _paths(cat.split("train"))


def test_symlinked_sub_folder_is_walked_and_a_cycle_is_not(tmp_path: Path) -> None:
    store = _folders(tmp_path / "store", {"shoot": 2})
    root = _folders(tmp_path / "ds", {"a": 1})
    (root / "a" / "shoot").symlink_to(store / "shoot", target_is_directory=True)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    cat = load_catalogue(root, val_fraction=0)
    names = sorted(p.name for p in _paths(cat.split("train")))
    assert names == ["a_000.jpg", "shoot_000.jpg", "shoot_001.jpg"]  # the loop back to a/ adds nothing


def test_broken_link_to_class_folder_is_named(tmp_path: Path) -> None:
    root = _folders(tmp_path / "ds", {"a": 2})
    (root / "b").symlink_to(tmp_path / "unmounted" / "b", target_is_directory=True)
    with pytest.raises(CatalogueError, match=r"broken link to .*unmounted/b \(is the data store") as info:
        load_catalogue(root)
    assert str(root / "b") in str(info.value)


# --- manifest ------------------------------------------------------------------------------------


def _manifest_dataset(root: Path) -> Path:
    for name in ("a1", "a2", "b1", "b2", "v1"):
        _image(root / "img" / f"{name}.jpg")
    return _csv(
        root / "manifest.csv",
        [
            "path,label,split,coarse_label,attributes,title,text",
            "img/a1.jpg,apple,train,fruit,green;organic,Granny Smith 1kg,crisp",
            "img/a2.jpg, apple ,TRAIN,fruit,organic,,",
            f"{root / 'img' / 'b1.jpg'},bean,train,veg,,Beans,",
            "img/b2.jpg,bean,,,,,",
            "img/v1.jpg,apple,validation,fruit,,,",
        ],
    )


def test_csv_manifest(tmp_path: Path) -> None:
    manifest = _manifest_dataset(tmp_path / "ds")
    cat = load_catalogue(manifest)
    assert cat.layout == "manifest" and cat.root == manifest.parent
    assert list(cat.splits) == ["train", "val"] and not cat.val_was_generated
    assert len(cat.split("train")) == 4 and len(cat.split("val")) == 1
    first = cat.split("train")[0]
    assert first == Sample(
        path=manifest.parent / "img" / "a1.jpg",
        label="apple",
        coarse_label="fruit",
        attributes=("green", "organic"),
        text="Granny Smith 1kg\ncrisp",
    )
    assert cat.split("train")[1].label == "apple"  # whitespace stripped
    assert cat.split("train")[3].coarse_label == "veg"  # filled in from the hierarchy
    assert cat.classes == ["apple", "bean"] and cat.coarse_classes == ["fruit", "veg"]
    assert cat.hierarchy == {"apple": "fruit", "bean": "veg"}
    assert cat.attributes == ["green", "organic"]


@pytest.mark.parametrize(("cell", "split"), [("valid", "val"), ("Testing", "test"), ("training", "train")])
def test_manifest_split_aliases(tmp_path: Path, cell: str, split: str) -> None:
    root = tmp_path / "ds"
    _image(root / "a.jpg")
    _image(root / "b.jpg")
    cat = load_catalogue(_csv(root / "m.csv", ["path,label,split", "a.jpg,x,train", f"b.jpg,x,{cell}"]))
    assert cat.split(split)[-1].path == root / "b.jpg"


@pytest.mark.parametrize(("rows", "message"), [
    (["a.jpg,x,train", "b.jpg,x,vaild"], "row 3: unknown split 'vaild'"),
    (["a.jpg,x,train", "a.jpg,y,train"], "row 3: 'a.jpg' is listed already \\(row 2\\)"),
    (["a.jpg,x,train", "b.jpg,x,train", "b.jpg,x,val"], "row 4: 'b.jpg' is listed already"),  # a train/val leak
])
def test_manifest_typos_and_repeated_photos_are_errors(tmp_path: Path, rows: list[str], message: str) -> None:
    root = tmp_path / "ds"
    _image(root / "a.jpg")
    _image(root / "b.jpg")
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(_csv(root / "m.csv", ["path,label,split", *rows]))


def test_manifest_folder_and_jsonl(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "x.png")
    _image(root / "y.png")
    lines = [
        {"path": "x.png", "label": "cup", "attributes": ["red", "big"]},
        {"path": "y.png", "label": "cup", "split": "test", "text": "a mug"},
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n", encoding="utf-8")
    cat = load_catalogue(root, val_fraction=0.5)
    assert cat.layout == "manifest"
    assert cat.split("train")[0].attributes == ("big", "red")
    assert cat.split("test")[0].text == "a mug"
    assert cat.split("val") == []  # one train image per class: nothing to hold out
    assert cat.val_was_generated


def test_folder_with_two_manifests(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _manifest_dataset(root)
    (root / "manifest.jsonl").write_text("")
    with pytest.raises(CatalogueError, match="both manifest.csv and manifest.jsonl"):
        load_catalogue(root)


def test_manifest_missing_file_names_row_and_path(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "ok.jpg")
    manifest = _csv(root / "m.csv", ["path,label", "ok.jpg,a", "gone.jpg,a"])
    with pytest.raises(CatalogueError) as info:
        load_catalogue(manifest)
    message = str(info.value)
    assert str(manifest) in message and "row 3" in message and str(root / "gone.jpg") in message


def test_many_missing_files_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    manifest = _csv(root / "m.csv", ["path,label"] + [f"gone{i}.jpg,a" for i in range(7)])
    with pytest.raises(CatalogueError, match=r"7 image file\(s\) missing") as info:
        load_catalogue(manifest)
    assert "gone4.jpg" in str(info.value) and "gone5.jpg" not in str(info.value)
    assert "and 2 more" in str(info.value)


def test_manifest_missing_label_names_row(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "a.jpg")
    manifest = _csv(root / "m.csv", ["path,label", "a.jpg,x", "a.jpg,"])
    with pytest.raises(CatalogueError, match=r"row 3: missing label"):
        load_catalogue(manifest)


def test_manifest_missing_column_and_bad_json(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(CatalogueError, match="missing required column"):
        load_catalogue(_csv(root / "m.csv", ["file,label", "a.jpg,x"]))
    with pytest.raises(CatalogueError, match="line 2: invalid JSON"):
        load_catalogue(_csv(root / "m.jsonl", ['{"path": "a.jpg", "label": "x"}', "{oops"]))
    with pytest.raises(CatalogueError, match="not a manifest"):
        load_catalogue(_csv(root / "m.txt", ["path,label"]))


@pytest.mark.parametrize("raw", ["../outside.jpg", "../../etc/passwd", "img/../../outside.jpg", "ABSOLUTE"])
def test_manifest_path_escaping_root(tmp_path: Path, raw: str) -> None:
    outside = _image(tmp_path / "outside.jpg")
    root = tmp_path / "ds"
    root.mkdir()
    raw = str(outside) if raw == "ABSOLUTE" else raw
    manifest = _csv(root / "m.csv", ["path,label", f"{raw},a"])
    with pytest.raises(CatalogueError, match="escapes dataset root") as info:
        load_catalogue(manifest)
    assert "row 2" in str(info.value)


def test_manifest_symlink_made_by_the_catalogue_owner_is_followed(tmp_path: Path) -> None:
    # Issue 9: a link under the root points into a data store elsewhere; the owner made it, so it is
    # followed. What a manifest line may not do is name a path outside the root itself (next test).
    outside = _image(tmp_path / "store" / "real.jpg")
    root = tmp_path / "ds"
    root.mkdir()
    (root / "link.jpg").symlink_to(outside)
    cat = load_catalogue(_csv(root / "m.csv", ["path,label", "link.jpg,a"]), val_fraction=0)
    assert cat.split("train")[0].path == root / "link.jpg"


def test_manifest_path_string_out_of_root_is_refused(tmp_path: Path) -> None:
    _image(tmp_path / "secret.jpg")
    root = tmp_path / "ds"
    root.mkdir()
    for raw in ("../secret.jpg", str(tmp_path / "secret.jpg"), "sub/../../secret.jpg"):
        with pytest.raises(CatalogueError, match="escapes dataset root"):
            load_catalogue(_csv(root / "m.csv", ["path,label", f"{raw},a"]))


def test_manifest_split_folder_linked_into_a_data_store_loads(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for label in ("a", "b"):
        for i in range(2):
            _image(store / label / f"{i}.jpg")
    root = tmp_path / "ds"
    root.mkdir()
    (root / "train").symlink_to(store, target_is_directory=True)
    rows = ["path,label"] + [f"train/{lab}/{i}.jpg,{lab}" for lab in ("a", "b") for i in range(2)]
    cat = load_catalogue(_csv(root / "m.csv", rows), val_fraction=0.5)
    assert sorted(s.label for s in cat.split("train") + cat.split("val")) == ["a", "a", "b", "b"]


def test_manifest_symlink_inside_root_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    target = _image(root / "store" / "real.jpg")
    (root / "link.jpg").symlink_to(target)
    cat = load_catalogue(_csv(root / "m.csv", ["path,label", "link.jpg,a"]), val_fraction=0)
    assert cat.split("train")[0].path == root / "link.jpg"


def test_fine_label_with_two_coarse_labels(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "a.jpg")
    _image(root / "b.jpg")
    manifest = _csv(root / "m.csv", ["path,label,coarse_label", "a.jpg,x,one", "b.jpg,x,two"])
    with pytest.raises(CatalogueError, match=r"row 3: label 'x' has coarse label 'two', earlier 'one'"):
        load_catalogue(manifest)


def test_partial_hierarchy_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "a.jpg")
    _image(root / "b.jpg")
    manifest = _csv(root / "m.csv", ["path,label,coarse_label", "a.jpg,x,one", "b.jpg,y,"])
    with pytest.raises(CatalogueError, match="not for 1: y"):
        load_catalogue(manifest)


# --- grocery -------------------------------------------------------------------------------------


def test_grocery_layout(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    cat = load_catalogue(root, attributes_file=_csv(tmp_path / "none.csv", ["label,colour"]))
    assert cat.layout == "grocery"
    assert cat.classes == ["Zucchini", "Granny-Smith", "Banana"]  # class-id order
    assert cat.coarse_classes == ["Apple", "Vegetable", "Fruit"]  # coarse-id order
    assert cat.hierarchy == {"Zucchini": "Vegetable", "Granny-Smith": "Apple", "Banana": "Fruit"}
    assert [len(cat.split(s)) for s in ("train", "val")] == [9, 3] and not cat.val_was_generated
    sample = cat.split("train")[3]
    assert sample.label == "Granny-Smith" and sample.coarse_label == "Apple"
    assert sample.path == root / "train/Apple/Granny-Smith/Granny-Smith_000.jpg"
    assert cat.products["Granny-Smith"] == Product(
        label="Granny-Smith",
        coarse_label="Apple",
        title="Granny Smith",
        description="About Granny-Smith.",
        image=root / "iconic/Apple/Granny-Smith/Granny-Smith_Iconic.jpg",
    )
    assert cat.products["Banana"].description == ""  # missing description file is not an error


def test_the_bundled_grocery_attributes_go_only_to_grocery_stores_classes(tmp_path: Path) -> None:
    """A look-alike layout got Grocery Store's attributes by class name: its own Banana was yellow and loose."""
    root = _grocery(tmp_path / "gs")  # three of Grocery Store's own classes: the bundled table applies
    assert load_catalogue(root).products["Banana"].attributes
    rows = (root / "classes.csv").read_text().replace("Zucchini,", "Pear-Williams,").replace(
        "/Zucchini/Zucchini", "/Pear-Williams/Pear-Williams")
    (root / "classes.csv").write_text(rows)
    for name in ("train.txt", "val.txt"):
        (root / name).write_text((root / name).read_text().replace("Zucchini", "Pear-Williams"))
    for old in sorted(root.rglob("*Zucchini*"), key=lambda q: -len(q.parts)):
        old.rename(old.with_name(old.name.replace("Zucchini", "Pear-Williams")))
    cat = load_catalogue(root)
    assert cat.attributes == [] and not cat.products["Banana"].attributes


def test_grocery_product_files_missing_are_named_and_latin1_is_refused(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A typo in a sheet's path left the product without its text or photo, unsaid; a Latin-1 text was read
    with replacement characters ("P\ufffdron")."""
    root = _grocery(tmp_path / "gs")
    none = _csv(tmp_path / "none.csv", ["label,colour"])
    with caplog.at_level("WARNING"):
        load_catalogue(root, attributes_file=none)
    assert "class 'Banana': description file '/iconic/Fruit/Banana/Banana_Description.txt' not found" in caplog.text
    text = root / "iconic/Apple/Granny-Smith/Granny-Smith_Description.txt"
    text.write_bytes("P\u00e4ron fr\u00e5n Sverige".encode("latin-1"))
    with pytest.raises(CatalogueError, match="Granny-Smith_Description.txt: .*UTF-8"):
        load_catalogue(root, attributes_file=none)


def test_grocery_product_text_with_a_byte_order_mark_reads_without_it(tmp_path: Path) -> None:
    """One of Grocery Store's sheets starts with a UTF-8 byte-order mark: its text began with "\ufeff" (the
    service's /v1/products answered info "\ufeffTitle: ...")."""
    root = _grocery(tmp_path / "gs")
    text = root / "iconic/Apple/Granny-Smith/Granny-Smith_Description.txt"
    text.write_bytes(b"\xef\xbb\xbfTitle: Apple Granny Smith\n")
    cat = load_catalogue(root, attributes_file=_csv(tmp_path / "none.csv", ["label,colour"]))
    assert cat.products["Granny-Smith"].description == "Title: Apple Granny Smith"


def test_grocery_unknown_class_id_names_file_and_line(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    lines = (root / "val.txt").read_text().splitlines()
    lines[1] = lines[1].replace(", 1, 0", ", 7, 0")
    _csv(root / "val.txt", lines)
    with pytest.raises(CatalogueError, match=r"val\.txt: line 2: unknown class id 7"):
        load_catalogue(root)


def test_grocery_missing_image_and_escape(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    (root / "train/Apple/Granny-Smith/Granny-Smith_001.jpg").unlink()
    with pytest.raises(CatalogueError, match=r"train\.txt: 1 image file\(s\) missing: line 5: "):
        load_catalogue(root)
    _csv(root / "train.txt", ["../../etc/passwd, 0, 1"])
    with pytest.raises(CatalogueError, match="escapes dataset root"):
        load_catalogue(root)


def test_grocery_without_val_generates_one(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs")
    (root / "val.txt").unlink()
    cat = load_catalogue(root, val_fraction=0.3)
    assert cat.val_was_generated
    assert sorted(s.label for s in cat.split("val")) == ["Banana", "Granny-Smith", "Zucchini"]


def test_bundled_grocery_attributes(tmp_path: Path) -> None:
    bundled = importlib.resources.files("skulens.data") / "assets" / "grocery_attributes.csv"
    if not bundled.is_file():
        pytest.skip("bundled grocery_attributes.csv not present")
    cat = load_catalogue(_grocery(tmp_path / "gs"))
    granny = next(s for s in cat.split("train") if s.label == "Granny-Smith")
    assert "colour=green" in granny.attributes
    assert set(granny.attributes) <= set(cat.attributes)


def test_attributes_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folders(tmp_path / "ds", {"apple": 2, "milk": 2, "bread": 2})
    table = _csv(
        tmp_path / "attrs.csv",
        [
            "label,colour,organic,lactose_free,packaging",
            "apple,green;yellow,yes,no,loose",
            "milk,white,no,YES,carton",
            "unicorn,pink,yes,yes,",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="skulens.data.catalogue"):
        cat = load_catalogue(root, attributes_file=table, val_fraction=0)
    by_label = {s.label: s.attributes for s in cat.split("train")}
    assert by_label["apple"] == ("colour=green", "colour=yellow", "organic", "packaging=loose")
    assert by_label["milk"] == ("colour=white", "lactose_free", "packaging=carton")
    assert by_label["bread"] == ()
    assert "unicorn" not in cat.classes and "colour=pink" not in cat.attributes
    assert cat.attributes == sorted(set(by_label["apple"]) | set(by_label["milk"]))
    assert "bread" in caplog.text


def test_attributes_file_must_exist_and_have_label_column(tmp_path: Path) -> None:
    root = _folders(tmp_path / "ds", {"a": 1})
    with pytest.raises(CatalogueError, match="cannot read attribute table"):
        load_catalogue(root, attributes_file=tmp_path / "nope.csv")
    with pytest.raises(CatalogueError, match="'label' column"):
        load_catalogue(root, attributes_file=_csv(tmp_path / "t.csv", ["name,colour", "a,red"]))


# --- generated split, catalogue API --------------------------------------------------------------


def test_generated_split_is_stratified_and_deterministic(tmp_path: Path) -> None:
    root = _folders(tmp_path / "ds", {"many": 10, "pair": 2, "single": 1})
    first = load_catalogue(root, val_fraction=0.2, seed=3)
    again = load_catalogue(root, val_fraction=0.2, seed=3)
    assert _paths(first.split("val")) == _paths(again.split("val"))
    assert sorted(s.label for s in first.split("val")) == ["many", "many", "pair"]
    assert {s.label for s in first.split("train")} == {"many", "pair", "single"}
    assert not set(_paths(first.split("val"))) & set(_paths(first.split("train")))
    by_seed = {tuple(_paths(load_catalogue(root, val_fraction=0.2, seed=s).split("val"))) for s in range(6)}
    assert len(by_seed) > 1


def test_missing_split_lists_available(tmp_path: Path) -> None:
    cat = load_catalogue(_folders(tmp_path / "ds", {"a": 3}))
    with pytest.raises(CatalogueError, match=r"no 'test' split \(available: train, val\)"):
        cat.split("test")


def test_bad_val_fraction(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="val_fraction"):
        load_catalogue(_folders(tmp_path / "ds", {"a": 3}), val_fraction=1.0)


def test_fingerprint_tracks_labels_and_content(tmp_path: Path) -> None:
    manifest = _manifest_dataset(tmp_path / "ds")
    base = load_catalogue(manifest).fingerprint()
    assert len(base) == 16 and int(base, 16) >= 0
    assert load_catalogue(manifest).fingerprint() == base
    manifest.write_text(manifest.read_text().replace("img/a2.jpg, apple ,", "img/a2.jpg,apricot,"))
    relabelled = load_catalogue(manifest).fingerprint()
    assert relabelled != base
    _image(manifest.parent / "img" / "b2.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(64))
    assert load_catalogue(manifest).fingerprint() != relabelled


def test_fingerprint_ignores_where_the_dataset_lives(tmp_path: Path) -> None:
    one = _folders(tmp_path / "one", {"a": 2, "b": 2})
    two = _folders(tmp_path / "two", {"a": 2, "b": 2})
    assert load_catalogue(one).fingerprint() == load_catalogue(two).fingerprint()


def test_summary(tmp_path: Path) -> None:
    cat = load_catalogue(_grocery(tmp_path / "gs"))
    line = cat.summary()
    assert "\n" not in line
    assert line.startswith("grocery catalogue at")
    assert "3 classes, 3 coarse; train=9, val=3" in line
    assert isinstance(cat, Catalogue)


# --- the real dataset ----------------------------------------------------------------------------


def _grocery_store() -> Path | None:
    candidate = Path(__file__).resolve().parents[1].parent / "shared/datasets/grocery-store"
    if candidate.is_dir():
        return candidate
    env = os.environ.get("SKULENS_DATA")
    return Path(env) if env and Path(env).is_dir() else None


@pytest.mark.dataset
def test_real_grocery_store_dataset() -> None:
    root = _grocery_store()
    if root is None:
        pytest.skip("grocery-store dataset not found (set SKULENS_DATA)")
    cat = load_catalogue(root)
    assert cat.layout == "grocery"
    assert len(cat.classes) == 81 and len(cat.coarse_classes) == 43
    assert len(cat.split("train")) == 2640 and len(cat.split("val")) == 296
    assert not cat.val_was_generated
    assert cat.hierarchy["Granny-Smith"] == "Apple"
    assert cat.classes[0] == "Golden-Delicious"
    oat_milk = cat.products["Oatly-Oat-Milk"]
    assert oat_milk.description and oat_milk.title == "Oatly Oat Milk"
    assert oat_milk.image is not None and oat_milk.image.is_file()


def test_stratified_folds_are_disjoint_cover_everything_and_spread_each_class() -> None:
    from collections import Counter

    from skulens.data.catalogue import stratified_folds

    sizes = {"apple": 12, "milk": 7, "leek": 3}  # leek has fewer photos than folds: it is in 3 of them
    samples = [Sample(Path(f"/c/{label}/{i:02d}.jpg"), label) for label, n in sizes.items() for i in range(n)]
    folds = stratified_folds(samples, 5, seed=1)
    assert len(folds) == 5
    flat = [s for fold in folds for s in fold]
    assert len(flat) == len(samples) and set(flat) == set(samples)  # disjoint and complete
    for label, n in sizes.items():
        per_fold = [Counter(s.label for s in fold)[label] for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n, (label, per_fold)
    # seeded, and independent of the listing order; another seed moves photos between folds
    assert stratified_folds(list(reversed(samples)), 5, seed=1) == folds
    assert stratified_folds(samples, 5, seed=2) != folds
    with pytest.raises(ValueError, match="2 <= k"):
        stratified_folds(samples, 1)


def test_a_manifest_row_with_more_or_fewer_cells_than_columns_is_refused(tmp_path: Path) -> None:
    """ "Red, Wine" unquoted was the label "Red"; a row without its split cell went to train: both silently."""
    from PIL import Image

    for rel in ("train/a.jpg", "train/b.jpg", "val/c.jpg", "val/d.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32)).save(tmp_path / rel)
    (tmp_path / "comma.csv").write_text("path,label\ntrain/a.jpg,Red, Wine\ntrain/b.jpg,green\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"row 2: 3 cell\(s\) for 2 columns \(path, label\); quote a cell"):
        load_catalogue(tmp_path / "comma.csv")
    (tmp_path / "short.csv").write_text("path,label,split\nval/c.jpg,red\ntrain/a.jpg,red,train\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"row 2: 2 cell\(s\) for 3 columns .*give every column a cell"):
        load_catalogue(tmp_path / "short.csv")
    (tmp_path / "ok.csv").write_text('path,label,split\ntrain/a.jpg,"Red, Wine",train,\ntrain/b.jpg,green,,\n'
                                     'val/c.jpg,"Red, Wine",val\nval/d.jpg,green,val\n', encoding="utf-8")
    cat = load_catalogue(tmp_path / "ok.csv")
    assert cat.classes == ["Red, Wine", "green"] and len(cat.split("val")) == 2  # trailing empty cells: fine


def test_a_jsonl_manifest_line_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")  # a traceback before
    with pytest.raises(CatalogueError, match=r"line 1: invalid JSON \(nested too deeply\)"):
        load_catalogue(tmp_path / "deep.jsonl")
