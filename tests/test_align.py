"""Text alignment (text -> image space) and the fusion head, on synthetic embeddings with real MiniLM texts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skulens.models.fusion import FusionConfig, load_fusion, save_fusion, train_fusion
from skulens.search.align import AlignConfig, load_aligner, product_sentences, train_aligner

PRODUCTS = {
    "oat-milk": "Oat milk. A plant-based drink made from oats, sold in a carton.",
    "granny-smith": "Granny Smith apple. A sour, crisp green apple.",
    "banana": "Banana. A long yellow tropical fruit with a soft peel.",
    "red-onion": "Red onion. A purple-red vegetable with a sharp taste, for salads.",
    "orange-juice": "Orange juice. Squeezed oranges in a bottle, with pulp.",
}


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(PRODUCTS), 64))
    y = np.repeat(np.arange(len(PRODUCTS)), 30)
    x = centres[y] + 0.3 * rng.normal(size=(len(y), 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    texts = [product_sentences(name.replace("-", " "), desc) for name, desc in PRODUCTS.items()]
    return x.astype(np.float32), y, texts


def test_product_sentences_cover_title_description_and_info() -> None:
    s = product_sentences("Oat milk", "Made from oats. Sold in a carton of one litre.",
                          "Title: Oatly Oat Drink 1l\nCountry: Sweden")
    assert s[0] == "Oat milk" and "Oatly Oat Drink 1l" in s
    assert any("carton" in t for t in s) and len(s) == len(set(s))


def test_aligner_maps_product_texts_onto_their_photos(clusters, tmp_path: Path) -> None:
    x, y, texts = clusters
    aligner = train_aligner(x, y, texts, config=AlignConfig(steps=150))
    names = [name.replace("-", " ") for name in PRODUCTS]
    q = aligner.encode(names)
    assert q.shape == (5, 64) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    centroids = np.stack([x[y == i].mean(0) for i in range(5)])
    assert ((q @ centroids.T).argmax(1) == np.arange(5)).all()
    # a paraphrase it never saw still lands on the right product
    para = aligner.encode(["a carton of oat drink", "yellow tropical fruit"])
    assert list((para @ centroids.T).argmax(1)) == [0, 2]
    path = aligner.save(tmp_path)
    again = load_aligner(tmp_path)
    assert path.name == "text_align.safetensors" and again is not None
    assert np.allclose(again.encode(names), q, atol=1e-6) and again.info["products"] == 5
    assert load_aligner(tmp_path / "nothing-here") is None
    # two saves at once (two `align`s into one bundle) shared one temporary name: one renamed the other's file away
    # and failed with FileNotFoundError; each now writes its own, and the file is always whole
    import threading

    errors: list[BaseException] = []

    def save_often() -> None:
        try:
            for _ in range(30):
                aligner.save(tmp_path)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    savers = [threading.Thread(target=save_often) for _ in range(3)]
    for t in savers:
        t.start()
    for t in savers:
        t.join()
    assert errors == [] and load_aligner(tmp_path) is not None
    assert sorted(f.name for f in tmp_path.iterdir()) == ["text_align.safetensors"]


def test_aligner_input_errors(clusters) -> None:
    x, y, texts = clusters
    with pytest.raises(ValueError, match="one product index per image"):
        train_aligner(x[:10], y[:9], texts)
    with pytest.raises(ValueError, match="out of range"):
        train_aligner(x[:3], [0, 1, 7], texts)
    with pytest.raises(ValueError, match="at least two products"):
        train_aligner(x[:3], [0, 0, 0], texts)
    with pytest.raises(ValueError, match="at least one text"):
        train_aligner(x[:3], [0, 1, 1], [texts[0], []])


def test_a_torn_or_foreign_aligner_file_is_one_clear_error(tmp_path: Path) -> None:
    """A torn text_align.safetensors was a SafetensorError traceback (exit 1) in every text search, lexical too."""
    from safetensors.numpy import save_file

    from skulens.cli._errors import is_user_error
    from skulens.search.align import AlignerError

    torn = tmp_path / "torn" / "text_align.safetensors"
    torn.parent.mkdir()
    torn.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"kernel": np.zeros((3, 4), np.float32)}, str(foreign))
    odd = tmp_path / "odd.safetensors"
    save_file({"weight": np.zeros((3, 4), np.float32), "bias": np.zeros(4, np.float32)}, str(odd))
    for path in (torn.parent, torn, foreign, odd):
        with pytest.raises(AlignerError, match="skulens align") as err:
            load_aligner(path)
        assert is_user_error(err.value) and str(path if path.is_file() else torn) in str(err.value)  # one line, exit 2


def test_fusion_beats_each_modality_when_each_knows_half(tmp_path: Path) -> None:
    """4 classes: the image tells {0,1} from {2,3}; the text tells {0,2} from {1,3}; only both give all 4."""
    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 4, n)
    img_c, txt_c = rng.normal(size=(2, 16)), rng.normal(size=(2, 8))
    img = img_c[y // 2] + 0.3 * rng.normal(size=(n, 16))
    txt = txt_c[y % 2] + 0.3 * rng.normal(size=(n, 8))
    head = train_fusion(img[:300], txt[:300], y[:300], 4, FusionConfig(epochs=40, hidden=32))
    fused = (head.probabilities(img[300:], txt[300:]).argmax(1) == y[300:]).mean()
    img_only = (head.probabilities(img[300:], None).argmax(1) == y[300:]).mean()
    txt_only = (head.probabilities(None, txt[300:]).argmax(1) == y[300:]).mean()
    assert fused >= 0.95 and img_only <= 0.65 and txt_only <= 0.65
    save_fusion(head, tmp_path, ("a", "b", "c", "d"))
    loaded = load_fusion(tmp_path)
    assert loaded is not None and loaded[1] == ("a", "b", "c", "d")
    assert np.allclose(loaded[0].probabilities(img[300:], txt[300:]), head.probabilities(img[300:], txt[300:]),
                       atol=1e-6)


def test_fuse_cli_and_predict_with_listing_text(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    """The tiny catalogue's listings carry a title: fuse, compare, then predict with the text."""
    import json
    import shutil

    import skulens
    from skulens.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    (tmp_path / "a-file").write_text("x")  # -o a file: one line before any work (it was a traceback at the end)
    assert main(["fuse", str(bundle), "--data", str(tiny_catalogue), "--out", str(tmp_path / "a-file"), "-q"]) == 2
    assert not (bundle / "fusion.safetensors").exists()
    assert main(["fuse", str(bundle), "--data", str(tiny_catalogue), "--out", str(tmp_path / "rep"), "-q"]) == 0
    rep = json.loads((tmp_path / "rep" / "fusion.json").read_text())["val_top1"]
    assert set(rep) >= {"image_only", "text_only", "fused", "bundle_classifier"}
    assert rep["text_only"] == 1.0 and rep["fused"] >= rep["image_only"]
    model = skulens.load(bundle, device="cpu", precision="off")
    photo = min((tiny_catalogue.parent / "val" / "oat-milk").glob("*.jpg"))
    # the title decides when the photo is ambiguous; a missing text falls back to the image
    preds = model.predict([photo, photo], texts=["oat milk", None])
    assert preds[0].fine_label == "oat-milk" and preds[1].level != "error"
    with pytest.raises(ValueError, match="one per image"):
        model.predict([photo], texts=[])
    plain = tmp_path / "plain"
    shutil.copytree(tiny_bundle.bundle, plain)
    with pytest.raises(ValueError, match="skulens fuse"):
        skulens.load(plain).predict([photo], texts=["oat milk"])
    # a class enrolled after the fusion head: one line, exit 2 (a 16-line traceback, exit 1)
    from skulens.search.enroll import enroll

    enroll(bundle, "blue-box", [min((tiny_catalogue.parent / "val" / "red-apple").glob("*.jpg"))] * 2,
           data=tiny_catalogue)
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(bundle), str(photo), "--text",
                        "oat milk", "-q"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "trained for other classes" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_aligner_fitted_for_another_image_model_is_refused_where_it_meets_a_model(
        tiny_bundle, tiny_catalogue: Path, tmp_path: Path, caplog) -> None:
    """An aligner of another model (`align -m pretrained:... -o BUNDLE`, or --align FILE) mapped text into a space
    the index does not use: 'yellow banana' ranked arbitrary products, without a word. The aligner keeps the
    image model's embeddings of four fixed probe photos; a model that does not reproduce them is refused."""
    import logging
    import shutil

    import skulens
    from skulens.search.align import AlignerError, align_catalogue
    from skulens.search.engine import SearchEngine
    from skulens.search.index import create_index

    root = Path(shutil.copytree(tiny_catalogue.parent, tmp_path / "cat"))
    (root / "products.csv").write_text("label,title,description\nred-apple,Red apple,A sweet red apple.\n"
                                       "green-apple,Green apple,A sour apple.\noat-milk,Oat milk,A drink of oats.\n",
                                       encoding="utf-8")
    catalogue = skulens.load_catalogue(root / tiny_catalogue.name)
    mine = skulens.load(tiny_bundle.bundle, device="cpu")
    other = skulens.load("pretrained:efficientnet_lite0", device="cpu")
    aligner, _, _ = align_catalogue(other, catalogue, steps=5, progress=False)
    path = aligner.save(tmp_path / "other_align.safetensors")
    again = load_aligner(path)
    assert again.probe is not None and again.probe.shape == (4, mine.card.embedding_dim)
    again.check_model(other)  # its own model, in either numerics
    again.check_model(skulens.load("pretrained:efficientnet_lite0", device="cpu", precision="bf16"))
    with pytest.raises(AlignerError, match="fitted for another image model") as info:
        again.check_model(mine)
    # the advice names the model in use, not the aligner's own bundle (for which it is right already)
    assert f"skulens align --model {mine.path}`" in str(info.value)
    index = create_index("faiss", tmp_path / "ix", mine.card.embedding_dim)
    with caplog.at_level(logging.WARNING, logger="skulens.search.align"):
        engine = SearchEngine(mine, index, again)
    assert engine.aligner is None and "text search goes on without it" in caplog.text
    # enrolment with a description: the text part is left out, warned, and the product is enrolled from its photos
    from skulens.search.enroll import enroll

    bundle = Path(shutil.copytree(tiny_bundle.bundle, tmp_path / "bundle"))
    again.save(bundle)
    photos = sorted((root / "val" / "red-apple").glob("*.jpg"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skulens.search.align"):
        enroll(bundle, "dark-apple", photos, text="A very dark red apple.", data=root / tiny_catalogue.name)
    assert "enrolment (photos only) goes on without it" in caplog.text
    assert "dark-apple" in skulens.load(bundle, device="cpu").classes
