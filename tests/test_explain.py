"""Grad-CAM: the heat lands on the object that carries the class signal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skulens

pytest.importorskip("captum")

from skulens.evaluate.explain import explain, overlay  # noqa: E402


def _object_in_corner(size: int = 146, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """Plain noise everywhere except a red disc in the top-left quadrant: only the disc says 'red-apple'."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c, r = size // 4, size // 5
    mask = (yy - c) ** 2 + (xx - c) ** 2 < r**2
    arr[mask] = (200, 30, 30)
    return Image.fromarray(arr), mask


def test_heat_concentrates_on_the_object(tiny_bundle) -> None:
    model = skulens.load(tiny_bundle.bundle)
    img, mask = _object_in_corner()
    exp = explain(model, img, target="red-apple")
    assert exp.label == "red-apple" and exp.heatmap.shape == (model.card.input_size,) * 2
    assert 0.0 <= exp.heatmap.min() and exp.heatmap.max() == pytest.approx(1.0)
    # The model's view is the card's resize + centre crop; map the mask the same way.
    view = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize((model.card.resize_to,) * 2))
    off = (model.card.resize_to - model.card.input_size) // 2
    view = view[off:off + model.card.input_size, off:off + model.card.input_size] > 127
    inside, outside = exp.heatmap[view].mean(), exp.heatmap[~view].mean()
    assert inside > 2 * outside, (inside, outside)
    # Mirror the photo: the heat follows the object to the other side.
    mirrored = explain(model, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), target="red-apple")
    h = mirrored.heatmap
    assert h[:, h.shape[1] // 2:].mean() > h[:, : h.shape[1] // 2].mean()


def test_overlay_and_cli(tiny_bundle, tmp_path: Path) -> None:
    img, _ = _object_in_corner()
    src = tmp_path / "photo.png"
    img.save(src)
    model = skulens.load(tiny_bundle.bundle)
    ov = overlay(explain(model, src))
    assert ov.size == (model.card.input_size,) * 2 and ov.mode == "RGB"
    out = tmp_path / "cam.png"
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "explain", str(tiny_bundle.bundle), str(src),
                        "-o", str(out)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["label"] in model.card.classes and Image.open(out).size == ov.size


def test_explain_rejects_a_corrupt_file(tiny_bundle, tmp_path: Path) -> None:
    from skulens.data.decode import ImageDecodeError

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageDecodeError):
        explain(skulens.load(tiny_bundle.bundle), bad)
