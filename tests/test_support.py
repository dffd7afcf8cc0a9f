"""Customer-service replies: facts from the catalogue, matched to the question with the bundled MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from skulens.api import Prediction
from skulens.data.catalogue import Product, load_catalogue
from skulens.serve.support import SupportResponder, product_facts, products_from_catalogue

OATGHURT = Product(
    label="Oatly-Natural-Oatghurt", coarse_label="Oatghurt", title="Oatly Natural Oatghurt",
    description="Whole vegetable ghurt, used as yoghurt. Can also be used for cold sauces.",
    info="\ufeffTitle: Havregurt Naturell \nManufacturer and volume: OATLY\xa0,\xa01kg \n"
         "Manufacturing country: Sverige \nIngredients: Syrad havrebas (vatten, HAVRE 12%), rapsolja.\n"
         "Nutrition values per 100 gram: \n   energi ca 280 kilojoule \n   fett ca 2.2 gram \n")
APPLE = Product(label="Granny-Smith", coarse_label="Apple", title="Granny Smith",
                description="Granny Smith is a green, crisp and sour apple.",
                info="Title: Apple Granny Smith Class 1\nCountry and volume: Italy,\xa0ca 180g\n")


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("sentence_transformers")
    from skulens.models.text import load_text_encoder

    return load_text_encoder()


@pytest.fixture(scope="module")
def responder(encoder) -> SupportResponder:
    stock = {"Oatly-Natural-Oatghurt": 12, "Granny-Smith": 0}
    return SupportResponder({p.label: p for p in (OATGHURT, APPLE)}, encoder, min_confidence=0.5, min_score=0.4,
                            stock=stock.get)


def _pred(label: str, conf: float = 0.9) -> Prediction:
    return Prediction("photo.jpg", label, "fine", conf, label, conf, top_k=((label, conf), ("other", 1 - conf)))


def test_facts_split_compound_sheet_lines_and_join_tables() -> None:
    facts = product_facts(APPLE, stock=3)
    answers = [f.answer for f in facts]
    assert "Country: Italy" in answers and "Volume: ca 180g" in answers
    assert "This is Granny Smith." in answers and "We have 3 of Granny Smith in stock." in answers
    oat = [f.answer for f in product_facts(OATGHURT)]
    assert any(a.startswith("Nutrition values per 100 gram") and "fett ca 2.2 gram" in a for a in oat)
    assert "Manufacturer: OATLY" in oat and not any(f.field == "stock" for f in product_facts(OATGHURT))


@pytest.mark.parametrize(("label", "question", "field", "needle"), [
    ("Oatly-Natural-Oatghurt", "Do you have this in stock?", "stock", "12"),
    ("Granny-Smith", "is there any left?", "stock", "out of stock"),
    ("Oatly-Natural-Oatghurt", "Which country does this come from?", "info", "Sverige"),
    ("Granny-Smith", "Where is it grown?", "info", "Italy"),
    ("Granny-Smith", "How heavy is it?", "info", "180g"),
    ("Oatly-Natural-Oatghurt", "Who produces it?", "info", "OATLY"),
    ("Oatly-Natural-Oatghurt", "What are the ingredients?", "info", "havrebas"),
    ("Oatly-Natural-Oatghurt", "How many calories?", "info", "kilojoule"),
    ("Oatly-Natural-Oatghurt", "Can I use it for cooking?", "description", "sauces"),
    ("Granny-Smith", "What is this?", "name", "Granny Smith"),
])
def test_questions_are_answered_from_the_right_field(responder, label, question, field, needle) -> None:
    a = responder.answer(_pred(label), question)
    assert not a.handoff, a.reason
    assert a.field == field and needle in a.answer, a
    assert a.product == label and a.score >= 0.4


@pytest.mark.parametrize("question", ["What's the price?", "Can I return it?", "When do you open on Sunday?",
                                      "Can I pay with bitcoin?"])
def test_questions_the_catalogue_cannot_answer_are_handed_off(responder, question) -> None:
    a = responder.answer(_pred("Granny-Smith"), question)
    assert a.handoff and a.answer is None and a.reason
    assert a.product == "Granny-Smith"  # the person taking over still sees what was recognised


def test_low_recognition_confidence_is_handed_off_with_the_candidates(responder) -> None:
    a = responder.answer(_pred("Granny-Smith", 0.3), "Where is it from?")
    assert a.handoff and "0.30" in a.reason and a.answer is None
    assert [c[0] for c in a.candidates] == ["Granny-Smith", "other"]
    d = a.to_dict()
    assert d["candidates"][0] == {"label": "Granny-Smith", "p": 0.3}


def test_no_question_describes_the_product(responder) -> None:
    a = responder.answer(_pred("Oatly-Natural-Oatghurt"))
    assert not a.handoff and a.field == "name"
    assert a.answer.startswith("This is Oatly Natural Oatghurt.") and "ghurt" in a.answer


def test_unreadable_photo_is_handed_off(responder) -> None:
    err = Prediction("x.jpg", None, "error", 0.0, error="corrupt JPEG")
    a = responder.answer(err, "What is it?")
    assert a.handoff and "corrupt JPEG" in a.reason


def test_stock_changes_are_seen(encoder) -> None:
    stock = {"Granny-Smith": 2}
    r = SupportResponder({"Granny-Smith": APPLE}, encoder, stock=stock.get)
    assert "We have 2" in r.answer(_pred("Granny-Smith"), "Do you have it in stock?").answer
    stock["Granny-Smith"] = 5
    assert "We have 5" in r.answer(_pred("Granny-Smith"), "Do you have it in stock?").answer


def test_products_from_a_manifest_catalogue_use_titles(tiny_catalogue: Path) -> None:
    products = products_from_catalogue(load_catalogue(tiny_catalogue, val_fraction=0))
    assert set(products) == {"red-apple", "green-apple", "oat-milk"}
    assert products["oat-milk"].title == "oat milk" and products["oat-milk"].coarse_label == "Milk"


def test_without_an_inventory_stock_questions_are_handed_off(encoder) -> None:
    r = SupportResponder({"Granny-Smith": APPLE}, encoder)  # no stock source
    a = r.answer(_pred("Granny-Smith"), "Do you have it in stock?")
    assert a.handoff and "no inventory" in a.reason
    assert r.answer(_pred("Granny-Smith"), "Where is it grown?").answer == "Country: Italy"
