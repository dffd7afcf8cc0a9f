"""Self-training: `skulens train --unlabeled DIR` (a teacher, pseudo-labels it is sure of, a student)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PRODUCTS, TINY, make_image
from skulens.api import train
from skulens.config import ConfigError
from skulens.train.semi import choose_pseudo_threshold


def test_the_threshold_is_the_lowest_confidence_that_is_right_often_enough() -> None:
    # Right above 0.8, half right between 0.5 and 0.8.
    conf = np.array([0.95, 0.9, 0.85, 0.7, 0.65, 0.6, 0.55])
    right = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    probs = np.stack([conf, 1 - conf], axis=1)
    targets = np.where(right, 0, 1)
    t, precision = choose_pseudo_threshold(probs, targets, precision=0.95)
    assert t == pytest.approx(0.66) and precision == 1.0  # 0.7 and above: 4 of 4 right
    t, precision = choose_pseudo_threshold(probs, targets, precision=0.7)
    assert t == pytest.approx(0.3) and precision == pytest.approx(5 / 7)
    never = choose_pseudo_threshold(probs, np.ones(7, int), precision=0.9)
    assert never[1] == 0.0  # nothing is right: the grid's top, with nothing kept


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Unlabelled photos of the tiny catalogue's products (their true labels kept aside), and one broken file."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("unlabelled")
    truth = {}
    for label in PRODUCTS:
        for i in range(6):
            path = root / f"{label}-{i}.jpg"
            make_image(label, rng).save(path, quality=90)
            truth[path.name] = label
    (root / "broken.jpg").write_bytes(b"not a photo")
    return root, truth


def test_self_training_from_a_teacher(tiny_bundle, tiny_catalogue: Path, pool, tmp_path: Path) -> None:
    photos, truth = pool
    out = tmp_path / "run"
    r = train(tiny_catalogue, out=str(out), progress=False, unlabeled=str(photos), pseudo_precision=0.9,
              teacher=str(tiny_bundle.bundle), **TINY)

    assert r.bundle == out / "bundle" and not (out / "teacher").exists()  # the given teacher labelled
    st = r.card.metrics["self_training"]
    rows = list(csv.DictReader((out / "pseudo_labels.csv").open()))
    assert st["considered"] == 18 and st["unreadable"] == 1 and st["kept"] == len(rows) >= 6
    assert st["precision_at_threshold"] >= 0.9 and 0.3 <= st["threshold"] < 1
    right = sum(truth[Path(x["path"]).name] == x["label"] for x in rows)
    assert right / len(rows) >= 0.9  # the pseudo-labels are about as clean as asked
    assert all(float(x["confidence"]) >= st["threshold"] for x in rows)
    card = json.loads((out / "bundle" / "card.json").read_text())
    assert card["train_config"]["teacher"] == st["teacher"] == str(tiny_bundle.bundle)  # soft targets too
    with pytest.raises(ConfigError, match="pseudo_precision"):
        train(tiny_catalogue, out=str(tmp_path / "x"), progress=False, unlabeled=str(photos), pseudo_precision=1.0,
              **TINY)


def test_self_training_trains_its_teacher_first(tiny_catalogue: Path, pool, tmp_path: Path) -> None:
    photos, _ = pool
    out = tmp_path / "run"
    r = train(tiny_catalogue, out=str(out), progress=False, unlabeled=str(photos), epochs=4, lr=3e-3,
              **{k: v for k, v in TINY.items() if k != "epochs"})
    assert (out / "teacher" / "bundle" / "card.json").is_file() and (out / "pseudo_labels.csv").is_file()
    assert r.card.metrics["self_training"]["teacher"] == str(out / "teacher" / "bundle")


def test_pseudo_labelled_photos_are_trained_on_and_never_held_out(tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.data.catalogue import EXTRA_TRAIN, Sample, load_catalogue, merge_samples, selection_split

    cat = load_catalogue(tiny_catalogue)
    extra = [Sample(path=tmp_path / f"p{i}.jpg", label=cat.classes[i % len(cat.classes)],
                    coarse_label=cat.hierarchy.get(cat.classes[i % len(cat.classes)])) for i in range(6)]
    merged = merge_samples(cat, extra, split=EXTRA_TRAIN)
    assert merged.split("train") == cat.split("train")
    for select_on in ("holdout", "val"):
        before, after = selection_split(cat, select_on, 0.3, 0), selection_split(merged, select_on, 0.3, 0)
        assert after[1] == before[1] and after[2] == before[2]  # the same photos to select on and to score
        assert after[0] == before[0] + extra  # and the pseudo-labelled ones only trained on


def test_two_rounds_of_self_training_chain_their_teachers(tiny_bundle, tiny_catalogue: Path, pool,
                                                          tmp_path: Path) -> None:
    photos, truth = pool
    out = tmp_path / "run"
    r = train(tiny_catalogue, out=str(out), progress=False, unlabeled=str(photos), pseudo_precision=0.9,
              pseudo_rounds=2, teacher=str(tiny_bundle.bundle), **TINY)
    first = out / "round-1"
    assert r.bundle == out / "bundle" and (first / "bundle" / "card.json").is_file()
    rounds = r.card.metrics["self_training"]["rounds"]
    assert [x["round"] for x in rounds] == [1, 2]
    assert rounds[0]["teacher"] == str(tiny_bundle.bundle) and rounds[1]["teacher"] == str(first / "bundle")
    assert r.card.metrics["self_training"]["teacher"] == str(first / "bundle")  # the last round's
    assert json.loads((out / "bundle" / "card.json").read_text())["train_config"]["teacher"] == str(first / "bundle")
    for folder, summary, least in ((first, rounds[0], 6), (out, rounds[1], 1)):
        rows = list(csv.DictReader((folder / "pseudo_labels.csv").open()))
        assert len(rows) == summary["kept"] >= least  # each round's own pseudo-labels, written beside its student
        assert all(float(x["confidence"]) >= summary["threshold"] for x in rows)
        if folder == first:  # the given teacher's labels are as clean as asked (a 4-step student's need not be)
            assert sum(truth[Path(x["path"]).name] == x["label"] for x in rows) / len(rows) >= 0.9
    with pytest.raises(ConfigError, match="pseudo_rounds"):
        train(tiny_catalogue, out=str(tmp_path / "x"), progress=False, unlabeled=str(photos), pseudo_rounds=0, **TINY)
    with pytest.raises(ConfigError, match="need unlabelled photos"):
        train(tiny_catalogue, out=str(tmp_path / "y"), progress=False, pseudo_rounds=2, **TINY)
