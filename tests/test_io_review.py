"""Inputs and outputs at the edges: `predict -o` file names, caller's PIL images under the decoder's rules,
one bundle-folder rule for text-tune, rank 0 alone writing self-training's pseudo-labels, and the text search
cache surviving metadata-only index writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.cli import main
from skulens.data.decode import DEFAULT_MAX_ASPECT

# 26:1, over DEFAULT_MAX_ASPECT: the decoder refuses it before any pixel is decoded.
STRIP = (int(100 * (DEFAULT_MAX_ASPECT + 1)), 100)


# --- 1. predict -o: a .json name for a JSON-lines file is refused, as `skulens count` refuses it -------------


def test_predict_refuses_a_json_out_file_and_names_jsonl(tiny_bundle, tiny_catalogue: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(min((tiny_catalogue.parent / "val" / "red-apple").glob("*.jpg")))
    out = tmp_path / "preds.json"
    assert main(["predict", "-m", str(tiny_bundle.bundle), photo, "-o", str(out), "-q"]) == 2
    assert not out.exists()
    assert ".jsonl" in capsys.readouterr().err
    ok = tmp_path / "preds.jsonl"
    assert main(["predict", "-m", str(tiny_bundle.bundle), photo, "-o", str(ok), "-q"]) == 0
    assert json.loads(ok.read_text().splitlines()[0])["source"] == photo
    tags = tmp_path / "tags.json"  # the same rule for `skulens tag`, before its model loads
    assert main(["tag", "-m", str(tiny_bundle.bundle), photo, "-o", str(tags), "-q"]) == 2
    assert not tags.exists() and ".jsonl" in capsys.readouterr().err


def test_predict_with_a_plain_pretrained_backbone_is_a_one_line_usage_error(
        tiny_catalogue: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`predict -m pretrained:NAME` (a spelling the README gives for embeddings) ended in a traceback (exit 1)."""
    photo = str(min((tiny_catalogue.parent / "val" / "red-apple").glob("*.jpg")))
    for engine in ([], ["--engine", "ray", "-o", "/nonexistent-skulens/preds.parquet"]):
        assert main(["predict", "-m", "pretrained:efficientnet_lite0", photo, "-q", *engine]) == 2
        err = capsys.readouterr().err
        assert "no classifier" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# --- 2. a caller's PIL image goes through the decoder's rules ---------------------------------------------


def test_tag_refuses_a_pil_image_the_decoder_refuses(tiny_bundle) -> None:
    from skulens.api import tag

    strip = Image.new("RGB", STRIP, (200, 30, 30))
    fine = Image.new("RGB", (80, 80), (200, 30, 30))
    rows = tag([strip, fine], tiny_bundle.bundle, device="cpu")
    assert rows[0].error is not None and "extreme aspect ratio" in rows[0].error
    assert rows[1].error is None and rows[1].label is not None


def test_dominant_colours_put_a_transparent_pil_image_on_white() -> None:
    from skulens.search.tags import dominant_colours

    clear = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # a plain convert("RGB") makes this black
    assert dominant_colours(clear)[0][0] == "white"


def test_count_refuses_a_pil_image_the_decoder_refuses(detector: Path) -> None:
    from skulens.detect.count import count_products
    from skulens.detect.detector import load_detector

    det = load_detector(detector, device="cpu")
    strip = Image.new("RGB", STRIP, (200, 30, 30))
    (result, image), = count_products(det, [strip], min_score=0.0)
    assert image is None and result.error is not None and "extreme aspect ratio" in result.error
    from skulens.data.decode import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):  # the detector's own entry too
        det.detect([strip])


# --- 3. text-tune finds the bundle by the one rule (models.bundle.bundle_folder) --------------------------


def _shop(root: Path):
    from skulens.data.catalogue import Catalogue, Product

    products = {label: Product(label=label, title=label.replace("-", " ").title(), description=desc)
                for label, desc in {"oat-milk": "A plant-based drink made from oats.",
                                    "rye-bread": "Dark sourdough bread baked with rye flour."}.items()}
    return Catalogue(root=root, layout="manifest", splits={"train": []}, classes=sorted(products),
                     coarse_classes=[], hierarchy={}, attributes=[], products=products)


@pytest.fixture()
def tuned_folders(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders tune_text_encoder would write into (the tuning itself is skipped)."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("datasets")
    from skulens.search import text_tune

    seen: list[Path] = []
    monkeypatch.setattr(text_tune, "_tune", lambda folder, *a, **k: seen.append(folder))
    return seen


def test_text_tune_takes_the_bundle_folder_its_card_or_an_interrupted_swap(tuned_folders: list[Path],
                                                                           tmp_path: Path) -> None:
    from skulens.models.bundle import BundleError
    from skulens.search.text_tune import tune_text_encoder

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "card.json").write_text("{}")
    (bundle / "model.safetensors").write_bytes(b"")
    cat = _shop(tmp_path)
    tune_text_encoder(bundle, cat)
    tune_text_encoder(bundle / "card.json", cat)
    # A kill inside save_bundle's swap left only .bundle.old: the bundle rule puts it back.
    bundle.rename(tmp_path / ".bundle.old")
    tune_text_encoder(bundle, cat)
    assert tuned_folders == [bundle] * 3 and (bundle / "card.json").is_file()
    with pytest.raises(BundleError, match="not a skulens bundle"):
        tune_text_encoder(tmp_path / "elsewhere", cat)


# --- 5. the text search cache: re-embedded when the texts change, not on a metadata update -----------------


class _CountingEncoder:
    """A stand-in sentence encoder: a hashed bag of words; counts the texts it embeds."""

    def __init__(self) -> None:
        self.texts = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 32] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_text_search_reembeds_products_only_when_their_texts_change(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    from skulens.search.engine import SearchEngine
    from skulens.search.index import IndexRecord, create_index

    index = create_index("faiss", str(tmp_path / "idx"), 8)
    records = [IndexRecord(id="a", product_id="oat-milk", label="oat-milk", title="Oat milk", text="From oats."),
               IndexRecord(id="b", product_id="rye-bread", label="rye-bread", title="Rye bread", text="Sourdough.")]
    vecs = np.eye(2, 8, dtype=np.float32)
    index.add(records, vecs)
    engine = SearchEngine(None, index)
    encoder = _CountingEncoder()
    monkeypatch.setattr(engine, "text_encoder", lambda: encoder)

    engine.by_text(["oat drink"], mode="text")
    first = encoder.texts
    assert first > 1  # the products' pieces, then the query
    index.update_metadata("oat-milk", price=1.25, in_stock=True)  # no text changed
    hits = engine.by_text(["oat drink"], mode="text")[0]
    assert encoder.texts == first + 1  # the query alone: the products' vectors were kept
    assert hits[0].record.metadata["price"] == 1.25  # the hits carry the current metadata
    pieces_before = {p for ps in engine._product_texts(None).pieces for p in ps}
    index.upsert([dataclasses.replace(records[1], text="Sourdough with caraway.")], vecs[1:])
    before = encoder.texts
    engine.by_text(["oat drink"], mode="text")
    pieces_after = {p for ps in engine._product_texts(None).pieces for p in ps}
    assert any("caraway" in p for p in pieces_after)
    # a text changed: its new pieces are embedded, and the query; every other piece's vector is kept (all of them
    # were embedded again, under the index lock: a service's searches behind it timed out)
    assert encoder.texts - before == len(pieces_after - pieces_before) + 1 and pieces_after - pieces_before
