"""Customer-service replies: identify the product in a photo, then answer a question from its catalogue facts.

The answer is never generated. First the structured rules of `answers` read what the question names
(an attribute, the product type, a country, a brand, an ingredient, a dietary claim) and answer yes/no
from the product's attribute table and sheet, or hand off when the facts cannot settle it. Questions
that name none of those get one of the product's own facts (name, category, a description sentence, an
information line, the stock count), chosen by the cosine between the question and each fact under the
bundled MiniLM sentence encoder. When the photo is not recognised confidently, or no fact is close
enough to the question, the reply is handed off to a person with the reason.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..data.catalogue import Catalogue, Product, class_products
from .answers import Lexicon, asks_for_a_property, country_name, info_lines, rule, split_compound, strip_names

if TYPE_CHECKING:
    from ..models.predictor import Prediction

__all__ = ["Fact", "SupportAnswer", "SupportResponder", "load_products", "product_facts", "products_from_catalogue"]

MAX_QUESTION_CHARS = 500
# A yes/no must hold for the candidates that make up this much of the recognition's probability.
CANDIDATE_MASS = 0.95
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Fact:
    field: str  # name | category | description | info | stock
    keys: tuple[str, ...]  # texts matched against the question (the fact itself, questions it answers)
    answer: str  # the text given to the customer


@dataclass(frozen=True)
class SupportAnswer:
    product: str | None  # the recognised label (a best guess when handed off for low confidence)
    title: str | None
    confidence: float  # recognition confidence of `product`
    question: str | None
    answer: str | None
    field: str | None  # which fact answered
    score: float  # cosine between the question and that fact (1.0 for a structured answer or no question)
    handoff: bool  # a person should take over
    reason: str | None  # why it was handed off
    candidates: tuple[tuple[str, float], ...] = ()  # the model's top-k, for the person taking over
    verdict: str | None = None  # "yes" | "no" for a yes/no question answered from structured facts
    source: str | None = None  # "catalogue" | "photo" (the model's predicted attributes) | "text" (matched fact)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [{"label": lab, "p": round(p, 6)} for lab, p in self.candidates]
        return d


def products_from_catalogue(cat: Catalogue) -> dict[str, Product]:
    """The catalogue's products; for layouts without product sheets (manifests, folders), one per class
    from its first sample's title/text (`data.catalogue.class_products`, which the CLI's recommendations use too)."""
    return class_products(cat)


# What shoppers ask about each common product-sheet key. A fact scores the best cosine over its own text
# and these questions; the answer is always the sheet's own words. Without them MiniLM scores "Where is
# it made?" against "Country: Italy" at 0.28 (measured on the grocery sheets), below any useful threshold.
_KEY_QUESTIONS = {
    "country": ("Where is it from?", "Where is it made?", "Where was it grown?", "What is the country of origin?"),
    "manufacturer": ("Who makes it?", "What brand is it?", "Who is the producer?"),
    "volume": ("How much does it weigh?", "How big is the pack?", "What size is it?", "How much is in it?"),
    "ingredient": ("What are the ingredients?", "What is in it?", "What is it made of?", "Does it contain allergens?"),
    "nutrition": ("How many calories does it have?", "What are the nutrition facts?",
                  "How much fat, sugar or protein is in it?"),
    "title": ("What is the product called?",),
    "url": ("Where can I read more about it?", "Do you have a link to the product page?"),
}
_GROUP_QUESTIONS = {
    "colour": ("What colour is it?", "What color is the package?"),
    "flavour": ("What flavour is it?", "What does it taste like?"),
    "packaging": ("How is it packed?", "What does it come in?"),
}
_NAME_QUESTIONS = ("What is this?", "What is this product called?", "What's the name of this product?")
_CATEGORY_QUESTIONS = ("What kind of product is this?", "Which category is it in?")
_STOCK_QUESTIONS = ("Do you have it in stock?", "How many are available?", "Is it available?", "Can I buy it now?",
                    "Is it sold out?")

# Questions a product sheet never answers. When one of these is closer to the question than any fact, a
# person takes over; otherwise "What's the price?" would be answered with the pack size (0.67, measured).
_HANDOFF_TOPICS = {
    "price": ("How much does it cost?", "What is the price?", "Is it on sale?", "Is there a discount?"),
    "returns": ("Can I return it?", "How do I get a refund?", "What is your return policy?"),
    "delivery": ("Do you deliver?", "How long does shipping take?", "Where is my order?"),
    "store": ("When are you open?", "Where is the shop?", "What are your opening hours?"),
    "payment": ("Can I pay by card?", "Which payment methods do you accept?"),
    "complaint": ("It arrived broken.", "I want to make a complaint.", "Something is wrong with my order."),
    "stock": _STOCK_QUESTIONS,  # only when there is no stock fact (no inventory)
}


# Questions the catalogue never answers, by their words: handed off at once, even when they name a product
# or an attribute ("I found something weird in the carton" is not a packaging question).
_HANDOFF_WORDS = {
    # "how much is it?", "how much is one carton?", "how much is it per kilo?" ask the price, as the whole
    # question; "how much is in it?", "how much is one serving?" the size
    "price": r"price\w*|cost|costs|expensive|cheap\w*|on sale|discount\w*|offers?"
             r"|how much (?:is|are|for) (?:it|this|that|they|these|those"
             r"|one(?: (?!in\b|serving|portion|glass|cup|slice|piece|spoon)\w+)?)(?: per \w+)?(?=\W*$)",
    "delivery": r"deliver\w*|shipping|shipped|my order",
    "returns": r"return\w*|refund\w*|exchange",
    "payment": r"pay|paying|payment\w*|card|cash",
    "complaint": r"complain\w*|broken|damaged|weird|mou?ld\w*|spoil\w*|rotten|sick|leak\w*",
    "freshness": r"ripe|best before|expir\w*|use by|pesticides?",
}
_HANDOFF_TOPIC = re.compile("|".join(f"(?P<{k}>\\b(?:{v})\\b)" for k, v in _HANDOFF_WORDS.items()), re.IGNORECASE)
# Stock questions go to the stock fact (text matching), even when they name a product.
_STOCK_WORDS = re.compile(r"\b(stock|available|availability|sold out|any left|have any)\b", re.IGNORECASE)


def _key_questions(key: str) -> tuple[str, ...]:
    return tuple(q for word, qs in _KEY_QUESTIONS.items() if word in key.lower() for q in qs)


def product_facts(product: Product, stock: int | None = None) -> list[Fact]:
    title = product.title or product.label.replace("-", " ")
    facts = [Fact("name", (f"Product name: {title}", *_NAME_QUESTIONS), f"This is {title}.")]
    if product.coarse_label:
        facts.append(Fact("category", (f"Category: {product.coarse_label}", *_CATEGORY_QUESTIONS),
                          f"{title} is in our {product.coarse_label} range."))
    for sentence in _SENTENCE_END.split(product.description.strip()):
        if sentence.strip():
            facts.append(Fact("description", (sentence.strip(),), sentence.strip()))
    for line in info_lines(product.info):
        key, sep, value = line.partition(":")
        if not sep or not value.strip():
            facts.append(Fact("info", (line,), line))
            continue
        for k, v in split_compound(key.strip(), value.strip()):
            if "country" in k.lower() and country_name(v) != v:
                v = f"{v} ({country_name(v)})"  # "Sverige (Sweden)": the sheet's word and the shopper's
            facts.append(Fact("info", (f"{k}: {v}", *_key_questions(k)), f"{k}: {v}"))
    groups: dict[str, list[str]] = {}
    for a in product.attributes:
        if "=" in a:
            group, value = a.split("=", 1)
            groups.setdefault(group, []).append(value)
    for group, values in groups.items():
        text = f"{group[:1].upper()}{group[1:].replace('_', ' ')}: {', '.join(values)}"
        facts.append(Fact("attribute", (text, *_GROUP_QUESTIONS.get(group, ())), text))
    if stock is not None:
        answer = f"We have {stock} of {title} in stock." if stock > 0 else f"{title} is out of stock right now."
        facts.append(Fact("stock", (f"In stock: {stock}", *_STOCK_QUESTIONS), answer))
    return facts


class SupportResponder:
    """`answer(prediction, question)` -> SupportAnswer. Fact embeddings are cached per product (the stock
    fact's text carries the count, so a count change re-embeds only that product's facts)."""

    def __init__(self, products: Mapping[str, Product], encoder: Encoder, *, min_confidence: float = 0.5,
                 min_score: float = 0.4, stock: Callable[[str], int | None] | None = None,
                 vocabulary: Iterable[str] = (), photo_min: float = 0.9):
        self.encoder, self.vocabulary = encoder, tuple(vocabulary)
        self.min_confidence, self.min_score, self.stock, self.photo_min = min_confidence, min_score, stock, photo_min
        self.products = products  # also builds the lexicon of the structured rules
        # (label, stock) -> (facts, key vectors K x D, fact index of each key row)
        self._cache: dict[tuple[str, int | None], tuple[list[Fact], np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        topics = [(name, q) for name, qs in _HANDOFF_TOPICS.items() for q in qs]
        self._topic_names = [name for name, _ in topics]
        self._topic_vectors = np.asarray(self.encoder.encode([q for _, q in topics]), dtype=np.float32)
        self._topic_is_stock = np.array([name == "stock" for name in self._topic_names])

    @property
    def products(self) -> dict[str, Product]:
        return self._products

    @products.setter
    def products(self, products: Mapping[str, Product]) -> None:
        """Products and the attribute vocabulary (theirs plus the model's) make the rules' lexicon."""
        self._products = dict(products)
        vocabulary = {a for p in self._products.values() for a in p.attributes} | set(self.vocabulary)
        self.lexicon = Lexicon.build(self._products.values(), vocabulary)

    def refresh(self, products: Mapping[str, Product]) -> None:
        """Read `products` as they are now (an enrolment, a removal, a new title or text): the lexicon is rebuilt
        and every cached fact dropped."""
        with self._lock:
            self.products = products
            self._cache.clear()
            self._generation += 1  # facts built from the products before this are not cached (`_facts`)

    def product(self, label: str) -> Product:
        return self.products.get(label) or Product(label=label, title=label.replace("-", " "))

    def _facts(self, label: str) -> tuple[list[Fact], np.ndarray, np.ndarray]:
        count = self.stock(label) if self.stock is not None else None
        key = (label, count)
        with self._lock:
            hit = self._cache.get(key)
            generation = self._generation
        if hit is None:
            facts = product_facts(self.product(label), count)
            keys = [(i, k) for i, f in enumerate(facts) for k in f.keys]
            vectors = np.asarray(self.encoder.encode([k for _, k in keys]), dtype=np.float32)
            hit = (facts, vectors, np.array([i for i, _ in keys]))
            with self._lock:
                if generation == self._generation:  # a refresh in between: these facts may be of the old product
                    for old in [k for k in self._cache if k[0] == label]:
                        del self._cache[old]
                    self._cache[key] = hit
        return hit

    def _disagreeing(self, prediction: Prediction, question: str, verdict: str) -> str | None:
        """A yes/no is given only when it is the same for every product the photo may show: the top-k
        candidates that make up CANDIDATE_MASS of the probability. Otherwise the candidates and their
        answers, for the person taking over."""
        seen, mass = [], 0.0
        for label, p in prediction.top_k:
            if mass >= CANDIDATE_MASS:
                break
            mass += p
            if label == prediction.fine_label:  # ruled already: that is `verdict`
                seen.append((label, p, verdict))
                continue
            other = rule(question, self.product(label), self.lexicon, photo_min=self.photo_min,
                         predicted=dict(prediction.attributes))
            seen.append((label, p, other.verdict if other is not None else None))
        if all(v == verdict for _, _, v in seen):
            return None
        return ", ".join(f"{self.product(lab).title or lab} {100 * p:.1f}% ({v or 'unknown'})" for lab, p, v in seen)

    def answer(self, prediction: Prediction, question: str | None = None) -> SupportAnswer:
        question = (question or "").strip()[:MAX_QUESTION_CHARS] or None
        label, conf = prediction.fine_label, float(prediction.fine_confidence)
        candidates = tuple(prediction.top_k)
        if label is None:
            return SupportAnswer(None, None, 0.0, question, None, None, 0.0, True,
                                 f"the photo could not be read ({prediction.error})", candidates)
        title = self.product(label).title or label
        if conf < self.min_confidence:
            return SupportAnswer(label, title, conf, question, None, None, 0.0, True,
                                 f"recognition confidence {100 * conf:.1f}% is below {100 * self.min_confidence:.1f}%: "
                                 "a person should check which product this is", candidates)
        topic = _HANDOFF_TOPIC.search(question) if question is not None else None
        if topic is not None:
            return SupportAnswer(label, title, conf, question, None, None, 1.0, True,
                                 f"the question is about {topic.lastgroup}, which the catalogue does not answer",
                                 candidates)
        if question is not None and not _STOCK_WORDS.search(question):
            ruling = rule(question, self.product(label), self.lexicon, predicted=dict(prediction.attributes),
                          photo_min=self.photo_min)
            if ruling is not None and ruling.answer is None:
                return SupportAnswer(label, title, conf, question, None, ruling.field, 1.0, True, ruling.reason,
                                     candidates)
            if ruling is not None and ruling.verdict is not None:
                split = self._disagreeing(prediction, question, ruling.verdict)
                if split:
                    return SupportAnswer(label, title, conf, question, None, ruling.field, 1.0, True,
                                         f"the answer depends on which product this is: {split}", candidates)
            if ruling is not None:
                return SupportAnswer(label, title, conf, question, ruling.answer, ruling.field, 1.0, False, None,
                                     candidates, verdict=ruling.verdict, source=ruling.source)
        facts, vectors, owner = self._facts(label)
        if question is None:
            described = next((f for f in facts if f.field == "description"), facts[0])
            text = f"This is {title}." + ("" if described.field == "name" else f" {described.answer}")
            return SupportAnswer(label, title, conf, None, text, "name", 1.0, False, None, candidates)
        # The product's own names say nothing about what is asked ("What size is this sour cream?").
        q = np.asarray(self.encoder.encode([strip_names(question, self.product(label))]), dtype=np.float32)[0]
        scores = vectors @ q
        if asks_for_a_property(question):  # "What colour is it?" was answered "... is in our Milk range" (0.43)
            says_nothing = np.array([facts[i].field in ("name", "category") for i in owner])
            if says_nothing.all():
                return SupportAnswer(label, title, conf, question, None, None, 0.0, True,
                                     "the catalogue says nothing of this product but its name and category, which do "
                                     "not answer the question: a person should check", candidates)
            scores = np.where(says_nothing, -1.0, scores)  # the lowest cosine: below any min_score
        row = int(scores.argmax())
        best, score = int(owner[row]), float(scores[row])
        topic_scores = self._topic_vectors @ q
        if any(f.field == "stock" for f in facts):  # the stock topic stands in only for a missing stock fact
            topic_scores = np.where(self._topic_is_stock, -np.inf, topic_scores)
        t = int(topic_scores.argmax())
        # a shop topic is named only when the question is near it: the nearest of weak matches is no reason
        # ("Can I cook with it?" was "about payment")
        if float(topic_scores[t]) > score and float(topic_scores[t]) >= self.min_score:
            topic = self._topic_names[t]
            reason = ("stock levels are not known here (this server keeps no inventory)" if topic == "stock"
                      else f"the question is about {topic}, which the catalogue does not answer")
            return SupportAnswer(label, title, conf, question, None, None, score, True, reason, candidates)
        if score < self.min_score:
            return SupportAnswer(label, title, conf, question, None, None, score, True,
                                 f"no catalogue field answers the question (best match {facts[best].field!r} "
                                 f"at {score:.2f} < {self.min_score:.2f})", candidates)
        return SupportAnswer(label, title, conf, question, facts[best].answer, facts[best].field, score, False,
                             None, candidates, source="text")


def load_products(catalogue: str | Path | None, fallback: str | Path | None = None) -> dict[str, Product]:
    """Products from `catalogue`, else from `fallback` (the bundle's training data) if it still exists."""
    from ..data.catalogue import load_catalogue

    for path in (catalogue, fallback):
        if path and Path(path).exists():
            return products_from_catalogue(load_catalogue(path, val_fraction=0))
        if path and path == catalogue:
            raise FileNotFoundError(f"catalogue {path}: not found")
    return {}
