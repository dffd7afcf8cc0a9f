"""`Model.evaluate`: the report's numbers agree with `Model.predict` on the same files, and land in report.json."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import skulens
from skulens.api import Model
from skulens.evaluate.metrics import EvalReport


@pytest.fixture(scope="module")
def model(tiny_bundle) -> Model:
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


def _split_rows(manifest: Path, split: str) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


@pytest.fixture(scope="module")
def evaluated(model: Model, tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[EvalReport, Path]:
    out = tmp_path_factory.mktemp("eval") / "report"
    return model.evaluate(tiny_catalogue, split="val", out=out, progress=False), out


def test_report_agrees_with_predict(model: Model, tiny_catalogue: Path, evaluated: tuple[EvalReport, Path]) -> None:
    report, _ = evaluated
    rows = _split_rows(tiny_catalogue, "val")
    paths = [str(tiny_catalogue.parent / r["path"]) for r in rows]
    preds = model.predict(paths, top_k=len(model.classes))
    hits = [p.fine_label == r["label"] for p, r in zip(preds, rows, strict=True)]
    coarse_hits = [p.coarse_label == r["coarse_label"] for p, r in zip(preds, rows, strict=True)]

    assert report.n == len(rows) == 9
    assert report.top1 == pytest.approx(np.mean(hits))
    assert report.coarse_top1 == pytest.approx(np.mean(coarse_hits))
    assert report.top5 == 1.0  # only three classes: the truth is always in the top 5
    assert report.class_names == model.classes
    # The confusion matrix counts the same (truth, predicted) pairs.
    index = {c: i for i, c in enumerate(model.classes)}
    expected = np.zeros((3, 3), dtype=int)
    for p, r in zip(preds, rows, strict=True):
        expected[index[r["label"]], index[p.fine_label]] += 1
    np.testing.assert_array_equal(np.array(report.confusion), expected)
    # Negative log-likelihood of the true class, from the same probabilities predict reports.
    nll = -np.mean([np.log(dict(p.top_k)[r["label"]]) for p, r in zip(preds, rows, strict=True)])
    assert report.nll == pytest.approx(nll, rel=1e-4, abs=1e-6)
    per_class = {c.name: c for c in report.per_class}
    for name in model.classes:
        truths = [h for h, r in zip(hits, rows, strict=True) if r["label"] == name]
        assert per_class[name].support == len(truths) == 3
        assert per_class[name].recall == pytest.approx(np.mean(truths))


def test_report_files_carry_the_same_numbers(evaluated: tuple[EvalReport, Path], tiny_catalogue: Path) -> None:
    report, out = evaluated
    payload = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert payload["summary"]["top1"] == report.top1
    assert payload["summary"]["macro_f1"] == report.macro_f1
    assert payload["summary"]["ece"] == report.ece
    assert payload["baseline"] is None
    assert payload["extra"]["split"] == "val" and payload["extra"]["data"] == str(tiny_catalogue)
    assert EvalReport.from_dict(payload) == report
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"{100 * report.top1:.2f}%" in md
    assert "linear probe" not in md
    for name in ("confusion.png", "reliability.png", "per_class.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_without_out_writes_nothing(model: Model, tiny_catalogue: Path,
                                             evaluated: tuple[EvalReport, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    report = model.evaluate(tiny_catalogue, split="val", progress=False)
    assert report.top1 == evaluated[0].top1
    assert list(tmp_path.iterdir()) == []


def test_baseline_adds_a_linear_probe_section(model: Model, tiny_catalogue: Path, tmp_path: Path) -> None:
    report = model.evaluate(tiny_catalogue, split="val", out=tmp_path, baseline=True, progress=False)
    payload = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert payload["baseline"] is not None
    base = EvalReport.from_dict(payload["baseline"])
    assert 0.0 <= base.top1 <= 1.0
    assert base.n == report.n == 9
    assert base.class_names == report.class_names
    assert base.attribute_map is None  # the probe has no attribute head
    assert payload["summary"]["top1"] == report.top1
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "linear probe" in md
    assert "before vs after fine-tuning" in md


def test_unknown_split_and_unknown_label_are_errors(model: Model, tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.data.catalogue import CatalogueError

    with pytest.raises(CatalogueError, match="no 'test' split"):
        model.evaluate(tiny_catalogue, split="test", progress=False)
    root = tmp_path / "cat"
    shutil.copytree(tiny_catalogue.parent / "val", root / "val")
    shutil.copytree(tiny_catalogue.parent / "val", root / "train")  # a photo listed in two splits is refused
    rows = _split_rows(tiny_catalogue, "val")
    rows[0] = {**rows[0], "label": "soy-milk", "coarse_label": "Milk"}
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + [{**r, "split": "train", "path": r["path"].replace("val/", "train/", 1)}
                            for r in rows[1:]])
    with pytest.raises(ValueError, match="soy-milk"):
        model.evaluate(root / "manifest.csv", split="val", out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("n_classes", [2, 4])
def test_probe_head_is_the_linear_probe_as_one_layer(n_classes: int) -> None:
    """The probe's rows, applied to raw features, give its probabilities; a class absent from train is no row."""
    from skulens.evaluate.baseline import linear_probe, probe_head, probe_probs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) * rng.uniform(0.1, 5, size=8) + rng.normal(size=8) * 3  # unstandardised
    y = np.arange(60) % (n_classes - 1 if n_classes > 2 else 2)  # 4 classes: the last one has no photo
    x[np.arange(60), y] += 2.0
    test = rng.normal(size=(10, 8)) * 2
    weight, bias, fitted = probe_head(x, y, n_classes)
    assert weight.shape == (n_classes, 8) and bias.shape == (n_classes,)
    assert fitted.tolist() == ([True, True] if n_classes == 2 else [True, True, True, False])
    logits = test @ weight[fitted].T + bias[fitted]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected = linear_probe(x, y, test, n_classes)
    np.testing.assert_allclose(probs, expected[:, fitted], atol=1e-5)
    assert (expected[:, ~fitted] == 0).all()
    np.testing.assert_allclose(probe_probs((weight, bias, fitted), test), expected, atol=1e-5)  # the baseline's
