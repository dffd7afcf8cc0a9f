"""The text side as a new user runs it (a review's findings): vocabularies, tag outputs, query logs and text-tune
settings checked with clear errors before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from skulens.cli import main
from skulens.data.catalogue import CatalogueError
from skulens.search.tags import TaggingError, check_vocabulary, parse_vocabulary
from skulens.search.text_tune import TuneConfig, read_query_log

PRODUCTS = {"Oatly-Oat-Milk": None, "Red-Apple": None}


def test_a_phrase_with_a_semicolon_is_refused_and_errors_name_the_line() -> None:
    # CSV rows list tags as "phrase:score;phrase:score": "sweet fruit; red" split into two tags
    with pytest.raises(TaggingError, match="has a ';'"):
        check_vocabulary(["sweet fruit; red"])
    assert check_vocabulary(["fruit: red"]) == ("fruit: red",)  # a ':' reads back (up to the last one)
    text = "# colours\n\n# and more\n" + "x" * 150 + "\n"
    with pytest.raises(TaggingError, match="phrase 4 is 150 characters"):  # its line, not its place among phrases
        parse_vocabulary(text)


def test_tag_cli_checks_its_output_and_settings_before_tagging(tiny_bundle, tmp_path: Path, capsys) -> None:
    photo = str(tmp_path / "never-read.jpg")  # every case is refused before a photo is read
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1"))
    cases = [
        (["--vocabulary", str(bad)], "not UTF-8"),
        (["-o", str(tmp_path / "t.csv"), "--format", "jsonl"], "the name says csv"),
        (["--min-score", "nan"], "between -1 and 1"),
        (["--min-score", "5"], "between -1 and 1"),
    ]
    for extra, match in cases:
        assert main(["tag", "-m", str(tiny_bundle.bundle), photo, *extra]) == 2, extra
        assert match in capsys.readouterr().err, extra
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["tag", "-m", str(tiny_bundle.bundle), photo, "-o", str(afile / "t.csv")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_tag_writes_into_a_new_folder(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    photo = str(tiny_catalogue.parent / "val" / "oat-milk" / "oat-milk_000.jpg")
    out = tmp_path / "new" / "tags.csv"
    assert main(["tag", "-m", str(tiny_bundle.bundle), photo, "--data", str(tiny_catalogue), "-o", str(out),
                 "-q"]) == 0
    assert out.read_text().startswith("source,")


def test_query_log_headers_and_quotes(tmp_path: Path) -> None:
    log = tmp_path / "q.csv"
    log.write_text("query,product_id,query\noat drink,Oatly-Oat-Milk,x\n")  # the second 'query' won in silence
    with pytest.raises(CatalogueError, match="query appear twice"):
        read_query_log(log, PRODUCTS)
    log.write_text('query,product_id\n"oat drink,Oatly-Oat-Milk\nred apple,Red-Apple\n')  # an unclosed quote
    with pytest.raises(CatalogueError, match="unclosed quote"):
        read_query_log(log, PRODUCTS)
    log.write_text("query,product_id\noat drink,Oatly-Oat-Milk\nred apple,Red-Apple\n")
    assert read_query_log(log, PRODUCTS) == [("oat drink", "Oatly-Oat-Milk"), ("red apple", "Red-Apple")]


def test_text_tune_settings_are_checked(tiny_bundle, tiny_catalogue: Path, capsys) -> None:
    for kw, match in (({"seed": -1}, "seed must be"), ({"batch_size": 1}, "batch_size >= 2"),
                      ({"lr": float("nan")}, "0 < lr < 1"), ({"epochs": 0}, "epochs must be")):
        with pytest.raises(ValueError, match=match):
            TuneConfig(**kw)
    with pytest.raises(SystemExit):
        main(["text-tune", "-m", str(tiny_bundle.bundle), "--data", str(tiny_catalogue), "--seed", "-1"])
    assert "--seed" in capsys.readouterr().err
