"""Synthetic composites: cutouts, seeded canvases whose boxes are the visible pixels, dataset and writers."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from skulens.data.catalogue import Sample
from skulens.detect.synth import (
    LAYOUTS,
    PROCEDURAL_KINDS,
    CompositeDataset,
    CompositeGenerator,
    Cutout,
    SynthConfig,
    cutout_from_white,
    photo_cutouts,
    preview,
    procedural_cutouts,
    write_composites,
)

GROCERY = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "grocery-store"
TINY = SynthConfig(width=128, height=128, min_objects=2, max_objects=10)


def _on_white(draw_fn, size: tuple[int, int] = (100, 90), jpeg: bool = True) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    draw_fn(ImageDraw.Draw(img))
    if jpeg:  # the catalogue's photos are JPEGs: ringing and off-white specks at the edges
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        img = Image.open(buf).convert("RGB")
    return img


def _cutouts() -> list[Cutout]:
    shapes = [
        lambda d: d.ellipse((20, 15, 75, 70), fill=(200, 30, 30)),
        lambda d: d.rectangle((30, 10, 60, 80), fill=(30, 60, 200)),
        lambda d: (d.rectangle((25, 20, 70, 75), fill=(30, 160, 60)),
                   d.rectangle((35, 35, 60, 55), fill="white")),
    ]
    return [cutout_from_white(_on_white(fn), f"p{k}") for k, fn in enumerate(shapes)]


@pytest.fixture(scope="module")
def generator() -> CompositeGenerator:
    return CompositeGenerator(_cutouts(), TINY, seed=7)


def _opaque(cutout: Cutout) -> np.ndarray:
    return np.asarray(cutout.image)[..., 3] > 127


# --- cutouts -------------------------------------------------------------------------------------


def test_cutout_from_white_is_tight_with_clear_corners_and_solid_centre() -> None:
    cut = cutout_from_white(_on_white(lambda d: d.ellipse((20, 15, 75, 70), fill=(200, 30, 30))), "disc")
    alpha = np.asarray(cut.image)[..., 3]
    assert cut.image.mode == "RGBA" and cut.label == "disc" and cut.source == "catalogue"
    assert abs(cut.image.width - 56) <= 3 and abs(cut.image.height - 56) <= 3  # the disc's own bbox
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0
    h, w = alpha.shape
    assert alpha[h // 2, w // 2] == 255
    rows, cols = np.flatnonzero((alpha > 127).any(1)), np.flatnonzero((alpha > 127).any(0))
    assert rows[0] <= 2 and cols[0] <= 2 and rows[-1] >= h - 3 and cols[-1] >= w - 3  # no slack left


def test_cutout_keeps_white_inside_the_product_and_all_its_pieces() -> None:
    labelled = cutout_from_white(_on_white(lambda d: (d.rectangle((25, 20, 70, 75), fill=(30, 160, 60)),
                                                      d.rectangle((35, 35, 60, 55), fill="white"))), "carton")
    alpha = np.asarray(labelled.image)[..., 3]
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255  # the white label is part of the carton
    kiwi = _on_white(lambda d: (d.ellipse((5, 20, 40, 55), fill=(120, 80, 20)),
                                d.ellipse((60, 30, 85, 55), fill=(160, 190, 40))))
    pieces = cutout_from_white(kiwi, "kiwi")
    assert pieces.image.width >= 75  # one cutout spanning both pieces


def test_cutout_from_an_all_white_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="white"):
        cutout_from_white(Image.new("RGB", (40, 40), "white"), "nothing")


def test_cutout_rejects_non_rgba_and_unknown_sources() -> None:
    with pytest.raises(ValueError, match="RGBA"):
        Cutout(Image.new("RGB", (4, 4)), "x", "catalogue")
    with pytest.raises(ValueError, match="source"):
        Cutout(Image.new("RGBA", (4, 4)), "x", "internet")


def test_procedural_cutouts_cover_every_kind() -> None:
    rng = np.random.default_rng(0)
    texture = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for kind in PROCEDURAL_KINDS:
        cuts = procedural_cutouts(rng, [texture], n=3, kinds=[kind])
        for cut in cuts:
            share = _opaque(cut).mean()
            assert cut.label == f"procedural:{kind}" and cut.source == "procedural"
            assert 0.4 < share <= 1.0, (kind, share)
    with pytest.raises(ValueError, match="unknown procedural"):
        procedural_cutouts(rng, n=1, kinds=["spaceship"])


def test_photo_cutouts_take_a_share_with_a_soft_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for k in range(10):
        path = tmp_path / f"{k}.jpg"
        Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, f"label{k}"))
    cuts = photo_cutouts(samples, share=0.3, seed=1)
    assert len(cuts) == 3 and all(c.source == "photo" and c.label.startswith("label") for c in cuts)
    alpha = np.asarray(cuts[0].image)[..., 3]
    assert alpha[0, 0] < 64 and alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] > 200
    assert photo_cutouts(samples, share=0.0) == []
    with pytest.raises(ValueError, match="share"):
        photo_cutouts(samples, share=1.5)


@pytest.mark.dataset
def test_catalogue_cutouts_on_the_grocery_catalogue() -> None:
    if not (GROCERY / "classes.csv").is_file():
        pytest.skip(f"{GROCERY} is absent")
    from skulens.data.catalogue import load_catalogue
    from skulens.detect.synth import catalogue_cutouts

    cuts = catalogue_cutouts(load_catalogue(GROCERY))
    assert len(cuts) == 81
    for cut in cuts:
        share = _opaque(cut).mean()
        assert 0.1 < share < 0.95, (cut.label, share)


# --- canvases ------------------------------------------------------------------------------------


def test_same_seed_and_index_give_the_same_composite(generator: CompositeGenerator) -> None:
    image, ann = generator.gen(5)
    again_image, again = CompositeGenerator(_cutouts(), TINY, seed=7).gen(5)
    assert np.array_equal(np.asarray(image), np.asarray(again_image))
    assert np.array_equal(ann.boxes, again.boxes) and ann.labels == again.labels
    assert not np.array_equal(np.asarray(image), np.asarray(generator.gen(6)[0]))
    other_seed = CompositeGenerator(_cutouts(), TINY, seed=8).gen(5)[0]
    assert not np.array_equal(np.asarray(image), np.asarray(other_seed))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_boxes_lie_inside_the_canvas_with_positive_size(layout: str) -> None:
    config = replace(TINY, width=160, height=96, layouts={layout: 1.0}, empty_share=0.0)
    gen = CompositeGenerator(_cutouts(), config, seed=1)
    total = 0
    for i in range(12):
        image, ann = gen.gen(i)
        assert image.size == (160, 96) and image.mode == "RGB"
        assert (ann.width, ann.height) == (160, 96) and ann.boxes.dtype == np.float32
        b = ann.boxes
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= 160).all() and (b[:, 3] <= 96).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(ann) <= config.max_objects and set(ann.labels) <= {"p0", "p1", "p2"}
        total += len(ann)
    assert total > 12  # the layout does place objects


def test_a_box_is_exactly_the_visible_pixels() -> None:
    """One opaque 40x20 rectangle at scale 0.25 of a 128 canvas, hard-pasted on a flat background."""
    rect = Cutout(Image.new("RGBA", (40, 20), (250, 20, 200, 255)), "rect", "catalogue")
    config = SynthConfig(
        width=128, height=128, min_objects=1, max_objects=1, layouts={"random": 1.0},
        backgrounds={"flat": 1.0}, blends={"hard": 1.0}, scale=(0.25, 0.25), rotation_share=0.0,
        lying_share=0.0, empty_share=0.0,
        colour_jitter=0.0, hue_shift_share=0.0, global_jitter=0.0, lighting_share=0.0, blur_share=0.0,
        noise_share=0.0, jpeg_share=0.0)
    gen = CompositeGenerator([rect], config, seed=3)
    checked = 0
    for i in range(20):
        image, ann = gen.gen(i)
        arr = np.asarray(image).astype(int)
        assert len(ann) == 1
        x1, y1, x2, y2 = ann.boxes[0]
        inside = (x1, y1, x2, y2) == (0, 0, 128, 128) or not (x1 == 0 or y1 == 0 or x2 == 128 or y2 == 128)
        corner = arr[0, 0] if (x1, y1) != (0, 0) else arr[-1, -1]
        if np.abs(corner - [250, 20, 200]).max() < 60:
            continue  # the random flat background happens to look like the rectangle
        differs = np.abs(arr - corner).max(axis=2) > 30
        rows, cols = np.flatnonzero(differs.any(1)), np.flatnonzero(differs.any(0))
        assert np.allclose(ann.boxes[0], [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], atol=1)
        if inside:  # not cut by the canvas edge: the whole 32 x 16 rectangle
            assert abs((x2 - x1) - 32) <= 1 and abs((y2 - y1) - 16) <= 1
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("layout", ["heap", "random", "shelf"])
def test_no_object_is_hidden_beyond_max_occlusion(layout: str) -> None:
    config = replace(TINY, min_objects=15, max_objects=25, layouts={layout: 1.0}, max_occlusion=0.3,
                     empty_share=0.0)
    gen = CompositeGenerator(_cutouts(), config, seed=2)
    for i in range(8):
        _, ann, scene = gen._compose(i)
        area, visible = np.asarray(scene.area), np.asarray(scene.visible)
        # The bookkeeping agrees with the visible-pixel map, and no object lost more than 30 % of itself.
        assert np.array_equal(visible, np.bincount(scene.owner[scene.owner >= 0], minlength=len(area)))
        assert (visible >= 0.7 * area - 1).all()
        assert len(ann) == len(area)


def test_an_empty_canvas_has_no_boxes() -> None:
    gen = CompositeGenerator(_cutouts(), replace(TINY, empty_share=1.0), seed=0)
    image, ann = gen.gen(0)
    assert image.size == (128, 128) and ann.boxes.shape == (0, 4) and ann.labels == ()


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 16}, "at least 32"),
    ({"min_objects": 5, "max_objects": 2}, "min_objects"),
    ({"max_objects": 0}, "max_objects"),
    ({"layouts": {"aisle": 1.0}}, "unknown keys"),
    ({"layouts": {"shelf": 0.0}}, "positive sum"),
    ({"blends": {"hard": -1.0, "feather": 2.0}}, ">= 0"),
    ({"scale": (0.5, 0.1)}, "scale"),
    ({"rotation": 200.0}, "rotation"),
    ({"max_occlusion": 1.0}, "max_occlusion"),
    ({"min_inside": 0.0}, "min_inside"),
    ({"empty_share": 1.5}, "empty_share"),
    ({"colour_jitter": -0.1}, "colour_jitter"),
])
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**kwargs)


def test_a_generator_needs_cutouts() -> None:
    with pytest.raises(ValueError, match="cutout"):
        CompositeGenerator([], TINY)


# --- dataset and files ---------------------------------------------------------------------------


def test_composite_dataset_is_ready_for_torchvision(generator: CompositeGenerator) -> None:
    import torch

    ds = CompositeDataset(generator, 4)
    assert len(ds) == 4
    image, target = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert labels.dtype == torch.int64 and labels.shape == (len(boxes),) and (labels == 0).all()
    assert np.array_equal(boxes.numpy(), generator.gen(1)[1].boxes)
    ds.set_epoch(1)
    assert np.array_equal(ds[1][0].numpy().transpose(1, 2, 0), np.asarray(generator.gen(5)[0]))
    with pytest.raises(IndexError):
        ds[4]


def test_write_composites_writes_images_and_coco(generator: CompositeGenerator, tmp_path: Path) -> None:
    from skulens.detect.annotations import read_coco

    path = write_composites(generator, 4, tmp_path / "synth", start=10, progress=False)
    doc = json.loads(path.read_text())
    expected = [generator.gen(i)[1] for i in range(10, 14)]
    assert {"images", "annotations", "categories"} <= set(doc)
    assert len(doc["images"]) == 4 and len(doc["annotations"]) == sum(len(a) for a in expected)
    assert all(len(a["bbox"]) == 4 for a in doc["annotations"])
    for im in doc["images"]:
        assert (path.parent / im["file_name"]).is_file()
    back = read_coco(path)
    assert [len(a) for a in back] == [len(a) for a in expected]
    assert np.allclose(np.concatenate([a.boxes for a in back]), np.concatenate([a.boxes for a in expected]))


def test_preview_saves_a_png_grid(generator: CompositeGenerator, tmp_path: Path) -> None:
    out = preview(generator, 3, tmp_path / "preview.png", columns=2)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (256, 256)


@pytest.mark.dataset
def test_composite_sources_hold_products_out_of_training() -> None:
    if not (GROCERY / "classes.csv").is_file():
        pytest.skip(f"{GROCERY} is absent")
    from types import SimpleNamespace

    from skulens.data.catalogue import load_catalogue
    from skulens.detect.synth import composite_sources

    recipe = SimpleNamespace(canvas=128, holdout_products=0.15, holdout_canvases=3, seed=0, several_items=())
    cat = load_catalogue(GROCERY)
    train, holdout = composite_sources(cat, recipe, length=5)
    assert len(train) == 5 and len(holdout) == 3
    held = {label for _, ann in holdout for label in ann.labels}
    seen = {c.label for c in train.generator.cutouts}
    assert held and not held & seen  # no held-out product is ever pasted into a training canvas
    assert all(im.size == (128, 128) for im, _ in holdout)
    assert {"Lime", "Regular-Tomato"} <= seen | held
    # catalogue photos of several items (three limes; three tomatoes, a held-out product) are pasted nowhere
    recipe.several_items = ("Lime", "Regular-Tomato")
    train, holdout = composite_sources(cat, recipe, length=5)
    assert not {"Lime", "Regular-Tomato"} & {c.label for c in train.generator.cutouts}
    assert {"Lime", "Regular-Tomato"}.isdisjoint(label for _, ann in holdout for label in ann.labels)
    assert len(holdout) == 3
    recipe.several_items = ("Lime", "Tomatoe")
    with pytest.raises(ValueError, match="Tomatoe not in the catalogue"):
        composite_sources(cat, recipe, length=5)


# --- product views (enrolment from a catalogue photo) ------------------------------------------------


def test_product_views_put_the_product_on_varied_backgrounds() -> None:
    from skulens.detect.synth import product_views

    photo = _on_white(lambda d: d.ellipse((20, 15, 75, 70), fill=(200, 30, 30)))
    views = product_views(photo, 6, size=96, seed=3)
    assert len(views) == 6 and all(v.size == (96, 96) and v.mode == "RGB" for v in views)
    arrays = [np.asarray(v, dtype=np.float32) for v in views]
    for a in arrays:
        red = (a[..., 0] > 120) & (a[..., 1] < 110) & (a[..., 2] < 110)
        assert red.mean() > 0.03, red.mean()  # the product is in every view
        assert (a.min(axis=2) >= 240).mean() < 0.5  # and no longer on white
    corners = np.array([a[:8, :8].mean(axis=(0, 1)) for a in arrays])
    assert corners.std(axis=0).max() > 10  # the backgrounds differ
    again = product_views(photo, 6, size=96, seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(views, again, strict=True))


def test_product_views_refuse_a_photo_not_taken_on_white() -> None:
    from skulens.detect.synth import NotOnWhiteError, product_views

    rng = np.random.default_rng(0)
    shop = Image.fromarray(rng.integers(0, 200, size=(80, 80, 3), dtype=np.uint8))
    with pytest.raises(NotOnWhiteError, match="does not stand on white"):
        product_views(shop, 2)
    off_white = Image.new("RGB", (80, 80), (245, 245, 245))  # light grey is not white: nothing to cut out
    ImageDraw.Draw(off_white).ellipse((20, 20, 60, 60), fill=(200, 30, 30))
    with pytest.raises(NotOnWhiteError):
        product_views(off_white, 2)
    framed = Image.new("RGB", (100, 100), "white")  # a shop photo in a thin white frame
    framed.paste(shop.resize((96, 96)), (2, 2))
    with pytest.raises(NotOnWhiteError, match="fills its white frame"):
        product_views(framed, 2)
    with pytest.raises(NotOnWhiteError):
        product_views(Image.new("RGB", (40, 40), "white"), 2)  # all white
