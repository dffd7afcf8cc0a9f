"""Customer-service replies: identify the product in a photo, then answer a question from its catalogue facts.

The answer is never generated: it is one of the product's own facts (name, category, a description
sentence, an information line, the stock count), chosen by the cosine between the question and each
fact under the bundled MiniLM sentence encoder. When the photo is not recognised confidently, or no
fact is close enough to the question, the reply is handed off to a person with the reason.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..data.catalogue import Catalogue, Product

if TYPE_CHECKING:
    from ..models.predictor import Prediction

__all__ = ["Fact", "SupportAnswer", "SupportResponder", "load_products", "product_facts", "products_from_catalogue"]

MAX_QUESTION_CHARS = 500
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
    score: float  # cosine between the question and that fact (1.0 when no question was asked)
    handoff: bool  # a person should take over
    reason: str | None  # why it was handed off
    candidates: tuple[tuple[str, float], ...] = ()  # the model's top-k, for the person taking over

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [{"label": lab, "p": round(p, 6)} for lab, p in self.candidates]
        return d


def products_from_catalogue(cat: Catalogue) -> dict[str, Product]:
    """The catalogue's products; for layouts without product sheets (manifests, folders), one per class
    from its first sample's title/text."""
    products = dict(cat.products)
    for samples in cat.splits.values():
        for s in samples:
            if s.label in products:
                continue
            lines = (s.text or "").splitlines()
            products[s.label] = Product(label=s.label, coarse_label=s.coarse_label,
                                        title=lines[0].strip() if lines else s.label.replace("-", " "),
                                        description="\n".join(lines[1:]).strip())
    return products


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


def _split_compound(key: str, value: str) -> list[tuple[str, str]]:
    """"Country and volume: Italy, ca 180g" -> [("Country", "Italy"), ("Volume", "ca 180g")]."""
    keys = [k.strip() for k in re.split(r"\s+and\s+", key) if k.strip()]
    values = [v.strip() for v in value.split(",") if v.strip()]
    if len(keys) > 1 and len(keys) == len(values):
        return [(k[:1].upper() + k[1:], v) for k, v in zip(keys, values, strict=True)]
    return [(key, value)]


def _key_questions(key: str) -> tuple[str, ...]:
    return tuple(q for word, qs in _KEY_QUESTIONS.items() if word in key.lower() for q in qs)


def _info_lines(info: str) -> list[str]:
    """`Key: value` lines; indented lines continue the previous one (nutrition tables)."""
    out: list[str] = []
    for raw in info.replace("\ufeff", "").replace("\xa0", " ").splitlines():
        if not raw.strip():
            continue
        if raw[:1].isspace() and out:
            out[-1] = f"{out[-1]}; {raw.strip()}"
        else:
            out.append(raw.strip())
    # "Key:" with nothing after it carries no fact.
    return [line for line in out if not line.endswith(":") and len(line) > 3]


def product_facts(product: Product, stock: int | None = None) -> list[Fact]:
    title = product.title or product.label.replace("-", " ")
    facts = [Fact("name", (f"Product name: {title}", *_NAME_QUESTIONS), f"This is {title}.")]
    if product.coarse_label:
        facts.append(Fact("category", (f"Category: {product.coarse_label}", *_CATEGORY_QUESTIONS),
                          f"{title} is in our {product.coarse_label} range."))
    for sentence in _SENTENCE_END.split(product.description.strip()):
        if sentence.strip():
            facts.append(Fact("description", (sentence.strip(),), sentence.strip()))
    for line in _info_lines(product.info):
        key, sep, value = line.partition(":")
        if not sep or not value.strip():
            facts.append(Fact("info", (line,), line))
            continue
        for k, v in _split_compound(key.strip(), value.strip()):
            facts.append(Fact("info", (f"{k}: {v}", *_key_questions(k)), f"{k}: {v}"))
    if stock is not None:
        answer = f"We have {stock} of {title} in stock." if stock > 0 else f"{title} is out of stock right now."
        facts.append(Fact("stock", (f"In stock: {stock}", *_STOCK_QUESTIONS), answer))
    return facts


class SupportResponder:
    """`answer(prediction, question)` -> SupportAnswer. Fact embeddings are cached per product (the stock
    fact's text carries the count, so a count change re-embeds only that product's facts)."""

    def __init__(self, products: Mapping[str, Product], encoder: Encoder, *, min_confidence: float = 0.5,
                 min_score: float = 0.4, stock: Callable[[str], int | None] | None = None):
        self.products, self.encoder = dict(products), encoder
        self.min_confidence, self.min_score, self.stock = min_confidence, min_score, stock
        # (label, stock) -> (facts, key vectors K x D, fact index of each key row)
        self._cache: dict[tuple[str, int | None], tuple[list[Fact], np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        topics = [(name, q) for name, qs in _HANDOFF_TOPICS.items() for q in qs]
        self._topic_names = [name for name, _ in topics]
        self._topic_vectors = np.asarray(self.encoder.encode([q for _, q in topics]), dtype=np.float32)
        self._topic_is_stock = np.array([name == "stock" for name in self._topic_names])

    def product(self, label: str) -> Product:
        return self.products.get(label) or Product(label=label, title=label.replace("-", " "))

    def _facts(self, label: str) -> tuple[list[Fact], np.ndarray, np.ndarray]:
        count = self.stock(label) if self.stock is not None else None
        key = (label, count)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            facts = product_facts(self.product(label), count)
            keys = [(i, k) for i, f in enumerate(facts) for k in f.keys]
            vectors = np.asarray(self.encoder.encode([k for _, k in keys]), dtype=np.float32)
            hit = (facts, vectors, np.array([i for i, _ in keys]))
            with self._lock:
                for old in [k for k in self._cache if k[0] == label]:
                    del self._cache[old]
                self._cache[key] = hit
        return hit

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
                                 f"recognition confidence {conf:.2f} is below {self.min_confidence:.2f}: "
                                 "a person should check which product this is", candidates)
        facts, vectors, owner = self._facts(label)
        if question is None:
            described = next((f for f in facts if f.field == "description"), facts[0])
            text = f"This is {title}." + ("" if described.field == "name" else f" {described.answer}")
            return SupportAnswer(label, title, conf, None, text, "name", 1.0, False, None, candidates)
        q = np.asarray(self.encoder.encode([question]), dtype=np.float32)[0]
        scores = vectors @ q
        row = int(scores.argmax())
        best, score = int(owner[row]), float(scores[row])
        topic_scores = self._topic_vectors @ q
        if any(f.field == "stock" for f in facts):  # the stock topic stands in only for a missing stock fact
            topic_scores = np.where(self._topic_is_stock, -np.inf, topic_scores)
        t = int(topic_scores.argmax())
        if float(topic_scores[t]) > score:
            topic = self._topic_names[t]
            reason = ("stock levels are not known here (this server keeps no inventory)" if topic == "stock"
                      else f"the question is about {topic}, which the catalogue does not answer")
            return SupportAnswer(label, title, conf, question, None, None, score, True, reason, candidates)
        if score < self.min_score:
            return SupportAnswer(label, title, conf, question, None, None, score, True,
                                 f"no catalogue field answers the question (best match {facts[best].field!r} "
                                 f"at {score:.2f} < {self.min_score:.2f})", candidates)
        return SupportAnswer(label, title, conf, question, facts[best].answer, facts[best].field, score, False,
                             None, candidates)


def load_products(catalogue: str | Path | None, fallback: str | Path | None = None) -> dict[str, Product]:
    """Products from `catalogue`, else from `fallback` (the bundle's training data) if it still exists."""
    from ..data.catalogue import load_catalogue

    for path in (catalogue, fallback):
        if path and Path(path).exists():
            return products_from_catalogue(load_catalogue(path, val_fraction=0))
        if path and path == catalogue:
            raise FileNotFoundError(f"catalogue {path}: not found")
    return {}
