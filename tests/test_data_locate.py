"""Tests for skulens.data.locate: which dataset a command uses, and the typed error when there is none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skulens.data.catalogue import CatalogueError
from skulens.data.locate import (
    DATASET_HINT,
    DataNotFoundError,
    find_default_data,
    recorded_dataset,
    resolve_data,
)


def _dataset(path: Path) -> Path:
    (path / "a").mkdir(parents=True)
    (path / "a" / "x.jpg").write_bytes(b"")
    return path


@pytest.fixture
def nothing_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A set $SKULENS_DATA wins over the ../shared lookup, so this is the same on every machine.
    monkeypatch.setenv("SKULENS_DATA", str(tmp_path / "no-such-dataset"))


# --- resolve_data: an explicit path ---------------------------------------------------------------


def test_given_folder_is_used_as_is(tmp_path: Path, nothing_by_default: None) -> None:
    data = _dataset(tmp_path / "ds")
    assert resolve_data(data) == data
    assert resolve_data(str(data), recorded=str(_dataset(tmp_path / "other"))) == data


def test_given_manifest_file_is_used(tmp_path: Path, nothing_by_default: None) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n")
    assert resolve_data(str(manifest)) == manifest


def test_given_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"^--data .*nowhere: no such file or folder$"):
        resolve_data(tmp_path / "nowhere", recorded=str(_dataset(tmp_path / "ds")))


def test_given_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"^--data .*empty: folder is empty$"):
        resolve_data(tmp_path / "empty", required=False)


def test_data_not_found_is_a_catalogue_error() -> None:
    # CatalogueError is one of skulens.errors.USER_ERRORS: the CLI prints it as one line.
    assert issubclass(DataNotFoundError, CatalogueError)


# --- resolve_data: the recorded dataset, then the default -----------------------------------------


def test_recorded_dataset_when_nothing_given(tmp_path: Path, nothing_by_default: None) -> None:
    data = _dataset(tmp_path / "ds")
    assert resolve_data(None, recorded=str(data)) == data
    assert resolve_data("", recorded=str(data)) == data


def test_recorded_dataset_gone_falls_back_to_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = _dataset(tmp_path / "default")
    monkeypatch.setenv("SKULENS_DATA", str(default))
    assert resolve_data(None, recorded=str(tmp_path / "moved-away")) == default


def test_nothing_anywhere_names_the_pointer_that_is_wrong(tmp_path: Path, nothing_by_default: None) -> None:
    """A wrong $SKULENS_DATA got the grocery hint ("The Grocery Store dataset was not found"), which did not name it."""
    with pytest.raises(DataNotFoundError, match=r"^\$SKULENS_DATA .*no-such-dataset: no such file or folder\. "):
        resolve_data(None, recorded=str(tmp_path / "moved-away"))
    (tmp_path / "no-such-dataset").mkdir()  # there, but empty
    with pytest.raises(DataNotFoundError, match="no catalogue there"):
        resolve_data(None)
    assert "GroceryStoreDataset" in DATASET_HINT and "SKULENS_DATA" in DATASET_HINT


def test_nothing_anywhere_not_required(nothing_by_default: None) -> None:
    assert resolve_data(None, required=False) is None


# --- find_default_data ----------------------------------------------------------------------------


def test_skulens_data_env_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dataset(tmp_path / "ds")
    monkeypatch.setenv("SKULENS_DATA", str(data))
    assert find_default_data() == data
    assert resolve_data(None) == data
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{}\n")
    monkeypatch.setenv("SKULENS_DATA", str(manifest))
    assert find_default_data() == manifest


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_unusable_skulens_data_finds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    target = tmp_path / kind
    if kind == "empty":
        target.mkdir()
    monkeypatch.setenv("SKULENS_DATA", str(target))
    assert find_default_data() is None


def test_shared_grocery_store_beside_the_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared" / "datasets" / "grocery-store"
    shared.mkdir(parents=True)
    (shared / "classes.csv").write_text("")
    (tmp_path / "repo").mkdir()
    monkeypatch.delenv("SKULENS_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "repo")
    assert find_default_data() == shared


# --- recorded_dataset -----------------------------------------------------------------------------


def _bundle(path: Path, card: object) -> Path:
    path.mkdir()
    (path / "card.json").write_text(json.dumps(card), encoding="utf-8")
    return path


def test_recorded_dataset_from_bundle_or_card(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b", {"backbone": "x", "dataset": {"path": "/data/gs", "layout": "grocery"}})
    assert recorded_dataset(bundle) == "/data/gs"
    assert recorded_dataset(str(bundle / "card.json")) == "/data/gs"
    (bundle / "model.safetensors").write_bytes(b"weights, not JSON")  # --model B/model.safetensors
    assert recorded_dataset(str(bundle / "model.safetensors")) == "/data/gs"
    (bundle / "model.onnx").write_bytes(b"an exported model")  # --backend onnx --model B/model.onnx
    assert recorded_dataset(str(bundle / "model.onnx")) == "/data/gs"


@pytest.mark.parametrize("card", [{"backbone": "x"}, {"dataset": {}}, {"dataset": {"path": ""}}, [1, 2]])
def test_recorded_dataset_none_recorded(tmp_path: Path, card: object) -> None:
    assert recorded_dataset(_bundle(tmp_path / "b", card)) is None


def test_recorded_dataset_without_a_readable_card(tmp_path: Path) -> None:
    assert recorded_dataset(tmp_path / "no-bundle") is None
    (tmp_path / "empty").mkdir()
    assert recorded_dataset(tmp_path / "empty") is None
    (tmp_path / "empty" / "card.json").write_text("{not json")
    assert recorded_dataset(tmp_path / "empty") is None


# --- import cost ----------------------------------------------------------------------------------


def test_import_does_not_load_torch() -> None:
    code = "import sys, skulens.data.locate; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
