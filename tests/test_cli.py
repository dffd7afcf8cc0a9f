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


def _split_scores(cell: str) -> list[tuple[str, float]]:
    """The reader the README describes for a scores cell: split on each ';' not escaped by a '\\', undo the
    escapes, each item at its last ':'."""
    items, current, chars = [], "", iter(cell)
    for ch in chars:
        if ch == "\\":
            current += next(chars)
        elif ch == ";":
            items.append(current)
            current = ""
        else:
            current += ch
    if cell:
        items.append(current)
    return [(i.rsplit(":", 1)[0], float(i.rsplit(":", 1)[1])) for i in items]


def test_a_scores_cell_splits_back_into_its_names() -> None:
    """A label holding ';' or ':' ("Red:Apple; big") made the top_k cell of `predict -o x.csv` unreadable."""
    from skulens.models.card import scores_cell

    pairs = [("Red:Apple; big", 0.704), ('Green "Apple", 1kg', 0.2911), ("oat-milk", 0.0048), ("a\\;b\\", 0.001)]
    cell = scores_cell(pairs, 4)
    assert cell == 'Red:Apple\\; big:0.7040;Green "Apple", 1kg:0.2911;oat-milk:0.0048;a\\\\\\;b\\\\:0.0010'
    assert _split_scores(cell) == pairs
    assert scores_cell([], 3) == ""


def test_predict_out_is_checked_before_any_photo(bundle: str, val_root: Path, tmp_path: Path) -> None:
    """`-o photo.jpg` wrote JSON lines over an input photo (exit 0); a folder or a path under a file as -o failed
    with a traceback only after every photo was predicted."""
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes((val_root / "oat-milk" / "oat-milk_000.jpg").read_bytes())
    before = photo.read_bytes()
    for out, why in ((photo, "a photo's name"), (tmp_path / "new.png", "a photo's name"),
                     (tmp_path, "a folder is there"), (photo / "x.csv", "is a file, not a folder")):
        r = _skulens("predict", "-m", bundle, str(photo), "-o", str(out), "-q")
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, (out, r.stderr)
    assert photo.read_bytes() == before
    listing = tmp_path / "list.txt"  # an input that is no photo, named as --out: refused, not overwritten
    listing.write_text(str(photo) + "\n", encoding="utf-8")
    r = _skulens("predict", "-m", bundle, str(listing), "-o", str(listing), "-q")
    assert r.returncode == 2 and "one of the input files" in r.stderr, r.stderr
    nested = tmp_path / "reports" / "day1" / "preds.csv"  # a missing folder is made, as evaluate makes its own
    r = _skulens("predict", "-m", bundle, str(photo), "-o", str(nested), "-q")
    assert r.returncode == 0, r.stderr
    assert len(nested.read_text(encoding="utf-8").splitlines()) == 2


def test_predict_writes_chunk_by_chunk_with_the_same_rows(bundle: str, val_root: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    """Predictions are written a chunk of photos at a time (memory was ~0.45 MB a photo, all held to the end):
    the rows, their order and an unreadable photo's row are those of one call."""
    from skulens.cli import main
    from skulens.cli import predict as cli_predict

    paths = [str(p) for p in sorted(val_root.rglob("*.jpg"))][:7]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths.insert(3, str(bad))
    whole, chunked = tmp_path / "whole.jsonl", tmp_path / "chunked.jsonl"
    assert main(["predict", "-m", bundle, *paths, "-o", str(whole), "-q"]) == 0
    monkeypatch.setattr(cli_predict, "CHUNK", 3)
    assert main(["predict", "-m", bundle, *paths, "-o", str(chunked), "-q"]) == 0
    rows = _jsonl(chunked.read_text(encoding="utf-8"))
    assert [r["source"] for r in rows] == paths and rows[3]["level"] == "error"
    assert rows == _jsonl(whole.read_text(encoding="utf-8"))


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


def test_demo_quick_fine_tunes_from_the_linear_probe_with_batchnorm_statistics_kept(tiny_catalogue: Path,
                                                                                      tmp_path: Path) -> None:
    from skulens.cli import main

    assert main(["demo", "--quick", "--data", str(tiny_catalogue), "--out", str(tmp_path / "q"), "-q"]) == 0
    card = json.loads((tmp_path / "q" / "bundle" / "card.json").read_text(encoding="utf-8"))
    recipe = {k: card["train_config"][k] for k in ("backbone", "epochs", "image_size", "batch_norm", "head_init")}
    assert recipe == {"backbone": "efficientnet_lite0", "epochs": 2, "image_size": 160, "batch_norm": "frozen",
                      "head_init": "probe"}
    assert (tmp_path / "q" / "baseline.json").is_file() and (tmp_path / "q" / "report" / "report.md").is_file()


def test_evaluate_unknown_label_is_one_line(bundle: str, tmp_path: Path) -> None:
    data = _folder_catalogue(tmp_path / "shelf")
    (data / "val" / "red-apple").rename(data / "val" / "soy-milk")
    r = _skulens("evaluate", bundle, "--data", str(data), "--out", str(tmp_path / "eval"), "-q")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "soy-milk" in r.stderr


def test_precision_flag_reaches_the_model_and_is_refused_where_it_would_do_nothing(bundle: str, val_root: Path,
                                                                                     tmp_path: Path) -> None:
    """No command took --precision: a CLI user could not get fp32 on a CPU that runs bf16 (or the reverse)."""
    import skulens

    photo = str(min(val_root.rglob("*.jpg")))
    r = _skulens("predict", "-m", bundle, photo, "--precision", "off", "-k", "3", "-q")
    assert r.returncode == 0, r.stderr
    got = [(t["label"], t["p"]) for t in _jsonl(r.stdout)[0]["top_k"]]
    want = skulens.load(bundle, device="cpu", precision="off").predict([photo], top_k=3)[0].top_k
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-6)
    import torch

    cases = [(["--precision", "bf16", "--backend", "onnx"], "for the PyTorch backend"),
             (["--precision", "fp16", "--device", "cpu"], "for CUDA")]
    if not torch.cuda.is_available():  # device auto is the CPU: the loader refuses it (it was a traceback)
        cases.append((["--precision", "fp16"], "fp16 is for CUDA"))
    with pytest.raises(ValueError, match="for the PyTorch backend"):  # the Python API ignored it for an export
        skulens.load(bundle, backend="onnx", precision="off")
    for args, why in cases:
        r = _skulens("predict", "-m", bundle, photo, *args, "-q")
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_closed_pipe_is_no_traceback(bundle: str) -> None:
    """`skulens search ... | head -1` ended in a BrokenPipeError traceback when head left before the output did."""
    proc = subprocess.Popen([sys.executable, "-m", "skulens.cli", "info", "-m", bundle], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_folders_broken_links_are_named_not_skipped_unsaid(bundle: str, val_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((val_root / "oat-milk" / "oat-milk_000.jpg").read_bytes())
    (folder / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    r = _skulens("predict", "-m", bundle, str(folder), "-q")
    assert r.returncode == 0 and [row["source"] for row in _jsonl(r.stdout)] == [str(folder / "a.jpg")]
    assert f"1 broken link(s) under {folder} left out, e.g. {folder / 'gone.jpg'}" in r.stderr
    os.mkfifo(folder / "pipe.jpg")  # not a file either: it was called a broken link
    r = _skulens("predict", "-m", bundle, str(folder), "-q")
    assert r.returncode == 0 and "2 entries that are not files (broken links, pipes, devices)" in r.stderr


def test_a_broken_pipe_elsewhere_is_not_taken_for_a_closed_stdout(bundle: str, monkeypatch) -> None:
    """Only stdout's reader leaving ends a command quietly: another pipe breaking is an error, and stdout is left
    alone (the handler sent the calling process's stdout to /dev/null)."""
    from skulens import cli
    from skulens.cli import main

    def broken(ns):
        raise BrokenPipeError(32, "a worker's pipe")

    parser = cli.build_parser()
    ns = parser.parse_args(["info", "-m", bundle])
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, ns, broken))
    with pytest.raises(BrokenPipeError):
        main(["info", "-m", bundle])


class _Fixed:
    """A parser whose parse gives `ns` with its command replaced by `func`."""

    def __init__(self, parser, ns, func) -> None:
        self.parser, self.ns, self.func = parser, ns, func

    def parse_args(self, argv):
        self.ns.func = self.func
        return self.ns


def test_predict_csv_cells_a_spreadsheet_would_run_are_written_as_text(bundle: str, val_root: Path,
                                                                       tmp_path: Path) -> None:
    """A photo (or a product) named `=HYPERLINK(...)` landed raw in `predict --format csv`, where a spreadsheet runs
    it as a formula; the stock export already wrote such cells with a leading '."""
    photo = tmp_path / '=HYPERLINK("http:evil").jpg'
    photo.write_bytes((val_root / "oat-milk" / "oat-milk_000.jpg").read_bytes())
    out = tmp_path / "preds.csv"
    r = _skulens("predict", str(Path(bundle).resolve()), photo.name, "--format", "csv", "-o", "preds.csv", "-q",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(out, newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["source"] == "'" + photo.name and row["error"] == "" and row["fine_label"][:1] not in "=+-@"
    from skulens.data.sheets import spreadsheet_cell, spreadsheet_row

    assert [spreadsheet_cell(c) for c in ("=1+1", "+tea", "-juice", "@oat", "\tx", "oat-milk", "", None)] == [
        "'=1+1", "'+tea", "'-juice", "'@oat", "'\tx", "oat-milk", "", None]
    assert spreadsheet_row(["=cmd", 3, -1, 0.5, None]) == ["'=cmd", 3, -1, 0.5, None]
