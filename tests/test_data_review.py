"""Reviewed defects in data/ and recommend/: elongated images, split-folder case, classes without a train photo,
grocery duplicates and BOMs, non-UTF-8 files, recommendation content without product sheets, unknown products
at the CLI, millisecond timestamps, recency underflow, the augment-none view and the synthetic log's dates."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.cli import main
from skulens.data.catalogue import CatalogueError, class_products, load_catalogue
from skulens.data.decode import ImageDecodeError, decode_image
from skulens.recommend.recommenders import HybridRecommender, PopularityRecommender, item_vectors
from skulens.recommend.shopping_log import (
    Event,
    ShoppingLogError,
    generate_shopping_log,
    read_events,
    write_events,
)

CLASSES_HEADER = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int)"


def _image(path: Path, size: tuple[int, int] = (4, 4), colour: tuple[int, int, int] = (10, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "PNG" if path.suffix == ".png" else "JPEG")
    return path


def _folders(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        for i in range(count):
            _image(root / label / f"{label}_{i}.jpg")
    return root


def _grocery(root: Path, train: str, classes: str = f"{CLASSES_HEADER}\nx,0,X,0\ny,1,Y,1\n") -> Path:
    _image(root / "img" / "a.jpg")
    _image(root / "img" / "b.jpg")
    _image(root / "img" / "c.jpg")
    (root / "classes.csv").write_text(classes, encoding="utf-8")
    (root / "train.txt").write_text(train, encoding="utf-8")
    return root


# --- 1: extreme aspect ratios --------------------------------------------------------------------


def test_decode_refuses_an_extreme_aspect_ratio_before_decoding(tmp_path: Path) -> None:
    strip = _image(tmp_path / "strip.png", (100_000, 1))
    assert strip.stat().st_size < 1000  # a few hundred bytes, 0.1 MP: under the pixel guard
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"extreme aspect ratio \(100000 x 1, more than 25:1\)") as info:
        decode_image(strip)
    assert time.perf_counter() - start < 2.0
    assert info.value.source == str(strip)
    assert decode_image(_image(tmp_path / "photo.jpg", (4000, 3000))).size == (4000, 3000)
    assert decode_image(_image(tmp_path / "shelf.png", (1000, 100))).size == (1000, 100)
    assert decode_image(_image(tmp_path / "edge.png", (2500, 100))).size == (2500, 100)  # 25:1 exactly


# --- 2: split folders in capitals ----------------------------------------------------------------


def test_split_folders_in_any_case_are_splits_not_classes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _folders(root / "Training", {"apple": 2, "pear": 2})
    _folders(root / "Test", {"apple": 1, "pear": 1})
    _folders(root / "VALIDATION", {"apple": 1, "pear": 1})
    cat = load_catalogue(root)
    assert cat.classes == ["apple", "pear"]
    assert list(cat.splits) == ["train", "val", "test"] and not cat.val_was_generated
    assert all(s.path.parent.parent.name == "Test" for s in cat.split("test"))
    assert all(s.path.parent.parent.name == "Training" for s in cat.split("train"))
    assert len(cat.split("train")) == 4


def test_two_spellings_of_one_split_folder_are_refused(tmp_path: Path) -> None:
    _folders(tmp_path / "ds" / "Train", {"a": 1})
    _folders(tmp_path / "ds" / "training", {"a": 1})
    with pytest.raises(CatalogueError, match="are both the train split"):
        load_catalogue(tmp_path / "ds")


# --- 4: a class with no training photo -------------------------------------------------------------


def test_a_class_only_val_has_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _folders(root / "train", {"apple": 2, "pear": 2})
    _folders(root / "val", {"apple": 1, "banana": 1})
    with pytest.raises(CatalogueError, match=r"1 class\(es\) with no training photo .*: banana \(val\)") as info:
        load_catalogue(root)
    assert str(root) in str(info.value)


def test_a_manifest_label_only_test_has_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _image(tmp_path / f"{name}.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\na.jpg,apple,train\nb.jpg,apple,val\nc.jpg,pear,test\n")
    with pytest.raises(CatalogueError, match=r"m\.csv: 1 class\(es\) with no training photo .*: pear \(test\)"):
        load_catalogue(manifest)


def test_a_class_with_only_a_catalogue_photo_still_loads(tmp_path: Path) -> None:
    # Training adds catalogue photos (catalogue_images): such a class can be learnt.
    for name in ("a", "b", "c"):
        _image(tmp_path / f"{name}.jpg")
    _image(tmp_path / "iconic" / "pear.jpg")
    (tmp_path / "manifest.csv").write_text("path,label,split\na.jpg,apple,train\nb.jpg,apple,val\nc.jpg,pear,val\n")
    (tmp_path / "products.csv").write_text("label,image\npear,iconic/pear.jpg\n")
    cat = load_catalogue(tmp_path)
    assert cat.classes == ["apple", "pear"] and cat.products["pear"].image == tmp_path / "iconic" / "pear.jpg"
    # Grocery: a classes.csv class with an iconic photo and no train line loads; one without either does not.
    root = tmp_path / "gs"
    _image(root / "iconic" / "y.jpg")
    classes = f"{CLASSES_HEADER},Iconic Image Path (str)\nx,0,X,0,\ny,1,Y,1,/iconic/y.jpg\n"
    assert load_catalogue(_grocery(root, "img/a.jpg, 0\nimg/b.jpg, 0\n", classes)).classes == ["x", "y"]
    (root / "classes.csv").write_text(f"{CLASSES_HEADER},Iconic Image Path (str)\nx,0,X,0,\ny,1,Y,1,\n")
    with pytest.raises(CatalogueError, match=r"with no training photo .*: y \(no photos\)"):
        load_catalogue(root)


# --- 5 and 12: grocery split files ---------------------------------------------------------------


def test_grocery_photo_listed_twice_across_split_files_is_refused(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs", "img/a.jpg, 0\nimg/b.jpg, 1\n")
    (root / "test.txt").write_text("img/c.jpg, 1\n./img/a.jpg, 0\n")
    with pytest.raises(CatalogueError, match=r"test\.txt: line 2: './img/a.jpg' is listed already "
                                             r"\(train\.txt line 1\)"):
        load_catalogue(root)


def test_grocery_photo_listed_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs", "img/a.jpg, 0\nimg/b.jpg, 1\nimg/a.jpg, 1\n")
    with pytest.raises(CatalogueError, match=r"train\.txt: line 3: 'img/a.jpg' is listed already "
                                             r"\(train\.txt line 1\)"):
        load_catalogue(root)


def test_grocery_split_file_with_a_bom_and_classes_csv_with_blank_lines_load(tmp_path: Path) -> None:
    root = _grocery(tmp_path / "gs", "", classes=f"{CLASSES_HEADER}\nx,0,X,0\n\n,,,\ny,1,Y,1\n\n")
    (root / "train.txt").write_bytes("\ufeffimg/a.jpg, 0\r\nimg/b.jpg, 1\r\n".encode())
    cat = load_catalogue(root, val_fraction=0)
    assert cat.classes == ["x", "y"]
    assert [(s.path.name, s.label) for s in cat.split("train")] == [("a.jpg", "x"), ("b.jpg", "y")]


# --- 6: files that are not UTF-8 -----------------------------------------------------------------


def _cp1252(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("cp1252"))
    return path


def _position(path: Path) -> int:
    return path.read_bytes().index(b"\xe8")


@pytest.mark.parametrize("kind", ["manifest.csv", "manifest.jsonl", "classes.csv", "train.txt", "products.csv",
                                  "attributes.csv"])
def test_catalogue_files_that_are_not_utf8_are_named(tmp_path: Path, kind: str) -> None:
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    attributes = None
    if kind in ("classes.csv", "train.txt"):
        root = _grocery(tmp_path / "gs", "img/a.jpg, 0\nimg/b.jpg, 1\n")
        bad = (_cp1252(root / "classes.csv", f"{CLASSES_HEADER}\nx,0,X,0\ncaf\u00e8,1,Y,1\n") if kind == "classes.csv"
               else _cp1252(root / "train.txt", "img/a.jpg, 0\nimg/b.jpg, 1\nimg/\u00e8.jpg, 1\n"))
        source = root
    elif kind == "manifest.jsonl":
        bad = source = _cp1252(tmp_path / "m.jsonl",
                                '{"path": "a.jpg", "label": "x"}\n{"path": "b.jpg", "label": "caf\u00e8"}\n')
    elif kind == "manifest.csv":
        bad = source = _cp1252(tmp_path / "manifest.csv", "path,label\na.jpg,x\nb.jpg,caf\u00e8\n")
    else:
        (tmp_path / "manifest.csv").write_text("path,label\na.jpg,x\nb.jpg,y\n")
        source = tmp_path
        if kind == "products.csv":
            bad = _cp1252(tmp_path / "products.csv", "label,title\nx,Caf\u00e8 latte\n")
        else:
            bad = attributes = _cp1252(tmp_path / "attrs.csv", "label,colour\nx,cr\u00e8me\n")
    with pytest.raises(CatalogueError) as info:
        load_catalogue(source, attributes_file=attributes)
    position = _position(bad)
    line = bad.read_bytes()[:position].count(b"\n") + 1
    assert line > 1
    assert str(info.value) == f"{bad}: not UTF-8 (byte 0xe8 at position {position}, line {line}); save it as UTF-8"


def test_a_catalogue_that_is_not_utf8_is_one_line_exit_2_at_the_cli(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    _image(tmp_path / "a.jpg")
    _cp1252(tmp_path / "manifest.csv", "path,label\na.jpg,caf\u00e8\n")
    assert main(["recommend", "generate", "--data", str(tmp_path), "--out", str(tmp_path / "log.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.csv: not UTF-8 (byte 0xe8 at position 20, line 2)" in err[0]


def test_behaviour_log_that_is_not_utf8_is_named_with_a_file_position(tmp_path: Path) -> None:
    # Past the reader's first buffer: the position is in the file, not in a chunk.
    rows = "".join(f"u{i},apple,view,{1704067200 + i}\n" for i in range(3000))
    log = _cp1252(tmp_path / "log.csv", f"user_id,product_id,event,timestamp\n{rows}u1,cr\u00e8me,view,1\n")
    position = _position(log)
    assert position > 65536
    with pytest.raises(ShoppingLogError) as info:
        read_events(log)
    assert str(info.value) == f"{log}: not UTF-8 (byte 0xe8 at position {position}, line 3002); save it as UTF-8"
    header = _cp1252(tmp_path / "head.csv", "user_id,product_id,event,timestamp,caf\u00e8\nu,p,view,1\n")
    with pytest.raises(ShoppingLogError, match=r"head\.csv: not UTF-8 \(byte 0xe8 at position 38, line 1\)"):
        read_events(header)


# --- 7 and 8: the recommend CLI on catalogues without product sheets, and unknown products --------------


def _log(path: Path, products: list[str], users: int = 12) -> Path:
    """Each user buys two of the products, a different pair by user."""
    events = [Event(f"u{u}", products[(u + j) % len(products)], "purchase", 1704067200.0 + 10 * j)
              for u in range(users) for j in range(2)]
    return write_events(path, events)


def test_recommend_content_and_evaluate_work_on_a_folder_catalogue_without_products(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _folders(tmp_path / "ds", {"red-apple": 2, "oat-milk": 2, "rye-bread": 2})
    assert load_catalogue(root).products == {}
    log = _log(tmp_path / "log.csv", ["oat-milk", "red-apple", "rye-bread"])
    capsys.readouterr()
    assert main(["recommend", "for", "--events", str(log), "--data", str(root), "--kind", "content",
                 "--user", "u0", "-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["user_id"] == "u0" and [r["product_id"] for r in out["recommendations"]] == ["rye-bread"]
    assert main(["recommend", "for", "--events", str(log), "--data", str(root), "--kind", "content",
                 "--user", "newcomer", "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["recommendations"]) == 3
    assert main(["recommend", "evaluate", "--events", str(log), "--data", str(root)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["recommender"] for r in rows] == ["popularity", "content", "hybrid"]
    assert all(r["users"] == 12 and 0 <= r["ndcg"] <= r["hit_rate"] <= 1 for r in rows)
    # The content: one product per class, titled by its label; a unit vector each.
    cat = load_catalogue(root)
    assert {label: p.title for label, p in class_products(cat).items()} == {
        "oat-milk": "oat milk", "red-apple": "red apple", "rye-bread": "rye bread"}
    vectors = item_vectors(cat)
    assert sorted(vectors) == ["oat-milk", "red-apple", "rye-bread"]
    from skulens.recommend.recommenders import fit_recommender
    from skulens.recommend.shopping_log import read_events

    by_catalogue = fit_recommender(read_events(log), cat, kind="content")  # a Catalogue, as item_vectors takes
    assert by_catalogue.items == ["oat-milk", "red-apple", "rye-bread"]
    assert [r.product_id for r in by_catalogue.recommend("u0", 3)] == ["rye-bread"]
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-5 for v in vectors.values())


def test_recommend_never_recommends_a_log_product_that_no_catalogue_has(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """The service leaves such events out (GET /v1/products/{id} would not know the product); the CLI, said to build
    the same recommender, recommended "durian" from the log alone."""
    root = _folders(tmp_path / "ds", {"red-apple": 2, "oat-milk": 2, "rye-bread": 2})
    log = _log(tmp_path / "log.csv", ["durian", "oat-milk", "durian", "red-apple"])
    capsys.readouterr()
    for kind in ("popularity", "content"):
        assert main(["recommend", "for", "--events", str(log), "--data", str(root), "--kind", kind,
                     "--user", "newcomer", "-k", "5"]) == 0
        captured = capsys.readouterr()
        recs = [r["product_id"] for r in json.loads(captured.out)["recommendations"]]
        assert recs and "durian" not in recs, kind
        assert "left out 12 event(s) of 1 product(s)" in captured.err and "'durian'" in captured.err
    # evaluate too: its scores counted durian among the products (coverage over 4, not 3), unsaid
    longer = _log(tmp_path / "long.csv", ["durian", "oat-milk", "red-apple", "rye-bread"])
    assert main(["recommend", "evaluate", "--events", str(longer), "--data", str(root)]) == 0
    captured = capsys.readouterr()
    assert "left out 6 event(s) of 1 product(s)" in captured.err and "'durian'" in captured.err
    assert main(["recommend", "for", "--events", str(log), "--data", str(root), "--kind", "popularity",
                 "--similar", "durian"]) == 2  # in the log, left out: said so, not "no such product in the log"
    assert "in the behaviour log, but neither the catalogue nor the model has it" in capsys.readouterr().err
    # the model's classes are products too, read from its card (a folder, its card.json, an .onnx beside it)
    # before any check, and without torch: `--kind popularity` never loads it
    from conftest import modules_loaded_by

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "card.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "classes": ["durian", "kiwi"],
                                                  "input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
                                                  "crop_pct": 1.0, "embedding_dim": 1280}))
    (bundle / "model.onnx").write_bytes(b"")
    for model in (bundle, bundle / "card.json", bundle / "model.onnx"):
        assert main(["recommend", "for", "--events", str(log), "--data", str(root), "--kind", "popularity",
                     "--model", str(model), "--user", "newcomer", "-k", "9"]) == 0, model
        captured = capsys.readouterr()
        assert "durian" in {r["product_id"] for r in json.loads(captured.out)["recommendations"]}
        assert "left out" not in captured.err
    assert modules_loaded_by([["recommend", "for", "--events", str(log), "--data", str(root), "--kind", "popularity",
                               "--model", str(bundle), "--similar", "mangoo"]], ["torch"]) == []
    only = _log(tmp_path / "only.csv", ["durian", "mango"])
    assert main(["recommend", "for", "--events", str(only), "--data", str(root), "--kind", "content",
                 "--user", "u0"]) == 2
    assert "none of its products is in the catalogue or the model" in capsys.readouterr().err


def test_recommend_similar_to_an_unknown_product_is_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = _log(tmp_path / "log.csv", ["apple", "pear"])
    capsys.readouterr()
    assert main(["recommend", "for", "--events", str(log), "--kind", "popularity", "--similar", "NOPE"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err == ["skulens recommend: --similar 'NOPE': no such product in the behaviour log or the catalogue"]
    assert "Traceback" not in captured.err and captured.out == ""
    # checked before any answer is printed: the user's line came out first, then the error
    assert main(["recommend", "for", "--events", str(log), "--kind", "popularity", "--user", "u1",
                 "--similar", "appel"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "did you mean apple?" in captured.err


# --- 9: millisecond timestamps -------------------------------------------------------------------


def test_millisecond_timestamps_are_refused_on_read(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,product_id,event,timestamp\nu1,apple,view,1704067200\nu1,pear,view,1704067200000\n")
    with pytest.raises(ShoppingLogError, match=r"log\.csv: line 3: timestamp '1704067200000' is out of range "
                                               r"\(unix seconds, years 1 to 9999; unix milliseconds\? divide by 1000\)"):
        read_events(log)
    log.write_text("user_id,product_id,event,timestamp\nu1,apple,view,-1e12\n")
    with pytest.raises(ShoppingLogError, match="line 2: timestamp '-1e12' is out of range"):
        read_events(log)
    log.write_text("user_id,product_id,event,timestamp\nu1,apple,view,253402300799\nu1,pear,view,0\n")
    events = read_events(log)  # the last second of 9999 and the epoch are fine, and written back
    assert read_events(write_events(tmp_path / "back.csv", events)) == events


# --- 10: recency decay underflow -----------------------------------------------------------------


def _long_history_log() -> list[Event]:
    events = [Event("u1", "apple", "purchase", 0.0)]
    events += [Event("u1", f"p{j % 100}", "view", float(1 + j)) for j in range(11_000)]
    events += [Event(f"u{u}", "apple", "purchase", 5.0) for u in range(2, 40)]  # apple is the best-seller
    return events


def test_a_purchase_long_ago_stays_excluded_after_many_later_events() -> None:
    events = _long_history_log()
    for rec in (PopularityRecommender(), HybridRecommender(alpha=0.0, beta=0.1)):
        rec.fit(events)
        assert "apple" not in [r.product_id for r in rec.recommend("u1", k=11)], rec.name
        apple = rec._index["apple"]
        assert rec._history[rec._users["u1"], apple] > 0  # faded, not gone
        order, scores = rec._rank(rec._rows(["u1"]), 11, rec._rows(["u1"]))  # evaluate's path
        assert apple not in order[0][np.isfinite(scores[0])]
    assert PopularityRecommender().fit(events).recommend("u1", k=1, exclude_seen=False)[0].product_id == "apple"


# --- 11: augment none at a train size other than the input size ---------------------------------------------


@dataclass(frozen=True)
class _Spec:
    input_size: int = 64
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop_pct: float = 0.875


def test_augment_none_frames_train_size_like_eval_without_a_black_border() -> None:
    import torch

    from skulens.data.transforms import create_transform

    white = torch.full((3, 80, 120), 255, dtype=torch.uint8)
    out = create_transform(_Spec(), train=True, augment="none", train_size=96)(white)
    assert tuple(out.shape) == (3, 96, 96)
    assert float(out.min()) > 0.99  # no padding
    # The same framing as eval: a centred disc covers the same share of the crop at both sizes.
    yy, xx = torch.meshgrid(torch.arange(160), torch.arange(160), indexing="ij")
    disc = (((yy - 80) ** 2 + (xx - 80) ** 2) < 50**2).to(torch.uint8).mul(255).expand(3, -1, -1).contiguous()
    share_eval = float(create_transform(_Spec())(disc).gt(0.5).float().mean())
    share_train = float(create_transform(_Spec(), train=True, augment="none", train_size=96)(disc).gt(0.5).float().mean())
    assert abs(share_eval - share_train) < 0.02
    assert tuple(create_transform(_Spec())(white).shape) == (3, 64, 64)


def test_eval_transform_bounds_the_long_side_of_an_elongated_image() -> None:
    import torch
    from torchvision.transforms import v2

    from skulens.data.transforms import create_transform

    transform = create_transform(_Spec())
    resize = transform.transforms[0]
    assert isinstance(resize, v2.Resize) and resize.size == [73] and resize.max_size == 73 * 25
    strip = torch.full((3, 10, 4000), 255, dtype=torch.uint8)  # a caller's PIL image skips decode's guard
    assert tuple(v2.Compose(transform.transforms[:1])(strip).shape) == (3, 4, 1825)  # not 73 x 29200
    assert tuple(transform(strip).shape) == (3, 64, 64)


# --- the synthetic log's dates -------------------------------------------------------------------


def test_synthetic_log_starts_in_2024() -> None:
    events = generate_shopping_log([("a", "x"), ("b", "x"), ("c", "y")], n_users=20, seed=0, days=30)
    stamps = np.array([e.timestamp for e in events])
    assert stamps.min() >= 1704067200.0  # 2024-01-01T00:00:00Z
    assert stamps.max() < 1704067200.0 + 31 * 86400 + 3600
    assert np.all(stamps == np.round(stamps))
