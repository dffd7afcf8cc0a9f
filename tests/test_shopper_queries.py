"""The hand-written shopper query set (benchmarks/data/shopper_queries.csv) is well formed for the grocery catalogue."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO / "benchmarks" / "data" / "shopper_queries.csv"
GROCERY = Path(__file__).resolve().parents[2] / "shared/datasets/grocery-store"
KINDS = {"synonym", "description", "use", "brand", "attribute", "category", "name"}


def _rows() -> tuple[list[str] | None, list[dict[str, str]]]:
    with open(QUERIES, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _grocery_classes() -> list[str]:
    classes = GROCERY / "classes.csv"
    if not classes.is_file():
        pytest.skip(f"grocery dataset not found at {GROCERY}")
    with open(classes, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [r[0].strip() for r in rows[1:] if r and r[0].strip()]


def test_header_and_rows() -> None:
    header, rows = _rows()
    assert header == ["query", "accepted", "kind"]
    assert len(rows) >= 180
    queries = [r["query"].strip().lower() for r in rows]
    assert all(queries), "empty query"
    assert len(set(queries)) == len(queries), "duplicate query"
    for r in rows:
        accepted = [a.strip() for a in r["accepted"].split(";")]
        assert accepted and all(accepted), f"empty accepted label in {r}"
        assert len(accepted) == len(set(accepted)) <= 10, f"duplicate or too many accepted products: {r['query']}"
        assert r["kind"] in KINDS, f"unknown kind {r['kind']!r}"
    assert {r["kind"] for r in rows} == KINDS


def test_labels_exist_and_every_product_is_covered() -> None:
    classes = set(_grocery_classes())
    assert len(classes) == 81
    _, rows = _rows()
    accepted = {a.strip() for r in rows for a in r["accepted"].split(";")}
    assert not accepted - classes, f"unknown labels: {sorted(accepted - classes)}"
    assert not classes - accepted, f"products no query accepts: {sorted(classes - accepted)}"
    # every product is also reached by a query that is not its catalogue name
    beyond_names = {a.strip() for r in rows if r["kind"] != "name" for a in r["accepted"].split(";")}
    assert not classes - beyond_names, f"only named, never described: {sorted(classes - beyond_names)}"
