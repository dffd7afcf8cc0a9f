"""report.json / report.md / PNG output of write_report, and the terminal summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from skulens.evaluate.metrics import EvalReport, evaluate_predictions
from skulens.evaluate.report import format_summary, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["apple", "banana", "carrot", "dill"]


def _report(preds: list[int], paths: list[str] | None = None) -> EvalReport:
    n_classes = len(NAMES)
    probs = np.full((len(preds), n_classes), 0.1 / (n_classes - 1))
    probs[np.arange(len(preds)), preds] = 0.9
    return evaluate_predictions(
        probs,
        np.array(TARGETS),
        NAMES,
        paths=paths,
        attr_probs=np.linspace(0, 1, len(preds))[:, None],
        attr_targets=(np.arange(len(preds)) % 2)[:, None],
        attr_names=["organic"],
    )


TARGETS = [0, 1, 2, 3, 0, 1, 2, 3]
MODEL_PREDS = [0, 1, 2, 3, 0, 1, 3, 0]  # 6/8 right
BASE_PREDS = [0, 1, 1, 3, 2, 1, 3, 0]  # 4/8 right


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_report_with_baseline(tmp_path: Path) -> None:
    images = tmp_path / "data"
    paths = [str(images / f"img {i}.jpg") for i in range(8)]  # a space, to check the link form
    model = _report(MODEL_PREDS, paths=paths)
    base = _report(BASE_PREDS)
    out = tmp_path / "eval" / "run1"  # parents created on demand
    md_path = write_report(model, out, baseline=base, extra={"checkpoint": "best.safetensors", "epochs": 3})

    assert md_path == out / "report.md"
    for name in ("confusion.png", "reliability.png", "per_class.png"):
        assert (out / name).stat().st_size > 5_000, name
        _png_size(out / name)

    payload = json.loads((out / "report.json").read_text())
    assert payload["schema"] == 1
    assert payload["summary"]["top1"] == pytest.approx(0.75)
    assert set(payload["summary"]) == {
        "top1",
        "top5",
        "coarse_top1",
        "coarse_top1_derived",
        "macro_f1",
        "ece",
        "attribute_map",
    }
    assert payload["baseline"]["top1"] == pytest.approx(0.5)
    assert payload["extra"] == {"checkpoint": "best.safetensors", "epochs": 3}
    assert EvalReport.from_dict(payload["model"]) == model
    assert EvalReport.from_dict(payload) == model  # a whole report.json reads back as its model

    md = md_path.read_text()
    assert "before vs after fine-tuning" in md
    assert "| metric | model | baseline | change |" in md
    lo, hi = model.top1_ci
    base_lo, base_hi = base.top1_ci
    assert lo <= 0.75 <= hi and base_lo <= 0.5 <= base_hi
    assert (f"| top-1 accuracy | 75.00% [{100 * lo:.1f}-{100 * hi:.1f}] | 50.00% [{100 * base_lo:.1f}-"
            f"{100 * base_hi:.1f}] | +25.00 pp |") in md
    assert "bootstrap intervals" in md
    assert "coarse top-1" not in md  # neither report has a hierarchy
    for name in ("confusion.png", "reliability.png", "per_class.png"):
        assert f"]({name})" in md
    assert "| carrot | dill | 1 |" in md  # most-confused pair
    # Top-loss images link to the sample paths, relative to report.md.
    assert "](../../data/img%206.jpg)" in md
    assert "`" + paths[6] + "`" in md
    assert "| epochs | 3 |" in md


def test_write_report_without_baseline(tmp_path: Path) -> None:
    md_path = write_report(_report(MODEL_PREDS), tmp_path, title="test split")
    md = md_path.read_text()
    assert md.startswith("# test split\n")
    assert "| metric | model |" in md and "baseline" not in md
    assert "sample #" in md  # no paths: samples named by index
    assert "top-5 accuracy" not in md  # 4 classes: top-5 is every class, 100 % whatever the model
    six = np.eye(6)[[0, 1, 2, 3, 4, 5]] * 0.5 + 0.05
    md6 = write_report(evaluate_predictions(six, np.arange(6), [*NAMES, "egg", "fig"]), tmp_path / "six").read_text()
    assert "top-5 accuracy" in md6
    payload = json.loads((tmp_path / "report.json").read_text())
    assert payload["baseline"] is None and payload["extra"] == {}


def test_confusion_figure_grows_with_class_count(tmp_path: Path) -> None:
    n = 81
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(n), size=200)
    report = evaluate_predictions(probs, rng.integers(0, n, 200), [f"product_{i:02d}" for i in range(n)])
    write_report(report, tmp_path / "big")
    write_report(_report(MODEL_PREDS), tmp_path / "small")
    big_w, big_h = _png_size(tmp_path / "big" / "confusion.png")
    small_w, small_h = _png_size(tmp_path / "small" / "confusion.png")
    assert big_w > 1.5 * small_w and big_h > 1.5 * small_h


def test_format_summary() -> None:
    model, base = _report(MODEL_PREDS), _report(BASE_PREDS)
    text = format_summary(model)
    assert "top-1 accuracy" in text and "75.00%" in text and "baseline" not in text
    text = format_summary(model, base)
    top1_line = next(line for line in text.splitlines() if line.startswith("top-1"))
    assert "75.00%" in top1_line and "50.00%" in top1_line and "+25.00 pp" in top1_line


def test_class_names_and_paths_reach_report_md_as_text(tmp_path: Path) -> None:
    """A class folder named `<img src=x onerror=alert(1)>` was live HTML in report.md (a viewer that passes HTML
    through ran it), and a `>` in a photo's path ended its image link early."""
    names = ["<img src=x onerror=alert(1)>", "a|b", "c&d", "dill"]
    paths = [str(tmp_path / "data" / names[t % 2] / f"{i}.jpg") for i, t in enumerate(TARGETS)]
    probs = np.full((8, 4), 0.1 / 3)
    probs[np.arange(8), MODEL_PREDS] = 0.9
    report = evaluate_predictions(probs, np.array(TARGETS), names, paths=paths)
    md = write_report(report, tmp_path / "eval").read_text()
    assert f"`{paths[6]}`" in md  # a code span: shown as it is, HTML and all
    outside_code = re.sub(r"`[^`]*`", "", md)
    assert "<img" not in outside_code and "&lt;img src=x onerror=alert(1)&gt;" in outside_code
    from skulens.evaluate.markdown import code

    assert code("a`b") == "``a`b``" and code("`x") == "`` `x ``"
    assert "a\\|b" in md and "c&amp;d" in md
    assert "](../data/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/" in md
