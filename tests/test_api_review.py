"""The public Python API as a new user calls it (a review's findings): a PIL image is treated as the same file
is, inputs and settings are checked with clear errors, and no setting is ignored in silence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skulens
from conftest import make_image
from skulens.config import ConfigError
from skulens.models.bundle import BundleError


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


@pytest.fixture(scope="module")
def big_png(tmp_path_factory) -> Path:
    """A photo well over the model's resize size (PNG: no JPEG draft decoding in either path)."""
    path = tmp_path_factory.mktemp("api") / "big.png"
    make_image("oat-milk", np.random.default_rng(3), size=72).resize((300, 220), Image.Resampling.BICUBIC).save(path)
    return path


def test_a_pil_image_is_predicted_as_its_file_is(model, big_png: Path) -> None:
    """Files were shrunk to the card's resize size before the transform, PIL images were not: a different
    picture reached the model (on grocery val every photo's confidence differed, some by 0.25)."""
    [from_path] = model.predict([big_png], top_k=3)
    [from_bytes] = model.predict([big_png.read_bytes()], top_k=3)
    with Image.open(big_png) as im:
        [from_pil] = model.predict([im], top_k=3)
        embedded = model.embed([im])
    for p in (from_bytes, from_pil):
        assert p.fine_label == from_path.fine_label
        assert [c for _, c in p.top_k] == pytest.approx([c for _, c in from_path.top_k], abs=1e-6)
    assert np.allclose(embedded, model.embed([big_png]), atol=1e-6)
    with Image.open(big_png) as im:
        untouched = im.size
        model.predict([im])
        assert im.size == untouched  # the caller's image is not shrunk in place


def test_inputs_and_settings_are_checked(model, big_png: Path) -> None:
    for bad, match in (([None], r"images\[0\]: a path, bytes or a PIL image, not NoneType"),
                       ([big_png, 123], r"images\[1\]: .* not int"),
                       ([np.zeros((8, 8, 3), np.uint8)], r"images\[0\].*Image\.fromarray"),
                       (np.zeros((2, 8, 8, 3), np.uint8), "not a NumPy array"),
                       (None, "not NoneType")):
        with pytest.raises(TypeError, match=match):
            model.predict(bad)
    for kw, match in (({"top_k": 0}, "top_k must be"), ({"top_k": -1}, "top_k must be"),
                      ({"top_k": 2.5}, "top_k must be"), ({"min_confidence": 1.5}, "min_confidence must be"),
                      ({"min_confidence": math.nan}, "min_confidence must be"),
                      ({"batch_size": 0}, "batch_size must be"), ({"batch_size": -1}, "batch_size must be")):
        with pytest.raises(ValueError, match=match):
            model.predict([big_png], **kw)
    with pytest.raises(TypeError, match="min_confidence: a number"):
        model.predict([big_png], min_confidence="0.5")
    with pytest.raises(ValueError, match="batch_size must be"):
        model.embed([big_png], batch_size=0)
    [ok] = model.predict([big_png], top_k=np.int64(2), min_confidence=np.float32(0.0))
    assert len(ok.top_k) == 2


def test_tag_refuses_one_image_on_its_own(model, big_png: Path) -> None:
    for one in (str(big_png), big_png.read_bytes()):
        with pytest.raises(TypeError, match="give a list of images"):
            skulens.tag(one, model)


def test_settings_that_would_be_ignored_are_refused(model, tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give out"):  # minutes of baseline work were thrown away
        skulens.evaluate(model, tiny_catalogue, baseline=True, progress=False)
    with pytest.raises(ValueError, match="loaded already"):
        skulens.evaluate(model, tiny_catalogue, device="cuda", progress=False)
    with pytest.raises(ValueError, match="loaded already"):
        skulens.evaluate(model, tiny_catalogue, backend="onnx", progress=False)
    with pytest.raises(ValueError, match="loaded already"):
        skulens.tag([tiny_catalogue.parent / "val" / "oat-milk" / "oat-milk_000.jpg"], model, device="cuda")
    for kw in ({"top_k": 3}, {"min_score": 0.99}, {"mode": "aligned"}):  # read by nothing without a vocabulary
        with pytest.raises(ValueError, match="setting\\(s\\) of the vocabulary tags; give a vocabulary"):
            skulens.tag([tiny_catalogue.parent / "val" / "oat-milk" / "oat-milk_000.jpg"], model, **kw)
    for precision in ("fp8", "bogus"):
        with pytest.raises(ValueError, match="precision must be one of"):
            skulens.load(tiny_bundle.bundle, device="cpu", precision=precision)
    with pytest.raises(ValueError, match="full precision is 'off'"):
        skulens.load(tiny_bundle.bundle, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        skulens.load(tiny_bundle.bundle, device="cpu", precision="fp16")
    for size in (0, -5):
        with pytest.raises(ValueError, match="image_size must be"):
            skulens.pretrained("efficientnet_lite0", image_size=size)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really")
    with pytest.raises(BundleError, match="backend='onnx'"):
        skulens.load(onnx)
    with pytest.raises(ValueError, match="PyTorch only"):  # the backend was ignored
        skulens.load("pretrained:efficientnet_lite0", backend="onnx")
    with pytest.raises(BundleError, match="no classifier"):  # it blamed the data's labels
        skulens.evaluate("pretrained:efficientnet_lite0", data=tiny_catalogue)
    from skulens.cli import main

    assert main(["export", "--model", str(onnx), "--out", str(tmp_path / "x.onnx")]) == 2  # not "--backend onnx"


def test_evaluate_refuses_a_file_as_its_report_folder_before_scoring(model, tiny_catalogue: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """out= naming a file was pathlib's FileExistsError, raised from mkdir after every photo had been scored."""
    from skulens.evaluate import evaluator

    monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("scored before out was checked"))
    taken = tmp_path / "a.jpg"
    taken.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="a file; out is the folder the report is written into"):
        skulens.evaluate(model, tiny_catalogue, out=taken, progress=False)


def test_train_takes_a_train_config_and_checks_it(tiny_catalogue: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="freeze"):
        skulens.train(skulens.TrainConfig(data=str(tiny_catalogue), out=str(tmp_path / "x"), freeze="bogus"))
    assert not (tmp_path / "x").exists()
    # a TrainConfig sets every field: a preset or a config file beside it was silently covered by its defaults
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 3\n")
    for extra in ({"preset": "best"}, {"config_file": cfg}):
        with pytest.raises(TypeError, match="whole config"):
            skulens.train(skulens.TrainConfig(data=str(tiny_catalogue), out=str(tmp_path / "y")), **extra)
    assert not (tmp_path / "y").exists()


def test_predict_takes_a_generator_and_refuses_one_string_of_texts(tiny_bundle, tiny_catalogue: Path) -> None:
    model = skulens.load(tiny_bundle.bundle, device="cpu", precision="off")
    photos = sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))[:3]
    listed = model.predict(photos)
    from_gen = model.predict(p for p in photos)  # it was "object of type 'generator' has no len()"
    assert [(p.source, p.label, p.confidence) for p in from_gen] == [(p.source, p.label, p.confidence) for p in listed]
    with pytest.raises(TypeError, match="one text per image"):  # "abc" was a text per character
        model.predict(photos, texts="abc")
