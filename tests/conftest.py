"""Shared fixtures: tiny synthetic catalogues written as real image files, and one tiny trained bundle."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")

# Three products in two coarse classes; each is a coloured shape on a noisy background, so a real
# pretrained backbone separates them after a few steps.
PRODUCTS = {
    "red-apple": ("Apple", (200, 30, 30), "disc"),
    "green-apple": ("Apple", (40, 170, 40), "disc"),
    "oat-milk": ("Milk", (230, 200, 60), "box"),
}
ATTRIBUTES = {"red-apple": "colour=red", "green-apple": "colour=green", "oat-milk": "colour=yellow;lactose_free"}
TINY = {"image_size": 64, "train_image_size": 64, "baseline": False, "loggers": "", "epochs": 2,
        "batch_size": 8, "backbone": "efficientnet_lite0", "ema": False}


def make_image(label: str, rng: np.random.Generator, size: int = 72) -> Image.Image:
    _, colour, shape = PRODUCTS[label]
    arr = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    c = size // 2 + rng.integers(-6, 7, size=2)
    r = size // 3
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r**2) if shape == "disc" else (
        (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r * 0.7))
    arr[mask] = np.clip(np.array(colour) + rng.integers(-20, 21, size=3), 0, 255)
    return Image.fromarray(arr)


def write_catalogue(root: Path, n_train: int = 8, n_val: int = 3, seed: int = 0) -> Path:
    """A CSV-manifest catalogue with train/val splits, coarse labels and attributes. Returns the manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for label, (coarse, _, _) in PRODUCTS.items():
            for i in range(n):
                rel = Path(split) / label / f"{label}_{i:03d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                make_image(label, rng).save(root / rel, quality=90)
                rows.append({"path": rel.as_posix(), "label": label, "coarse_label": coarse, "split": split,
                             "attributes": ATTRIBUTES[label], "title": label.replace("-", " ")})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real fine-tune of the real Lite0 weights at 64 px (a few seconds); returns its TrainResult."""
    import skulens

    out = tmp_path_factory.mktemp("run") / "tiny"
    return skulens.train(tiny_catalogue, out=str(out), progress=False, epochs=4, lr=3e-3,
                         **{k: v for k, v in TINY.items() if k != "epochs"})


def grocery_path() -> Path | None:
    env = os.environ.get("SKULENS_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
    return p if (p / "classes.csv").is_file() else None
