"""The Python inference API: `skulens.load(bundle)` then `predict` / `embed` on files, bytes and PIL images."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skulens
from skulens.api import Model
from skulens.data.decode import ImageDecodeError

LEVELS = {"fine", "coarse", "unknown", "error"}


@pytest.fixture(scope="module")
def model(tiny_bundle) -> Model:
    # precision "off": fp32 everywhere, so values do not depend on the CPU's bf16 support.
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


@pytest.fixture(scope="module")
def val_images(tiny_catalogue: Path) -> list[tuple[Path, str]]:
    """(path, true label) of every val image of the tiny catalogue, in a fixed order."""
    root = tiny_catalogue.parent
    return [(p, p.parent.name) for p in sorted((root / "val").rglob("*.jpg"))]


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height (CRC fixed up): a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_predict_val_images_mostly_correct(model: Model, val_images: list[tuple[Path, str]]) -> None:
    preds = model.predict([str(p) for p, _ in val_images])
    assert [p.source for p in preds] == [str(p) for p, _ in val_images]
    assert all(p.level in LEVELS - {"error"} for p in preds)
    per_class: dict[str, list[bool]] = {}
    for pred, (_, truth) in zip(preds, val_images, strict=True):
        assert pred.fine_label in model.classes
        per_class.setdefault(truth, []).append(pred.fine_label == truth)
    assert set(per_class) == set(model.classes)
    classes_mostly_right = sum(sum(hits) * 2 > len(hits) for hits in per_class.values())
    assert classes_mostly_right >= 2, per_class


def test_top_k_sorted_and_is_a_distribution(model: Model, val_images: list[tuple[Path, str]]) -> None:
    preds = model.predict([str(p) for p, _ in val_images], top_k=2)
    for p in preds:
        assert len(p.top_k) == 2
        probs = [pr for _, pr in p.top_k]
        assert probs == sorted(probs, reverse=True)
        assert all(0.0 <= pr <= 1.0 for pr in probs)
        assert sum(probs) <= 1.0 + 1e-6
        assert p.top_k[0] == (p.fine_label, p.fine_confidence)
    full = model.predict([str(val_images[0][0])], top_k=10)[0]
    assert len(full.top_k) == len(model.classes)  # top_k larger than the class count: every class once
    assert {lab for lab, _ in full.top_k} == set(model.classes)
    assert sum(pr for _, pr in full.top_k) == pytest.approx(1.0, abs=1e-5)


def test_coarse_label_follows_the_hierarchy(model: Model, val_images: list[tuple[Path, str]]) -> None:
    card = model.card
    assert card.coarse_classes and len(card.fine_to_coarse) == card.num_classes
    parent = {c: card.coarse_classes[k] for c, k in zip(card.classes, card.fine_to_coarse, strict=True)}
    assert parent == {"red-apple": "Apple", "green-apple": "Apple", "oat-milk": "Milk"}
    preds = model.predict([str(p) for p, _ in val_images])
    confident = [p for p in preds if p.fine_confidence >= 0.8]
    assert confident, "the tiny model should be confident on some val images"
    for p in confident:
        assert p.coarse_label == parent[p.fine_label]
        assert p.coarse_confidence is not None and 0.0 < p.coarse_confidence <= 1.0 + 1e-9


def test_pil_and_bytes_inputs_match_the_file(model: Model, val_images: list[tuple[Path, str]]) -> None:
    path = val_images[0][0]
    with Image.open(path) as im:
        pil = im.copy()
    from_file, from_bytes, from_pil = model.predict([str(path), path.read_bytes(), pil])
    assert from_bytes.source == "<image 1>" and from_pil.source == "<image 2>"
    for p in (from_bytes, from_pil):
        assert p.level != "error"
        assert p.fine_label == from_file.fine_label
        assert p.fine_confidence == pytest.approx(from_file.fine_confidence, abs=1e-3)
    # A Path object works as well as a str, and is reported as its str.
    assert model.predict([path])[0].source == str(path)


def test_bad_files_are_per_file_errors_in_order(model: Model, val_images: list[tuple[Path, str]],
                                                tmp_path: Path) -> None:
    good = [str(p) for p, _ in val_images[:2]]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(val_images[0][0].read_bytes()[:300])  # a JPEG cut off in its header/scan data
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n", encoding="utf-8")
    missing = tmp_path / "missing.jpg"
    inputs = [good[0], str(corrupt), str(empty), good[1], str(text), str(missing)]

    preds = model.predict(inputs)

    assert [p.source for p in preds] == inputs
    errors = {p.source: p for p in preds if p.level == "error"}
    assert set(errors) == {str(corrupt), str(empty), str(text), str(missing)}
    for p in errors.values():
        assert p.label is None and p.fine_label is None and p.confidence == 0.0 and p.top_k == ()
    assert "corrupt" in errors[str(corrupt)].error
    assert errors[str(empty)].error == "empty file"
    assert "not an image" in errors[str(text)].error
    assert errors[str(missing)].error == "file not found"
    for i in (0, 3):
        assert preds[i].level in ("fine", "coarse") and preds[i].label is not None
    # The good images get the same answer as when predicted alone.
    alone = model.predict(good)
    assert [preds[0].fine_label, preds[3].fine_label] == [p.fine_label for p in alone]


def test_too_many_pixels_is_an_error_not_a_decode(model: Model, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with_declared_size(20_000, 20_000))
    with pytest.raises(Image.DecompressionBombError):  # Pillow itself sees a 400 MP header
        Image.open(bomb)
    (pred,) = model.predict([str(bomb)])
    assert pred.level == "error" and pred.label is None
    assert pred.error.startswith("too many pixels")
    (from_bytes,) = model.predict([bomb.read_bytes()])
    assert from_bytes.level == "error" and from_bytes.error.startswith("too many pixels")


def test_min_confidence_abstains(model: Model, val_images: list[tuple[Path, str]]) -> None:
    paths = [str(p) for p, _ in val_images]
    normal = model.predict(paths)
    # Just above all but the surest prediction (a fixed 0.999 depended on how confident this tiny run is).
    threshold = max(n.confidence for n in normal)
    strict = model.predict(paths, min_confidence=threshold)
    for n, s in zip(normal, strict, strict=True):
        if n.confidence < threshold:
            assert s.level == "unknown" and s.label is None
            # Abstaining keeps the evidence: the fine guess and its confidence are still reported.
            assert s.fine_label == n.fine_label and s.confidence == n.confidence
        else:
            assert s.level == n.level and s.label == n.label
    assert any(s.level == "unknown" for s in strict)
    assert all(p.level != "unknown" for p in model.predict(paths, min_confidence=0.0))


def test_coarse_fallback_when_fine_is_uncertain(model: Model, val_images: list[tuple[Path, str]]) -> None:
    # 1.01: every fine confidence is below the fallback, so the coarse class is used whenever it is surer.
    always = Model(model.net, model.card.with_(coarse_fallback=1.01), model.device, precision="off")
    never = Model(model.net, model.card.with_(coarse_fallback=0.0), model.device, precision="off")
    paths = [str(p) for p, _ in val_images]
    fallback = always.predict(paths)
    for p in fallback:
        assert p.coarse_label is not None and p.coarse_confidence is not None
        if p.coarse_confidence > p.fine_confidence:
            assert p.level == "coarse"
            assert p.label == p.coarse_label and p.confidence == p.coarse_confidence
            assert p.label in model.card.coarse_classes
        else:
            assert p.level == "fine" and p.label == p.fine_label
    assert sum(p.level == "coarse" for p in fallback) >= 1
    assert all(p.level == "fine" and p.label == p.fine_label for p in never.predict(paths))


def test_attributes_are_those_above_threshold(model: Model, val_images: list[tuple[Path, str]]) -> None:
    card = model.card
    assert set(card.attributes) == {"colour=red", "colour=green", "colour=yellow", "lactose_free"}
    assert len(card.attribute_thresholds) == len(card.attributes)
    thr = dict(zip(card.attributes, card.attribute_thresholds, strict=True))
    card = card.with_(attribute_exclusive=())  # thresholds only: conflicts are resolved in their own tests
    everything = Model(model.net, card.with_(attribute_thresholds=(0.0,) * len(card.attributes)), model.device,
                       precision="off")
    nothing = Model(model.net, card.with_(attribute_thresholds=(1.01,) * len(card.attributes)), model.device,
                    precision="off")
    paths = [str(p) for p, _ in val_images]
    raw = everything.predict(paths)
    chosen = Model(model.net, card, model.device, precision="off").predict(paths)
    for r, c in zip(raw, chosen, strict=True):
        probs = dict(r.attributes)
        assert set(probs) == set(card.attributes)
        assert all(0.0 <= v <= 1.0 for v in probs.values())
        assert dict(c.attributes) == pytest.approx({a: p for a, p in probs.items() if p >= thr[a]})
    assert all(p.attributes == () for p in nothing.predict(paths))
    assert any(p.attributes for p in chosen)


def test_prediction_to_dict_is_json_ready(model: Model, val_images: list[tuple[Path, str]]) -> None:
    import json

    p = model.predict([str(val_images[0][0])], top_k=2)[0]
    d = json.loads(json.dumps(p.to_dict()))
    assert d["source"] == str(val_images[0][0])
    assert [t["label"] for t in d["top_k"]] == [lab for lab, _ in p.top_k]
    assert set(d["attributes"]) == {a for a, _ in p.attributes}
    assert d["level"] == p.level and d["error"] is None


def test_embed_rows_are_unit_vectors(model: Model, val_images: list[tuple[Path, str]]) -> None:
    paths = [str(p) for p, _ in val_images]
    emb = model.embed(paths)
    assert emb.shape == (len(paths), model.card.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Same-class images are closer than images of a different coarse class, on average.
    labels = np.array([lab for _, lab in val_images])
    sim = emb @ emb.T
    same = sim[(labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)].mean()
    apple_vs_milk = sim[np.ix_(labels != "oat-milk", labels == "oat-milk")].mean()
    assert same > apple_vs_milk
    assert model.embed([]).shape == (0, model.card.embedding_dim)


def test_embed_raises_on_an_undecodable_image(model: Model, val_images: list[tuple[Path, str]],
                                              tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope", encoding="utf-8")
    with pytest.raises(ImageDecodeError, match="not an image") as info:
        model.embed([str(val_images[0][0]), str(bad)])
    assert info.value.source == str(bad)
    with pytest.raises(ImageDecodeError) as info:  # from a generator: a TypeError ("not subscriptable") before
        model.embed(p for p in (str(val_images[0][0]), str(bad)))
    assert info.value.source == str(bad)
    assert model.embed(str(p) for p, _ in val_images[:2]).shape == (2, model.card.embedding_dim)


def test_top_k_and_min_confidence_per_image(model: Model, val_images: list[tuple[Path, str]]) -> None:
    # The service batches requests that asked for different top-k and abstention into one call.
    every = model.predict([str(p) for p, _ in val_images], top_k=1)
    unsure = min(range(len(every)), key=lambda i: every[i].confidence)  # abstains below a bar under 1
    assert every[unsure].confidence < 1.0
    rest = [i for i in range(len(every)) if i != unsure][:2]
    paths = [str(val_images[i][0]) for i in (rest[0], unsure, rest[1])]
    normal = model.predict(paths, top_k=3)
    mixed = model.predict(paths, top_k=[1, 2, 3], min_confidence=[0.0, (1.0 + every[unsure].confidence) / 2, 0.0])
    assert [len(p.top_k) for p in mixed] == [1, 2, 3]
    assert mixed[1].level == "unknown" and mixed[1].label is None
    assert (mixed[0].label, mixed[2].label) == (normal[0].label, normal[2].label)
    assert mixed[2].top_k == normal[2].top_k
    with pytest.raises(ValueError, match="2 values of top_k for 3 images"):
        model.predict(paths, top_k=[1, 2])


# ------------------------------------------------------------- exclusive attributes (one value per group)


def _attribute_card(attributes: tuple[str, ...], exclusive: tuple[tuple[str, str], ...] = (),
                    thresholds: tuple[float, ...] = ()):
    from skulens.models.card import ModelCard

    return ModelCard("efficientnet_lite0", 64, (0.5,) * 3, (0.5,) * 3, 0.875, ("a", "b"), 8,
                     attributes=attributes, attribute_thresholds=thresholds, attribute_exclusive=exclusive)


def test_exclusive_attribute_pairs_are_same_group_values_no_product_carries_together() -> None:
    from skulens.models.card import exclusive_attribute_pairs

    # The grocery table's shape: strawberry and vanilla on one yoghurt, yellow and green on one package.
    carried = [
        {"flavour=strawberry", "flavour=vanilla", "colour=red"},
        {"flavour=plain", "colour=white", "lactose_free"},
        {"flavour=vanilla", "colour=yellow", "colour=green"},
        {"colour=red", "organic"},
        set(),  # a product without attributes says nothing
    ]
    attributes = ["colour=green", "colour=red", "colour=white", "colour=yellow", "flavour=plain",
                  "flavour=strawberry", "flavour=vanilla", "lactose_free", "organic"]
    assert exclusive_attribute_pairs(carried, attributes) == (
        ("colour=green", "colour=red"), ("colour=green", "colour=white"), ("colour=red", "colour=white"),
        ("colour=red", "colour=yellow"), ("colour=white", "colour=yellow"),
        ("flavour=plain", "flavour=strawberry"), ("flavour=plain", "flavour=vanilla"),
    )
    # Flags never conflict, not even with each other; other groups' values never conflict.
    assert exclusive_attribute_pairs([{"organic"}, {"lactose_free"}], ["lactose_free", "organic"]) == ()
    two_groups = ["colour=red", "flavour=plain"]
    assert exclusive_attribute_pairs([{"colour=red"}, {"flavour=plain"}], two_groups) == ()
    # Only attributes the card has are paired (a value the head does not predict is not in the card).
    assert exclusive_attribute_pairs([{"colour=red"}, {"colour=blue"}], ["colour=red"]) == ()


def test_decide_keeps_only_the_likelier_of_two_exclusive_attributes() -> None:
    from skulens.models.predictor import decide

    attrs = ("colour=green", "colour=red", "colour=yellow",
             "flavour=plain", "flavour=vanilla", "lactose_free")
    exclusive = (("colour=green", "colour=red"), ("colour=green", "colour=yellow"),
                 ("flavour=plain", "flavour=vanilla"))
    card = _attribute_card(attrs, exclusive, (0.5,) * len(attrs))
    fine = np.array([0.9, 0.1])

    def shown(probs: list[float]) -> dict[str, float]:
        p = decide(card, fine, None, np.array(probs), "x", 2, 0.0)
        return dict(p.attributes)

    # plain 0.7 and vanilla 0.9 both pass 0.5: vanilla only. The flag stays beside them.
    assert shown([0.0, 0.0, 0.0, 0.7, 0.9, 0.8]) == pytest.approx({"flavour=vanilla": 0.9,
                                                                   "lactose_free": 0.8})
    assert shown([0.0, 0.0, 0.0, 0.9, 0.7, 0.8]) == pytest.approx({"flavour=plain": 0.9, "lactose_free": 0.8})
    # red and yellow may go together (a product carries both); green conflicts with both and is the likeliest.
    assert shown([0.95, 0.8, 0.6, 0.0, 0.0, 0.0]) == pytest.approx({"colour=green": 0.95})
    # green loses to red; being dropped, it suppresses nothing: yellow (beside red on some product) stays.
    assert shown([0.8, 0.95, 0.6, 0.0, 0.0, 0.0]) == pytest.approx({"colour=red": 0.95, "colour=yellow": 0.6})
    # Below threshold, an attribute conflicts with nothing: the other stays.
    assert shown([0.0, 0.0, 0.0, 0.4, 0.9, 0.0]) == pytest.approx({"flavour=vanilla": 0.9})
    # The result keeps the card's order of attributes.
    assert [a for a, _ in decide(card, fine, None, np.array([0.0, 0.6, 0.7, 0.0, 0.9, 0.8]), "x", 2,
                                 0.0).attributes] == ["colour=red", "colour=yellow", "flavour=vanilla",
                                                      "lactose_free"]
    # Without pairs (an old card) both stay: independent sigmoids, as before.
    old = _attribute_card(attrs, (), (0.5,) * len(attrs))
    both = decide(old, fine, None, np.array([0.0, 0.0, 0.0, 0.7, 0.9, 0.0]), "x", 2, 0.0)
    assert dict(both.attributes) == pytest.approx({"flavour=plain": 0.7, "flavour=vanilla": 0.9})


def test_every_backend_resolves_exclusive_attributes_through_decide() -> None:
    """Model.predict runs decide() on any runner's outputs (PyTorch, ONNX Runtime): one rule for all."""
    import torch

    from skulens.models.inference import HeadOutputs

    attrs = ("flavour=plain", "flavour=vanilla")
    card = _attribute_card(attrs, (attrs,), (0.5, 0.5))

    def runner(images, transform, *, batch_size, embeddings, progress):
        n = len(images)
        return HeadOutputs(np.tile([0.8, 0.2], (n, 1)), None, np.tile([0.7, 0.9], (n, 1)), None)

    stub = Model(None, card, torch.device("cpu"), "off", runner=runner)
    [p] = stub.predict([Image.new("RGB", (80, 80), (200, 200, 200))])
    assert dict(p.attributes) == pytest.approx({"flavour=vanilla": 0.9})


def test_a_trained_card_records_which_colours_never_go_together(tiny_bundle) -> None:
    # The tiny catalogue: red apple, green apple, yellow lactose-free oat milk: no product has two colours.
    card = tiny_bundle.card
    assert card.attribute_exclusive == (("colour=green", "colour=red"), ("colour=green", "colour=yellow"),
                                        ("colour=red", "colour=yellow"))
    assert not any("lactose_free" in pair for pair in card.attribute_exclusive)
