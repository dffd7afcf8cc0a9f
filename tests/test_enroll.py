"""Enrolment of a new product into a trained bundle, warm start, and retrain folding it in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import skulens
from skulens.models.bundle import load_bundle, read_card
from skulens.search.enroll import EnrolmentError, enroll, imprint_class, unenroll


def blue_box(rng: np.random.Generator, size: int = 72) -> Image.Image:
    arr = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    c = size // 2 + rng.integers(-6, 7, size=2)
    r = size // 3
    arr[c[0] - r:c[0] + r, c[1] - r // 2:c[1] + r // 2] = (30, 40, 210)
    return Image.fromarray(arr)


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, dst)
    return dst


@pytest.fixture(scope="module")
def blue_photos(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("blue")
    rng = np.random.default_rng(7)
    paths = []
    for i in range(8):
        p = d / f"blue_{i}.jpg"
        img = blue_box(rng)
        exif = Image.Exif()
        exif[0x8825] = {2: (59.0, 20.0, 0.0)}  # a GPS block that must not be kept
        img.save(p, quality=90, exif=exif)
        paths.append(p)
    return paths


def test_imprint_class_adds_a_row_that_wins_on_its_own_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    head = torch.nn.Linear(16, 3)
    with torch.no_grad():
        head.weight.copy_(centres[:3])
        head.bias.zero_()
    ref = torch.cat([centres[i] + 0.3 * torch.randn(10, 16, generator=g) for i in range(3)])
    ref_t = torch.arange(3).repeat_interleave(10)
    pos = centres[3] + 0.3 * torch.randn(5, 16, generator=g)
    new = imprint_class(head, pos, ref, ref_t)
    assert new.out_features == 4
    assert torch.equal(new.weight[:3], head.weight) and torch.equal(new.bias[:3], head.bias)
    test_pos = centres[3] + 0.3 * torch.randn(20, 16, generator=g)
    assert (new(test_pos).argmax(1) == 3).float().mean() >= 0.95
    assert (new(ref).argmax(1) == ref_t).float().mean() >= 0.95  # the trained classes are not swallowed


def test_enroll_predicts_the_new_product_at_once(bundle_copy: Path, blue_photos: list[Path],
                                                 tiny_catalogue: Path) -> None:
    res = enroll(bundle_copy, "blue-box", blue_photos[:3], text="A blue box.", coarse="Box",
                 data=tiny_catalogue)
    assert res.images == 3 and res.reference > 0 and res.self_check == 1.0
    card = read_card(bundle_copy)
    assert card.classes[-1] == "blue-box" and card.coarse_classes[-1] == "Box"
    assert card.fine_to_coarse[-1] == len(card.coarse_classes) - 1
    assert card.enrolled[0]["label"] == "blue-box" and len(card.enrolled[0]["photos"]) == 3
    kept = bundle_copy / card.enrolled[0]["photos"][0]
    assert kept.is_file() and 0x8825 not in Image.open(kept).getexif()  # stored without GPS
    assert (bundle_copy / "reference_bank.safetensors").is_file()

    model = skulens.load(bundle_copy, device="cpu", precision="off")
    unseen = model.predict(blue_photos[3:])
    assert sum(p.fine_label == "blue-box" for p in unseen) >= 4, [p.fine_label for p in unseen]
    assert all(p.coarse_label == "Box" for p in unseen if p.fine_label == "blue-box")
    # the trained products are still recognised
    root = tiny_catalogue.parent
    val = sorted((root / "val").rglob("*.jpg"))
    preds = model.predict(val)
    acc = np.mean([p.fine_label == path.parent.name for p, path in zip(preds, val, strict=True)])
    assert acc >= 0.75, acc


def test_enroll_infers_coarse_and_rejects_bad_requests(bundle_copy: Path, blue_photos: list[Path],
                                                       tiny_catalogue: Path, tmp_path: Path) -> None:
    with pytest.raises(EnrolmentError, match="already a class"):
        enroll(bundle_copy, "oat-milk", blue_photos[:2], data=tiny_catalogue)
    for twin in ("Oat-Milk", "OAT-MILK", "oat-milK"):  # two classes a catalogue refuses: they split one product
        with pytest.raises(EnrolmentError, match="only in case, spaces or Unicode form"):
            enroll(bundle_copy, twin, blue_photos[:2], data=tiny_catalogue)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(EnrolmentError, match="no usable photo"):
        enroll(bundle_copy, "x", [bad], data=tiny_catalogue)
    for name in ("..", ".", "a/b", "soap\u200b", "\u202epaos", "so\x7fap"):  # names POST /v1/products refuses
        with pytest.raises(EnrolmentError, match="in a product's name"):
            enroll(bundle_copy, name, blue_photos[:2], data=tiny_catalogue)
    # a coarse class's name: a prediction's label "Apple" would be the product or the group of products
    with pytest.raises(EnrolmentError, match="'Apple' is a coarse class"):
        enroll(bundle_copy, "Apple", blue_photos[:2], data=tiny_catalogue)
    with pytest.raises(EnrolmentError, match="coarse class 'milk' differs from the model's 'Milk' only in case"):
        enroll(bundle_copy, "soap", blue_photos[:2], data=tiny_catalogue, coarse="milk")  # a second Milk, it was
    for coarse in ("So\x01ap", " Soap", "So\u200bap"):  # it went into the card's coarse classes as it was
        with pytest.raises(EnrolmentError, match="no control or invisible characters, or surrounding spaces"):
            enroll(bundle_copy, "soap", blue_photos[:2], data=tiny_catalogue, coarse=coarse)
    # the Python API's inputs, as predict takes them: a lone path was read letter by letter ("a: file not
    # found; .: is a directory"), a PIL image failed deep in pathlib, an index path or a number as the name in
    # AttributeErrors, and no photos said "no usable photo for 'x': " with nothing after it
    with pytest.raises(TypeError, match="give a list of images"):
        enroll(bundle_copy, "soap", str(blue_photos[0]), data=tiny_catalogue)
    with pytest.raises(TypeError, match="label: the product's name as a str"):
        enroll(bundle_copy, 5, blue_photos[:2], data=tiny_catalogue)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"index: an open index \(skulens.search.open_index"):
        enroll(bundle_copy, "soap", blue_photos[:2], data=tiny_catalogue, index=str(tmp_path / "shop.index"))
    with pytest.raises(EnrolmentError, match="no photos given for 'soap'"):
        enroll(bundle_copy, "soap", [], data=tiny_catalogue)
    assert read_card(bundle_copy).classes == ("green-apple", "oat-milk", "red-apple")  # nothing changed
    with Image.open(blue_photos[0]) as pil:
        res = enroll(bundle_copy, "blue-box", [pil, blue_photos[1].read_bytes(), bad], data=tiny_catalogue)
    assert res.coarse_inferred and res.coarse_label in ("Apple", "Milk") and res.images == 2
    assert len(res.skipped) == 1 and res.skipped[0][0] == str(bad)


def test_warm_start_copies_rows_by_class_name(tiny_bundle) -> None:
    from skulens.models.bundle import build_model
    from skulens.train.warm import warm_start

    old, card = load_bundle(tiny_bundle.bundle)
    new_card = card.with_(classes=("new-thing", *reversed(card.classes)))
    net = build_model(new_card)
    warm_start(net, new_card, str(tiny_bundle.bundle))
    for i, name in enumerate(new_card.classes[1:], start=1):
        j = card.classes.index(name)
        assert torch.equal(net.head.weight[i], old.head.weight[j])
    assert not torch.equal(net.head.weight[0], old.head.weight[0])
    sd_new, sd_old = net.backbone.state_dict(), old.backbone.state_dict()
    assert all(torch.equal(sd_new[k], sd_old[k]) for k in sd_old)


def test_warm_start_names_the_products_that_leave_the_model(tiny_bundle, caplog) -> None:
    from skulens.models.bundle import build_model
    from skulens.train.warm import warm_start

    _, card = load_bundle(tiny_bundle.bundle)
    fewer = card.with_(classes=card.classes[1:])
    with caplog.at_level("WARNING"):
        warm_start(build_model(fewer), fewer, str(tiny_bundle.bundle))
    assert f"leave the model: {card.classes[0]}" in caplog.text  # they were dropped without a word


def test_retrain_folds_in_enrolled_photos(bundle_copy: Path, blue_photos: list[Path], tiny_catalogue: Path,
                                          tmp_path: Path) -> None:
    from skulens.train.retrain import retrain, retrain_catalogue

    enroll(bundle_copy, "blue-box", blue_photos[:4], coarse="Box", data=tiny_catalogue)
    cat = retrain_catalogue(bundle_copy, tiny_catalogue)
    assert cat.classes[-1] == "blue-box" and cat.hierarchy["blue-box"] == "Box"
    assert sum(s.label == "blue-box" for s in cat.split("train")) == 4
    # a bundle made by distillation records its teacher: a retrain learns from labels, not from it again
    import json

    card = json.loads((bundle_copy / "card.json").read_text(encoding="utf-8"))
    card["train_config"]["teacher"] = str(tmp_path / "teacher-long-gone")
    (bundle_copy / "card.json").write_text(json.dumps(card), encoding="utf-8")
    result = retrain(bundle_copy, out=str(tmp_path / "rt"), data=tiny_catalogue, progress=False, epochs=1)
    assert result.card.train_config["teacher"] is None
    assert result.card.classes[-1] == "blue-box"
    assert result.card.train_config["init_from"] == str(bundle_copy)
    model = skulens.load(result.bundle, device="cpu", precision="off")
    preds = model.predict(blue_photos[4:])
    assert sum(p.fine_label == "blue-box" for p in preds) >= 3
    # the retrained bundle keeps the enrolled photos and entries: a second retrain dropped the product, unsaid
    assert [e["label"] for e in result.card.enrolled] == ["blue-box"] == [e["label"] for e in
                                                                          read_card(result.bundle).enrolled]
    assert all((result.bundle / rel).is_file() for rel in result.card.enrolled[0]["photos"])
    again = retrain(result.bundle, out=str(tmp_path / "rt2"), data=tiny_catalogue, progress=False, epochs=1)
    assert again.card.classes[-1] == "blue-box"


def test_retrain_keeps_its_bundles_carved_val_and_never_falls_back_to_another_dataset(
        bundle_copy: Path, tiny_catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A retrain split as its bundle's run did but recorded --seed 5: `evaluate` then carved another val, photos
    the model trained on. And a bundle whose data had moved was retrained on the default (grocery) dataset."""
    import json

    from skulens.cli import main
    from skulens.config import ConfigError
    from skulens.train.retrain import retrain

    card = json.loads((bundle_copy / "card.json").read_text(encoding="utf-8"))
    card["dataset"]["val_generated"] = True
    (bundle_copy / "card.json").write_text(json.dumps(card), encoding="utf-8")
    for change in ({"seed": 5}, {"val_fraction": 0.3}):
        with pytest.raises(ConfigError, match="keeps the val"):
            retrain(bundle_copy, out=str(tmp_path / "rt"), data=tiny_catalogue, progress=False, epochs=1, **change)
    with pytest.raises(ConfigError, match="init_from: a retrain starts from its bundle"):  # it was overwritten
        retrain(bundle_copy, out=str(tmp_path / "rt"), data=tiny_catalogue, progress=False, init_from=str(tmp_path))
    assert not (tmp_path / "rt").exists()
    files = sorted(p.name for p in bundle_copy.iterdir())
    for inside in (bundle_copy, bundle_copy / "v2"):  # the run's folders and config were written into the bundle
        with pytest.raises(ConfigError, match="inside the bundle it retrains"):
            retrain(bundle_copy, out=str(inside), data=tiny_catalogue, progress=False, epochs=1)
    assert sorted(p.name for p in bundle_copy.iterdir()) == files
    card["dataset"]["path"] = card["train_config"]["data"] = str(tmp_path / "moved-away")
    (bundle_copy / "card.json").write_text(json.dumps(card), encoding="utf-8")
    assert main(["retrain", "-m", str(bundle_copy), "--out", str(tmp_path / "rt2"), "--epochs", "1"]) == 2
    assert "is not here: pass --data" in capsys.readouterr().err
    assert main(["retrain", "-m", str(bundle_copy), "--out", str(tmp_path / "rt3"), "--extra", "nope"]) == 2
    assert "--extra nope: no such file" in capsys.readouterr().err  # it named --data


def _catalogue_blue_box() -> Image.Image:
    """The blue box as a catalogue shows it: alone on white."""
    arr = np.full((72, 72, 3), 255, dtype=np.uint8)
    arr[12:60, 24:48] = (30, 40, 210)
    return Image.fromarray(arr)


def test_enroll_from_one_catalogue_photo_sees_it_on_backgrounds(tiny_bundle, blue_photos: list[Path],
                                                                 tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.data.transforms import create_transform, to_uint8_tensor

    photo = tmp_path / "blue_iconic.png"
    _catalogue_blue_box().save(photo)
    margin, seen_acc = {}, {}
    for views in (0, 16):
        copy = tmp_path / f"b{views}"
        shutil.copytree(tiny_bundle.bundle, copy)
        torch.manual_seed(0)  # the same augmented views both times: the studio views are the one difference
        res = enroll(copy, "blue-box", [photo], coarse="Box", data=tiny_catalogue, studio_views=views,
                     keep_photos=False)
        assert res.images == 1 and res.self_check == 1.0 and res.on_white == (1 if views else 0)
        net, card = load_bundle(copy)
        x = torch.stack([create_transform(card)(to_uint8_tensor(Image.open(p).convert("RGB"))) for p in blue_photos])
        with torch.no_grad():
            logits = net.forward_head(net.backbone(x))["fine"]
        margin[views] = float((logits[:, -1] - logits[:, :-1].max(1).values).mean())
        model = skulens.load(copy, device="cpu", precision="off")
        val = sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))
        seen_acc[views] = np.mean([p.fine_label == path.parent.name
                                   for p, path in zip(model.predict(val), val, strict=True)])
    # shop photos of the box (on a grey, noisy ground) come closer to the new product once the catalogue
    # photo is also seen on backgrounds, and the trained products keep their photos
    assert margin[16] > margin[0], margin
    assert min(seen_acc.values()) >= 0.75, seen_acc


def test_text_features_follow_the_aligner_at_the_photos_scale(bundle_copy: Path) -> None:
    from skulens.search.align import TextAligner, load_aligner
    from skulens.search.enroll import _text_features

    net, _ = load_bundle(bundle_copy)
    dim = net.head.in_features
    positives = torch.randn(9, dim) * 4
    assert len(_text_features(bundle_copy, "Blue box", "A blue box.", positives, 0.2)) == 0  # no aligner yet
    rng = np.random.default_rng(0)
    TextAligner(rng.normal(size=(dim, 384)).astype(np.float32), np.zeros(dim, np.float32), 0.07).save(bundle_copy)
    feats = _text_features(bundle_copy, "Blue box", "A blue box.", positives, 0.2)
    assert feats.shape == (2, dim)  # 0.2 of 11 rows
    expected = torch.from_numpy(load_aligner(bundle_copy).encode(["Blue box. A blue box."]))[0]
    assert torch.allclose(torch.nn.functional.normalize(feats[0], dim=0), expected, atol=1e-5)
    assert torch.allclose(feats.norm(dim=1), positives.norm(dim=1).mean().expand(2), rtol=1e-4)
    assert len(_text_features(bundle_copy, "Blue box", "", positives, 0.2)) == 0  # no text
    assert len(_text_features(bundle_copy, "Blue box", "A blue box.", positives, 0.0)) == 0  # turned off


def test_enroll_with_text_and_index_keeps_photos_apart_from_views_and_text(bundle_copy: Path, tmp_path: Path,
                                                                           tiny_catalogue: Path) -> None:
    from skulens.search.align import TextAligner
    from skulens.search.index import create_index

    net, _ = load_bundle(bundle_copy)
    dim = net.head.in_features
    rng = np.random.default_rng(0)
    TextAligner(rng.normal(size=(dim, 384)).astype(np.float32), np.zeros(dim, np.float32), 0.07).save(bundle_copy)
    photo = tmp_path / "blue_iconic.png"
    _catalogue_blue_box().save(photo)
    index = create_index("faiss", tmp_path / "index", dim)
    res = enroll(bundle_copy, "blue-box", [photo], text="A blue box.", data=tiny_catalogue, index=index,
                 keep_photos=False)
    # the index holds the one photo, not its 16 studio views nor the text rows; the self-check is on it alone
    assert res.index_entries == 1 and len(index) == 1 and res.self_check in (0.0, 1.0)
    assert res.on_white == 1 and res.text_rows > 0
    assert res.coarse_inferred and res.coarse_label in read_card(bundle_copy).coarse_classes
    with pytest.raises(EnrolmentError, match="text_weight"):
        enroll(bundle_copy, "red-box", [photo], text="x", text_weight=1.0, data=tiny_catalogue)
    with pytest.raises(EnrolmentError, match="studio_views"):
        enroll(bundle_copy, "red-box", [photo], studio_views=-1, data=tiny_catalogue)


def test_unenroll_undoes_an_enrolment_exactly(bundle_copy: Path, blue_photos: list[Path], tiny_catalogue: Path,
                                              tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from skulens.cli import main
    from skulens.search.index import create_index, open_index

    before = load_file(str(bundle_copy / "model.safetensors"))
    card0 = read_card(bundle_copy)
    net, _ = load_bundle(bundle_copy)
    index = create_index("faiss", tmp_path / "index", net.head.in_features)
    enroll(bundle_copy, "blue-box", blue_photos[:3], coarse="Box", data=tiny_catalogue, index=index)
    enroll(bundle_copy, "red-box", blue_photos[3:5], coarse="Apple", data=tiny_catalogue, index=index)
    kept = [bundle_copy / p for p in read_card(bundle_copy).enrolled[0]["photos"]]
    assert len(index) == 5 and all(p.is_file() for p in kept)

    from skulens.search.index import IndexRecord

    later = IndexRecord("api/blue-box/1", "blue-box", "blue-box")  # a photo added to search after the enrolment
    index.upsert([later], index.vectors([index.records("blue-box")[0].id]))
    res = unenroll(bundle_copy, "blue-box", index=index)
    assert (res.coarse_removed, res.photos_removed, res.index_entries) == ("Box", 3, 3)
    assert [r.id for r in index.records("blue-box")] == ["api/blue-box/1"]  # only what the enrolment added
    index.remove(ids=["api/blue-box/1"])
    index.save()
    card = read_card(bundle_copy)
    # red-box stays, with its row and its (trained) coarse class, which lost no index
    assert card.classes == (*card0.classes, "red-box") and card.coarse_classes == card0.coarse_classes
    assert card.fine_to_coarse == (*card0.fine_to_coarse, card0.coarse_classes.index("Apple"))
    assert [e["label"] for e in card.enrolled] == ["red-box"] and not any(p.exists() for p in kept)
    assert {r.product_id for r in open_index(tmp_path / "index").records()} == {"red-box"}
    with pytest.raises(EnrolmentError, match="trained class"):
        unenroll(bundle_copy, "oat-milk")
    with pytest.raises(EnrolmentError, match="not a product"):
        unenroll(bundle_copy, "blue-box")

    # the CLI undoes the other one: every weight is as it was before either enrolment, and every index entry of
    # the product goes, as DELETE /v1/products/ID does (a photo added later through the API stayed searchable)
    index = open_index(tmp_path / "index")
    index.upsert([IndexRecord("api/red-box/1", "red-box", "red-box")], index.vectors([index.records("red-box")[0].id]))
    index.save()
    assert main(["unenroll", "-m", str(bundle_copy), "--product", "red-box", "--index", str(tmp_path / "index")]) == 0
    after = load_file(str(bundle_copy / "model.safetensors"))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    card = read_card(bundle_copy)
    assert (card.classes, card.coarse_classes, card.fine_to_coarse, card.enrolled) == (
        card0.classes, card0.coarse_classes, card0.fine_to_coarse, ())
    assert len(open_index(tmp_path / "index")) == 0
    assert main(["unenroll", "-m", str(bundle_copy), "--product", "red-box"]) == 2  # a clear error, not a traceback


def test_an_index_that_refuses_the_enrolment_leaves_the_bundle_as_it_was(bundle_copy: Path, blue_photos: list[Path],
                                                                          tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.search.index import IndexStoreError, create_index

    card0 = read_card(bundle_copy)
    wrong = create_index("faiss", tmp_path / "index8", 8)  # another model's index: 8-d vectors, named up front
    with pytest.raises(EnrolmentError, match="the index holds 8-d vectors but the model embeds"):
        enroll(bundle_copy, "blue-box", blue_photos[:2], coarse="Box", data=tiny_catalogue, index=wrong)
    refusing = create_index("faiss", tmp_path / "index", card0.embedding_dim)  # an index refusing the write itself

    def refuse(*a, **k):
        raise IndexStoreError("the index refused the entries")

    refusing.upsert = refuse  # type: ignore[method-assign]
    with pytest.raises(IndexStoreError, match="refused the entries"):
        enroll(bundle_copy, "blue-box", blue_photos[:2], coarse="Box", data=tiny_catalogue, index=refusing)
    assert read_card(bundle_copy) == card0 and len(wrong) == len(refusing) == 0
    assert not (bundle_copy / "enrolled" / "blue-box").exists()  # no kept photo that no card entry lists
    assert enroll(bundle_copy, "blue-box", blue_photos[:2], coarse="Box", data=tiny_catalogue).images == 2  # retried


def test_an_index_another_process_saved_meanwhile_takes_the_enrolment_too(bundle_copy: Path, blue_photos: list[Path],
                                                                           tiny_catalogue: Path, tmp_path: Path) -> None:
    """Two `skulens enroll --index` at once: each opened the index before the other saved. The second's save was
    refused (IndexChangedError) and its enrolment failed; its entries now go into the other's save."""
    from skulens.search.index import IndexRecord, create_index, open_index

    dim = read_card(bundle_copy).embedding_dim
    create_index("faiss", tmp_path / "index", dim).save()
    mine, other = open_index(tmp_path / "index"), open_index(tmp_path / "index")
    other.upsert([IndexRecord("api/oat-milk/1", "oat-milk", "oat-milk")], np.eye(1, dim, dtype=np.float32))
    other.save()  # the other process's enrolment, saved after this one opened the index
    res = enroll(bundle_copy, "blue-box", blue_photos[:2], coarse="Box", data=tiny_catalogue, index=mine)
    assert res.index_entries == 2
    on_disk = open_index(tmp_path / "index")
    assert sorted(r.id for r in on_disk.records()) == ["api/oat-milk/1", "enrolled/blue-box/0", "enrolled/blue-box/1"]
    assert "blue-box" in read_card(bundle_copy).classes


def test_unenroll_keeps_a_photo_another_product_still_lists(bundle_copy: Path, blue_photos: list[Path],
                                                            tiny_catalogue: Path) -> None:
    enroll(bundle_copy, "Box!", blue_photos[:1], coarse="Box", data=tiny_catalogue)
    enroll(bundle_copy, "Box?", blue_photos[:1], coarse="Box", data=tiny_catalogue)  # same safe folder, same photo
    shared = bundle_copy / read_card(bundle_copy).enrolled[1]["photos"][0]
    assert read_card(bundle_copy).enrolled[0]["photos"] == read_card(bundle_copy).enrolled[1]["photos"]
    assert unenroll(bundle_copy, "Box!").photos_removed == 0 and shared.is_file()
    assert unenroll(bundle_copy, "Box?").photos_removed == 1 and not shared.exists()


def test_retrain_rebuilds_the_catalogue_the_bundle_was_trained_on(bundle_copy: Path, tiny_catalogue: Path,
                                                                  tmp_path: Path) -> None:
    """A catalogue without a val split gets the same generated val (the recorded fraction and seed) and a
    manifest not named manifest.csv is read as the manifest, not as its folder of class folders."""
    import csv
    import json

    from skulens.data.catalogue import load_catalogue
    from skulens.train.retrain import retrain_catalogue

    with open(tiny_catalogue, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    items = tiny_catalogue.parent / "items.csv"  # train rows only: val is generated
    with open(items, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["split"] == "train")
    card_path = bundle_copy / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["train_config"].update({"data": str(items), "seed": 3, "val_fraction": 0.25, "teacher": "/gone/teacher"})
    card["dataset"]["path"] = str(items.parent)
    card_path.write_text(json.dumps(card), encoding="utf-8")
    original = load_catalogue(items, val_fraction=0.25, seed=3)
    cat = retrain_catalogue(bundle_copy)
    assert cat.classes == original.classes  # not the folder read as class folders (train/, val/)
    assert sorted(s.path for s in cat.split("val")) == sorted(s.path for s in original.split("val"))
    assert sorted(s.path for s in cat.split("val")) != sorted(s.path for s in load_catalogue(items).split("val"))


def test_retrain_names_products_enrolled_without_photos(bundle_copy: Path, blue_photos: list[Path],
                                                        tiny_catalogue: Path) -> None:
    """An enrolment that kept no photo (the service without --keep-uploads) leaves a retrain nothing to learn
    the product from: refused before training, naming the product and the ways out."""
    from skulens.config import ConfigError
    from skulens.train.retrain import retrain_catalogue

    enroll(bundle_copy, "blue-box", blue_photos[:2], coarse="Box", data=tiny_catalogue, keep_photos=False)
    with pytest.raises(ConfigError, match="enrolled without kept photos.*blue-box.*--extra"):
        retrain_catalogue(bundle_copy, tiny_catalogue)


def test_the_cached_reference_bank_follows_a_different_data(bundle_copy: Path, tiny_catalogue: Path,
                                                             tmp_path: Path) -> None:
    """The bank cached in the bundle was reused whatever --data said: enrolment fitted against photos of a
    catalogue the user had replaced."""
    from skulens.search.enroll import reference_bank

    net, card = load_bundle(bundle_copy)
    _, first = reference_bank(bundle_copy, net, card, tiny_catalogue)
    assert {"oat-milk", "red-apple"} <= set(first)
    other = tmp_path / "other"
    shutil.copytree(tiny_catalogue.parent, other)
    other_cat = other / tiny_catalogue.name
    rows = tiny_catalogue.read_text(encoding="utf-8").splitlines()
    # another catalogue: its training photos are green apples only
    other_cat.write_text("\n".join([rows[0], *(r for r in rows[1:] if "green-apple" in r)]) + "\n",
                         encoding="utf-8")
    _, second = reference_bank(bundle_copy, net, card, other_cat)
    assert set(second) == {"green-apple"}
    _, cached = reference_bank(bundle_copy, net, card, None)  # no --data: the cached bank, as it was last made
    assert cached == second
    _, same = reference_bank(bundle_copy, net, card, other_cat)
    assert same == second


def test_retrain_extra_leaves_out_the_catalogues_own_photos(bundle_copy: Path, blue_photos: list[Path],
                                                            tiny_catalogue: Path, tmp_path: Path, caplog) -> None:
    """A labelled folder (suggest-labels filled in) holding val photos: they were trained on and still scored,
    inflating the retrain's val; a train photo counted twice."""
    from skulens.train.retrain import retrain_catalogue

    root = Path(shutil.copytree(tiny_catalogue.parent, tmp_path / "cat"))
    for p in blue_photos[:2]:
        shutil.copy(p, root / p.name)
    extra = root / "labelled.csv"  # a manifest beside the catalogue's, its paths inside the same folder
    rows = ["path,label", "val/oat-milk/oat-milk_000.jpg,oat-milk", "train/red-apple/red-apple_000.jpg,red-apple",
            *(f"{p.name},oat-milk" for p in blue_photos[:2])]
    extra.write_text("\n".join(rows) + "\n", encoding="utf-8")
    manifest = root / tiny_catalogue.name
    before = retrain_catalogue(bundle_copy, manifest)
    with caplog.at_level("WARNING", logger="skulens.train.retrain"):
        after = retrain_catalogue(bundle_copy, manifest, [extra, extra])  # the same photos given twice, too
    train = [s.path.resolve() for s in after.split("train")]
    assert len(train) == len(before.split("train")) + 2 and len(set(train)) == len(train)  # two new photos, once
    assert (root / "val/oat-milk/oat-milk_000.jpg").resolve() not in train
    assert [s.path for s in after.split("val")] == [s.path for s in before.split("val")]  # val is still val
    assert "1 train, 1 val of the catalogue's own photos left out" in caplog.text and "given twice" in caplog.text


def test_a_new_product_of_an_extra_folder_without_a_coarse_class_is_told_how(bundle_copy: Path,
                                                                               blue_photos: list[Path],
                                                                               tmp_path: Path,
                                                                               tiny_catalogue: Path) -> None:
    """`retrain --extra FOLDER` with a new product, into a model with coarse classes: "new product(s) without a
    coarse label: blue-box", naming neither the --extra nor the way to give one."""
    from skulens.config import ConfigError
    from skulens.train.retrain import retrain_catalogue

    folder = tmp_path / "labelled" / "blue-box"
    folder.mkdir(parents=True)
    for p in blue_photos[:3]:
        shutil.copy(p, folder / p.name)
    with pytest.raises(ConfigError, match=r"--extra .*labelled: new product\(s\) blue-box have no coarse class.*"
                                          r"coarse_label column"):
        retrain_catalogue(bundle_copy, None, [tmp_path / "labelled"])
    manifest = tmp_path / "labelled" / "labels.csv"  # the way the message gives
    manifest.write_text("path,label,coarse_label\n" + "".join(f"blue-box/{p.name},blue-box,Box\n"
                                                              for p in blue_photos[:3]), encoding="utf-8")
    cat = retrain_catalogue(bundle_copy, None, [manifest])
    assert cat.hierarchy["blue-box"] == "Box"
    # an enrolled product has its coarse class in the card: the inventory's labelled folder (no coarse column) of
    # its reviewed photos is no new product (the check above refused the enrol-review-retrain loop)
    manifest.unlink()
    enroll(bundle_copy, "blue-box", blue_photos[3:6], data=tiny_catalogue, coarse="Box")
    assert retrain_catalogue(bundle_copy, None, [tmp_path / "labelled"]).hierarchy["blue-box"] == "Box"
    from skulens.train.retrain import _say_what_reproduces

    config = tmp_path / "config.yaml"
    config.write_text("epochs: 1\n", encoding="utf-8")
    _say_what_reproduces(config, "skulens retrain --model B --out R", [])
    assert config.read_text(encoding="utf-8").startswith(
        "# Written by `skulens retrain`: this file names the catalogue alone (not the bundle's enrolled products' "
        "photos).\n")


def test_an_extra_folder_whose_photos_were_all_erased_adds_nothing_and_stops_nothing(
        bundle_copy: Path, tiny_catalogue: Path, tmp_path: Path, caplog) -> None:
    """An inventory's labelled folder after its last labelled photo was erased: empty class folders, no manifest.
    The retrain the README recommends (and that bundles record for the next one) failed: "empty class 'Ginger'"."""
    from skulens.data.catalogue import CatalogueError
    from skulens.train.retrain import retrain_catalogue

    labelled = tmp_path / "shop-labelled"
    (labelled / "Ginger").mkdir(parents=True)
    (labelled / "Ginger" / ".x.erasing.tmp").write_bytes(b"")  # a leftover the sweep takes: no photo
    before = retrain_catalogue(bundle_copy, tiny_catalogue)
    with caplog.at_level("WARNING", logger="skulens.train.retrain"):
        after = retrain_catalogue(bundle_copy, tiny_catalogue, [labelled])
    assert [s.path for s in after.split("train")] == [s.path for s in before.split("train")]
    assert "holds no photo now" in caplog.text
    (labelled / "notes.txt").write_text("x")  # still no photo: still nothing added
    assert len(retrain_catalogue(bundle_copy, tiny_catalogue, [labelled]).split("train")) == len(before.split("train"))
    linked = tmp_path / "linked"  # photos reached through a linked class folder are photos (rglob missed them)
    linked.mkdir()
    known = next(tiny_catalogue.parent.rglob("*.jpg"))  # a photo of a class the bundle knows
    (tmp_path / "real").mkdir()
    shutil.copy(known, tmp_path / "real" / "a.jpg")
    (linked / known.parent.name).symlink_to(tmp_path / "real", target_is_directory=True)
    with_link = retrain_catalogue(bundle_copy, tiny_catalogue, [linked])
    assert len(with_link.split("train")) == len(before.split("train")) + 1
    other = tmp_path / "other"  # a folder with a photo but an empty class beside it is still refused
    (other / "Ginger").mkdir(parents=True)
    (other / "Lemon").mkdir()
    shutil.copy(next(tiny_catalogue.parent.rglob("*.jpg")), other / "Lemon" / "a.jpg")
    with pytest.raises(CatalogueError, match="empty class"):
        retrain_catalogue(bundle_copy, tiny_catalogue, [other])


def test_enrolment_checks_coarse_dedupes_photos_and_remakes_a_torn_reference_bank(
        bundle_copy: Path, blue_photos: list[Path], tiny_catalogue: Path, tmp_path: Path) -> None:
    from conftest import TINY, write_folder_catalogue
    from skulens.search.enroll import BANK_FILE

    # a photo given twice is one photo (it was counted, kept and trained on twice)
    res = enroll(bundle_copy, "blue-box", [blue_photos[0], blue_photos[0], blue_photos[1]], data=tiny_catalogue)
    assert res.images == 2 and len(res.kept) == 2
    unenroll(bundle_copy, "blue-box")
    # a reference bank cut short by a kill or a full disk, or without its labels, is made again (it was a traceback,
    # then every later enrolment into the bundle failed the same way)
    bank = bundle_copy / BANK_FILE
    bank.write_bytes(bank.read_bytes()[:1000])
    assert enroll(bundle_copy, "blue-box", blue_photos[:2], data=tiny_catalogue, keep_photos=False).reference > 0
    unenroll(bundle_copy, "blue-box")
    from safetensors import safe_open

    with safe_open(str(bank), framework="pt") as f:  # the labels travel in the bank's own file
        assert len(json.loads(f.metadata()["labels"])) == len(f.get_tensor("features")) > 0
    assert not (bundle_copy / (BANK_FILE + ".labels")).exists() and not bank.with_name(bank.name + ".tmp").exists()
    # a coarse class for a model without coarse classes was recorded, then broke `skulens retrain`
    (tmp_path / "flat").mkdir()
    flat = skulens.train(write_folder_catalogue(tmp_path / "flat", seed=5, per_class=4), out=str(tmp_path / "run"),
                         progress=False, max_steps=1, **{**TINY, "epochs": 1})
    assert not flat.card.coarse_classes
    with pytest.raises(EnrolmentError, match="no coarse classes"):
        enroll(flat.bundle, "blue-box", blue_photos[:2], coarse="Box")
    assert "blue-box" not in read_card(flat.bundle).classes


def test_shop_map_carries_a_new_catalogue_vector_to_where_its_shop_photos_lie() -> None:
    """Pure: pairs (catalogue photo, shop photos' mean) of trained products whose shop look is a shift plus a
    linear change of the catalogue look; the map learned from them puts an unseen product near its own shop
    mean, much nearer than the catalogue vector itself, and nearer than the mean shift alone."""
    from skulens.search.enroll import learn_shop_map

    g = torch.Generator().manual_seed(0)
    dim, n = 64, 40
    mix = torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=g) / dim ** 0.5
    shift = torch.randn(dim, generator=g)
    cat = torch.randn(n + 5, dim, generator=g)
    shop = cat @ mix + shift + 0.05 * torch.randn(n + 5, dim, generator=g)
    to_shop = learn_shop_map(cat[:n], shop[:n], ridge=0.01)
    new_cat, new_shop = cat[n:], shop[n:]
    mapped = (to_shop(new_cat) - new_shop).norm(dim=1).mean()
    shifted = (new_cat + (shop[:n] - cat[:n]).mean(0) - new_shop).norm(dim=1).mean()
    assert mapped < 0.75 * shifted < (new_cat - new_shop).norm(dim=1).mean()  # fewer pairs than dimensions


def test_a_catalogue_photo_is_also_enrolled_as_the_map_says_its_shop_photos_look(
        bundle_copy: Path, tiny_catalogue: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trained products' catalogue photos (products.csv's image column) against their reference photos
    teach the map; a new product's catalogue photo then brings its 25 views twice: as they are, and mapped."""
    import csv

    from skulens.search import enroll as enrol_module

    data = tmp_path / "cat"
    shutil.copytree(tiny_catalogue.parent, data)
    colours = {"red-apple": (200, 30, 30), "green-apple": (40, 180, 40), "oat-milk": (230, 220, 180)}
    with open(data / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "title", "image"])
        for label in read_card(bundle_copy).classes:
            arr = np.full((72, 72, 3), 255, dtype=np.uint8)
            arr[16:56, 20:52] = colours.get(label, (90, 90, 90))
            Image.fromarray(arr).save(data / f"{label}.png")
            w.writerow([label, label.replace("-", " "), f"{label}.png"])
    photo = tmp_path / "blue_iconic.png"
    _catalogue_blue_box().save(photo)
    manifest = data / tiny_catalogue.name
    plain = enroll(bundle_copy, "blue-box", [photo], data=manifest, keep_photos=False)
    assert plain.mapped_rows == 0  # three trained products are too few pairs to learn a map from
    unenroll(bundle_copy, "blue-box")
    monkeypatch.setattr(enrol_module, "_MAP_MIN_PRODUCTS", 2)
    res = enroll(bundle_copy, "blue-box", [photo], data=manifest, keep_photos=False)
    assert res.on_white == 1 and res.mapped_rows == 1 + 8 + 16
    cache = bundle_copy / enrol_module.CATALOGUE_FILE
    made = cache.stat().st_mtime_ns
    unenroll(bundle_copy, "blue-box")
    assert enroll(bundle_copy, "blue-box", [photo], data=manifest, keep_photos=False).mapped_rows == 25
    assert cache.stat().st_mtime_ns == made  # cached in the bundle: made once
    shop = sorted((tiny_catalogue.parent / "val" / "red-apple").glob("*.jpg"))[:1]
    unenroll(bundle_copy, "blue-box")
    assert enroll(bundle_copy, "blue-box", shop, data=manifest, keep_photos=False).mapped_rows == 0  # a shop photo


def test_the_same_photos_give_the_same_enrolment(bundle_copy: Path, blue_photos: list[Path],
                                                 tiny_catalogue: Path) -> None:
    """The augmented views were drawn from the global random state: two enrolments of the same photos gave
    different rows (and the benchmark's one-draw rows moved by a few points between runs)."""
    rows = []
    for _ in range(2):
        torch.manual_seed(len(rows))  # whatever the caller's random state
        enroll(bundle_copy, "blue-box", blue_photos[:2], data=tiny_catalogue, keep_photos=False)
        net, card = load_bundle(bundle_copy)
        rows.append(net.head.weight[card.classes.index("blue-box")].detach().clone())
        unenroll(bundle_copy, "blue-box")
    assert torch.equal(rows[0], rows[1])


def test_a_product_enrolled_earlier_is_a_negative_for_the_next_one(bundle_copy: Path, blue_photos: list[Path],
                                                                   tiny_catalogue: Path) -> None:
    """The next enrolment's row is fitted against the earlier enrolled products' views too (kept in the bundle,
    at most 16 per product): before, a second product that looks like the first took the first one's photos."""
    from skulens.search.enroll import ENROLLED_FILE, _read_cache

    first = enroll(bundle_copy, "blue-box", blue_photos[:3], data=tiny_catalogue)
    feats, labels = _read_cache(bundle_copy / ENROLLED_FILE, None, "test")
    assert labels == ["blue-box"] * 16 and feats.shape == (16, load_bundle(bundle_copy)[0].head.in_features)
    second = enroll(bundle_copy, "blue-box-2", blue_photos[3:6], data=tiny_catalogue)
    assert second.reference == first.reference + 16
    model = skulens.load(bundle_copy, device="cpu", precision="off")
    assert [p.fine_label for p in model.predict([str(p) for p in blue_photos[:3]], top_k=1)] == ["blue-box"] * 3
    assert _read_cache(bundle_copy / ENROLLED_FILE, None, "test")[1] == ["blue-box"] * 16 + ["blue-box-2"] * 16
    unenroll(bundle_copy, "blue-box")
    assert _read_cache(bundle_copy / ENROLLED_FILE, None, "test")[1] == ["blue-box-2"] * 16
    unenroll(bundle_copy, "blue-box-2")
    assert not (bundle_copy / ENROLLED_FILE).exists()


def test_a_retrains_extra_catalogues_are_recorded_for_the_next_retrain(bundle_copy: Path, blue_photos: list[Path],
                                                                       tiny_catalogue: Path, tmp_path: Path,
                                                                       caplog) -> None:
    """`--extra` catalogues were not recorded: the next retrain, without them, dropped their products."""
    from skulens.train.retrain import retrain, retrain_extra

    folder = tmp_path / "labelled"
    folder.mkdir()
    for p in blue_photos[:4]:
        shutil.copy(p, folder / p.name)
    extra = folder / "labels.csv"
    extra.write_text("path,label,coarse_label\n" + "".join(f"{p.name},blue-box,Box\n" for p in blue_photos[:4]),
                     encoding="utf-8")
    # one path, not a list: it was read letter by letter
    first = retrain(bundle_copy, out=str(tmp_path / "rt"), data=tiny_catalogue, extra=str(extra), progress=False,
                    epochs=1)
    assert first.card.classes[-1] == "blue-box"
    assert first.card.dataset["extra"] == [str(extra.resolve())] == read_card(first.bundle).dataset["extra"]
    # its config.yaml names the catalogue alone: fed to `skulens train --config` it dropped blue-box unsaid
    head = (tmp_path / "rt" / "config.yaml").read_text(encoding="utf-8").splitlines()[:2]
    assert head[0].startswith("# Written by `skulens retrain`") and str(extra.resolve()) in head[0]
    assert head[1].startswith("# Made by: skulens retrain --model") and "--resume" not in head[1]
    assert " --epochs 1 " in head[1]  # the settings given: without them it named another run
    from skulens.config import load_config

    assert load_config(tmp_path / "rt" / "config.yaml")["data"] == str(tiny_catalogue)  # still a config file
    again = retrain(first.bundle, out=str(tmp_path / "rt2"), data=tiny_catalogue, progress=False, epochs=1)
    assert again.card.classes[-1] == "blue-box" and again.card.dataset["extra"] == [str(extra.resolve())]
    assert retrain_extra(again.bundle, [extra]) == [str(extra.resolve())]  # given again: once
    extra.unlink()
    with caplog.at_level("WARNING", logger="skulens.train.retrain"):
        assert retrain_extra(again.bundle) == []
    assert "labels.csv an earlier retrain used are gone" in caplog.text


def test_enrolled_views_survive_a_failed_unenrol_and_are_made_again_from_kept_photos(
        bundle_copy: Path, blue_photos: list[Path], tiny_catalogue: Path, monkeypatch) -> None:
    from skulens.search import enroll as enrol_module
    from skulens.search.enroll import ENROLLED_FILE, _read_cache

    first = enroll(bundle_copy, "blue-box", blue_photos[:3], data=tiny_catalogue)
    (bundle_copy / ENROLLED_FILE).unlink()  # a bundle enrolled into before the views were kept
    second = enroll(bundle_copy, "blue-box-2", blue_photos[3:6], data=tiny_catalogue)
    assert second.reference == first.reference + 16  # made again from blue-box's kept photos
    assert _read_cache(bundle_copy / ENROLLED_FILE, None, "test")[1] == ["blue-box"] * 16 + ["blue-box-2"] * 16

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(enrol_module, "save_bundle", full_disk)
    with pytest.raises(OSError):
        unenroll(bundle_copy, "blue-box")
    assert [e["label"] for e in read_card(bundle_copy).enrolled] == ["blue-box", "blue-box-2"]
    assert _read_cache(bundle_copy / ENROLLED_FILE, None, "test")[1] == ["blue-box"] * 16 + ["blue-box-2"] * 16


def test_enrolments_into_one_bundle_at_once_take_turns(bundle_copy: Path, blue_photos: list[Path],
                                                       tiny_catalogue: Path) -> None:
    """Two enrolments started together (two service workers, or `skulens enroll` beside `skulens serve`) both
    read the bundle before either saved it, and the second save dropped the first product: each now holds the
    bundle's lock from its read to its save."""
    import threading

    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(label: str, photos: list[Path]) -> None:
        start.wait()
        try:
            enroll(bundle_copy, label, photos, data=tiny_catalogue)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("blue-box", blue_photos[:3])),
               threading.Thread(target=run, args=("blue-box-2", blue_photos[3:6]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    card = read_card(bundle_copy)
    assert set(card.classes[-2:]) == {"blue-box", "blue-box-2"}
    assert sorted(e["label"] for e in card.enrolled) == ["blue-box", "blue-box-2"]
    assert load_bundle(bundle_copy)[0].head.out_features == len(card.classes)


def test_a_bundle_another_process_is_rewriting_is_waited_for_then_refused_in_one_line(bundle_copy: Path) -> None:
    from conftest import bundle_locked_elsewhere
    from skulens.models.bundle import BundleError, bundle_lock

    with bundle_locked_elsewhere(bundle_copy), \
            pytest.raises(BundleError, match="another process has been rewriting this bundle"), \
            bundle_lock(bundle_copy, timeout=0.5):
        pass
    with bundle_lock(bundle_copy, timeout=5):  # a killed holder's lock is free again
        pass


def test_an_enrolment_onto_a_full_disk_is_one_line_and_leaves_the_bundle_and_no_copy(
        bundle_copy: Path, blue_photos: list[Path]) -> None:
    """safetensors raises its own error on a full disk ("No space left on device (os error 28)"): every bundle or
    checkpoint save (train, enroll, retrain, distill) ended in a traceback (exit 1) instead of `skulens: storage
    full` (exit 3), and the bundle's half-written temporary copy stayed beside it. A file-size limit (RLIMIT_FSIZE,
    EFBIG) stands in for the full disk, below the weights' size."""
    import subprocess
    import sys

    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir() if p.is_file()}
    limit = (bundle_copy / "model.safetensors").stat().st_size // 2
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from skulens.cli import main\n"
            f"sys.exit(main(['enroll', '-m', {str(bundle_copy)!r}, '--product', 'blue-box', '--images', "
            f"{str(blue_photos[0])!r}, '-q']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert "storage full" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [p.name for p in bundle_copy.parent.iterdir() if p.name.startswith(".bundle.")] == [".bundle.lock"]  # no copy
    assert {p.name: p.read_bytes() for p in bundle_copy.iterdir() if p.is_file() and p.name in before} == before
    assert "blue-box" not in read_card(bundle_copy).classes
