"""Listing tags for ads and marketplaces: what a product photo says, in the words a listing feed wants.

Per photo, a `ListingTags`:

- category: the path coarse > fine (labels, their catalogue titles, confidences), following the decision of
  `predictor.decide` (a fine label too uncertain for the card's fallback leaves only the coarse step);
- attributes: the attribute heads above their thresholds, exclusive values resolved (`card.without_conflicts`,
  with the card's pairs, else the pairs the catalogue's products imply);
- colours: basic colour names of the product region (centre crop, near-white background left out), from
  k-means in CIE Lab with each centre named by the nearest of `BASIC_COLOURS`, with its share of pixels;
- tags: phrases of a user's vocabulary with a score, top-k above `min_score`. Two ways to score a phrase:

  * "aligned", through the image-text space: the cosine between the photo's embedding and the phrase projected
    by the bundle's text aligner (`skulens align`; the aligner brings the text encoder it was trained on, as
    search's aligned mode does). Needs no catalogue, so it also tags products the catalogue says nothing about.
  * "text", through the recognised product's texts: the expected cosine, over the classifier's probabilities,
    between the phrase and each product's texts (`product_pieces` of `catalogue_text`; a product scores its best
    piece) with the encoder search's dense side uses (the bundle's `text-tune`d one, else MiniLM). Needs products.

  "auto" (the default) is "text" when product texts are known, else "aligned": on the grocery val photos
  "text" found the product texts' words better (mAP 0.32 vs 0.24 with MiniLM, 0.61 with the text-tuned
  encoder; benchmarks/tags_grocery.py, README "Listing tags").
  Without a vocabulary there are no tags: the attribute heads and the category already carry the catalogue's
  own words, and a default list would decide for the seller what a listing is about.

Everything here takes images, arrays and mappings; reading files and answering HTTP live in cli/ and serve/.
"""

from __future__ import annotations

import functools
import numbers
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..data.catalogue import Product
from ..data.decode import ImageDecodeError, decode_any, to_rgb
from ..data.sheets import spreadsheet_cell
from ..models.card import ModelCard, exclusive_attribute_pairs, scores_cell, without_conflicts

if TYPE_CHECKING:  # torch comes with the model: checking a vocabulary file (the CLI does, first) needs none
    from ..models.predictor import ImageInput, Model, Prediction
    from ..models.text import TextEncoder
    from .align import TextAligner

__all__ = ["BASIC_COLOURS", "CSV_COLUMNS", "DEFAULT_MIN_SCORE", "MAX_PHRASES", "MAX_PHRASE_CHARS", "TAG_MODES",
           "TUNED_TEXT_MIN_SCORE",
           "CategoryStep", "ListingTags", "Tagger", "TaggingError", "Vocabulary", "category_path", "check_vocabulary",
           "colour_name", "dominant_colours", "parse_vocabulary", "product_title"]

TAG_MODES = ("auto", "text", "aligned")
# Score a tag needs, per mode: the cutoff (top 5 kept) that maximised micro F1 of the product-text words on the
# grocery *train* photos with runs/bench9, MiniLM and an aligner fitted as `skulens align` does
# (benchmarks/tags_grocery.py; val is where it is measured). Cosines, so they move with the encoder and the
# aligner: pass min_score for another catalogue.
DEFAULT_MIN_SCORE = {"text": 0.39, "aligned": 0.115}
# "text" with a `skulens text-tune`d encoder, whose cosines run lower (0.296 on the same benchmark).
TUNED_TEXT_MIN_SCORE = 0.30
MAX_PHRASES = 1000  # a vocabulary file; the REST API takes fewer per request
DEFAULT_TOP_TAGS = 5  # vocabulary tags per photo when top_k is not given
MAX_PHRASE_CHARS = 100  # a tag, not a description

# 12 basic colour terms (Berlin & Kay's eleven, with beige for packaging and produce), each with sRGB
# prototypes: a name owns the Lab region nearest its prototypes (one per name left sky blue "grey", violet
# "blue" and aubergine "black").
BASIC_COLOURS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((10, 10, 10),), "grey": ((128, 128, 128), (190, 190, 190)), "white": ((250, 250, 250),),
    "red": ((200, 20, 30), (150, 20, 30)), "orange": ((245, 130, 20),), "yellow": ((245, 215, 40),),
    "green": ((50, 150, 50), (140, 200, 60), (20, 80, 30)), "blue": ((20, 70, 210), (0, 0, 255), (110, 170, 230), (20, 30, 110)),
    "purple": ((115, 40, 140), (140, 40, 180), (70, 25, 70)), "pink": ((240, 145, 180),),
    "brown": ((115, 70, 35), (80, 50, 30)), "beige": ((220, 200, 160),),
}
CSV_COLUMNS = ["source", "category", "category_labels", "confidence", "attributes", "colours", "tags", "error"]


class TaggingError(ValueError):
    """A vocabulary that cannot be used as given (empty, too long) or cannot be scored with this model (no
    product texts, no aligner): the user's to fix. The CLI prints it as one line, the service answers 422."""


# --------------------------------------------------------------------------------------------- results

@dataclass(frozen=True)
class CategoryStep:
    level: str  # coarse | fine
    label: str
    title: str  # the catalogue's name for people
    confidence: float


@dataclass(frozen=True)
class ListingTags:
    """One photo's tags. `error` is set (and everything else empty) when the photo could not be read."""

    source: str
    category: tuple[CategoryStep, ...] = ()
    attributes: tuple[tuple[str, float], ...] = ()  # above threshold, conflicts resolved, card order
    colours: tuple[tuple[str, float], ...] = ()  # basic colour name, share of the product region's pixels
    tags: tuple[tuple[str, float], ...] = ()  # vocabulary phrase, score; best first
    error: str | None = None

    @property
    def category_path(self) -> str:
        """"Apple > Granny Smith": the titles, coarse first ("Pomegranate", not "Pomegranate > Pomegranate")."""
        titles = [s.title for s in self.category]
        return " > ".join(t for i, t in enumerate(titles) if i == 0 or t != titles[i - 1])

    @property
    def label(self) -> str | None:
        """The most specific category label (the decision); None for an unreadable photo."""
        return self.category[-1].label if self.category else None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "category_path": self.category_path,
                "category": [{"level": s.level, "label": s.label, "title": s.title,
                              "confidence": round(s.confidence, 6)} for s in self.category],
                "attributes": {a: round(p, 6) for a, p in self.attributes},
                "colours": {c: round(p, 4) for c, p in self.colours},
                "tags": [{"phrase": t, "score": round(s, 6)} for t, s in self.tags], "error": self.error}

    def to_row(self) -> dict[str, str]:
        """One flat row for a CSV feed (`CSV_COLUMNS`): lists as "name:value;name:value"; a text cell a spreadsheet
        would run as a formula starts with ' (`spreadsheet_cell`)."""
        return {k: spreadsheet_cell(v) for k, v in {"source": self.source, "category": self.category_path,
                "category_labels": " > ".join(s.label for s in self.category),
                "confidence": f"{self.category[-1].confidence:.4f}" if self.category else "",
                "attributes": scores_cell(self.attributes, 3),
                "colours": ";".join(f"{c}:{p:.2f}" for c, p in self.colours),
                "tags": scores_cell(self.tags, 3), "error": self.error or ""}.items()}


# --------------------------------------------------------------------------------------------- category

def product_title(label: str, products: Mapping[str, Product | str] | None = None) -> str:
    """A label's name for people: its catalogue title, else (none, or just the key) dashes as spaces."""
    p = (products or {}).get(label)
    title = p if isinstance(p, str) else (p.title if p is not None else "")
    return title if title and title != label else label.replace("-", " ").replace("_", " ")


def category_path(card: ModelCard, prediction: Prediction, coarse: np.ndarray | None = None,
                  products: Mapping[str, Product | str] | None = None) -> tuple[CategoryStep, ...]:
    """Coarse > fine for a fine decision, the coarse class alone for a coarse one, () without a decision.

    coarse: the photo's coarse probabilities (for the coarse step's confidence; else the prediction's own).
    """
    if prediction.label is None:
        return ()
    parent = {c: card.coarse_classes[k] for c, k in zip(card.classes, card.fine_to_coarse, strict=False)} \
        if card.coarse_classes and card.fine_to_coarse else {}

    def coarse_step(label: str) -> CategoryStep:
        if coarse is not None and label in card.coarse_classes:
            p = float(coarse[card.coarse_classes.index(label)])
        else:
            p = prediction.coarse_confidence if prediction.coarse_label == label else None
        return CategoryStep("coarse", label, product_title(label, products), float(p or 0.0))

    if prediction.level == "coarse":
        return (coarse_step(prediction.label),)
    fine = CategoryStep("fine", prediction.label, product_title(prediction.label, products), prediction.confidence)
    return (coarse_step(parent[prediction.label]), fine) if prediction.label in parent else (fine,)


# --------------------------------------------------------------------------------------------- colours

def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """N x 3 sRGB in 0..255 -> CIE L*a*b* (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


_NAMES = [name for name, protos in BASIC_COLOURS.items() for _ in protos]
_PALETTE_LAB = _srgb_to_lab(np.array([rgb for protos in BASIC_COLOURS.values() for rgb in protos]))


def colour_name(lab: np.ndarray) -> list[str]:
    """The basic colour of the nearest prototype (CIE76 distance in Lab) for each row of an N x 3 Lab array."""
    d = ((np.asarray(lab)[:, None, :] - _PALETTE_LAB[None]) ** 2).sum(-1)
    return [_NAMES[i] for i in d.argmin(1)]


@functools.lru_cache(maxsize=1)
def _threadpools() -> Any:
    """The process's native thread pools, found once (finding them reads /proc/self/maps: 13 ms a call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def dominant_colours(image: Image.Image, *, k: int = 4, min_share: float = 0.15, max_colours: int = 3,
                     centre: float = 0.6, seed: int = 0) -> tuple[tuple[str, float], ...]:
    """The basic colour names of the product region, each with its share of that region's pixels (best first).

    The region is the central `centre` of each side (shoppers and shops centre the product), without
    near-white pixels when they are the background (under 90% of the region; a white product keeps them).
    Its pixels are clustered into `k` colours by k-means in Lab (so shading and noise average out) and each
    cluster is named by the nearest basic colour; names under `min_share` are dropped.
    """
    from sklearn.cluster import KMeans

    img = to_rgb(image)  # transparency on white, as the decoder does (a plain convert makes it black)
    w, h = img.size
    m = (1 - centre) / 2
    img = img.crop((round(w * m), round(h * m), max(round(w * (1 - m)), round(w * m) + 1),
                    max(round(h * (1 - m)), round(h * m) + 1)))
    img.thumbnail((64, 64), Image.Resampling.BILINEAR)  # 4096 pixels at most: enough for shares of 1%
    lab = _srgb_to_lab(np.asarray(img).reshape(-1, 3))
    white = (lab[:, 0] > 90) & (np.hypot(lab[:, 1], lab[:, 2]) < 10)
    if 0 < white.sum() < 0.9 * len(lab):
        lab = lab[~white]
    n = min(k, len(np.unique(np.round(lab, 1), axis=0)))
    # One thread: 4096 points are too few to share out, and on a busy machine OpenMP's threads made it 30x slower.
    with warnings.catch_warnings(), _threadpools().limit(limits=1, user_api="openmp"):
        warnings.simplefilter("ignore")  # few distinct colours: fewer clusters than asked is fine here
        km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(lab)
    shares: dict[str, float] = {}
    sizes = np.bincount(km.labels_, minlength=n) / len(lab)
    for name, share in zip(colour_name(km.cluster_centers_), sizes, strict=True):
        shares[name] = shares.get(name, 0.0) + float(share)
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    return tuple((c, s) for c, s in ranked if s >= min_share)[:max_colours]


# --------------------------------------------------------------------------------------------- vocabulary

def check_vocabulary(phrases: Sequence[str], *, max_phrases: int = MAX_PHRASES) -> tuple[str, ...]:
    """The phrases trimmed (inner whitespace collapsed), blanks and repeats (case-insensitive) left out;
    TaggingError for an empty vocabulary, a phrase over MAX_PHRASE_CHARS, or more than `max_phrases`."""
    if isinstance(phrases, str):
        raise TypeError("the vocabulary is a list of phrases, not one string")
    out: dict[str, str] = {}
    for i, raw in enumerate(phrases):
        if not isinstance(raw, str):
            raise TaggingError(f"vocabulary phrase {i + 1} is not text: {raw!r}")
        p = " ".join(raw.split())
        if ";" in p:  # CSV rows list tags as "phrase:score;phrase:score"
            raise TaggingError(f"vocabulary phrase {i + 1} has a ';', which separates tags in CSV rows: {p[:40]!r}")
        if len(p) > MAX_PHRASE_CHARS:
            raise TaggingError(f"vocabulary phrase {i + 1} is {len(p)} characters long (at most {MAX_PHRASE_CHARS}): "
                             f"{p[:40]!r}...")
        if p:
            out.setdefault(p.lower(), p)
    if not out:
        raise TaggingError("the vocabulary is empty: give at least one phrase (one per line in a file)")
    if len(out) > max_phrases:
        raise TaggingError(f"the vocabulary has {len(out)} phrases, more than {max_phrases}: split it, or keep the "
                         "ones the listings need")
    return tuple(out.values())


def parse_vocabulary(text: str, *, max_phrases: int = MAX_PHRASES) -> tuple[str, ...]:
    """A vocabulary file's text: one phrase per line, `#` starts a comment line (see `check_vocabulary`; a
    phrase's number in its errors is its line number)."""
    return check_vocabulary(["" if line.lstrip().startswith("#") else line for line in text.splitlines()],
                            max_phrases=max_phrases)


@dataclass(frozen=True)
class Vocabulary:
    """Phrases encoded for one Tagger and mode: "aligned" rows are image-space vectors (P x D), "text" rows
    the phrase's best cosine with each class's texts (P x C, in the card's class order). min_score: the score a
    tag needs when the caller gives none (None: DEFAULT_MIN_SCORE of the mode), which depends on the encoder."""

    phrases: tuple[str, ...]
    mode: str
    matrix: np.ndarray
    min_score: float | None = None

    @property
    def default_min_score(self) -> float:
        return DEFAULT_MIN_SCORE[self.mode] if self.min_score is None else self.min_score

    def scores(self, embeddings: np.ndarray, fine: np.ndarray) -> np.ndarray:
        """N x P scores of the phrases for N photos (their embeddings and fine probabilities)."""
        x = embeddings if self.mode == "aligned" else fine
        return np.asarray(x, dtype=np.float64) @ self.matrix.T


# --------------------------------------------------------------------------------------------- the tagger

def unused_vocabulary_settings(mode: str = "auto", top_k: int | None = None,
                               min_score: float | None = None) -> list[str]:
    """Which of the vocabulary tags' settings were given (mode other than auto, a min_score, a top_k above 0):
    without a vocabulary nothing reads them. top_k 0, no vocabulary tags, is what no vocabulary gives."""
    return [name for name, given in (("mode", mode != "auto"), ("min_score", min_score is not None),
                                     ("top_k", bool(top_k))) if given]


class Tagger:
    """Tags photos with one model. products: the catalogue's products by label (titles for the category path,
    texts for the "text" mode, attribute sets for conflicts when the card has none); aligner: the bundle's
    text aligner (`load_aligner(bundle)`) for the "aligned" mode. Encoded vocabularies are cached."""

    def __init__(self, model: Model, *, products: Mapping[str, Product] | None = None,
                 aligner: TextAligner | None = None, mode: str = "auto", text_model: str | None = None):
        if mode not in TAG_MODES:
            raise ValueError(f"unknown tag mode {mode!r}: {', '.join(TAG_MODES)}")
        if aligner is not None:  # an aligner of another model scored vocabularies in another space, unsaid
            aligner = aligner.for_model(model, "tagging")
        self.model, self.aligner, self.text_model = model, aligner, text_model
        self.products: Mapping[str, Product] = products if products is not None else {}
        self.mode = mode
        self._lock = threading.Lock()
        # Both keyed by the text encoder object too: after `skulens text-tune` rewrites the bundle's encoder,
        # `text_encoder()` returns a new one, and vectors of the old one must not meet the new one's.
        self._cache: dict[tuple[str, tuple[str, ...], Any], Vocabulary] = {}
        self._pieces: tuple[tuple[str, ...], np.ndarray, np.ndarray, Any] | None = None
        self._piece_vectors: tuple[Any, dict[str, np.ndarray]] | None = None  # (encoder, text -> its vector)

    def reuse_text_vectors(self, other: Tagger) -> None:
        """Start from `other`'s product text vectors (a service's tagger made again after an enrolment): only the
        texts that are new are encoded at the next vocabulary, not every product's (which timed out a request)."""
        self._piece_vectors = other._piece_vectors

    def products_changed(self) -> None:
        """After a product's title or text changed (a service's PATCH): the vocabularies are scored again against
        the products' texts as they are now. Texts already encoded are not encoded again."""
        with self._lock:
            self._cache.clear()
            self._pieces = None

    @property
    def card(self) -> ModelCard:
        return self.model.card

    def has_texts(self) -> bool:
        return any(self.products.get(c) is not None and (self.products[c].description or self.products[c].info)
                   for c in self.card.classes)

    def resolved_mode(self) -> str:
        """The mode a vocabulary is scored in; TaggingError when the model has what neither mode needs."""
        if self.mode == "auto":
            if self.has_texts():
                return "text"
            if self.aligner is not None:
                return "aligned"
            raise TaggingError("open-vocabulary tags need the products' texts (a catalogue with descriptions: "
                               "--data) or the bundle's text aligner (`skulens align`)")
        if self.mode == "aligned" and self.aligner is None:
            raise TaggingError("no text aligner in this bundle: run `skulens align` first, or use mode 'text'")
        if self.mode == "text" and not self.has_texts():
            raise TaggingError("mode 'text' needs the products' texts, and no product here has a description: give "
                               "a catalogue with descriptions (--data; a products.csv), or use mode 'aligned'")
        return self.mode

    def text_encoder(self) -> TextEncoder:
        """As search's dense side picks it: `text_model` if given, else the bundle's fine-tuned one, else MiniLM."""
        from ..models.text import DEFAULT_TEXT_MODEL, load_text_encoder

        if self.text_model is not None:
            return load_text_encoder(self.text_model)
        return load_text_encoder(DEFAULT_TEXT_MODEL, bundle=self.model.path)

    def vocabulary(self, phrases: Sequence[str] | Vocabulary, *, max_phrases: int = MAX_PHRASES) -> Vocabulary:
        """Check and encode the phrases (once per Tagger: later calls with the same phrases are free)."""
        if isinstance(phrases, Vocabulary):
            return phrases
        checked = check_vocabulary(phrases, max_phrases=max_phrases)
        mode = self.resolved_mode()
        encoder = self.text_encoder() if mode == "text" else None
        key = (mode, checked, encoder)
        with self._lock:
            if key not in self._cache:
                if mode == "aligned":
                    from ..models.text import TextEncoderMismatch

                    assert self.aligner is not None
                    try:
                        matrix = self.aligner.encode(list(checked)).astype(np.float64)
                    except TextEncoderMismatch as exc:  # fitted on another encoder: the message names the refit
                        raise TaggingError(str(exc)) from None
                else:
                    assert encoder is not None
                    matrix = self._text_matrix(checked, encoder)
                if len(self._cache) >= 64:  # a server sees many request vocabularies: keep the recent ones
                    self._cache.pop(next(iter(self._cache)))
                tuned = encoder is not None and encoder.fine_tuned
                self._cache[key] = Vocabulary(checked, mode, matrix, TUNED_TEXT_MIN_SCORE if tuned else None)
            return self._cache[key]

    def _text_matrix(self, phrases: tuple[str, ...], encoder: TextEncoder) -> np.ndarray:
        from .engine import encode_reusing, product_pieces
        from .text_tune import catalogue_text

        classes = self.card.classes
        if self._pieces is None or self._pieces[0] != classes or self._pieces[3] is not encoder:
            pieces = []
            for c in classes:
                p = self.products.get(c)
                # without WordNet's notes (`search.lexicon`): they were measured on search, not on tags, whose
                # benchmark truth is the catalogue's own words
                pieces.append(product_pieces(p.title or product_title(c), catalogue_text(p, lexicon=False))
                              if p is not None else [product_title(c)])
            owner = np.repeat(np.arange(len(classes)), [len(p) for p in pieces])
            known = self._piece_vectors[1] if self._piece_vectors and self._piece_vectors[0] is encoder else {}
            vectors, by_text = encode_reusing(encoder, [t for ps in pieces for t in ps], known)
            self._piece_vectors = (encoder, by_text)
            self._pieces = (classes, vectors, owner, encoder)
        _, vectors, owner, _ = self._pieces
        sims = encoder.encode(list(phrases)) @ vectors.T  # P x pieces
        best = np.full((len(phrases), len(classes)), -1.0)
        np.maximum.at(best.T, owner, sims.T)  # a product scores its best piece
        return best

    def _exclusive(self) -> tuple[tuple[str, str], ...]:
        card = self.card
        if card.attribute_exclusive or not card.attributes:
            return card.attribute_exclusive
        sets = [p.attributes for p in self.products.values() if p.attributes]
        return exclusive_attribute_pairs(sets, card.attributes) if sets else ()

    def tag(self, images: Iterable[ImageInput], *,
            vocabulary: Sequence[str] | Vocabulary | Sequence[Vocabulary | None] | None = None,
            top_k: int | Sequence[int] = DEFAULT_TOP_TAGS, min_score: float | None | Sequence[float | None] = None,
            colours: bool = True, batch_size: int = 32, progress: bool = False) -> list[ListingTags]:
        """ListingTags per photo, in input order; an unreadable photo gets a row with its `error`.

        vocabulary: phrases (or an encoded Vocabulary) for every photo, or one Vocabulary/None per photo (the
        service batches requests that sent different ones). top_k, min_score: tags per photo and the score they
        need (None: DEFAULT_MIN_SCORE of the mode, TUNED_TEXT_MIN_SCORE for "text" with a text-tuned encoder);
        one value, or one per photo.
        """
        from ..models.predictor import check_images, source_name

        check_images(images)  # one path on its own would be tagged letter by letter
        images = list(images)  # a generator too, as predict takes one
        n = len(images)
        vocabs = _per_photo(vocabulary, n)
        if vocabs and vocabs[0] is not None and not isinstance(vocabs[0], Vocabulary):
            vocabs = [self.vocabulary(vocabs[0])] * n  # one phrase list for every photo: encoded once
        # Encoded for another set of classes (the service reloaded an enrolled bundle since): encode again.
        vocabs = [v if v is None or v.mode == "aligned" or v.matrix.shape[1] == self.card.num_classes
                  else self.vocabulary(v.phrases) for v in vocabs]
        ks, mins = _per_value(top_k, n, "top_k"), _per_value(min_score, n, "min_score")
        for k in ks:  # as the CLI and POST /v1/tag check them: 2.5 failed in a slice, -1 and NaN gave no tags
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
                raise ValueError(f"top_k must be a whole number >= 0 (0: no vocabulary tags), got {k!r}")
        for m in mins:
            if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Real) or not -1 <= m <= 1):
                raise ValueError(f"min_score is a cosine similarity between -1 and 1 (or None), got {m!r}")
        names = [source_name(im, i) for i, im in enumerate(images)]
        pils: list[Image.Image] = []
        ok: list[int] = []
        out: list[ListingTags | None] = [None] * n
        for i, im in enumerate(images):
            try:
                pils.append(decode_any(im, names[i], reduce_to=self.card.resize_to))
                ok.append(i)
            except ImageDecodeError as e:
                out[i] = ListingTags(names[i], error=e.reason)
        if pils:
            self._tag_decoded(pils, ok, names, vocabs, ks, mins, colours, batch_size, progress, out)
        return [r for r in out if r is not None]

    def _tag_decoded(self, pils: list[Image.Image], ok: list[int], names: list[str],
                     vocabs: list[Vocabulary | None], ks: list[int], mins: list[float | None], colours: bool,
                     batch_size: int, progress: bool, out: list[ListingTags | None]) -> None:
        from ..data.transforms import to_uint8_tensor
        from ..models.inference import card_coarse
        from ..models.predictor import decide

        card = self.card
        if not card.classes:
            raise TaggingError("this model has no classifier (a plain pretrained backbone): tags need a trained bundle")
        heads = self.model.run([to_uint8_tensor(p) for p in pils], embeddings=True, batch_size=batch_size,
                               progress=progress)
        assert heads.embeddings is not None
        coarse = card_coarse(heads, card)
        exclusive = self._exclusive()
        for row, i in enumerate(ok):
            pred = decide(card, heads.fine[row], None if coarse is None else coarse[row],
                          None if heads.attributes is None else heads.attributes[row], names[i], 1, 0.0)
            attrs = without_conflicts(pred.attributes, exclusive) if exclusive else pred.attributes
            tags: tuple[tuple[str, float], ...] = ()
            v = vocabs[i]
            if v is not None:
                s = v.scores(heads.embeddings[row:row + 1], heads.fine[row:row + 1])[0]
                floor = v.default_min_score if mins[i] is None else mins[i]
                order = np.argsort(-s, kind="stable")[: ks[i]]
                tags = tuple((v.phrases[j], float(s[j])) for j in order if s[j] >= floor)
            out[i] = ListingTags(
                names[i], category_path(card, pred, None if coarse is None else coarse[row], self.products),
                attrs, dominant_colours(pils[row]) if colours else (), tags)


def _per_photo(vocabulary: Any, n: int) -> list[Any]:
    """One Vocabulary / None / phrase list per photo."""
    if vocabulary is None or isinstance(vocabulary, (Vocabulary, str)):
        return [vocabulary] * n
    items = list(vocabulary)
    if items and all(v is None or isinstance(v, Vocabulary) for v in items):
        if len(items) != n:
            raise ValueError(f"{len(items)} vocabularies for {n} photos: give one, or one per photo")
        return items
    return [items] * n  # a list of phrases for every photo


def _per_value(value: Any, n: int, name: str) -> list[Any]:
    if value is None or isinstance(value, numbers.Real):  # also NumPy scalars (np.int64(2))
        return [value.item() if isinstance(value, np.generic) else value] * n
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: a number, or one per photo, not {type(value).__name__}")
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} values of {name} for {n} photos: give one, or one per photo")
    return values
