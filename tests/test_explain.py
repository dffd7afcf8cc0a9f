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

from skulens.evaluate.explain import explain, overlay

COLOURS = {"red": (200, 30, 30), "green": (40, 170, 40), "blue": (40, 60, 200)}


def _scene(colour: str, centre: tuple[int, int], size: int = 112, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """Noise everywhere except one coloured disc: only the disc carries the class signal."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (size // 6) ** 2
    arr[mask] = COLOURS[colour]
    return Image.fromarray(arr), mask


@pytest.fixture(scope="module")
def located_bundle(tmp_path_factory) -> Path:
    """A model trained on discs at random places, so it must find the object to classify the photo."""
    root = tmp_path_factory.mktemp("discs")
    rng = np.random.default_rng(1)
    for split, n in (("train", 14), ("val", 3)):
        for colour in COLOURS:
            (root / split / colour).mkdir(parents=True)
            for i in range(n):
                centre = tuple(int(v) for v in rng.integers(20, 92, size=2))
                _scene(colour, centre, seed=int(rng.integers(1 << 30)))[0].save(root / split / colour / f"{i}.png")
    out = tmp_path_factory.mktemp("run") / "discs"
    result = skulens.train(root, out=str(out), progress=False, backbone="efficientnet_lite0", image_size=96,
                           epochs=3, batch_size=8, lr=3e-3, baseline=False, loggers="", ema=False)
    assert result.report.top1 >= 0.6, result.history
    return result.bundle


def _view_mask(mask: np.ndarray, card) -> np.ndarray:
    """The mask through the card's resize + centre crop, like the photo the model sees."""
    m = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize((card.resize_to,) * 2))
    off = (card.resize_to - card.input_size) // 2
    return m[off:off + card.input_size, off:off + card.input_size] > 127


def test_heat_concentrates_on_the_object(located_bundle: Path) -> None:
    model = skulens.load(located_bundle)
    img, mask = _scene("red", (28, 28))
    exp = explain(model, img, target="red")
    assert exp.heatmap.shape == (model.card.input_size,) * 2
    assert exp.heatmap.min() >= 0.0 and exp.heatmap.max() == pytest.approx(1.0)
    view = _view_mask(mask, model.card)
    inside, outside = exp.heatmap[view].mean(), exp.heatmap[~view].mean()
    assert inside > 1.5 * outside, (inside, outside)
    # Move the object to the opposite corner: the heat follows it.
    img2, mask2 = _scene("red", (84, 84))
    h = explain(model, img2, target="red").heatmap
    view2 = _view_mask(mask2, model.card)
    assert h[view2].mean() > 1.5 * h[~view2].mean()
    assert h[view2].mean() > exp.heatmap[view2].mean()


def test_overlay_and_cli(tiny_bundle, tmp_path: Path) -> None:
    img, _ = _scene("red", (30, 30))
    src = tmp_path / "photo.png"
    img.save(src)
    model = skulens.load(tiny_bundle.bundle)
    exp = explain(model, src)
    # The class and calibrated probability predict answers, in its precision (bf16 autocast on CPUs with
    # AVX512-BF16): explain ran fp32 and could explain another class than predict named.
    top = model.predict([src])[0].top_k[0]
    assert exp.label == top[0] and exp.confidence == pytest.approx(top[1], abs=1e-3)
    full = skulens.load(tiny_bundle.bundle, precision="off")
    top_fp32 = full.predict([src])[0].top_k[0]
    exp32 = explain(full, src)
    assert exp32.label == top_fp32[0] and exp32.confidence == pytest.approx(top_fp32[1], abs=1e-5)
    for bad in (len(model.card.classes), -1, True, 1.0):  # an IndexError traceback, or silently accepted
        with pytest.raises(ValueError, match="target must be a class name or an index"):
            explain(model, src, target=bad)
    ov = overlay(exp)
    assert ov.size == (model.card.input_size,) * 2 and ov.mode == "RGB"
    out = tmp_path / "cam.png"
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "explain", str(tiny_bundle.bundle), str(src),
                        "-o", str(out)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["label"] in model.card.classes and Image.open(out).size == ov.size


@pytest.mark.parametrize("out", ["cam", "folder/", "a-file/cam.png"])
def test_explain_refuses_an_out_it_cannot_write_before_loading_the_model(tiny_bundle, tmp_path: Path, capsys,
                                                                         out: str) -> None:
    from skulens.cli import main

    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    src = tmp_path / "photo.png"
    _scene("red", (30, 30))[0].save(src)
    assert main(["explain", "-m", str(tiny_bundle.bundle), str(src), "--out", str(tmp_path / out)]) == 2
    assert "--out" in capsys.readouterr().err  # one line: it was a traceback after the model had loaded


def test_explain_never_writes_the_overlay_over_the_photo_it_explains(tiny_bundle, tmp_path: Path, capsys) -> None:
    """`explain photo.jpg -o photo.jpg` replaced a catalogue photo with its heatmap (exit 0)."""
    from skulens.cli import main

    src = tmp_path / "photo.png"
    _scene("red", (30, 30))[0].save(src)
    before = src.read_bytes()
    (tmp_path / "link.png").symlink_to(src)
    for out in (src, tmp_path / "." / "photo.png", tmp_path / "link.png"):
        assert main(["explain", "-m", str(tiny_bundle.bundle), str(src), "--out", str(out)]) == 2
        assert "the photo to explain" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_explain_rejects_a_corrupt_file(tiny_bundle, tmp_path: Path) -> None:
    from skulens.data.decode import ImageDecodeError

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageDecodeError):
        explain(skulens.load(tiny_bundle.bundle), bad)


def test_explaining_a_plain_pretrained_backbone_is_one_line(tmp_path: Path, capsys) -> None:
    """`-m pretrained:...` has no classes: its empty probabilities failed in argmax, with a traceback."""
    from skulens.cli import main

    src = tmp_path / "photo.png"
    _scene("red", (30, 30))[0].save(src)
    assert main(["explain", "-m", "pretrained:efficientnet_lite0", str(src), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "no classifier" in err and "Traceback" not in err


def test_explain_of_an_exported_file_says_what_to_give(tmp_path: Path, capsys) -> None:
    """`explain -m model.onnx` said "load it with --backend onnx", a flag explain does not have."""
    from skulens.cli import main

    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"onnx")
    src = tmp_path / "photo.png"
    _scene("red", (30, 30))[0].save(src)
    assert main(["explain", "-m", str(exported), str(src), "--out", str(tmp_path / "cam.png")]) == 2
    err = capsys.readouterr().err
    assert "give the bundle folder it was exported from" in err and "--backend" not in err
