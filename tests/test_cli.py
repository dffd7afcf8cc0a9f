"""The `skulens` command, run as a real subprocess against the tiny bundle and catalogue."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PRODUCTS, make_image

SUMMARY = {"top1", "top5", "coarse_top1", "macro_f1", "ece"}


def _skulens(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], input=stdin, capture_output=True, check=False,
                          text=True, env=full_env, cwd=cwd, timeout=900)


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> str:
    return str(tiny_bundle.bundle)


@pytest.fixture(scope="module")
def val_root(tiny_catalogue: Path) -> Path:
    return tiny_catalogue.parent / "val"


# --------------------------------------------------------------------------- cheap: no torch


def test_help_and_info_do_not_import_torch(bundle: str) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from skulens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
        f"    main(['info', {bundle!r}])\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_info_prints_backbone_and_classes(bundle: str, tiny_bundle) -> None:
    r = _skulens("info", bundle)
    assert r.returncode == 0, r.stderr
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in r.stdout.splitlines()}
    assert lines["backbone"].startswith("efficientnet_lite0  input 64px")
    assert lines["classes"] == "3 fine, 2 coarse"
    assert lines["attributes"].startswith("4 ")
    assert "val metrics" in lines and "top1=" in lines["val metrics"]
    assert f"embedding dim {tiny_bundle.card.embedding_dim}" in lines["weights"]


def test_info_json_is_the_card(bundle: str) -> None:
    r = _skulens("info", bundle, "--json")
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)
    assert card == json.loads((Path(bundle) / "card.json").read_text(encoding="utf-8"))
    assert card["backbone"] == "efficientnet_lite0" and len(card["classes"]) == 3


def test_info_on_a_missing_bundle_is_one_clear_line(tmp_path: Path) -> None:
    r = _skulens("info", str(tmp_path / "nonexistent"))
    assert r.returncode != 0
    assert "is not a bundle (no card.json)" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


# --------------------------------------------------------------------------- predict


def test_predict_files_folders_and_globs_as_jsonl(bundle: str, val_root: Path) -> None:
    single = val_root / "red-apple" / "red-apple_000.jpg"
    folder = val_root / "green-apple"
    pattern = str(val_root / "oat-milk" / "*.jpg")
    r = _skulens("predict", bundle, str(single), str(folder), pattern, "--top-k", "2", "-q")
    assert r.returncode == 0, r.stderr
    rows = _jsonl(r.stdout)
    expected = [single, *sorted(folder.glob("*.jpg")), *sorted((val_root / "oat-milk").glob("*.jpg"))]
    assert [row["source"] for row in rows] == [str(p) for p in expected]
    for row in rows:
        assert row["level"] in ("fine", "coarse") and row["error"] is None
        assert row["label"] in (*PRODUCTS, "Apple", "Milk")
        assert row["fine_label"] in PRODUCTS
        assert len(row["top_k"]) == 2 and row["top_k"][0]["p"] >= row["top_k"][1]["p"]
        assert isinstance(row["attributes"], dict)
    truth = [p.parent.name for p in expected]
    assert sum(row["fine_label"] == t for row, t in zip(rows, truth, strict=True)) >= len(rows) // 2 + 1


def test_predict_csv_to_a_file(bundle: str, val_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    r = _skulens("predict", bundle, str(val_root / "oat-milk"), "--format", "csv", "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["source", "label", "level", "confidence", "fine_label", "fine_confidence", "coarse_label",
                       "coarse_confidence", "top_k", "attributes", "error"]
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [b["source"] for b in body] == [str(p) for p in sorted((val_root / "oat-milk").glob("*.jpg"))]
    for b in body:
        assert 0.0 <= float(b["confidence"]) <= 1.0 and b["error"] == ""
        probs = [float(item.rsplit(":", 1)[1]) for item in b["top_k"].split(";")]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert b["top_k"].split(";")[0] == f"{b['fine_label']}:{float(b['fine_confidence']):.4f}"


def test_predict_reads_paths_from_stdin_with_min_confidence(bundle: str, val_root: Path) -> None:
    paths = [str(p) for p in sorted(val_root.rglob("*.jpg"))]
    r = _skulens("predict", bundle, "-", "--min-confidence", "0.999", "-q", stdin="\n".join(paths) + "\n\n")
    assert r.returncode == 0, r.stderr
    rows = _jsonl(r.stdout)
    assert [row["source"] for row in rows] == paths
    for row in rows:
        if row["confidence"] < 0.999:
            assert row["level"] == "unknown" and row["label"] is None
        else:
            assert row["level"] in ("fine", "coarse") and row["label"] is not None
    assert any(row["level"] == "unknown" for row in rows)


def test_a_dash_among_other_inputs_reads_stdin_in_its_place(val_root: Path, monkeypatch) -> None:
    """The README's `predict ... photo.jpg folder/ 'shelf/*.png' [-]`: a '-' beside other inputs was taken as a
    file named '-' (an error row), and stdin was never read."""
    import io

    from skulens.cli._common import expand_inputs

    paths = [str(p) for p in sorted(val_root.rglob("*.jpg"))]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(paths[1:3]) + "\n-\n\n"))
    assert expand_inputs([paths[0], "-", paths[3]]) == [paths[0], *paths[1:3], paths[3]]
    monkeypatch.setattr("sys.stdin", io.StringIO(paths[4] + "\n"))
    assert expand_inputs([]) == [paths[4]]  # nothing given: stdin, as before


def test_predict_all_bad_inputs_exit_1(bundle: str, tmp_path: Path) -> None:
    text = tmp_path / "a.jpg"
    text.write_text("hello", encoding="utf-8")
    r = _skulens("predict", bundle, str(text), str(tmp_path / "missing.jpg"), "-q")
    assert r.returncode == 1
    assert "2 of 2 image(s) could not be read" in r.stderr
    rows = _jsonl(r.stdout)
    assert [row["level"] for row in rows] == ["error", "error"]
    assert rows[1]["error"] == "file not found" and "not an image" in rows[0]["error"]


def test_predict_some_bad_inputs_exit_0(bundle: str, val_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good = val_root / "red-apple" / "red-apple_001.jpg"
    r = _skulens("predict", bundle, str(empty), str(good), "-q")
    assert r.returncode == 0
    assert "1 of 2 image(s) could not be read" in r.stderr
    rows = _jsonl(r.stdout)
    assert rows[0]["level"] == "error" and rows[0]["error"] == "empty file"
    assert rows[1]["level"] != "error"


def test_predict_with_no_images_is_an_error(bundle: str, tmp_path: Path) -> None:
    r = _skulens("predict", bundle, str(tmp_path))  # an empty folder expands to nothing
    assert r.returncode != 0
    assert "no input images" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- evaluate


def test_evaluate_writes_the_report(bundle: str, tiny_catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    r = _skulens("evaluate", bundle, "--data", str(tiny_catalogue), "--split", "val", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "top-1 accuracy" in r.stderr and str(out / "report.md") in r.stderr
    payload = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert SUMMARY <= set(payload["summary"])
    for key in SUMMARY:
        assert 0.0 <= payload["summary"][key] <= 1.0
    assert payload["model"]["n"] == 9
    assert payload["model"]["top1"] == payload["summary"]["top1"]
    per_class = payload["model"]["per_class"]
    assert sorted(c["name"] for c in per_class) == sorted(PRODUCTS)
    assert [c["support"] for c in per_class] == [3, 3, 3]
    assert np.sum(payload["model"]["confusion"]) == 9
    assert payload["baseline"] is None
    assert "## Per-class metrics" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_with_baseline(bundle: str, tiny_catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    r = _skulens("evaluate", bundle, "--data", str(tiny_catalogue), "--out", str(out), "--baseline", "-q")
    assert r.returncode == 0, r.stderr
    payload = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert payload["baseline"] is not None
    assert 0.0 <= payload["baseline"]["top1"] <= 1.0 and payload["baseline"]["n"] == 9
    assert "baseline" in r.stderr  # the terminal summary shows the comparison


def _folder_catalogue(root: Path) -> Path:
    rng = np.random.default_rng(7)
    for split, n in (("train", 2), ("val", 3)):
        for label in PRODUCTS:
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                make_image(label, rng).save(root / split / label / f"{i}.png")
    return root


def test_evaluate_a_folder_catalogue(bundle: str, tmp_path: Path) -> None:
    data = _folder_catalogue(tmp_path / "shelf")
    out = tmp_path / "eval"
    r = _skulens("evaluate", bundle, "--data", str(data), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    payload = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert payload["model"]["n"] == 9
    assert payload["summary"]["top1"] >= 0.5  # same products as the training catalogue
    # Folders carry no coarse labels: the coarse metrics are absent, not made up.
    assert payload["summary"]["coarse_top1"] is None


def test_evaluate_unknown_label_names_it(bundle: str, tmp_path: Path) -> None:
    data = _folder_catalogue(tmp_path / "shelf")
    (data / "val" / "red-apple").rename(data / "val" / "soy-milk")
    r = _skulens("evaluate", bundle, "--data", str(data), "--out", str(tmp_path / "eval"), "-q")
    assert r.returncode != 0
    assert "soy-milk" in r.stderr
    assert not (tmp_path / "eval" / "report.json").exists()


# --------------------------------------------------------------------------- train / demo: data errors


def test_train_with_missing_data(tmp_path: Path) -> None:
    r = _skulens("train", "--data", str(tmp_path / "nonexistent"), cwd=tmp_path)
    assert r.returncode != 0
    assert f"--data {tmp_path / 'nonexistent'}: no such file or folder" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_demo_with_missing_data(tmp_path: Path) -> None:
    r = _skulens("demo", "--data", str(tmp_path / "nonexistent"), cwd=tmp_path)
    assert r.returncode != 0
    assert "no such file or folder" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_demo_without_dataset_points_to_grocery_store(tmp_path: Path) -> None:
    # $SKULENS_DATA wins over the ../shared lookup, so this is the same on every machine.
    r = _skulens("demo", env={"SKULENS_DATA": str(tmp_path / "no-such-dataset")}, cwd=tmp_path)
    assert r.returncode != 0
    assert "GroceryStoreDataset" in r.stderr and "SKULENS_DATA" in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_with_empty_skulens_data_points_to_grocery_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _skulens("demo", env={"SKULENS_DATA": str(empty)}, cwd=tmp_path)
    assert r.returncode != 0
    assert "GroceryStoreDataset" in r.stderr


def test_evaluate_unknown_label_is_one_line(bundle: str, tmp_path: Path) -> None:
    data = _folder_catalogue(tmp_path / "shelf")
    (data / "val" / "red-apple").rename(data / "val" / "soy-milk")
    r = _skulens("evaluate", bundle, "--data", str(data), "--out", str(tmp_path / "eval"), "-q")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "soy-milk" in r.stderr
