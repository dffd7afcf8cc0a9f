"""Questions answered from a product's structured facts before any text matching.

A yes/no question is read for the things it names, matched as whole words against lexicons built from
the catalogue and `_support_words`: an attribute of the catalogue's table (a flag such as "lactose free"
or "organic", or a colour, flavour or packaging value), a country ("is it Swedish?"), a brand ("is it
Arla?"), an ingredient ("does it contain milk?"), a pack size ("the 2 litre one?"), a dietary claim the
catalogue does not record ("is it vegan?"), or, when nothing else is asked, the product itself ("is this
an apple?"). Each is checked against the product's facts: the answer is "yes" when all hold, "no" (with
the fact that contradicts) when one does not, and a hand-off when one cannot be settled: the product has
no such fact, or only an ingredient's absence from a list would say "no" (a wrong "no" to "does it
contain nuts?" costs more than a person's minute).

An open question that asks for a sheet field (origin, maker, size, ingredients, nutrition, colour,
flavour, packaging) is answered from that field, or handed off when the product has none. Everything
else returns None: the caller matches the question against the product's text.

Attributes come from the catalogue's table for the recognised product; only for a product the table does
not cover are the model's predicted attributes used, at high probability, and said as such.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..data.catalogue import Product
from ._support_words import (
    COMPARATIVE,
    COUNTRIES,
    DIET_CLAIMS,
    EMBEDDED_WH,
    FLAG_AGAINST,
    FLAG_WORDS,
    FRAME,
    GROUP_CUES,
    INGREDIENT_CUES,
    INGREDIENTS,
    NAME_QUESTION,
    NUTRIENT_WORDS,
    NUTRIENTS,
    OPEN_INTENTS,
    OPENERS,
    PRESENCE,
    QUANTITY,
    UNITS,
    VALUE_WORDS,
    WH,
)

__all__ = ["Lexicon", "Ruling", "asks_for_a_property", "country_name", "info_lines", "rule", "split_compound",
           "strip_names"]

_SUBJECT_NEGATIONS = frozenset({"cant", "cannot", "avoid", "avoiding", "allergic"})


@dataclass(frozen=True)
class Ruling:
    """A structured answer: `verdict` yes/no (None for an open answer), or a hand-off when `answer` is None."""

    verdict: str | None
    answer: str | None
    field: str
    source: str = "catalogue"  # or "photo": from the model's predicted attributes
    reason: str | None = None


@dataclass(frozen=True)
class Reading:
    """One way to read a named thing."""

    kind: str  # flag | value | identity | name | origin | brand | ingredient | diet | size
    key: str  # the flag, group=value, name, country, brand, ingredient, claim, or the size in ml/g
    want: bool = True  # False: "does it contain lactose?" asks for the flag's absence


# ---- words and sheets ------------------------------------------------------------------------------------

def _singular(word: str) -> str:
    if len(word) <= 3 or word.endswith(("ss", "us", "is", "yes", "does")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("oes", "ches", "shes", "xes")):
        return word[:-2]
    return word.removesuffix("s")


def _tokens(text: str) -> tuple[str, ...]:
    text = text.lower().replace("'", "").replace("\u2019", "")
    return tuple(_singular(w) for w in re.findall(r"[a-z0-9åäöæøéü]+", text))


def asks_for_a_property(question: str) -> bool:
    """Whether the question names a colour, flavour or packaging ("What colour is it?"): a product's name or
    category answers none of these."""
    words = _tokens(question)
    return any(_find(words, _tokens(c)) for cues in GROUP_CUES.values() for c in cues)


def _find(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return bool(phrase) and any(words[i:i + n] == phrase for i in range(len(words) - n + 1))


def split_compound(key: str, value: str) -> list[tuple[str, str]]:
    """"Country and volume: Italy, ca 180g" -> [("Country", "Italy"), ("Volume", "ca 180g")]."""
    keys = [k.strip() for k in re.split(r"\s+and\s+", key) if k.strip()]
    values = [v.strip() for v in value.split(",") if v.strip()]
    if len(keys) > 1 and len(keys) == len(values):
        return [(k[:1].upper() + k[1:], v) for k, v in zip(keys, values, strict=True)]
    return [(key, value)]


def info_lines(info: str) -> list[str]:
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


def _sheet(info: str) -> dict[str, str]:
    """{lower-case key: value}, compound keys split; the nutrition table keeps its rows."""
    out: dict[str, str] = {}
    for line in info_lines(info):
        key, sep, value = line.partition(":")
        if sep and value.strip():
            for k, v in split_compound(key.strip(), value.strip()):
                out.setdefault(k.lower(), v.strip(" ;"))
    return out


def country_name(raw: str) -> str:
    """"Sverige" -> "Sweden", "The Netherlands" -> "Netherlands"; unknown names are kept as written."""
    words = _tokens(raw)
    for country, phrases in COUNTRIES.items():
        if any(_tokens(p) == words for p in phrases):
            return country
    return raw.strip()


def _quantity(text: str) -> float | None:
    """"ca 1.01kg" -> 1010.0, "3dl" -> 300.0 (ml and g alike)."""
    m = QUANTITY.search(text.lower())
    if not m:
        return None
    unit = _singular(m.group(2))
    return float(m.group(1).replace(",", ".")) * UNITS.get(unit, UNITS.get(unit.rstrip("e"), 1.0))


@dataclass(frozen=True)
class Facts:
    """What the rules can check about one product."""

    title: str
    coarse: str | None
    names: frozenset[tuple[str, ...]]  # token sequences naming it: tails of its title and of its coarse class
    attributes: frozenset[str] | None  # None: the catalogue does not know its attributes
    predicted: Mapping[str, float]  # attributes the model saw in the photo, with probabilities
    sheet: Mapping[str, str]
    brands: frozenset[tuple[str, ...]]

    def field(self, *words: str) -> tuple[str, str] | None:
        """The first sheet (key, value) whose key contains one of `words`."""
        return next(((k, v) for k, v in self.sheet.items() if any(w in k for w in words)), None)

    @property
    def country(self) -> str | None:
        f = self.field("country")
        return country_name(f[1]) if f else None

    @property
    def manufacturer(self) -> str | None:
        f = self.field("manufacturer", "brand", "producer")
        return f[1] if f else None


def _tails(words: tuple[str, ...]) -> set[tuple[str, ...]]:
    return {words[i:] for i in range(len(words))}


def facts_of(product: Product, predicted: Mapping[str, float] | None = None) -> Facts:
    title = product.title or product.label.replace("-", " ")
    sheet = _sheet(product.info)
    title_words = _tokens(title)
    brands: set[tuple[str, ...]] = set()
    maker = next((v for k, v in sheet.items() if "manufacturer" in k or "brand" in k), None)
    if maker:
        maker_words = _tokens(maker)
        brands.add(maker_words)
        n = 0  # "ARLA KO" makes "Arla Standard Milk": the title's brand is their shared start
        while n < min(len(maker_words), len(title_words)) and maker_words[n] == title_words[n]:
            n += 1
        if n:
            brands.add(title_words[:n])
    names = _tails(title_words) | (_tails(_tokens(product.coarse_label)) if product.coarse_label else set())
    return Facts(title, product.coarse_label, frozenset(names - brands),
                 frozenset(product.attributes) if product.attributes else None, predicted or {}, sheet,
                 frozenset(brands))


def strip_names(question: str, product: Product) -> str:
    """The question with the product's own names replaced by "it", for matching against its text:
    "What size is this sour cream?" reads as "what size is this it", not as a question about sour cream."""
    words = _tokens(question)
    facts = facts_of(product)
    names = sorted(facts.names | facts.brands, key=len, reverse=True)
    out, i = [], 0
    while i < len(words):
        for name in names:
            if name and words[i:i + len(name)] == name:
                out.append("it")
                i += len(name)
                break
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


# The word lists as tokens, the form questions are compared in.
_FRAME = frozenset(_singular(w) for w in FRAME)
_OPENERS = frozenset(_singular(w) for w in OPENERS)
_WH = frozenset(_singular(w) for w in WH)


# ---- the lexicon ------------------------------------------------------------------------------------------

@dataclass
class Lexicon:
    """Phrases (token tuples) -> their readings, built once per catalogue."""

    phrases: dict[tuple[str, ...], list[Reading]] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its values

    def add(self, phrase: str | tuple[str, ...], reading: Reading) -> None:
        key = phrase if isinstance(phrase, tuple) else _tokens(phrase)
        if key and reading not in self.phrases.setdefault(key, []):
            self.phrases[key].append(reading)

    @classmethod
    def build(cls, products: Iterable[Product], vocabulary: Iterable[str]) -> Lexicon:
        lex = cls()
        vocab = sorted(set(vocabulary))
        for a in vocab:
            if "=" in a:
                group, value = a.split("=", 1)
                lex.groups[group] = (*lex.groups.get(group, ()), value)
                for phrase in (value, *VALUE_WORDS.get(f"{group}={value.lower()}", ())):
                    lex.add(phrase, Reading("value", a))
                continue
            words = a.replace("_", " ").replace("-", " ")
            for phrase in (words, words.replace(" ", ""), *FLAG_WORDS.get(a, ())):
                lex.add(phrase, Reading("flag", a))
            for phrase in (f"non {words}", f"not {words}", *FLAG_AGAINST.get(a, ())):
                lex.add(phrase, Reading("flag", a, want=False))
            if words.endswith(" free"):  # "lactose free": "without lactose" asks for it, "with lactose" against
                base = words.removesuffix(" free")
                for phrase in (f"without {base}", f"no {base}", f"{base} intolerant", f"{base} intolerance",
                               f"free from {base}", f"free of {base}", f"non {base}", f"{base}free"):
                    lex.add(phrase, Reading("flag", a))
                lex.add(base, Reading("flag", a, want=False))  # "does it contain lactose?": see _narrow
        for country, phrases in COUNTRIES.items():
            for phrase in phrases:
                lex.add(phrase, Reading("origin", country))
        for ingredient in INGREDIENTS:
            lex.add(ingredient, Reading("ingredient", ingredient))
        for claim in DIET_CLAIMS:
            lex.add(claim, Reading("diet", claim))
        for product in products:
            facts = facts_of(product)
            # Names a shopper uses: the title, the coarse class, title tails of two words or more ("apple
            # juice"); one-word tails ("delicious", "smith") name nothing on their own.
            # A one-word tail is a weak name: it can confirm ("is that a grapefruit?" on Red Grapefruit) but
            # not deny ("is this a fruit?" on a banana is no "no").
            title, coarse = _tokens(facts.title), _tokens(facts.coarse or "")
            for name in facts.names:
                strong = name in (title, coarse) or len(name) >= 2
                lex.add(name, Reading("identity" if strong else "name", " ".join(name)))
            for brand in facts.brands:
                lex.add(brand, Reading("brand", " ".join(brand)))
        return lex


def _mentions(words: tuple[str, ...], lex: Lexicon) -> list[tuple[tuple[str, ...], list[Reading], int]]:
    """Longest-first, non-overlapping phrase matches: (phrase, readings, start)."""
    longest = max((len(p) for p in lex.phrases), default=0)
    out, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            readings = lex.phrases.get(words[i:i + n])
            if readings:
                out.append((words[i:i + n], readings, i))
                i += n
                break
        else:
            i += 1
    return out


def _narrow(words: tuple[str, ...], readings: list[Reading], start: int) -> list[Reading]:
    """Which readings of one phrase the question means."""
    kinds = {r.kind for r in readings}
    if "flag" in kinds:
        flags = [r for r in readings if r.kind == "flag"]
        if set(words[max(0, start - 3):start]) & _SUBJECT_NEGATIONS:  # "she can't have lactose": wants it free
            return [Reading(r.kind, r.key, want=True) for r in flags]
        against = [r for r in flags if not r.want and r.key.endswith("_free")]
        if against and ("free" in words or not any(_find(words, _tokens(c)) for c in PRESENCE)):
            # A bare "lactose" asks about its presence only with "contain", "have"...; otherwise the
            # question is not understood ("lactose?"), and a person answers rather than a guess.
            return [Reading("diet", " ".join(words[start:start + 1]))]
        return flags
    if "ingredient" in kinds and any(_find(words, _tokens(c)) for c in INGREDIENT_CUES):
        return [r for r in readings if r.kind == "ingredient"]
    if "diet" in kinds:
        return [r for r in readings if r.kind == "diet"]
    readings = [r for r in readings if r.kind != "ingredient"]
    if "identity" in kinds and start > 0 and words[start - 1] in ("a", "an"):
        return [r for r in readings if r.kind == "identity"]
    cued = {g for g, cues in GROUP_CUES.items() if any(_find(words, _tokens(c)) for c in cues)}
    values = [r for r in readings if r.kind == "value" and r.key.split("=", 1)[0] in cued]
    return values or readings


# ---- checking one reading ---------------------------------------------------------------------------------

def _check(r: Reading, f: Facts, photo_min: float) -> tuple[bool | None, str, str]:
    """(holds? None when the facts cannot tell, the fact that says so, its source)."""
    if r.kind in ("flag", "value"):
        if f.attributes is not None:
            have, source = f.attributes, "catalogue"
        else:
            have, source = frozenset(a for a, p in f.predicted.items() if p >= photo_min), "photo"
        if r.kind == "flag":
            present = r.key in have
            if source == "photo" and not present:
                return None, "", source  # the photo not showing it is no evidence it is absent
            return present == r.want, f"{f.title} is {'' if present else 'not '}{r.key.replace('_', ' ')}", source
        group = r.key.split("=", 1)[0]
        values = [a.split("=", 1)[1] for a in sorted(have) if a.split("=", 1)[0] == group]
        if not values:
            return None, "", source
        return r.key in have, f"its {group} is {' and '.join(values)}", source
    if r.kind in ("identity", "name"):
        what = f"{f.title} ({f.coarse.replace('-', ' ').lower()})" if f.coarse else f.title
        holds = tuple(r.key.split()) in f.names
        return (holds if holds or r.kind == "identity" else None), f"this is {what}", "catalogue"
    if r.kind == "origin":
        if f.country is None:
            return None, "", "catalogue"
        return f.country == r.key, f"it comes from {f.country}", "catalogue"
    if r.kind == "brand":
        if not f.brands:
            return None, "", "catalogue"
        return tuple(r.key.split()) in f.brands, f"it is made by {f.manufacturer}", "catalogue"
    if r.kind == "size":
        size = f.field("volume", "weight", "size")
        have = _quantity(size[1]) if size else None
        if have is None:
            return None, "", "catalogue"
        return abs(have - float(r.key)) <= 0.1 * have, f"the size is {size[1]}", "catalogue"  # type: ignore[index]
    if r.kind == "ingredient":
        line = f.field("ingredient")
        if line is None:
            return None, "", "catalogue"
        at = _listed(line[1].lower(), INGREDIENTS[r.key])
        if at is not None:
            lo, hi = max(0, at[0] - 25), min(len(line[1]), at[1] + 25)
            quote = f"\u201c\u2026{line[1][lo:hi].strip()}\u2026\u201d"
            return at[2], f"the ingredients {'list it' if at[2] else 'say'}: {quote}", "catalogue"
        return None, "", "catalogue"  # not listed is not proof of absence (other words, other languages)
    return None, "", "catalogue"  # dietary claims the catalogue does not record


_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
_CLAUSE_END = re.compile(r"[,.;:()\[\]/\n]")
# "utan fruktkött" (without pulp), "no milk": the ingredient named as absent, by the word just before it
_ABSENT_BEFORE = frozenset({"without", "no", "utan", "uten", "uden", "ingen", "inget", "ej", "inte"})
_ABSENT_AFTER = ("free", "fri", "fritt")  # "gluten free", "laktos fri"
_ADDED = frozenset({"added", "tillsatt", "tilsat", "tilsatt"})  # "no added sugar": sugar may be there, not added


def _listed(text: str, stems: Iterable[str]) -> tuple[int, int, bool] | None:
    """Where an ingredients line (lower case) names one of `stems`: (start, end, present) of the word, or None.

    A stem may sit inside a compound ("skummjölkspulver" lists milk). Within its clause (commas, stops and
    brackets end one), a word is named as absent after "without"/"utan"/"no" ("utan fruktkött") or when it, or
    the word after a stem of several words, is "-free" ("laktosfri", "palm oil free"); "lactose free milk" still
    lists milk. "no added sugar" says neither, and is skipped. Absent only when no other clause lists it."""
    words = list(_WORD.finditer(text))
    clause_of = [len(_CLAUSE_END.findall(text, 0, m.start())) for m in words]
    absent = None
    for i, m in enumerate(words):
        word = m.group(0)
        span = next((len(stem.split()) for stem in stems
                     if (text.startswith(stem, m.start()) if " " in stem else stem in word)), 0)
        if not span:
            continue
        last = i + span - 1
        same = [j for j in (i - 2, i - 1) if j >= 0 and clause_of[j] == clause_of[i]]
        before = [words[j].group(0) for j in same]
        after = words[last + 1].group(0) if last + 1 < len(words) and clause_of[last + 1] == clause_of[i] else ""
        if before and before[-1] in _ADDED and len(before) == 2 and before[0] in _ABSENT_BEFORE:
            continue
        if (before and before[-1] in _ABSENT_BEFORE) or words[last].group(0).endswith(_ABSENT_AFTER) \
                or after in _ABSENT_AFTER:
            absent = absent or (m.start(), words[last].end(), False)
            continue
        return m.start(), words[last].end(), True
    return absent


# ---- the rules --------------------------------------------------------------------------------------------

def _is_open(words: tuple[str, ...], question: str) -> bool:
    """A wh-question, also when it is not the first clause ("I'm counting calories, how many...")."""
    for clause in re.split(r"[,.;:!?]", question):
        tokens = list(_tokens(clause))
        while tokens and tokens[0] in _OPENERS:
            tokens.pop(0)
        if tokens and tokens[0] in _WH:
            return True
    return bool(EMBEDDED_WH.search(question.lower()))


def rule(question: str, product: Product, lex: Lexicon, *, predicted: Mapping[str, float] | None = None,
         photo_min: float = 0.9) -> Ruling | None:
    """A structured answer to `question` about `product`, or None when the rules do not cover it."""
    words = _tokens(question)
    if not words or COMPARATIVE.search(question.lower()):
        return None
    facts = facts_of(product, predicted)
    mentioned = [(phrase, narrowed, start) for phrase, readings, start in _mentions(words, lex)
                 if (narrowed := _narrow(words, readings, start))]
    found = [(phrase, narrowed) for phrase, narrowed, _ in mentioned]
    # "X or Y?": either will do, when the "or" joins two things named ("... or not?" asks the rest again)
    starts = [start for _, _, start in mentioned]
    either = any(w == "or" and words[i + 1:i + 2] != ("not",) and starts and min(starts) < i < max(starts)
                 for i, w in enumerate(words))
    if _is_open(words, question):
        return _open(question, words, facts, lex, found, photo_min)
    text = question.lower()
    found += [((m.group(0),), [Reading("size", str(_quantity(m.group(0))))]) for m in QUANTITY.finditer(text)
              if _quantity(m.group(0)) and not text[: m.start()].rstrip().endswith("per")]  # "per 100g" is no size
    said = {w for p, _ in found for w in p} | {w for cues in GROUP_CUES.values() for c in cues for w in _tokens(c)}
    # A phrase that names this very product is the shopper naming what they hold ("is this apple green?"),
    # or, alone, the whole question ("apple?").
    names_it = [(p, rs) for p, rs in found if any(r.kind in _NAMES and _check(r, facts, photo_min)[0] for r in rs)]
    if len(found) == 1 and names_it:
        found = [(p, [r for r in rs if r.kind in _NAMES]) for p, rs in names_it]
    else:
        found = [(p, rs) for p, rs in found if (p, rs) not in names_it]
    if not found:
        return _elliptic(question, words, facts)
    asked = [(p, rs) for p, rs in found if any(r.kind not in _NAMES for r in rs)]
    # Names and colour/flavour/packaging words are often incidental ("should I keep bananas in the fridge?",
    # "can I drink it straight from the carton?"): alone, they are the question only when nothing else is said.
    weak = all(r.kind in ("identity", "name", "value") for _, rs in asked for r in rs)
    if weak and any(w not in _FRAME and w not in said for w in words):
        return None
    if asked:
        found = [(p, [r for r in rs if r.kind not in _NAMES]) for p, rs in asked]
    return _verdict(found, facts, photo_min, any_of=either)


_NAMES = ("identity", "name")


def _elliptic(question: str, words: tuple[str, ...], facts: Facts) -> Ruling | None:
    """"fibre content?", "ingredients?": a sheet field asked for without a question word."""
    for intent, pattern in OPEN_INTENTS:
        if pattern.search(question.lower()):
            return _field_answer(intent, words, facts)
    return None


def _verdict(found: list[tuple[tuple[str, ...], list[Reading]]], facts: Facts, photo_min: float, *,
             any_of: bool = False) -> Ruling:
    # Mentions of one kind are alternatives ("from Spain or Italy?", "American... made in Sweden?");
    # different kinds must all hold ("organic milk?"), unless the question joins them with "or" (`any_of`:
    # "does it contain lactose or milk?" is yes when either is).
    by_kind: dict[str, list[tuple[tuple[str, ...], list[Reading]]]] = {}
    for phrase, readings in found:
        kind = readings[0].kind if readings[0].kind not in ("flag", "value") else readings[0].key.split("=")[0]
        by_kind.setdefault(kind if readings[0].kind != "flag" else f"flag:{readings[0].key}", []).append(
            (phrase, readings))
    held, failed, unknown, sources = [], [], [], set()
    for mentions in by_kind.values():
        outcomes = [(_check(r, facts, photo_min), phrase) for phrase, rs in mentions for r in rs]
        yes = [(fact, src) for (ok, fact, src), _ in outcomes if ok is True]
        if yes:
            held.append(yes[0][0])
            sources.add(yes[0][1])
        elif all(ok is False for (ok, _, _), _ in outcomes):
            (_, fact, src), _ = outcomes[0]
            failed.append(fact)
            sources.add(src)
        else:
            unknown.append(" ".join(outcomes[0][1]))
    kinds = {r.kind for _, rs in found for r in rs}
    field_ = next((k for k in ("flag", "value", "ingredient", "diet", "size", "origin", "brand", "identity", "name")
                   if k in kinds), "attribute")
    field_ = {"flag": "attribute", "value": "attribute", "diet": "attribute", "name": "identity"}.get(field_, field_)
    source = "photo" if "photo" in sources else "catalogue"
    note = " (The catalogue does not record this; it is what the photo shows.)" if source == "photo" else ""
    if any_of and held:
        failed = unknown = []
    if failed and not (any_of and unknown):
        return Ruling("no", f"No: {'; '.join(dict.fromkeys(failed))}.{note}", field_, source)
    if unknown:
        return Ruling(None, None, field_, reason=f"the catalogue does not say whether {facts.title} is or has "
                      f"{' / '.join(repr(u) for u in unknown)}: a person should check")
    return Ruling("yes", f"Yes: {'; '.join(dict.fromkeys(held))}.{note}", field_, source)


def _open(question: str, words: tuple[str, ...], facts: Facts, lex: Lexicon,
          found: list[tuple[tuple[str, ...], list[Reading]]], photo_min: float) -> Ruling | None:
    """Open questions: a flag or dietary claim named ("which allergens?"), a sheet field asked for, a
    table group asked for ("what colour is it?"), or the product's name."""
    text = question.lower()
    claims = [(p, rs) for p, rs in found if any(r.kind in ("flag", "diet") for r in rs)]
    if claims:
        phrase, readings = claims[0]
        ok, fact, src = _check(readings[0], facts, photo_min)
        if ok is None:
            return Ruling(None, None, "attribute", reason=f"the catalogue does not say whether {facts.title} "
                          f"is or has {' '.join(phrase)!r}: a person should check")
        return Ruling(None, f"{fact[:1].upper()}{fact[1:]}.", "attribute", src)
    for intent, pattern in OPEN_INTENTS:
        if pattern.search(text):
            return _field_answer(intent, words, facts)
    for group, cues in GROUP_CUES.items():
        if group in lex.groups and any(_find(words, _tokens(c)) for c in cues):
            if facts.attributes is not None:
                values = [a.split("=", 1)[1] for a in sorted(facts.attributes) if a.startswith(f"{group}=")]
                note, source = "", "catalogue"
            else:
                values = [a.split("=", 1)[1] for a, p in facts.predicted.items()
                          if a.startswith(f"{group}=") and p >= photo_min]
                note, source = " (judging by the photo)", "photo"
            if values:
                return Ruling(None, f"The {group} of {facts.title} is {' and '.join(values)}{note}.", "attribute",
                              source)
            return None  # the table is silent: the product's text may still say ("sweet and juicy")
    if NAME_QUESTION.match(" ".join(words)) and len(words) <= 6:
        what = f" ({facts.coarse.replace('-', ' ').lower()})" if facts.coarse else ""
        return Ruling(None, f"This is {facts.title}{what}.", "name")
    return None


def _field_answer(intent: str, words: tuple[str, ...], facts: Facts) -> Ruling:
    handoff = Ruling(None, None, "info", reason=f"the catalogue has no {intent} for {facts.title}: "
                     "a person should check")
    if intent == "origin":
        country, raw = facts.country, facts.field("country")
        if country is None or raw is None:
            return handoff
        said = country if country == raw[1] else f"{country} ({raw[1]})"
        return Ruling(None, f"{facts.title} comes from {said}.", "info")
    if intent == "brand":
        return Ruling(None, f"{facts.title} is made by {facts.manufacturer}.", "info") if facts.manufacturer \
            else handoff
    if intent == "size":
        size = facts.field("volume", "weight", "size")
        return Ruling(None, f"Size: {size[1]}.", "info") if size else handoff
    if intent == "ingredients":
        line = facts.field("ingredient")
        return Ruling(None, f"Ingredients: {line[1]}", "info") if line else handoff
    table = facts.field("nutrition")
    if table is None:
        return handoff
    asked = {NUTRIENT_WORDS[w] for w in words if w in NUTRIENT_WORDS}
    rows = [row.strip() for row in table[1].split(";") if row.strip()]
    if asked:
        rows = [row for row in rows if any(s in row.lower() for n in asked for s in NUTRIENTS[n])]
        if not rows:
            return Ruling(None, None, "info", reason=f"the nutrition table of {facts.title} does not list "
                          f"{' / '.join(sorted(asked))}: a person should check")
    return Ruling(None, f"{table[0].capitalize()}: {'; '.join(rows)}", "info")
