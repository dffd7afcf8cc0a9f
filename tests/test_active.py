"""Active learning: which photos to label next (`skulens suggest-labels`)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skulens
from conftest import write_rows
from skulens.train.active import k_center, margins, select, suggest_labels


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clusters(rng: np.random.Generator, centres: list[list[float]], n: int) -> np.ndarray:
    return _unit(np.concatenate([np.asarray(c) + 0.05 * rng.standard_normal((n, len(c))) for c in centres]))


def test_margins_and_k_center() -> None:
    p = np.array([[0.5, 0.45, 0.05], [0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])
    assert margins(p) == pytest.approx([0.05, 0.85, 0.1])
    assert margins(np.ones((2, 1))).tolist() == [1.0, 1.0]
    emb = _clusters(np.random.default_rng(0), [[1, 0, 0], [0, 1, 0], [0, 0, 1]], 10)
    picked = k_center(emb, 3)
    assert sorted(i // 10 for i in picked) == [0, 1, 2]  # one from each cluster
    away = k_center(emb, 2, anchors=emb[:10])  # cluster 0 is labelled already
    assert all(i >= 10 for i in away) and len({i // 10 for i in away}) == 2


def test_strategies() -> None:
    rng = np.random.default_rng(1)
    emb = _clusters(rng, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], 10)
    conf = np.concatenate([np.full(10, 0.51), np.full(10, 0.55), np.full(10, 0.99)])  # cluster 0 least certain
    probs = np.stack([conf, 1 - conf], axis=1)
    assert {i // 10 for i in select(probs, emb, 4, strategy="margin")} == {0}  # all from one cluster
    mixed = select(probs, emb, 4, strategy="margin-kcenter", pool=5)
    assert {i // 10 for i in mixed} == {0, 1}  # unsure ones, spread over both unsure clusters, none certain
    assert len(set(select(probs, emb, 30, strategy="random"))) == 30
    assert len(select(probs, emb, 99)) == 30
    with pytest.raises(ValueError, match="unknown strategy"):
        select(probs, emb, 2, strategy="entropy")
    # a budget whose pool covers every photo: the least certain photo is still first (it was kcenter's own pick,
    # the photo farthest from the mean, often a sure one), the rest spread as kcenter spreads them
    wide = select(probs, emb, 10, strategy="margin-kcenter")
    unsure = int(np.argmin(margins(probs)))
    assert wide[0] == unsure and len(set(wide)) == 10 and {i // 10 for i in wide} == {0, 1, 2}
    assert select(probs, emb, 10, strategy="kcenter")[0] != unsure


def _skulens(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def test_suggest_labels_writes_a_manifest_to_fill_in(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.data.catalogue import CatalogueError, load_catalogue

    pool = tmp_path / "unlabelled"
    truth = {}
    for photo in sorted((tiny_catalogue.parent / "val").rglob("*.jpg")):
        dest = pool / photo.name
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(photo.read_bytes())
        truth[photo.name] = photo.parent.name
    (pool / "broken.jpg").write_bytes(b"not a photo")
    r = _skulens("suggest-labels", str(pool), "-m", str(tiny_bundle.bundle), "--budget", "4", "-q")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "broken.jpg" in r.stderr
    rows = list(csv.DictReader((pool / "to_label.csv").open()))
    assert [int(x["rank"]) for x in rows] == [1, 2, 3, 4] and all(x["label"] == "" for x in rows)
    assert len({x["path"] for x in rows}) == 4 and all(0 <= float(x["margin"]) <= 1 for x in rows)
    with pytest.raises(CatalogueError, match="missing label"):  # not filled in yet: a clear error
        load_catalogue(pool / "to_label.csv")
    rows = [{**x, "label": truth[x["path"]]} for x in rows]
    write_rows(pool / "to_label.csv", rows)
    cat = load_catalogue(pool / "to_label.csv", val_fraction=0)  # filled in: a catalogue `skulens train` reads
    assert len(list(cat.split("train"))) == 4
    # the next round: the filled-in manifest is not overwritten, and its photos are not suggested again
    again = ["suggest-labels", str(pool), "-m", str(tiny_bundle.bundle), "--budget", "3", "-q"]
    r = _skulens(*again)
    assert r.returncode == 2 and "may hold labels" in r.stderr
    assert [x["label"] for x in csv.DictReader((pool / "to_label.csv").open())] == [x["label"] for x in rows]
    done = [str(pool / x["path"]) for x in rows]
    r = _skulens(*again, "-o", str(pool / "round2.csv"), "--labelled", *done)
    assert r.returncode == 0, r.stderr
    second = {x["path"] for x in csv.DictReader((pool / "round2.csv").open())}
    assert len(second) == 3 and not second & {x["path"] for x in rows}
    assert _skulens(*again, "--force").returncode == 0
    r = _skulens(*again, "-o", str(pool / "round3.csv"), "--labelled", str(pool / "typo.jpg"))
    assert r.returncode == 2 and "--labelled " in r.stderr and "typo.jpg: no such file" in r.stderr  # it warned
    with pytest.raises(TypeError, match="not one path"):  # read letter by letter: each a missing file
        suggest_labels(skulens.load(tiny_bundle.bundle), done[0], 1)
    r = _skulens("suggest-labels", str(pool), "-m", str(tiny_bundle.bundle), "--budget", "2",
                 "-o", str(tmp_path / "elsewhere" / "x.csv"))
    assert r.returncode == 2 and "not inside" in r.stderr


def test_links_stay_where_they_are_named_and_a_backbone_alone_ranks_by_kcenter(tiny_catalogue: Path,
                                                                                tmp_path: Path) -> None:
    """Photos that are links the owner made were refused as "not inside" (their targets were); a pretrained
    backbone crashed on the margin of no classes."""
    from skulens.data.catalogue import load_catalogue

    pool = tmp_path / "links"
    pool.mkdir()
    for i, photo in enumerate(sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))[:5]):
        (pool / f"s{i}.jpg").symlink_to(photo)
    r = _skulens("suggest-labels", str(pool), "-m", "pretrained:efficientnet_lite0", "--budget", "2", "-q")
    assert r.returncode == 2 and "--strategy kcenter" in r.stderr  # one line: it was a traceback
    r = _skulens("suggest-labels", str(pool), "-m", "pretrained:efficientnet_lite0", "--budget", "2",
                 "--strategy", "kcenter", "-q")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((pool / "to_label.csv").open()))
    assert len(rows) == 2 and all(x["path"].startswith("s") and x["guess"] == x["margin"] == "" for x in rows)
    rows = [{**x, "label": "red-apple"} for x in rows]
    write_rows(pool / "to_label.csv", rows)
    assert len(list(load_catalogue(pool / "to_label.csv", val_fraction=0).split("train"))) == 2
