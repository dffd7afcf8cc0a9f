"""Where the dataset is: the path asked for, the one a bundle was trained on, or the default copy.

Core, not CLI: a missing dataset raises :class:`DataNotFoundError` (a :class:`CatalogueError`, so the
CLI prints it as one line), never ``SystemExit``; and nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .catalogue import CatalogueError

__all__ = ["DATASET_HINT", "DATA_ENV", "DataNotFoundError", "bundle_named", "card_json", "dataset_path",
           "find_default_data", "recorded_dataset", "resolve_data"]

DATASET_HINT = (
    "The Grocery Store dataset was not found. skulens looks at --data, then $SKULENS_DATA, then "
    "../shared/datasets/grocery-store. Get it from its public repository, marcusklasson/GroceryStoreDataset "
    "on GitHub (MIT licence): clone it and pass --data PATH/TO/GroceryStoreDataset/dataset."
)
_CARD = "card.json"  # skulens.models.bundle.CARD; not imported: data/ imports nothing from models/


class DataNotFoundError(CatalogueError):
    """No dataset at the path given, or none anywhere skulens looks."""


DATA_ENV = "SKULENS_DATA"  # the user's own default catalogue


def find_default_data() -> Path | None:
    """$SKULENS_DATA, else ../shared/datasets/grocery-store from the working dir or from the source checkout.

    A set $SKULENS_DATA wins even when it names nothing usable (then: None), so a machine's
    ../shared copy never stands in for the dataset a user pointed at.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env) if _has_data(Path(env)) else None
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        candidate = base.parent / "shared" / "datasets" / "grocery-store"
        if (candidate / "classes.csv").is_file():
            return candidate
    return None


def resolve_data(
    arg: str | os.PathLike[str] | None, *, recorded: str | None = None, required: bool = True, flag: str = "--data",
    model: str = "the model",
) -> Path | None:
    """The dataset to use: ``arg``, else ``recorded`` if it still exists, else :func:`find_default_data`.

    ``recorded`` is the dataset path written in a bundle's card (see :func:`recorded_dataset`). A given
    ``arg`` must exist and, if a folder, hold something (an error names it as ``flag``). A ``recorded`` dataset
    that is gone is refused when ``required`` and $SKULENS_DATA is unset: the default dataset is another
    catalogue, whose labels the model does not know (the error names ``model``, the bundle that recorded it).
    With nothing found, raises :class:`DataNotFoundError` carrying :data:`DATASET_HINT`, or returns None when not
    ``required``.
    """
    if arg is not None and os.fspath(arg) != "":
        path = Path(arg)
        if not path.exists():
            raise DataNotFoundError(f"{flag} {os.fspath(arg)}: no such file or folder")
        if not _has_data(path):
            raise DataNotFoundError(f"{flag} {os.fspath(arg)}: folder is empty")
        return path
    if recorded and Path(recorded).exists():
        return Path(recorded)
    if recorded and required and not os.environ.get(DATA_ENV):  # $SKULENS_DATA, set by the user, is still taken
        raise DataNotFoundError(f"the catalogue {model} was trained on ({recorded}) is not here: "
                                f"pass {flag} PATH (or set ${DATA_ENV})")
    found = find_default_data()
    if found is None and required:
        env = os.environ.get(DATA_ENV)
        if env:  # the user's pointer is what is wrong: the grocery hint did not name it
            what = "no such file or folder" if not Path(env).exists() else "no catalogue there"
            raise DataNotFoundError(f"${DATA_ENV} {env}: {what}. {DATASET_HINT}")
        raise DataNotFoundError(DATASET_HINT)
    return found


def recorded_dataset(bundle: str | os.PathLike[str]) -> str | None:
    """The dataset path recorded in the card of ``bundle`` (a bundle folder, its card.json, or a file in it
    such as model.safetensors or an exported model.onnx, as --model takes them), or None.

    None also when the card is missing, unreadable or records no path: loading the bundle is what
    reports a broken card.
    """
    return dataset_path(card_json(bundle))


def dataset_path(card: dict[str, Any] | None) -> str | None:
    """The dataset path a card (as plain JSON) records, or None."""
    dataset = (card or {}).get("dataset")
    recorded = dataset.get("path") if isinstance(dataset, dict) else None
    return recorded if isinstance(recorded, str) and recorded else None


def bundle_named(bundle: str | os.PathLike[str]) -> Path:
    """The bundle folder a --model value names (the folder, or its card.json), resolved: two names of one bundle
    compare equal. Pure path arithmetic: the bundle need not exist any more."""
    path = Path(bundle).resolve()
    return path.parent if path.name == _CARD else path


def card_json(bundle: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The card of ``bundle`` as plain JSON, read without torch (a bundle folder, its card.json, or a file in it
    as --model takes them), or None when it is missing or unreadable: loading the bundle says what is wrong."""
    path = Path(bundle)
    # a folder: its card; card.json itself; any other file (model.safetensors, model.onnx): the card beside it
    card = path / _CARD if path.is_dir() else path if path.name == _CARD else path.parent / _CARD
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _has_data(path: Path) -> bool:
    # A file (a manifest) counts; a folder must hold something. iterdir on a file would raise.
    return path.is_file() or (path.is_dir() and any(path.iterdir()))
