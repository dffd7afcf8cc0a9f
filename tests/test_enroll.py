"""Enrolment of a new product into a trained bundle, warm start, and retrain folding it in."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import skulens
from skulens.models.bundle import load_bundle, read_card
from skulens.search.enroll import EnrolmentError, enroll, imprint_class


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
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(EnrolmentError, match="no usable photo"):
        enroll(bundle_copy, "x", [bad], data=tiny_catalogue)
    assert read_card(bundle_copy).classes == ("green-apple", "oat-milk", "red-apple")  # nothing changed
    res = enroll(bundle_copy, "blue-box", [*blue_photos[:2], bad], data=tiny_catalogue)
    assert res.coarse_inferred and res.coarse_label in ("Apple", "Milk") and len(res.skipped) == 1


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


def test_retrain_folds_in_enrolled_photos(bundle_copy: Path, blue_photos: list[Path], tiny_catalogue: Path,
                                          tmp_path: Path) -> None:
    from skulens.train.retrain import retrain, retrain_catalogue

    enroll(bundle_copy, "blue-box", blue_photos[:4], coarse="Box", data=tiny_catalogue)
    cat = retrain_catalogue(bundle_copy, tiny_catalogue)
    assert cat.classes[-1] == "blue-box" and cat.hierarchy["blue-box"] == "Box"
    assert sum(s.label == "blue-box" for s in cat.split("train")) == 4
    result = retrain(bundle_copy, out=str(tmp_path / "rt"), data=tiny_catalogue, progress=False, epochs=1)
    assert result.card.classes[-1] == "blue-box"
    assert result.card.train_config["init_from"] == str(bundle_copy)
    model = skulens.load(result.bundle, device="cpu", precision="off")
    preds = model.predict(blue_photos[4:])
    assert sum(p.fine_label == "blue-box" for p in preds) >= 3
