"""The detector really learns: a tiny one trained for a few seconds on synthetic canvases counts a canvas
it never saw exactly, and finds nothing on an empty photo. The real ImageNet backbone, torchvision's FCOS
loss and skulens' training loop, at 128 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skulens.detect.detector import load_detector
from skulens.detect.model import DetectorConfig
from skulens.detect.synth import CompositeGenerator, Cutout, SynthConfig
from skulens.detect.train import DetectorRecipe, train_detector

SIZE = 128


def _cutouts(rng: np.random.Generator) -> list[Cutout]:
    """Opaque product-like blocks: a body with a darker band (a label) in a few colours and shapes."""
    out = []
    for i in range(12):
        w, h = int(rng.integers(20, 40)), int(rng.integers(28, 56))
        rgba = np.zeros((h, w, 4), np.uint8)
        colour = rng.integers(30, 226, 3)
        rgba[..., :3], rgba[..., 3] = colour, 255
        rgba[h // 3: h // 2, :, :3] = colour // 3
        out.append(Cutout(Image.fromarray(rgba, "RGBA"), f"block{i}", "catalogue"))
    return out


@pytest.fixture(scope="module")
def canvases() -> CompositeGenerator:
    cfg = SynthConfig(width=SIZE, height=SIZE, min_objects=1, max_objects=4, layouts={"random": 1.0},
                      backgrounds={"flat": 1.0}, blends={"hard": 1.0}, scale=(0.25, 0.4), rotation=0.0,
                      lying_share=0.0, max_occlusion=0.0, min_inside=1.0, empty_share=0.1, hue_shift_share=0.0,
                      lighting_share=0.0, blur_share=0.0, noise_share=0.0, jpeg_share=0.0, colour_jitter=0.0,
                      global_jitter=0.0)
    return CompositeGenerator(_cutouts(np.random.default_rng(0)), cfg, seed=0)


@pytest.fixture(scope="module")
def trained(canvases: CompositeGenerator, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    recipe = DetectorRecipe(steps=120, batch_size=8, lr=2e-3, warmup_steps=10, train_sizes=(SIZE,), canvas=SIZE,
                            holdout_products=0.0, eval_every=120, max_minutes=None, workers=0)
    config = DetectorConfig(min_size=SIZE, max_size=SIZE, frozen_blocks=3, max_detections=20)
    out = tmp_path_factory.mktemp("det") / "det"
    train_detector(None, out, recipe=recipe, config=config, composites=canvases, progress=False)
    return load_detector(out, device="cpu")


def test_a_known_composite_is_counted_exactly(trained, canvases: CompositeGenerator) -> None:
    exact = 0
    for i in range(10_000, 10_020):  # canvases never trained on (training used 0 .. 959)
        image, truth = canvases.gen(i)
        found = trained.detect([image])[0].above(0.5)
        exact += len(found) == len(truth)
    assert exact >= 17, f"only {exact} of 20 unseen canvases counted exactly"


def test_a_photo_with_no_product_gives_no_box(trained) -> None:
    for colour in ((200, 200, 200), (40, 90, 160), (250, 250, 250)):
        assert len(trained.detect([Image.new("RGB", (SIZE, SIZE), colour)])[0].above(0.5)) == 0


def test_the_counting_threshold_is_chosen_on_held_out_canvases(trained, canvases: CompositeGenerator) -> None:
    from skulens.detect.count import count_products
    from skulens.detect.train import calibrate_min_score, choose_min_score

    held = [canvases.gen(i) for i in range(20_000, 20_016)]
    t, record = choose_min_score(trained, held)
    assert 0.3 <= t <= 0.85 and record["count_exact"] >= 0.8 and record["canvases"] == 16
    folder = trained.path
    assert calibrate_min_score(folder, held) == t
    again = load_detector(folder, device="cpu")
    assert again.config.min_score == t and again.card.training["count_threshold"]["min_score"] == t
    image, _ = held[0]
    (result, _), = count_products(again, [image])  # min_score None: the detector's own threshold
    assert result.total == int((again.detect([image])[0].scores >= t).sum())
