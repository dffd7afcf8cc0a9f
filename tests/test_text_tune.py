"""Fine-tuning the text encoder of search (`skulens text-tune`) and the hybrid (lexical + dense) text search.

The synonym test can fail: the query "easy peelers" is in the satsumas' description only, and the index
knows the products by their names alone, so only an encoder that learnt the catalogue's words ranks it first
(the frozen MiniLM puts the dish soap first: it is checked, so the test cannot pass by accident)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")

import skulens
from skulens.cli import main
from skulens.data.catalogue import Catalogue, CatalogueError, Product
from skulens.models.text import DEFAULT_TEXT_MODEL, TEXT_ENCODER_DIR, bundle_text_model, load_text_encoder
from skulens.search.engine import TEXT_MODES, SearchEngine, product_document, product_pieces
from skulens.search.index import IndexRecord, create_index
from skulens.search.lexical import BM25, tokens
from skulens.search.text_tune import (
    TuneConfig,
    catalogue_pairs,
    catalogue_text,
    masked_document,
    read_query_log,
    tune_text_encoder,
)

# Six products; the synonym "easy peelers" is in the satsumas' description, never in a title.
SHOP = {
    "satsumas": ("Satsumas", "Citrus", "Small sweet citrus fruit with a loose skin, sold as easy peelers."),
    "oat-milk": ("Oat milk", "Milk", "A plant-based drink made from oats, in a yellow carton."),
    "rye-bread": ("Rye bread", "Bread", "Dark sourdough bread baked with whole rye flour."),
    "green-apple": ("Green apple", "Apple", "A sour green apple, good for baking pies."),
    "dish-soap": ("Dish soap", "Cleaning", "Washing-up liquid that cuts grease."),
    "dark-chocolate": ("Dark chocolate", "Sweets", "A bar of bitter chocolate with 70% cocoa."),
}
SYNONYM, TARGET = "easy peelers", "satsumas"
# The default pairs of six products (34), 3 short epochs at a higher rate: 18 steps, ~10-25 s on 2 CPU cores.
# Without WordNet's anchors (tests/test_lexicon.py has theirs): these tests are about the catalogue's own words,
# and in a tune this short one more anchor (satsumas' WordNet definition) moves "easy peelers" off its product.
QUICK = TuneConfig(epochs=3, lr=3e-4, seed=0, lexicon_anchors=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image_files(bundle: Path) -> dict[str, str]:
    return {f: _sha(bundle / f) for f in ("model.safetensors", "card.json")}


def _shop(root: Path) -> Catalogue:
    products = {label: Product(label=label, coarse_label=coarse, title=title, description=desc)
                for label, (title, coarse, desc) in SHOP.items()}
    return Catalogue(root=root, layout="manifest", splits={"train": []}, classes=sorted(products), coarse_classes=[],
                     hierarchy={label: p.coarse_label or "" for label, p in products.items()}, attributes=[],
                     products=products)


def _names_only_index(path: Path, dim: int):
    """The shop's index knows its products by name only (no descriptions)."""
    rng = np.random.default_rng(0)
    index = create_index("faiss", str(path), dim)
    vecs = rng.normal(size=(len(SHOP), dim)).astype(np.float32)
    index.add([IndexRecord(id=label, product_id=label, label=label, coarse_label=coarse, title=title)
               for label, (title, coarse, _) in SHOP.items()], vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    index.save()
    return index


def _rank(engine: SearchEngine, query: str, mode: str = "hybrid") -> list[str]:
    return [h.product_id for h in engine.by_text([query], k=len(SHOP), mode=mode)[0]]


@pytest.fixture(scope="module")
def described(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny photo catalogue with a products.csv (titles and descriptions)."""
    root = tmp_path_factory.mktemp("described") / "cat"
    shutil.copytree(tiny_catalogue.parent, root)
    with open(root / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "title", "description"])
        w.writerow(["red-apple", "Red apple", "A sweet red apple, crisp and juicy."])
        w.writerow(["green-apple", "Green apple", "A sour green apple for baking."])
        w.writerow(["oat-milk", "Oat milk", "A plant-based drink made from oats."])
    return root / "manifest.csv"


@pytest.fixture()
def bundle(tiny_bundle, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, out)
    return out


def test_a_synonym_from_a_description_finds_its_product_after_text_tune_and_not_before(bundle: Path,
                                                                                       tmp_path: Path) -> None:
    model = skulens.load(bundle, device="cpu", precision="off")
    index = _names_only_index(tmp_path / "ix", model.card.embedding_dim)
    images_before, files_before = _image_files(bundle), {p.name for p in bundle.iterdir()}

    before = SearchEngine(model, index)
    assert bundle_text_model(bundle) is None and not before.text_encoder().fine_tuned
    assert _rank(before, SYNONYM)[0] != TARGET  # the frozen MiniLM does not know the shop's word
    assert _rank(before, SYNONYM, "text")[0] != TARGET
    assert _rank(before, SYNONYM, "lexical") == []  # no name shares a word with the query

    res = tune_text_encoder(bundle, _shop(tmp_path), config=QUICK)
    assert res.folder == bundle / TEXT_ENCODER_DIR and res.products == len(SHOP) and res.steps > 0
    assert (res.folder / "model.safetensors").is_file() and not list(res.folder.glob("*.bin"))
    umask = os.umask(0)
    os.umask(umask)  # readable as the rest of the bundle (safetensors writes 0600)
    assert (res.folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    info = json.loads((res.folder / "text_tune.json").read_text())
    assert info["pairs"] == res.pairs and info["config"]["seed"] == 0

    # the model's bundle carries its encoder: an engine over the same index now finds the product
    after = SearchEngine(skulens.load(bundle, device="cpu", precision="off"), index)
    assert after.text_encoder().fine_tuned
    assert _rank(after, SYNONYM)[0] == TARGET
    assert _rank(after, SYNONYM, "text")[0] == TARGET
    assert _rank(after, "oat milk")[0] == "oat-milk"  # names still find their products
    # ... and the image model is untouched: the same bytes, and only text_encoder/ is new in the bundle
    assert _image_files(bundle) == images_before
    assert {p.name for p in bundle.iterdir()} - files_before == {TEXT_ENCODER_DIR}


def test_text_tune_cli_with_a_query_log_keeps_the_image_model_byte_identical(bundle: Path, described: Path,
                                                                             tmp_path: Path) -> None:
    root = described.parent
    log = tmp_path / "log.csv"
    log.write_text("query,product_id\ndairy free milk,oat-milk\ncooking apples,green-apple\n", encoding="utf-8")
    images = _image_files(bundle)
    photo = min((root / "val").rglob("*.jpg"))
    pred_before = skulens.load(bundle, device="cpu", precision="off").predict([photo])[0]

    r = subprocess.run([sys.executable, "-m", "skulens.cli", "text-tune", "--model", str(bundle), "--data",
                        str(described), "--queries", str(log), "--epochs", "1", "-q"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "text encoder fine-tuned on" in r.stderr and "2 from" in r.stderr and "image model is unchanged" in r.stderr
    assert r.stdout == ""  # stdout carries results only; the trainer's own printing is off
    # -q: no progress bars or INFO lines from the libraries either (loading, widget examples, writing shards)
    assert "it/s]" not in r.stderr and "Loading" not in r.stderr and "INFO" not in r.stderr, r.stderr[-1500:]
    assert _image_files(bundle) == images
    assert bundle_text_model(bundle) == str(bundle / TEXT_ENCODER_DIR)
    pred_after = skulens.load(bundle, device="cpu", precision="off").predict([photo])[0]
    assert pred_after.label == pred_before.label and pred_after.confidence == pytest.approx(pred_before.confidence)


def test_a_bundle_without_a_fine_tuned_encoder_uses_minilm(tiny_bundle, tmp_path: Path) -> None:
    assert bundle_text_model(tiny_bundle.bundle) is None
    assert load_text_encoder(bundle=tiny_bundle.bundle) is load_text_encoder()  # the shared bundled MiniLM
    assert bundle_text_model("pretrained:efficientnet_lite0") is None
    half = tmp_path / "half"
    shutil.copytree(tiny_bundle.bundle, half)
    (half / TEXT_ENCODER_DIR).mkdir()  # an interrupted copy: no weights, no text_tune.json
    assert bundle_text_model(half) is None
    model = skulens.load(half, device="cpu", precision="off")
    engine = SearchEngine(model, _names_only_index(tmp_path / "ix", model.card.embedding_dim))
    assert engine.text_encoder().name == DEFAULT_TEXT_MODEL
    for mode in ("hybrid", "text", "lexical"):
        assert _rank(engine, "oat milk", mode)[0] == "oat-milk", mode
    with pytest.raises(ValueError, match="skulens align"):
        engine.by_text(["oat milk"], mode="aligned")


def test_bad_query_logs_and_empty_queries_get_clear_errors(bundle: Path, tmp_path: Path, tiny_catalogue: Path,
                                                           described: Path, capsys: pytest.CaptureFixture) -> None:
    products = {label: None for label in SHOP}
    cases = {"query;product_id\nx;oat-milk\n": "needs 'query' and 'product_id' columns",
             "query,product_id\n  ,oat-milk\n": r":2: empty query",
             "query,product_id\noat drink,oat-milk\ncola,coca-cola\n": r":3: product_id 'coca-cola' is not in the cat",
             # a class of the catalogue without a products.csv row: not "unknown" (the user looked for a typo)
             "query,product_id\nsour citrus,lime\n": r":2: product_id 'lime' has no product text",
             "query,product_id\ngreen apple\n": r":2: fewer cells than the header's columns",
             "query,product_id\n": "no rows", "": "no header"}
    for i, (text, message) in enumerate(cases.items()):
        p = tmp_path / f"log{i}.csv"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(CatalogueError, match=message):
            read_query_log(p, products, classes=[*SHOP, "lime"])
    # a products.csv of labels alone has no texts either (it tuned on the label words, and said it had)
    import dataclasses

    bare = skulens.load_catalogue(described)
    bare = dataclasses.replace(bare, products={k: dataclasses.replace(v, title="", description="", info="")
                                               for k, v in bare.products.items()})
    with pytest.raises(CatalogueError, match="no product texts"):
        tune_text_encoder(bundle, bare, config=QUICK)
    from skulens.search.align import align_catalogue

    with pytest.raises(CatalogueError, match="no product texts"):
        align_catalogue(skulens.load(bundle, device="cpu"), bare)
    with pytest.raises(CatalogueError, match="no such file"):
        read_query_log(tmp_path / "missing.csv", products)
    for name, data in (("binary.csv", bytes(range(256)) * 4), ("latin1.csv", "query,product_id\nmjölk,oat-milk\n"
                                                                             .encode("latin-1"))):
        (tmp_path / name).write_bytes(data)  # was a UnicodeDecodeError traceback
        with pytest.raises(CatalogueError, match="not UTF-8 .byte 0x"):
            read_query_log(tmp_path / name, products)
    # through the CLI: exit 2, one line, nothing trained and nothing written into the bundle
    bad = tmp_path / "log1.csv"
    assert main(["text-tune", "--model", str(bundle), "--data", str(described), "--queries", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "empty query" in err and "Traceback" not in err
    assert not (bundle / TEXT_ENCODER_DIR).exists()
    assert main(["text-tune", "--model", str(bundle), "--queries", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    # a catalogue without product texts has nothing to learn from
    with pytest.raises(CatalogueError, match="no product texts"):
        tune_text_encoder(bundle, skulens.load_catalogue(tiny_catalogue), config=QUICK)
    # empty text queries: the engine and the CLI say so
    engine = SearchEngine(None, _names_only_index(tmp_path / "ix", 8))
    for queries in ([""], ["oat milk", "   "], ["!!!"], ["oat milk", " . "]):  # "!!!" answered arbitrary products
        with pytest.raises(ValueError, match="empty text query"):
            engine.by_text(queries)
    assert engine.by_text(["7up"], mode="lexical") == [[]]  # a digit is something to search by
    assert main(["search", "--index", str(tmp_path / "ix"), "--text", " "]) == 2
    assert "empty query" in capsys.readouterr().err


def test_catalogue_pairs_texts_and_bm25() -> None:
    milk = Product(label="Arla-Milk", coarse_label="Milk", title="Arla Lactose Free Milk",
                   description="Skimmed milk for people with lactose intolerance. Great on porridge.",
                   info="Title: Mellanmjolk laktosfri\nManufacturer and volume: ARLA KO,\xa01l\nNutrition values:\n"
                        "   fat 1.5 gram\nURL: https://example.org/milk",
                   attributes=("lactose_free", "colour=white", "packaging=carton"))
    text = catalogue_text(milk)
    assert "Attributes: lactose free, white, carton" in text and "ARLA KO, 1l" in text
    assert "Mellanmjolk laktosfri" in text and "https" not in text and "gram" not in text
    doc = product_document(milk.title, text)
    assert doc.startswith("Arla Lactose Free Milk. Skimmed milk") and "\n" not in doc
    assert product_pieces(milk.title, text)[:2] == [milk.title, doc]
    # the pair's positive leaves out what the anchor says (inverse cloze), never the whole product
    masked = masked_document(milk.title, text, "porridge")
    assert "porridge" not in masked and "lactose intolerance" in masked
    assert not masked_document("Satsumas", "Satsumas. Sold as easy peelers.", "easy peelers").count("peelers")
    cat = Catalogue(root=Path("."), layout="manifest", splits={"train": []}, classes=["Arla-Milk"], coarse_classes=[],
                    hierarchy={"Arla-Milk": "Milk"}, attributes=[], products={"Arla-Milk": milk})
    anchors = [a for a, _, _ in catalogue_pairs(cat, max_anchors=20)]
    assert anchors[0] == milk.title and "lactose free milk" in anchors and "ARLA KO" in anchors
    assert "porridge" in anchors and anchors.index("white milk") == len(anchors) - 1  # colours come last

    assert "lactose free" in tokens("Lactose-free") and "1.5%" in tokens("fett 1,5%") and "creme" in tokens("Crème")
    bm = BM25(["red apple sweet", "green apple sour", "oat milk drink"])
    s = bm.scores(["green apple", "coffee"])
    assert s[0].argmax() == 1 and s[0, 2] == 0 and not s[1].any()  # a product sharing no word scores 0
    assert not BM25([]).scores(["x"]).size


def test_cli_and_engine_agree_on_modes_and_defaults() -> None:
    from skulens.cli import search as cli_search

    assert cli_search.TEXT_MODES == TEXT_MODES and cli_search.TUNE_EPOCHS == TuneConfig().epochs


def _retune_in_place(folder: Path) -> None:
    """A later text-tune, cheaply: the encoder's weights change (one tensor nudged) and nothing else."""
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    name = max((k for k in state if k.endswith("weight") and state[k].ndim == 2), key=lambda k: state[k].numel())
    state[name] = state[name] + 0.05
    save_file(state, str(weights), metadata={"format": "pt"})


def test_aligner_fusion_support_and_recommenders_use_the_fine_tuned_encoder_and_refuse_a_retuned_one(
        bundle: Path, tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.models.fusion import load_fusion
    from skulens.models.text import BUNDLE_TEXT_MODEL, TextEncoderMismatch, text_fingerprint
    from skulens.recommend.recommenders import item_vectors
    from skulens.search.align import heads_on_other_text, load_aligner, train_aligner
    from skulens.serve.settings import ServeSettings
    from skulens.serve.state import _load_support

    tune_text_encoder(bundle, _shop(tmp_path), config=QUICK)
    tuned, frozen = load_text_encoder(bundle=bundle), load_text_encoder()
    assert tuned.fine_tuned and tuned is not frozen
    fingerprint = text_fingerprint(str(bundle / TEXT_ENCODER_DIR))
    assert fingerprint.startswith("tuned:")

    # the text aligner is fitted on the bundle's encoder and says so; reloaded, it projects that encoder's vectors
    rng = np.random.default_rng(0)
    dim = skulens.load(bundle, device="cpu", precision="off").card.embedding_dim
    x = rng.normal(size=(12, dim)).astype(np.float32)
    aligner = train_aligner(x / np.linalg.norm(x, axis=1, keepdims=True), [0, 1, 2] * 4,
                            [["oat milk"], ["rye bread"], ["dish soap"]], bundle=bundle)
    assert (aligner.text_model, aligner.fingerprint) == (BUNDLE_TEXT_MODEL, fingerprint)
    aligner.save(bundle)
    loaded = load_aligner(bundle)
    assert loaded is not None and loaded.fingerprint == fingerprint
    q = ["easy peelers"]
    assert np.allclose(loaded.encode(q), aligner.project(tuned.encode(q)), atol=1e-5)
    assert not np.allclose(loaded.encode(q), aligner.project(frozen.encode(q)), atol=1e-3)
    elsewhere = aligner.save(tmp_path / "aligner.safetensors")  # `skulens align --out` outside the bundle
    assert np.allclose(load_aligner(elsewhere, bundle=bundle).encode(q), loaded.encode(q), atol=1e-6)
    with pytest.raises(TextEncoderMismatch, match="is not a bundle: name the bundle it was fitted for"):
        load_aligner(elsewhere).encode(q)  # read without its bundle: it advised `align --model <its folder>`

    # the fusion head too (fitted by `skulens fuse`), and prediction with a listing text runs on it
    assert main(["fuse", "--model", str(bundle), "--data", str(tiny_catalogue), "--out", str(tmp_path / "rep"),
                 "-q"]) == 0
    fusion = load_fusion(bundle)
    assert fusion is not None and (fusion.text_model, fusion.text_fingerprint) == (BUNDLE_TEXT_MODEL, fingerprint)
    assert json.loads((tmp_path / "rep" / "fusion.json").read_text())["text_encoder"].startswith("fine-tuned")
    model = skulens.load(bundle, device="cpu", precision="off")
    photo = min((tiny_catalogue.parent / "val" / "oat-milk").glob("*.jpg"))
    assert model.predict([photo], texts=["oat milk"])[0].level != "error"

    # support replies keep the frozen MiniLM unless told (the tuned one answered worse), the recommenders'
    # product content reads the bundle's encoder
    _, responder, error = _load_support(ServeSettings(model=str(bundle)), model)
    assert error is None and responder is not None and responder.encoder is frozen
    _, responder, error = _load_support(ServeSettings(model=str(bundle), text_model="bundle"), model)
    assert error is None and responder is not None and responder.encoder is tuned
    # a --text-model typo, or a folder with no model: refused at the start (the service ran, /readyz ready, and
    # answered every question 503; the folder was a transformers traceback)
    from skulens.config import ConfigError

    for wrong in ("bundel", str(tiny_catalogue.parent)):
        with pytest.raises(ConfigError, match="cannot load a text encoder"):
            _load_support(ServeSettings(model=str(bundle), text_model=wrong), model)
    products = _shop(tmp_path).products
    content = item_vectors(products)  # no model: the bundled MiniLM
    assert not np.allclose(item_vectors(products, model)["satsumas"][:384], content["satsumas"][:384], atol=1e-3)
    assert heads_on_other_text(bundle) == []

    # a later text-tune: both heads now name the command that fits them again, and refuse to run until then
    _retune_in_place(bundle / TEXT_ENCODER_DIR)
    assert heads_on_other_text(bundle) == ["align", "fuse"] == heads_on_other_text(bundle / "card.json")
    with pytest.raises(TextEncoderMismatch, match="skulens align --model"):
        load_aligner(bundle).encode(q)
    # text search goes on without the stale aligner in its default hybrid mode; the aligned mode refuses
    engine = SearchEngine(model, _names_only_index(tmp_path / "ix", dim), load_aligner(bundle))
    assert _rank(engine, "oat milk")[0] == "oat-milk"
    with pytest.raises(TextEncoderMismatch):
        _rank(engine, "oat milk", "aligned")
    # tags through the stale aligner: the vocabulary cannot be scored, a TaggingError (CLI: one line, exit 2;
    # REST: 422) that names the refit, not a traceback and a 500
    from skulens.search.tags import Tagger, TaggingError

    with pytest.raises(TaggingError, match="skulens align --model"):
        Tagger(model, aligner=load_aligner(bundle), mode="aligned").vocabulary(["citrus"])
    with pytest.raises(TextEncoderMismatch, match="skulens fuse --model"):
        skulens.load(bundle, device="cpu", precision="off").predict([photo], texts=["oat milk"])
    assert main(["fuse", "--model", str(bundle), "--data", str(tiny_catalogue), "--out", str(tmp_path / "rep"),
                 "-q"]) == 0
    assert heads_on_other_text(bundle) == ["align"]


def test_a_swap_cut_short_keeps_the_old_encoder_readable_and_the_next_swap_puts_it_back(tmp_path: Path) -> None:
    """The encoder is swapped in by two renames; a kill between them left no text_encoder/ and search quietly fell
    back to MiniLM. The old one is read where it was put aside, and the next swap puts it back first."""
    import os
    import time

    from skulens.models.text import TEXT_TUNE_INFO, bundle_text_model
    from skulens.search.text_tune import _swap_in, _sweep_work_folders

    bundle = tmp_path / "bundle"
    aside = bundle / ".text_encoder.old"
    aside.mkdir(parents=True)
    for name in (TEXT_TUNE_INFO, "model.safetensors"):
        (aside / name).write_text("old")
    assert bundle_text_model(bundle) == str(aside)  # the kill came between the two renames
    new = tmp_path / "staged"
    new.mkdir()
    for name in (TEXT_TUNE_INFO, "model.safetensors"):
        (new / name).write_text("new")
    # the next swap cut short again at its last rename: the old encoder was put back first, so it is still there
    import skulens.search.text_tune as tt

    real_replace = os.replace

    def cut(src: object, dst: object) -> None:
        if Path(str(src)) == new:
            raise OSError("killed")
        real_replace(src, dst)

    tt.os.replace = cut  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="killed"):
            _swap_in(new, bundle / TEXT_ENCODER_DIR)
    finally:
        tt.os.replace = real_replace  # type: ignore[assignment]
    assert bundle_text_model(bundle) == str(aside) and (aside / "model.safetensors").read_text() == "old"
    _swap_in(new, bundle / TEXT_ENCODER_DIR)
    assert bundle_text_model(bundle) == str(bundle / TEXT_ENCODER_DIR) and not aside.exists()
    assert (bundle / TEXT_ENCODER_DIR / "model.safetensors").read_text() == "new"
    # a killed run's work folder goes once it is a day old; a younger one may be a run still going
    old_work, young_work = bundle / ".text-tune.a", bundle / ".text-tune.b"
    old_work.mkdir()
    young_work.mkdir()
    os.utime(old_work, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    _sweep_work_folders(bundle)
    assert not old_work.exists() and young_work.exists()


def test_the_sampler_trains_every_row_of_a_product_with_many_queries() -> None:
    """A query log with 200 rows for one product: once the other products ran out, its rows were left in
    batches of one and dropped (31 of 201 log rows trained on grocery), while the summary claimed them all."""
    from skulens.search.text_tune import OneRowPerProduct

    products = ["oat"] * 200 + [f"p{i}" for i in range(7)]
    anchors = [f"oat query {i}" for i in range(200)] + [f"name {i}" for i in range(7)]
    sampler = OneRowPerProduct(anchors, products, batch_size=8, seed=0)
    batches = sampler.batches()
    seen = {i for b in batches for i in b}
    assert seen == set(range(len(products)))  # every row trained, each epoch
    for b in batches:
        assert 1 < len(b) <= 8 and len({products[i] for i in b}) == len(b)  # no product twice: no false negative
    # a catalogue where no batch runs short keeps its batches exactly (no rows come back)
    even = OneRowPerProduct([f"a{i}" for i in range(16)], [f"p{i % 8}" for i in range(16)], batch_size=8, seed=0)
    assert sorted(len(b) for b in even.batches()) == [8, 8]


def test_the_sampler_holds_the_whole_run_epoch_after_epoch() -> None:
    from skulens.search.text_tune import OneRowPerProduct

    products = ["oat"] * 12 + [f"p{i}" for i in range(5)]
    anchors = [f"oat query {i}" for i in range(12)] + [f"name {i}" for i in range(5)]
    run = OneRowPerProduct(anchors, products, batch_size=4, seed=3, epochs=3)
    epochs = [run.batches(e) for e in range(3)]
    assert list(run) == [b for batches in epochs for b in batches] and len(run) == sum(map(len, epochs))
    for batches in epochs:  # every row once an epoch (rows that come back as negatives aside)
        assert {i for b in batches for i in b} == set(range(len(products)))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert run.epoch_at(0) == 0 and run.epoch_at(len(epochs[0])) == 1 and run.epoch_at(len(run)) == 3


def test_text_tune_trains_a_longer_second_epoch_whole(bundle: Path, tmp_path: Path) -> None:
    """The trainer sizes every epoch (and the LR schedule) from the first epoch's length: handed one epoch at a
    time, a second epoch with more batches lost its last ones (on grocery 3 of 35, every run)."""
    from skulens.search.text_tune import OneRowPerProduct, training_pairs

    log = tmp_path / "log.csv"
    log.write_text("query,product_id\nmandarins,satsumas\nclementines,satsumas\ntangerines,satsumas\n"
                   "small oranges,satsumas\n", encoding="utf-8")
    cat, config = _shop(tmp_path), TuneConfig(epochs=2, batch_size=4, lr=3e-4, seed=3, lexicon_anchors=0)
    pairs, _ = training_pairs(cat, config, log)
    lengths = [len(OneRowPerProduct([a for a, _, _ in pairs], [p for _, _, p in pairs], 4, 3).batches(e))
               for e in range(2)]
    assert lengths[1] > lengths[0]  # the case that was cut short
    res = tune_text_encoder(bundle, cat, queries=log, config=config)
    assert res.steps == sum(lengths) and res.query_pairs == 4
    assert json.loads((res.folder / "text_tune.json").read_text())["steps"] == sum(lengths)


def test_text_tune_refuses_a_seed_out_of_range_in_one_line(tiny_bundle, capsys) -> None:
    from skulens.cli import main

    assert main(["text-tune", "--model", str(tiny_bundle.bundle), "--seed", str(2**32), "-q"]) == 2
    assert "seed must be in [0, 2**32)" in capsys.readouterr().err


def test_text_tune_learns_enrolled_products_and_their_query_log_lines(bundle: Path, described: Path,
                                                                      tmp_path: Path) -> None:
    """A product enrolled after training had no pairs, and a query log naming it was refused ("unknown
    product_id"), while search, predict and the index all knew it."""
    from skulens.data.catalogue import load_catalogue
    from skulens.search.enroll import enroll

    photos = sorted((described.parent / "val" / "red-apple").glob("*.jpg"))[:2]
    enroll(bundle, "cider-apple", photos, title="Cider apple", text="A bitter apple pressed for cider.",
           data=described)
    log = tmp_path / "log.csv"
    log.write_text("query,product_id\nscrumpy fruit,cider-apple\n", encoding="utf-8")
    res = tune_text_encoder(bundle, load_catalogue(described), queries=log, config=QUICK)
    assert res.products == 4 and res.query_pairs == 1
