"""Search end to end on the tiny catalogue: index build, image/text/more-like-this search, filters,
metadata updates, enrolment into the index, and the Milvus Lite backend — through the CLI as a user runs it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skulens
from skulens.cli import main
from skulens.search.align import load_aligner
from skulens.search.engine import SearchEngine, rank_fusion
from skulens.search.index import IndexRecord, SearchHit, create_index, open_index

DESCRIPTIONS = {
    "red-apple": ("Red apple", "A sweet red apple, crisp and juicy."),
    "green-apple": ("Green apple", "A sour green apple for baking."),
    "oat-milk": ("Oat milk", "A plant-based drink made from oats, in a yellow carton."),
}


@pytest.fixture(scope="module")
def catalogue(tiny_catalogue: Path, tmp_path_factory) -> Path:
    """A copy of the tiny catalogue with a products.csv (titles, descriptions, a catalogue photo each)."""
    from conftest import make_image

    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("shop") / "cat"
    shutil.copytree(tiny_catalogue.parent, root)
    with open(root / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "title", "description", "image"])
        (root / "catalogue").mkdir()
        for label, (title, desc) in DESCRIPTIONS.items():
            make_image(label, rng).save(root / "catalogue" / f"{label}.jpg")
            w.writerow([label, title, desc, f"catalogue/{label}.jpg"])
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def index_dir(tiny_bundle, catalogue: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ix") / "faiss"
    meta = out.parent / "stock.csv"
    meta.write_text("product_id,in_stock,price\nred-apple,true,3.5\ngreen-apple,false,2\noat-milk,true,1.9\n")
    assert main(["index", "build", "--model", str(tiny_bundle.bundle), "--catalogue", str(catalogue), "--out",
                 str(out), "--metadata", str(meta), "-q"]) == 0
    return out


def _val(catalogue: Path) -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted((catalogue.parent / "val").rglob("*.jpg"))]


def test_catalogue_products_csv_is_read(catalogue: Path) -> None:
    cat = skulens.load_catalogue(catalogue)
    assert cat.products["oat-milk"].title == "Oat milk" and "oats" in cat.products["oat-milk"].description
    assert cat.products["oat-milk"].coarse_label == "Milk" and cat.products["oat-milk"].image.is_file()


def test_index_holds_every_train_photo_plus_catalogue_photos(index_dir: Path) -> None:
    index = open_index(index_dir)
    assert len(index) == 24 + 3 and index.product_ids() == set(DESCRIPTIONS)
    rec = index.records("red-apple")[0]
    assert rec.coarse_label == "Apple" and rec.title == "Red apple" and rec.metadata == {"in_stock": True, "price": 3.5}


def test_search_by_photo_finds_the_product(index_dir: Path, tiny_bundle, catalogue: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    val = _val(catalogue)
    assert main(["search", "--index", str(index_dir), "--model", str(tiny_bundle.bundle), "-k", "3",
                 "--image", *[str(p) for p, _ in val]]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(val)
    top = [line["hits"][0]["product_id"] for line in lines]
    assert np.mean([t == label for t, (_, label) in zip(top, val, strict=True)]) >= 0.75
    assert all(len({h["product_id"] for h in line["hits"]}) == 3 for line in lines)  # distinct products
    scores = [h["score"] for h in lines[0]["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_filters_more_like_this_and_metadata_updates(index_dir: Path, tiny_bundle, catalogue: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    photo = str(_val(catalogue)[0][0])
    main(["search", "--index", str(index_dir), "--model", str(tiny_bundle.bundle), "--image", photo,
          "--filter", "coarse_label=Milk"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["product_id"] for h in hits] == ["oat-milk"]
    main(["search", "--index", str(index_dir), "--model", str(tiny_bundle.bundle), "--image", photo,
          "--filter", "in_stock=true"])
    assert {h["product_id"] for h in json.loads(capsys.readouterr().out)["hits"]} == {"red-apple", "oat-milk"}
    main(["search", "--index", str(index_dir), "--product", "red-apple", "-k", "5"])
    similar = [h["product_id"] for h in json.loads(capsys.readouterr().out)["hits"]]
    assert "red-apple" not in similar and set(similar) == {"green-apple", "oat-milk"}
    capsys.readouterr()
    assert main(["index", "update", str(index_dir), "--product", "green-apple", "--set", "in_stock=true"]) == 0
    assert open_index(index_dir).records("green-apple")[0].metadata["in_stock"] is True
    assert 'green-apple: metadata {"in_stock": true}' in capsys.readouterr().err  # as stored, not Python's True
    assert main(["index", "update", str(index_dir), "--product", "green-apple", "--set", "note=x"]) == 0
    assert main(["index", "update", str(index_dir), "--product", "green-apple", "--set", "note="]) == 0
    assert "note" not in open_index(index_dir).records("green-apple")[0].metadata  # KEY= removes it (stored "")
    assert main(["index", "update", str(index_dir), "--product", "green-apple", "--set", 'note=""']) == 0
    assert open_index(index_dir).records("green-apple")[0].metadata["note"] == ""  # a JSON "" is an empty text
    main(["index", "update", str(index_dir), "--product", "green-apple", "--set", "note="])
    main(["index", "update", str(index_dir), "--product", "green-apple", "--set", "in_stock=false"])
    capsys.readouterr()
    assert main(["index", "update", str(index_dir), "--product", "green-apple", "--set", "novalue"]) == 2
    assert "--set 'novalue': expected key=value" in capsys.readouterr().err  # it said "filter 'novalue'"


def test_text_search_after_alignment(tiny_bundle, catalogue: Path, tmp_path: Path, index_dir: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    card = (bundle / "card.json").read_bytes()
    # named by its card.json (as --model allows): the aligner goes beside it; it was written over the card
    assert main(["align", "--model", str(bundle / "card.json"), "--data", str(catalogue), "--steps", "150",
                 "-q"]) == 0
    assert (bundle / "text_align.safetensors").is_file() and (bundle / "card.json").read_bytes() == card
    assert main(["align", "--model", "pretrained:efficientnet_lite0", "--data", str(catalogue), "-q"]) == 2
    # -o NEW/ is a folder to make: it wrote a file named NEW
    assert main(["align", "--model", str(bundle), "--data", str(catalogue), "--steps", "5", "-o",
                 f"{tmp_path / 'aligners'}/", "-q"]) == 0
    assert (tmp_path / "aligners" / "text_align.safetensors").is_file()
    engine = SearchEngine(skulens.load(bundle), open_index(index_dir), load_aligner(bundle))
    for mode in ("aligned", "text", "hybrid"):
        hits = engine.by_text(["oat milk", "red apple"], k=3, mode=mode)
        assert [h[0].product_id for h in hits] == ["oat-milk", "red-apple"], mode
    milk_only = engine.by_text(["red apple"], k=3, filter={"coarse_label": "Milk"})[0]
    assert [h.product_id for h in milk_only] == ["oat-milk"]
    no_aligner = SearchEngine(None, open_index(index_dir))
    with pytest.raises(ValueError, match="skulens align"):
        no_aligner.by_text(["oat milk"], mode="aligned")
    assert no_aligner.by_text(["oat drink"], k=1)[0][0].product_id == "oat-milk"
    for bad in (0, -1, 2.5, True):  # -1 sliced off the last hit, 0 gave [[]], 2.5 a TypeError from a slice
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):
            no_aligner.by_text(["oat drink"], k=bad, mode="text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):  # a photo search checks it too
            engine.by_image([Image.new("RGB", (64, 64), (200, 30, 30))], k=bad)  # type: ignore[arg-type]
    for mode in ("text", "hybrid"):  # a shell's non-UTF-8 argument ('caf\xe9'): a tokenizer TypeError traceback
        with pytest.raises(ValueError, match="query 1 of 1 is not valid text"):
            no_aligner.by_text(["caf\udce9 milk"], mode=mode)
    # the CLI: a wrong --align path and an aligned search without an aligner are one-line usage errors
    search = ["search", "--index", str(index_dir), "--text", "oat milk"]
    assert main([*search, "--align", str(tmp_path / "typo.safetensors")]) == 2
    assert main([*search, "--mode", "aligned"]) == 2
    assert main([*search, "--align", str(bundle), "--mode", "aligned"]) == 0


def test_text_search_sees_a_same_size_rewrite_of_the_index(index_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    ix = tmp_path / "ix"
    shutil.copytree(index_dir, ix)
    index = open_index(ix)
    engine = SearchEngine(None, index)
    assert engine.by_text(["black coffee beans"], k=1)[0][0].product_id != "oat-milk"
    n = len(index)
    recs = index.records("oat-milk")
    index.upsert([replace(r, title="Coffee beans", text="Dark roasted black coffee beans") for r in recs],
                 index.vectors([r.id for r in recs]))
    assert len(index) == n  # same size: the cache must still notice
    assert engine.by_text(["black coffee beans"], k=1)[0][0].product_id == "oat-milk"


def test_rank_fusion_prefers_agreement() -> None:
    def hits(ids):
        return [SearchHit(p, 1.0, IndexRecord(id=p, product_id=p, label=p)) for p in ids]

    fused = rank_fusion([hits(["a", "b", "c"]), hits(["b", "c", "a"])], 3)
    assert [h.product_id for h in fused] == ["b", "a", "c"]


def test_enrolled_product_is_found_by_search(tiny_bundle, catalogue: Path, index_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from test_enroll import blue_box

    bundle, ix = tmp_path / "bundle", tmp_path / "ix"
    shutil.copytree(tiny_bundle.bundle, bundle)
    shutil.copytree(index_dir, ix)
    rng = np.random.default_rng(3)
    photos = []
    for i in range(5):
        p = tmp_path / f"blue{i}.jpg"
        blue_box(rng).save(p)
        photos.append(str(p))
    assert main(["enroll", str(bundle), "--product", "blue-box", "--coarse", "Box", "--images", *photos[:3],
                 "--index", str(ix), "--data", str(catalogue), "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_entries"] == 3 and out["self_check"] == 1.0
    main(["search", "--index", str(ix), "--model", str(bundle), "-k", "1", "--image", *photos[3:]])
    tops = [json.loads(x)["hits"][0]["product_id"] for x in capsys.readouterr().out.splitlines()]
    assert tops == ["blue-box", "blue-box"]


def test_milvus_lite_index_through_the_cli(tiny_bundle, catalogue: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "products.db"
    assert main(["index", "build", "--backend", "milvus", "--model", str(tiny_bundle.bundle), "--catalogue",
                 str(catalogue), "--out", str(db), "-q"]) == 0
    val = _val(catalogue)
    main(["search", "--index", str(db), "--model", str(tiny_bundle.bundle), "-k", "2", "--image",
          *[str(p) for p, _ in val]])
    top = [json.loads(x)["hits"][0]["product_id"] for x in capsys.readouterr().out.splitlines()]
    assert np.mean([t == label for t, (_, label) in zip(top, val, strict=True)]) >= 0.75
    assert main(["index", "remove", str(db), "--product", "oat-milk"]) == 0
    assert "oat-milk" not in open_index(db).product_ids()


def test_index_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "--index", str(tmp_path / "nope"), "--text", "milk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no index here" in err[0]


def test_recommend_cli_generate_recommend_evaluate(catalogue: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "log.csv"
    assert main(["recommend", "generate", "--data", str(catalogue), "--users", "60", "--out", str(log)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().err
    user = log.read_text().splitlines()[1].split(",")[0]
    assert main(["recommend", "for", "--events", str(log), "--data", str(catalogue), "--user", user,
                 "--similar", "oat-milk", "-k", "2", "--include-seen"]) == 0  # 3 products: all seen
    rec, sim = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert rec["user_id"] == user and len(rec["recommendations"]) == 2
    assert sim["product_id"] == "oat-milk" and "oat-milk" not in {r["product_id"] for r in sim["similar"]}
    assert main(["recommend", "evaluate", "--events", str(log), "--data", str(catalogue)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["recommender"] for r in rows] == ["popularity", "content", "hybrid"]
    assert all(0 <= r["hit_rate"] <= 1 and 0 <= r["ndcg"] <= r["hit_rate"] for r in rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,product_id\nu1,oat-milk\n")
    assert main(["recommend", "for", "--events", str(bad), "--data", str(catalogue), "--user", "u1"]) == 2
    assert "bad.csv" in capsys.readouterr().err


# --------------------------------------------------------------------------- routing photo searches by coarse class

def test_route_classes_take_the_likeliest_until_the_mass_is_held() -> None:
    from skulens.search.engine import route_classes

    probs = np.array([[0.05, 0.9, 0.05, 0.0], [0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0]])
    assert route_classes(probs, 0.9) == [[1], [0, 2, 1], [0, 1, 2], [0]]  # row 2: capped at 3 classes
    assert route_classes(probs, 0.8, max_classes=5) == [[1], [0, 2], [0, 1, 2, 3], [0]]
    assert route_classes(probs, 0.9, max_classes=1) == [[1], [0], [0], [0]]
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="probability mass"):
            route_classes(probs, bad)


def test_routed_photo_search_visits_only_the_predicted_coarse_classes(index_dir: Path, tiny_bundle, catalogue: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from skulens.search.engine import route_classes

    model = skulens.load(tiny_bundle.bundle, device="cpu", precision="off")
    photos = [str(p) for p, _ in _val(catalogue)]
    _, coarse = model.embed_with_coarse(photos)
    names = model.card.coarse_classes
    expected = [{names[c] for c in row} for row in route_classes(coarse, 0.6)]
    assert any(len(e) == 1 for e in expected), "the tiny model should be sure of some photo's coarse class"
    main(["search", "--index", str(index_dir), "--model", str(tiny_bundle.bundle), "-k", "3", "--route", "0.6",
          "--image", *photos])
    routed = [json.loads(x)["hits"] for x in capsys.readouterr().out.splitlines()]
    main(["search", "--index", str(index_dir), "--model", str(tiny_bundle.bundle), "-k", "3", "--image", *photos])
    plain = [json.loads(x)["hits"] for x in capsys.readouterr().out.splitlines()]
    for hits, allowed, unrouted in zip(routed, expected, plain, strict=True):
        assert {h["coarse_label"] for h in hits} <= allowed and hits
        # what a routed search finds is the unrouted ranking restricted to its classes
        assert [h["product_id"] for h in hits] == [h["product_id"] for h in unrouted
                                                   if h["coarse_label"] in allowed]
    assert sum(len(h) for h in routed) < sum(len(h) for h in plain)
    # the Python API answers as the CLI does
    engine = SearchEngine(model, open_index(index_dir), route=0.6)
    api = [[h.product_id for h in hits] for hits in engine.by_image(photos, k=3)]
    assert api == [[h["product_id"] for h in hits] for hits in routed]
    # a filter naming coarse_label is the user's choice: never routed
    milk = engine.by_image(photos, k=3, filter={"coarse_label": "Milk"})
    assert all([h.product_id for h in hits] == ["oat-milk"] for hits in milk)
    # one query as a 1-D vector, an empty batch, probabilities that do not fit
    vectors, probs = model.embed_with_coarse(photos[:1])
    one = engine.by_vector(vectors[0], k=3, coarse=probs[0])
    assert [[h.product_id for h in hits] for hits in one] == api[:1]
    assert engine.by_vector(np.zeros((0, vectors.shape[1]), np.float32), coarse=np.zeros((0, probs.shape[1]))) == []
    with pytest.raises(ValueError, match="probabilities for 1 queries"):
        engine.by_vector(vectors, coarse=probs[:, :1])


def test_route_usage_errors(index_dir: Path, tiny_bundle, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "--index", str(index_dir), "--text", "milk", "--route"]) == 2
    assert "routes photo queries" in capsys.readouterr().err
    assert main(["search", "--index", str(index_dir), "--model", str(tiny_bundle.bundle), "--image", "x.jpg",
                 "--route", "1.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="coarse classes"):
        SearchEngine(None, open_index(index_dir), route=0.9)


def test_an_index_of_another_model_is_a_usage_error_not_a_traceback(tiny_bundle, catalogue: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "idx8"
    create_index("faiss", other, 8).save()  # 8-d: no bundle embeds that
    photo = _val(catalogue)[0][0]
    assert main(["search", "--index", str(other), "--model", str(tiny_bundle.bundle), "--image", str(photo)]) == 2
    err = capsys.readouterr().err
    assert "holds 8-d vectors" in err and "Traceback" not in err



def test_routing_on_faiss_warns_that_it_is_slower_there(index_dir: Path, tiny_bundle, caplog) -> None:
    import logging

    model = skulens.load(tiny_bundle.bundle, device="cpu", precision="off")
    with caplog.at_level(logging.WARNING, logger="skulens.search.engine"):
        SearchEngine(model, open_index(index_dir), route=0.9)
    assert "not partitioned by coarse class" in caplog.text


def test_index_build_refuses_before_embedding(index_dir: Path, tiny_bundle, catalogue: Path, tmp_path: Path,
                                               capsys) -> None:
    from skulens.search.catalogue_index import build_catalogue_index
    from skulens.search.index import IndexStoreError

    calls: list[int] = []

    def embed(paths):  # stands in for hours of embedding: it must not run when the build will be refused
        calls.append(len(paths))
        raise AssertionError("embedded before the existing index was noticed")

    model = skulens.load(tiny_bundle.bundle, device="cpu")
    with pytest.raises(IndexStoreError, match="already exists"):
        build_catalogue_index(model, skulens.load_catalogue(catalogue), str(index_dir), embed=embed)
    if _milvus_lite_with(tmp_path / "m.db", model):
        with pytest.raises(IndexStoreError, match="already exists"):
            build_catalogue_index(model, skulens.load_catalogue(catalogue), str(tmp_path / "m.db"), backend="milvus",
                                  embed=embed)
    assert calls == []
    base = ["index", "build", "--model", str(tiny_bundle.bundle), "--data", str(catalogue), "-q"]
    assert main([*base, "--out", str(tmp_path / "m2.db"), "--backend", "milvus", "--nprobe", "8"]) == 2
    assert main([*base, "--out", str(tmp_path / "f"), "--collection", "x"]) == 2
    # FAISS settings of one structure, with another: stored in the index and never read before
    for flags, said in ((["--ann", "hnsw", "--nprobe", "4"], "--ann hnsw has no lists"),
                        (["--ann", "flat", "--exact-threshold", "5"], "--ann flat is chosen already"),
                        (["--ann", "ivf", "--exact-threshold", "5"], "--ann ivf is chosen already")):
        assert main([*base, "--out", str(tmp_path / "g"), *flags]) == 2
        assert said in capsys.readouterr().err and not (tmp_path / "g").exists()
    for flags in (["--ann", "ivfpq", "--nprobe", "4"], ["--nprobe", "4", "--exact-threshold", "5"]):
        assert main([*base, "--out", str(tmp_path / "h" / flags[1]), *flags]) == 0


def test_index_build_reads_the_store_from_the_location_and_checks_the_collection_name(
        tiny_bundle, catalogue: Path, tmp_path: Path, capsys) -> None:
    """`-o http://host:19530#shop` without --backend milvus wrote a FAISS folder named 'http:' and said it had
    built the index; a name Milvus refuses ('my-shop') was a pymilvus traceback; an existing `LOCATION#shop` was
    called collection 'skulens'."""
    from skulens.search.catalogue_index import build_catalogue_index
    from skulens.search.index import IndexStoreError

    base = ["index", "build", "--model", str(tiny_bundle.bundle), "--data", str(catalogue), "-q"]
    assert main([*base, "--out", "http://127.0.0.1:1#shop", "--backend", "faiss"]) == 2
    assert "a Milvus location" in capsys.readouterr().err and not Path("http:").exists()
    (tmp_path / "afile").write_text("x")  # under a file: told before any photo is embedded (a traceback after them)
    for out in (tmp_path / "afile" / "x.index", tmp_path / "afile" / "m.db"):
        assert main([*base, "--out", str(out)]) == 2
        assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    for name in ("my-shop", "shop 1", "1abc"):
        assert main([*base, "--out", f"{tmp_path / 'm.db'}#{name}"]) == 2
        err = capsys.readouterr().err
        assert f"{name!r} is not a Milvus collection name" in err and "Traceback" not in err, err
    model = skulens.load(tiny_bundle.bundle, device="cpu")
    try:
        build_catalogue_index(model, skulens.load_catalogue(catalogue), f"{tmp_path / 'n.db'}#shop", backend="milvus")
    except ImportError:
        pytest.skip("Milvus Lite is not installed")
    assert main([*base, "--out", f"{tmp_path / 'n.db'}#shop"]) == 2  # the store read from the location: milvus
    assert "collection 'shop' already exists" in capsys.readouterr().err
    with pytest.raises(IndexStoreError, match="collection 'shop' already exists"):
        build_catalogue_index(model, skulens.load_catalogue(catalogue), f"{tmp_path / 'n.db'}#shop",
                              backend="milvus")


def _milvus_lite_with(path: Path, model) -> bool:
    """A Milvus Lite database at `path` holding an (empty) skulens collection; False where Milvus Lite is absent."""
    from skulens.search.index import create_index

    try:
        create_index("milvus", path, model.card.embedding_dim).close()
    except ImportError:
        return False
    return True



def test_a_bundle_named_by_its_card_is_enrolled_searched_and_unenrolled_intact(
        tiny_bundle, catalogue: Path, index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--model BUNDLE/card.json, as the README allows: unenroll swapped a folder in at the card's path (the bundle
    was unloadable, exit 0), enroll and search crashed (a review of session 24)."""
    from skulens.models.bundle import BundleError, save_bundle
    from test_enroll import blue_box

    bundle, ix = tmp_path / "bundle", tmp_path / "ix"
    shutil.copytree(tiny_bundle.bundle, bundle)
    shutil.copytree(index_dir, ix)
    card = bundle / "card.json"
    before = card.read_bytes()
    rng = np.random.default_rng(5)
    photos = []
    for i in range(3):
        blue_box(rng).save(tmp_path / f"b{i}.jpg")
        photos.append(str(tmp_path / f"b{i}.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    assert main(["enroll", "-m", str(card), "--product", "blue-box", "--coarse", "Box", "--images", *photos[:2],
                 "--index", str(ix), "--data", str(catalogue), "-q"]) == 0
    capsys.readouterr()
    assert card.is_file() and card.read_bytes() != before  # the card was rewritten in its folder
    image = next(r for r in open_index(ix).records() if r.product_id == "blue-box").image
    assert Path(image).is_absolute() and Path(image).is_file()  # as index build stores them
    # one bad photo is its own error line; the batch goes on
    assert main(["search", "--index", str(ix), "-m", str(card), "-k", "1", "--image", str(bad), photos[2]]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "error" in lines[0] and lines[1]["hits"][0]["product_id"] == "blue-box"
    assert main(["search", "--index", str(ix), "-m", str(card), "--image", str(bad)]) == 1
    assert main(["unenroll", "-m", str(card), "--product", "blue-box", "--index", str(ix)]) == 0
    assert card.is_file() and card.read_bytes() == before  # the bundle as it was, a file where its card was
    with pytest.raises(BundleError, match="a file, not a bundle folder"):
        save_bundle(None, None, card)  # type: ignore[arg-type]  # refused before anything is written


def test_search_and_enrol_mistakes_are_one_line(tiny_bundle, catalogue: Path, index_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    photo = str(next((catalogue.parent / "val").rglob("*.jpg")))
    cases = [
        (["search", "--index", str(index_dir), "--product", "oat-milk", "--mode", "lexical"], "--mode is a setting"),
        (["search", "--index", str(index_dir), "-m", str(tiny_bundle.bundle), "--image", photo, "--align", "x"],
         "--align is a setting"),
        # the aligner of another model was accepted and never read
        (["search", "--index", str(index_dir), "--text", "milk", "--mode", "lexical", "--align", "x"],
         "--mode lexical does not use it"),
        (["search", "--index", str(index_dir), "--text", "milk", "--mode", "text", "--align", "x"],
         "--mode text does not use it"),
        (["enroll", "-m", str(tiny_bundle.bundle), "--product", "Oat/Milk 1L", "--images", photo], "no '/'"),
        (["enroll", "-m", str(tiny_bundle.bundle), "--product", "x", "--coarse", " ", "--images", photo],
         "coarse class is empty"),
        (["enroll", "-m", str(tiny_bundle.bundle), "--product", "x", "--images", photo, "--data",
          str(tmp_path / "nope")], "nope"),
        (["recommend", "generate", "--data", str(catalogue), "--users", "3", "--out", str(tmp_path)], "a folder"),
        (["index", "remove", str(index_dir), "--product", "oat-milkk"], "no product 'oat-milkk'"),
        # a review's: an entry id typo said "removed 0 entries"; an empty --images an empty reason
        (["index", "remove", str(index_dir), "--id", "no/such/entry"], "no entry 'no/such/entry'"),
        (["enroll", "-m", str(tiny_bundle.bundle), "--product", "x", "--images", str(tmp_path / "none*.jpg")],
         "no photos there"),
        (["search", "--index", str(index_dir), "--product", "oat-milk", "--filter", "coarse_label=Juice",
          "--filter", "coarse_label=Milk"], "given twice"),
        (["search", "--index", str(index_dir), "--product", "oat-milk", "--filter", "shelf=[1,"],
         "not a JSON list or string"),
    ]
    single = tmp_path / "single.csv"  # every user has one event: nobody to hold out
    single.write_text("user_id,product_id,event,timestamp\nu1,oat-milk,view,1\nu2,red-apple,cart,2\n")
    cases.append((["recommend", "evaluate", "--events", str(single), "--data", str(catalogue)], "none can be held"))
    cases.append((["recommend", "for", "--events", str(single), "--data", str(catalogue), "--user", "u9",
                   "--seed-product", "oat-mlk"], "did you mean oat-milk?"))  # it came back as the popular list
    cases.append((["recommend", "for", "--events", str(single), "--user", "u9", "--kind", "popularity",
                   "--seed-product", "oat-mlk"], "did you mean oat-milk?"))  # without a catalogue: the log's ids
    before = (tiny_bundle.bundle / "card.json").read_bytes()
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert (tiny_bundle.bundle / "card.json").read_bytes() == before
    assert "oat-milk" in open_index(index_dir).product_ids()  # the refused remove removed nothing
    assert main(["search", "--index", str(index_dir), "--product", "oat-milk"]) == 0
    assert "no --model" not in capsys.readouterr().err  # the text-search hint is for text queries


def test_an_index_of_another_model_is_refused(tiny_bundle, catalogue: Path, index_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """Every Lite backbone embeds 1280-d: the dimension let an index built with another model be searched and
    enrolled into, silently wrong. The model embeds a few entries' photos again and must find their vectors."""
    from skulens.models.predictor import load_model
    from skulens.search.engine import SearchEngine, check_index_model

    other = tmp_path / "other"
    assert main(["index", "build", "-m", "pretrained:efficientnet_lite0", "--catalogue", str(catalogue), "--out",
                 str(other), "-q"]) == 0
    model = load_model(tiny_bundle.bundle, device="cpu")
    assert check_index_model(model, open_index(index_dir)) == pytest.approx(1.0, abs=1e-4)  # its own: the same
    with pytest.raises(ValueError, match="built with another model"):
        SearchEngine(model, open_index(other))
    photo = str(next((catalogue.parent / "val").rglob("*.jpg")))
    capsys.readouterr()
    assert main(["search", "--index", str(other), "-m", str(tiny_bundle.bundle), "--image", photo]) == 2
    assert "built with another model" in capsys.readouterr().err
    assert main(["enroll", "-m", str(tiny_bundle.bundle), "--product", "x", "--images", photo, "--index",
                 str(other)]) == 2
    assert "built with another model" in capsys.readouterr().err
    assert main(["search", "--index", str(other), "--text", "milk"]) == 0  # text queries need no photo model


def test_an_index_embedded_in_other_numerics_is_the_same_model(tiny_bundle, catalogue: Path, tmp_path: Path,
                                                                caplog) -> None:
    """`index build` embeds in bf16 where the CPU has it (`auto`) and enrolment checks in fp32: for a small model
    the two agree only to about 0.96, and every enrolment warned "built with a model close to this one"."""
    from skulens.models.predictor import load_model
    from skulens.search.engine import check_index_model

    out = tmp_path / "bf16"
    assert main(["index", "build", "--model", str(tiny_bundle.bundle), "--data", str(catalogue), "--out", str(out),
                 "-q"]) == 0
    index = open_index(out)
    off, bf16 = (load_model(tiny_bundle.bundle, device="cpu", precision=p) for p in ("off", "bf16"))
    records, _ = next(index.iter_entries(batch_size=64))
    photos = [r.image for r in records][:8]
    plain = (off.embed(photos) * bf16.embed(photos)).sum(1).min()
    with caplog.at_level("WARNING", logger="skulens.search.engine"):
        for model in (off, bf16):  # whichever numerics built the index, both models are this model
            assert check_index_model(model, index) > 0.999
    assert "close to this one" not in caplog.text
    assert plain < 0.999  # the two numerics do differ for this model: the test sees the case it is about
    # an index holding entries of both numerics (built in bf16, added to in fp32): each entry is scored by the
    # numerics closer to it, not the lowest of one numerics' scores against the lowest of the other's
    from skulens.search.index import create_index

    mixed = create_index("faiss", tmp_path / "mixed", index.dim)
    a, b = bf16.embed(photos), off.embed(photos)
    mixed.add(records[:len(photos)], np.stack([a[i] if i % 2 else b[i] for i in range(len(photos))]))
    mixed.save()
    assert check_index_model(bf16, open_index(tmp_path / "mixed")) > 0.999


def test_an_index_whose_photos_are_gone_says_it_cannot_check_the_model(tiny_bundle, catalogue: Path,
                                                                         tmp_path: Path, caplog) -> None:
    """An index copied to another machine: the wrong-model check found no photo and said nothing, so an index of
    another model answered with wrong results, exit 0."""
    import shutil

    from skulens.models.predictor import load_model
    from skulens.search.engine import check_index_model

    moved = Path(shutil.copytree(catalogue.parent, tmp_path / "cat"))
    out = tmp_path / "ix"
    assert main(["index", "build", "--model", "pretrained:efficientnet_lite0", "--data", str(moved / catalogue.name),
                 "--out", str(out), "-q"]) == 0
    shutil.rmtree(moved)
    with caplog.at_level("WARNING", logger="skulens.search.engine"):
        assert check_index_model(load_model(tiny_bundle.bundle, device="cpu"), open_index(out)) is None
    assert "are not on this machine" in caplog.text and "cannot be checked" in caplog.text


def test_a_stale_text_encoder_is_a_user_error() -> None:
    """`enroll --text` with an aligner fitted on an earlier text encoder ended in a traceback (exit 1)."""
    from skulens.cli._errors import is_user_error
    from skulens.models.text import TextEncoderMismatch

    assert is_user_error(TextEncoderMismatch("the text aligner was fitted on an earlier fine-tuned text encoder"))


def test_a_path_this_user_cannot_write_is_a_user_error() -> None:
    """`predict -o /sys/x.csv` ended in a PermissionError traceback, exit 1 (README: one line, exit 2)."""
    from skulens.cli._errors import is_user_error

    assert is_user_error(PermissionError(13, "Permission denied", "/sys/x.csv"))


def test_index_build_says_which_photos_it_left_out(tiny_bundle, catalogue: Path, tmp_path: Path, capsys) -> None:
    """The default --splits train left val's photos out without a word (a folder catalogue's carved 10 % too)."""
    n_val = len(_val(catalogue))
    assert main(["index", "build", "-m", str(tiny_bundle.bundle), "--data", str(catalogue), "-o",
                 str(tmp_path / "a"), "-q"]) == 0
    assert f"not indexed: {n_val} photos of val; --splits train val indexes them too" in capsys.readouterr().err
    assert main(["index", "build", "-m", str(tiny_bundle.bundle), "--data", str(catalogue), "-o",
                 str(tmp_path / "b"), "--splits", "train", "val", "-q"]) == 0
    assert "not indexed" not in capsys.readouterr().err


def test_align_out_is_checked_before_any_work(tiny_bundle, catalogue: Path, tmp_path: Path, capsys) -> None:
    """`align -o BUNDLE/card.json` replaced the card with the aligner (the bundle no longer loaded), and `-o` in a
    folder that did not exist failed as a traceback after the training."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    kept = {name: (bundle / name).read_bytes() for name in ("card.json", "model.safetensors")}
    manifest = catalogue.read_bytes()
    base = ["align", "--model", str(bundle), "--data", str(catalogue), "--steps", "5", "-q"]
    for out in (bundle / "card.json", bundle / "model.safetensors", catalogue):
        assert main([*base, "-o", str(out)]) == 2
        assert "a file that is not a text alignment is there" in capsys.readouterr().err
    assert {name: (bundle / name).read_bytes() for name in kept} == kept and catalogue.read_bytes() == manifest
    fresh = tmp_path / "new" / "deeper" / "shop.safetensors"
    assert main([*base, "-o", str(fresh)]) == 0 and load_aligner(fresh, bundle=bundle) is not None
    assert main([*base, "-o", str(fresh)]) == 0  # an earlier aligner may be replaced
    from safetensors.numpy import load_file, save_file

    legacy = tmp_path / "shop_align"  # no suffix, no metadata: as older aligners were written; replaced too
    save_file(load_file(str(fresh)), str(legacy))
    assert main([*base, "-o", str(legacy)]) == 0


def test_a_routed_photo_search_keeps_the_users_other_filter(index_dir: Path, tiny_bundle, catalogue: Path) -> None:
    """--route adds the predicted coarse classes to the user's filter; it must not replace it (an in-stock-only
    search that routes showed the out-of-stock green apple)."""
    model = skulens.load(tiny_bundle.bundle, device="cpu", precision="off")
    photos = [str(p) for p, _ in _val(catalogue)]
    engine = SearchEngine(model, open_index(index_dir), route=0.6)
    assert engine.routes({"in_stock": True})
    found = engine.by_image(photos, k=3, filter={"in_stock": True})
    assert all(hits for hits in found)
    assert {h.product_id for hits in found for h in hits} <= {"red-apple", "oat-milk"}
    assert all(h.record.metadata["in_stock"] is True for hits in found for h in hits)
