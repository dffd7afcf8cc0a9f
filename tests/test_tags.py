"""Listing tags (skulens.search.tags, `skulens tag`, POST /v1/tag) on the tiny bundle and synthetic photos."""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skulens
from skulens.data.catalogue import Product
from skulens.models.card import exclusive_attribute_pairs
from skulens.search.tags import (
    MAX_PHRASE_CHARS,
    Tagger,
    TaggingError,
    check_vocabulary,
    dominant_colours,
    parse_vocabulary,
)

# One phrase per product; the aligner below sends each exactly onto the embedding of that product's photo.
PHRASES = {"red-apple": "shiny red fruit", "green-apple": "sour green fruit", "oat-milk": "yellow oat drink carton"}
CORRUPT = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


@pytest.fixture(scope="module")
def photos(tiny_catalogue: Path) -> dict[str, Path]:
    """The first val photo of each product."""
    root = tiny_catalogue.parent / "val"
    return {label: min((root / label).glob("*.jpg")) for label in PHRASES}


@pytest.fixture(scope="module")
def aligned_bundle(tiny_bundle, model, photos, tmp_path_factory) -> Path:
    """A copy of the tiny bundle with a text aligner whose answer is known: a real TextAligner (real MiniLM)
    whose projection maps PHRASES[label] exactly onto the embedding of photos[label]."""
    from skulens.models.text import load_text_encoder
    from skulens.search.align import TextAligner

    bundle = tmp_path_factory.mktemp("aligned") / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    labels = list(PHRASES)
    targets = model.embed([str(photos[lab]) for lab in labels])  # P x D, unit rows
    text = load_text_encoder("minilm").encode([PHRASES[lab] for lab in labels])  # P x 384
    weight = targets.T @ np.linalg.pinv(text.T)  # weight @ text_i = target_i
    TextAligner(weight, np.zeros(targets.shape[1]), 0.05).save(bundle)
    return bundle


@pytest.fixture(scope="module")
def aligned_model(aligned_bundle):
    return skulens.load(aligned_bundle, device="cpu", precision="off")


def _aligned_tagger(aligned_model) -> Tagger:
    from skulens.search.align import load_aligner

    return Tagger(aligned_model, aligner=load_aligner(aligned_model.path))


# ------------------------------------------------------------------------------------------------ core

def test_category_path_follows_the_decision_and_attributes_are_conflict_free(model, tiny_catalogue) -> None:
    paths = sorted(str(p) for p in (tiny_catalogue.parent / "val").rglob("*.jpg"))
    tags = Tagger(model).tag(paths)
    preds = model.predict(paths)
    card = model.card
    parent = {c: card.coarse_classes[k] for c, k in zip(card.classes, card.fine_to_coarse, strict=True)}
    exclusive = {frozenset(p) for p in exclusive_attribute_pairs([a.split(";") for a in
                                                                  ("colour=red", "colour=green",
                                                                   "colour=yellow;lactose_free")], card.attributes)}
    assert exclusive, "the tiny catalogue's colours are never together"
    for t, p in zip(tags, preds, strict=True):
        assert t.source == p.source and t.error is None
        assert t.label == p.label
        if p.level == "fine":
            assert [s.label for s in t.category] == [parent[p.label], p.label]
            assert t.category[-1].confidence == pytest.approx(p.confidence, abs=1e-6)
            assert t.category_path == f"{parent[p.label]} > {p.label.replace('-', ' ')}"
        else:
            assert [s.label for s in t.category] == [p.label]
        names = [a for a, _ in t.attributes]
        assert not any(frozenset((a, b)) in exclusive for a in names for b in names if a != b)
        assert t.tags == ()  # no vocabulary, no tags


def test_a_card_without_exclusive_pairs_takes_them_from_the_catalogue(model, photos) -> None:
    from skulens.data.catalogue import Product

    m = copy.copy(model)  # every attribute above threshold: the card alone would keep them all
    m.card = model.card.with_(attribute_exclusive=(), attribute_thresholds=(0.0,) * len(model.card.attributes))
    everything = Tagger(m).tag([str(photos["red-apple"])])[0]
    assert len(everything.attributes) == len(model.card.attributes)
    products = {"red-apple": Product("red-apple", title="Red apple", attributes=("colour=red",)),
                "green-apple": Product("green-apple", attributes=("colour=green",)),
                "oat-milk": Product("oat-milk", title="Oat milk", attributes=("colour=yellow", "lactose_free"))}
    resolved = Tagger(m, products=products).tag([str(photos["red-apple"])])[0]
    colours = [a for a, _ in resolved.attributes if a.startswith("colour=")]
    assert len(colours) == 1  # red, green and yellow are never together: the likeliest is kept
    best = max((p, a) for a, p in everything.attributes if a.startswith("colour="))[1]
    assert colours == [best]
    if resolved.label == "red-apple":  # titles come from the products
        assert resolved.category_path.endswith("Red apple")


@pytest.mark.parametrize(("rgb", "name"), [((255, 0, 0), "red"), ((0, 0, 255), "blue"), ((20, 160, 40), "green"),
                                           ((250, 220, 30), "yellow"), ((255, 255, 255), "white")])
def test_a_plain_colour_is_named(rgb, name) -> None:
    assert dominant_colours(Image.new("RGB", (80, 60), rgb)) == ((name, 1.0),)


def test_the_product_colour_wins_over_a_white_background_and_the_edges() -> None:
    a = np.full((120, 120, 3), 250, np.uint8)
    a[35:85, 35:85] = (200, 30, 30)  # a red product on a white sheet
    a[:10] = (0, 0, 255)  # something blue at the edge, outside the product region
    assert [c for c, _ in dominant_colours(Image.fromarray(a))] == ["red"]
    half = np.zeros((100, 100, 3), np.uint8)
    half[:, :50], half[:, 50:] = (200, 30, 30), (30, 60, 210)
    got = dict(dominant_colours(Image.fromarray(half)))
    assert set(got) == {"red", "blue"} and got["red"] == pytest.approx(0.5, abs=0.05)


def test_vocabulary_tags_are_ranked_in_the_aligned_space(aligned_model, photos) -> None:
    tagger = _aligned_tagger(aligned_model)
    assert tagger.resolved_mode() == "aligned"  # no product texts: auto means the image-text space
    vocab = [*PHRASES.values(), "shiny red fruit"]  # a repeat is dropped
    out = tagger.tag([str(photos[lab]) for lab in PHRASES], vocabulary=vocab, top_k=3, min_score=-1.0)
    for label, t in zip(PHRASES, out, strict=True):
        assert len(t.tags) == 3 and [s for _, s in t.tags] == sorted((s for _, s in t.tags), reverse=True)
        assert t.tags[0] == (PHRASES[label], pytest.approx(1.0, abs=1e-4))  # its own embedding: cosine 1
    one = tagger.tag([str(photos["oat-milk"])], vocabulary=vocab, top_k=1, min_score=-1.0)[0]
    assert [p for p, _ in one.tags] == [PHRASES["oat-milk"]]
    none = tagger.tag([str(photos["oat-milk"])], vocabulary=vocab, top_k=0)[0]
    assert none.tags == ()  # (min_score above 1 is refused now, as the CLI and REST refuse it)
    assert skulens.tag([str(photos["oat-milk"])], aligned_model, vocabulary=vocab)[0].tags[0][0] == PHRASES["oat-milk"]


def test_text_mode_scores_phrases_through_the_recognised_products_texts(model, photos) -> None:
    from skulens.data.catalogue import Product

    products = {
        "red-apple": Product("red-apple", title="Red apple", description="A sweet red apple with crisp flesh."),
        "green-apple": Product("green-apple", title="Green apple", description="A sour green apple for baking pies."),
        "oat-milk": Product("oat-milk", title="Oat milk", description="Oat drink in a carton, dairy free and vegan."),
    }
    tagger = Tagger(model, products=products)
    assert tagger.resolved_mode() == "text"
    vocab = ["vegan dairy-free drink", "apple for baking pies", "sweet red apple"]
    preds = model.predict([str(photos[lab]) for lab in PHRASES])
    out = tagger.tag([str(photos[lab]) for lab in PHRASES], vocabulary=vocab, top_k=3, min_score=-1.0)
    expected = {"red-apple": "sweet red apple", "green-apple": "apple for baking pies",
                "oat-milk": "vegan dairy-free drink"}
    for label, p, t in zip(PHRASES, preds, out, strict=True):
        if p.fine_label == label and p.fine_confidence > 0.6:  # the texts of the product it recognised
            assert t.tags[0][0] == expected[label], t.tags


def test_a_new_text_encoder_is_never_compared_with_the_old_ones_vectors(model, tmp_path) -> None:
    import shutil

    from skulens.data.catalogue import Product
    from skulens.models.text import DEFAULT_TEXT_MODEL, _model_path

    products = {c: Product(c, title=c.replace("-", " "), description=f"A {c.replace('-', ' ')}.")
                for c in model.classes}
    tagger = Tagger(model, products=products)
    first = tagger.vocabulary(["sweet red apple", "oat drink"])
    old = tagger._pieces[3]
    assert tagger.vocabulary(["sweet red apple", "oat drink"]) is first  # cached while the encoder is the same
    # what `skulens text-tune` does to a running server: the encoder it loads is another one from now on
    retuned = tmp_path / "retuned"
    shutil.copytree(_model_path(DEFAULT_TEXT_MODEL), retuned)
    tagger.text_model = str(retuned)
    again = tagger.vocabulary(["sweet red apple", "oat drink"])
    assert again is not first and tagger._pieces[3] is tagger.text_encoder() is not old
    np.testing.assert_allclose(again.matrix, first.matrix, atol=1e-5)  # same weights here, so the same scores


def test_vocabulary_checks() -> None:
    assert check_vocabulary([" red  apple ", "Red apple", "", "milk"]) == ("red apple", "milk")
    assert parse_vocabulary("# colours\nred\n\n  # more\nblue\n") == ("red", "blue")
    with pytest.raises(TaggingError, match="empty"):
        check_vocabulary(["", "   "])
    with pytest.raises(TaggingError, match="empty"):
        parse_vocabulary("# only a comment\n")
    with pytest.raises(TaggingError, match=f"at most {MAX_PHRASE_CHARS}"):
        check_vocabulary(["ok", "x" * (MAX_PHRASE_CHARS + 1)])
    with pytest.raises(TaggingError, match="more than 3"):
        check_vocabulary(["a", "b", "c", "d"], max_phrases=3)
    with pytest.raises(TypeError):
        check_vocabulary("red")  # type: ignore[arg-type]


def test_what_cannot_be_tagged_says_why(model, photos) -> None:
    bare = Tagger(model)  # no aligner, no product texts
    with pytest.raises(TaggingError, match="skulens align"):
        bare.tag([str(photos["red-apple"])], vocabulary=["red"])
    with pytest.raises(TaggingError, match="no text aligner"):
        Tagger(model, mode="aligned").vocabulary(["red"])
    with pytest.raises(TaggingError, match="no product here has a description"):  # it said "give --data" to
        Tagger(model, mode="text").vocabulary(["red"])                              # a user who had given one
    out = bare.tag([CORRUPT, str(photos["red-apple"]), Image.open(photos["oat-milk"])])
    assert out[0].source == "<image 0>" and out[0].error and out[0].category == ()
    assert out[0].to_row()["error"] == out[0].error
    from dataclasses import replace as _replace

    row = _replace(out[1], source="=HYPERLINK(1).jpg").to_row()  # a CSV feed opened in a spreadsheet: text
    assert row["source"] == "'=HYPERLINK(1).jpg" and row == {**out[1].to_row(), "source": row["source"]}
    assert out[1].error is None and out[1].category and out[2].source == "<image 2>"
    # the Python API checks what the CLI and POST /v1/tag check (2.5 failed in a slice; -1, NaN, 5 gave no tags)
    texts = Tagger(model, products={"red-apple": Product("red-apple", description="A shiny red apple.")})
    for kwargs, match in (({"top_k": 2.5}, "top_k"), ({"top_k": -1}, "top_k"), ({"min_score": float("nan")},
                          "min_score"), ({"min_score": 5}, "min_score")):
        with pytest.raises(ValueError, match=match):
            texts.tag([str(photos["red-apple"])], vocabulary=["red"], **kwargs)
    one = texts.tag((str(p) for p in [photos["red-apple"]]), vocabulary=["red"], top_k=0)  # a generator
    assert len(one) == 1 and one[0].error is None and one[0].tags == ()


# ------------------------------------------------------------------------------------------------ CLI

def _cli(*args: str) -> int:
    from skulens.cli import main

    return main(list(args))


def test_quiet_is_quiet_in_a_fresh_process(aligned_bundle, photos, tmp_path) -> None:
    """-q: tag, align and other commands that load MiniLM printed its INFO lines and a "Loading weights" bar."""
    import subprocess
    import sys

    vocab = tmp_path / "tags.txt"
    vocab.write_text("\n".join(PHRASES.values()) + "\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "tag", "-m", str(aligned_bundle),
                        str(photos[next(iter(PHRASES))]), "--vocabulary", str(vocab), "-q"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr == "" and json.loads(r.stdout)["tags"], r.stderr[-2000:]


def test_the_python_api_loads_the_text_encoder_without_a_bar() -> None:
    """`skulens.tag(..., progress=False)` (and every other caller of the text encoder from Python) printed
    transformers' "Loading weights" bar; the CLI's -q silenced it only there."""
    import subprocess
    import sys

    code = "from skulens.models.text import TextEncoder\nprint(TextEncoder().encode(['oat milk']).shape)"
    r = subprocess.run([sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "(1, 384)", r.stderr[-2000:]
    assert "Loading weights" not in r.stderr, r.stderr[-2000:]


def test_cli_writes_json_lines_and_csv(aligned_bundle, photos, tmp_path, capsys) -> None:
    vocab = tmp_path / "tags.txt"
    vocab.write_text("# listing words\n" + "\n".join(PHRASES.values()) + "\n", encoding="utf-8")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(CORRUPT)
    files = [str(photos[lab]) for lab in PHRASES]
    out = tmp_path / "tags.jsonl"
    assert _cli("tag", "-m", str(aligned_bundle), *files, str(bad), "--vocabulary", str(vocab), "-k", "2",
                "--min-score", "-1", "-o", str(out), "-q") == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in rows] == [*files, str(bad)]
    for label, r in zip(PHRASES, rows[:-1], strict=True):
        assert r["error"] is None and r["category"] and r["category_path"]
        assert r["tags"][0]["phrase"] == PHRASES[label] and len(r["tags"]) == 2
        assert all(isinstance(v, float) for v in r["colours"].values())
    assert rows[-1]["error"] and rows[-1]["category"] == []
    assert "1 of 4 image(s) could not be read" in capsys.readouterr().err

    out_csv = tmp_path / "tags.csv"  # the format follows the file name
    assert _cli("tag", "-m", str(aligned_bundle), *files, "--vocabulary", str(vocab), "--min-score", "-1",
                "-o", str(out_csv), "-q") == 0
    table = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert [r["source"] for r in table] == files
    for label, r in zip(PHRASES, table, strict=True):
        assert r["tags"].split(";")[0].split(":")[0] == PHRASES[label]
        assert r["category"] and r["error"] == ""
        assert all(":" in part for part in r["colours"].split(";"))


def test_cli_refuses_bad_vocabularies_with_one_line(aligned_bundle, tiny_bundle, photos, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    long = tmp_path / "long.txt"
    long.write_text("ok\n" + "y" * (MAX_PHRASE_CHARS + 5) + "\n", encoding="utf-8")
    photo = str(photos["red-apple"])
    cases = [(("--vocabulary", str(empty)), "vocabulary is empty"),
             (("--vocabulary", str(long)), f"at most {MAX_PHRASE_CHARS}"),
             (("--vocabulary", str(tmp_path / "missing.txt")), "cannot read it")]
    for extra, message in cases:
        assert _cli("tag", "-m", str(aligned_bundle), photo, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    good = tmp_path / "good.txt"
    good.write_text("red\n", encoding="utf-8")
    assert _cli("tag", "-m", str(tiny_bundle.bundle), photo, "--vocabulary", str(good)) == 2  # no aligner, no texts
    assert "skulens align" in capsys.readouterr().err
    assert _cli("tag", "-m", str(aligned_bundle), str(tmp_path / "none-here")) == 1  # the one photo is missing


def test_a_bad_vocabulary_file_is_refused_before_torch_loads(aligned_bundle, tmp_path) -> None:
    import subprocess
    import sys

    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    code = ("import sys\nfrom skulens.cli import main\n"
            f"rc = main(['tag', '-m', {str(aligned_bundle)!r}, 'photo.jpg', '--vocabulary', {str(empty)!r}])\n"
            "print('TORCH', 'torch' in sys.modules)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "vocabulary is empty" in r.stderr
    assert r.stdout.strip().endswith("TORCH False")


# ------------------------------------------------------------------------------------------------ REST

@pytest.fixture(scope="module")
def client(aligned_bundle, aligned_model, tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from skulens.serve.app import create_app
    from skulens.serve.settings import ServeSettings

    vocab = tmp_path_factory.mktemp("vocab") / "server.txt"
    vocab.write_text("\n".join(PHRASES.values()) + "\n", encoding="utf-8")
    settings = ServeSettings(model=str(aligned_bundle), device="cpu", tag_vocabulary=str(vocab), warmup=False)
    with TestClient(create_app(settings, model=aligned_model)) as c:
        yield c


def test_rest_tags_a_photo_like_the_python_api(client, aligned_model, photos) -> None:
    data = photos["green-apple"].read_bytes()
    files = {"image": ("apple.jpg", data, "image/jpeg")}
    r = client.post("/v1/tag", files=files, data={"vocabulary": list(PHRASES.values()), "min_score": "-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = _aligned_tagger(aligned_model).tag([data], vocabulary=list(PHRASES.values()), min_score=-1.0)[0]
    t = body["tags"]
    assert body["vocabulary"] == "request" and t["source"] == "apple.jpg"
    assert [s["label"] for s in t["category"]] == [s.label for s in direct.category]
    assert t["category_path"] == direct.category_path and t["attributes"].keys() == dict(direct.attributes).keys()
    assert [x["phrase"] for x in t["tags"]] == [p for p, _ in direct.tags]
    assert t["tags"][0]["phrase"] == PHRASES["green-apple"]
    assert set(t["colours"]) == {c for c, _ in direct.colours}
    server = client.post("/v1/tag", files=files, data={"min_score": "-1", "top_k": "1"}).json()  # no vocabulary sent
    assert server["vocabulary"] == "server" and [x["phrase"] for x in server["tags"]["tags"]] == [PHRASES["green-apple"]]


def test_rest_refuses_bad_input_with_a_clear_message(client, photos) -> None:
    good = {"image": ("apple.jpg", photos["red-apple"].read_bytes(), "image/jpeg")}
    r = client.post("/v1/tag", files={"image": ("broken.jpg", CORRUPT, "image/jpeg")})
    assert 400 <= r.status_code < 500 and "broken.jpg" in r.json()["detail"]
    r = client.post("/v1/tag", files=good, data={"vocabulary": ["", "  "]})
    assert r.status_code == 422 and "vocabulary is empty" in r.json()["detail"]
    r = client.post("/v1/tag", files=good, data={"vocabulary": [f"phrase {i}" for i in range(201)]})
    assert r.status_code == 422 and "at most 200" in r.json()["detail"]
    r = client.post("/v1/tag", files=good, data={"vocabulary": ["z" * (MAX_PHRASE_CHARS + 1)]})
    assert r.status_code == 422 and f"at most {MAX_PHRASE_CHARS}" in r.json()["detail"]
    assert client.post("/v1/tag", files=good).status_code == 200  # still serving


def test_a_bad_server_vocabulary_fails_at_startup(aligned_bundle, tiny_bundle, model, tmp_path) -> None:
    from skulens.config import ConfigError
    from skulens.serve.settings import ServeSettings
    from skulens.serve.state import ServiceState

    with pytest.raises(ConfigError, match="no such file"):
        ServeSettings(model=str(aligned_bundle), tag_vocabulary=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="vocabulary is empty"):  # with the settings, before a model loads
        ServeSettings(model=str(aligned_bundle), device="cpu", tag_vocabulary=str(empty))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("cr\xe8me\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.txt: not UTF-8 \(byte 0xe8 at position 2, line 1\)"):
        ServeSettings(model=str(aligned_bundle), device="cpu", tag_vocabulary=str(bad))
    words = tmp_path / "words.txt"
    words.write_text("red\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="skulens align"):  # the plain tiny bundle has no aligner and no texts
        ServiceState.load(ServeSettings(model=str(tiny_bundle.bundle), device="cpu", tag_vocabulary=str(words)),
                          model)
    # `skulens serve` loads before the server starts: one line and exit 2 (it was uvicorn's startup traceback
    # and its exit code 3, which skulens keeps for storage failures); nothing listens
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "skulens.cli", "serve", "--model", str(aligned_bundle), "--device",
                           "cpu", "--tag-vocabulary", str(empty), "--port", "9"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    assert "vocabulary is empty" in done.stderr and "Traceback" not in done.stderr


def test_a_manifests_title_and_text_columns_are_the_products_texts_in_python_as_in_rest(
        model, tiny_catalogue: Path, photos, tmp_path: Path) -> None:
    """A manifest catalogue without products.csv: `skulens.tag` (and `skulens tag`) read only product sheets,
    so the vocabulary was refused and the category named the label, where POST /v1/tag (the service's
    `class_products`) read the manifest's title/text columns."""
    titled = {"red-apple": ("Red Delicious", "A sweet red apple for snacking."),
              "green-apple": ("Granny Smith", "A sour green apple for baking."),
              "oat-milk": ("Oat drink", "A carton of oat milk, dairy free.")}
    root = tmp_path / "catalogue"
    shutil.copytree(tiny_catalogue.parent, root)
    with open(tiny_catalogue, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=[*(c for c in rows[0] if c not in ("title", "text")), "title", "text"])
        w.writeheader()
        w.writerows({**r, "title": titled[r["label"]][0], "text": titled[r["label"]][1]} for r in rows)
    out = skulens.tag([str(photos["green-apple"])], model, data=manifest, vocabulary=["baking", "snacking"])
    assert out[0].error is None and out[0].tags  # scored through the products' texts (it was refused)
    predicted = model.predict([str(photos["green-apple"])])[0].fine_label
    assert out[0].category[-1].title == titled[predicted][0]  # the manifest's title, not the label's words
    from skulens.data.catalogue import load_catalogue
    from skulens.search.catalogue_index import catalogue_records

    records, _ = catalogue_records(load_catalogue(manifest, val_fraction=0))
    assert {r.label: r.title for r in records} == {k: v[0] for k, v in titled.items()}
    assert all(titled[r.label][1] in r.text for r in records)


def test_a_tagger_made_again_encodes_only_the_product_texts_that_are_new(model) -> None:
    """A service makes its tagger again after every enrolment; it encoded every product's texts again at the next
    vocabulary (a request timed out behind it). It starts from the old tagger's vectors now."""
    products = {c: Product(c, title=c.replace("-", " "), description=f"A {c.replace('-', ' ')}.")
                for c in model.classes}
    old = Tagger(model, products=products)
    first = old.vocabulary(["sweet red apple", "oat drink"])
    encoder = old.text_encoder()
    seen: list[str] = []
    real = encoder.encode

    def counting(texts, *args, **kwargs):
        seen.extend(texts)
        return real(texts, *args, **kwargs)

    encoder.encode = counting
    try:
        changed = {**products, model.classes[0]: Product(model.classes[0], title="A new title", description="")}
        new = Tagger(model, products=changed)
        new.reuse_text_vectors(old)
        again = new.vocabulary(["sweet red apple", "oat drink"])
    finally:
        del encoder.encode
    # the phrases and the changed product's pieces: no other product's text again
    assert {"sweet red apple", "oat drink"} < set(seen) <= {"sweet red apple", "oat drink", "A new title",
                                                            "A new title."}
    assert again.matrix.shape == first.matrix.shape
    np.testing.assert_allclose(np.delete(again.matrix, 0, axis=1), np.delete(first.matrix, 0, axis=1), atol=1e-5)
