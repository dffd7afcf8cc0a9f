"""The detector's plumbing: tiling and merging, the detector folder, the box cap, ONNX, counting output."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from skulens.detect.boxes import AnnotatedImage, Detections
from skulens.detect.count import PhotoCount, count_products, crop_boxes, write_counts
from skulens.detect.detector import Detector, load_detector
from skulens.detect.model import (
    DetectorCard,
    DetectorConfig,
    DetectorError,
    build_detector,
    load_detector_net,
    save_detector,
)
from skulens.detect.tiling import (
    drop_cut_boxes,
    held_by_tiles,
    merge_boxes,
    merge_tiled,
    products_look_small,
    tile_grid,
    window_in_photo,
)

SMALL = DetectorConfig(min_size=128, max_size=256, max_detections=6)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory):
    """A real detector folder with untrained (seeded) weights: boxes are arbitrary but deterministic."""
    torch.manual_seed(0)
    net = build_detector(SMALL, pretrained=False)
    return save_detector(net, DetectorCard(SMALL, {"note": "test"}), tmp_path_factory.mktemp("det") / "det")


def photo(w: int = 200, h: int = 150, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- tiling

def test_tile_grid_covers_the_photo_with_overlap() -> None:
    tiles = tile_grid(1000, 700, 400, overlap=0.25)
    covered = np.zeros((700, 1000), bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 <= 400 and y1 - y0 <= 400
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    assert all(b - a <= 300 for a, b in itertools.pairwise(xs))  # at least 25 % overlap
    assert tile_grid(300, 200, 400) == [(0, 0, 300, 200)]
    with pytest.raises(ValueError):
        tile_grid(100, 100, 0)


def test_a_tile_on_the_working_copys_border_keeps_the_photos_border() -> None:
    # 4000x3001 worked at 1792x1344: rounding back gives 3000, one pixel short of the photo's bottom edge
    w, h, scale = 4000, 3001, 1792 / 4000
    work = (round(w * scale), round(h * scale))
    last = window_in_photo((1000, 700, work[0], work[1]), work, (w, h))
    assert last[2:] == (w, h) and round(work[1] / scale) < h
    box_on_the_bottom_edge = np.array([[3000, 2800, 3500, 3001]], np.float32)
    assert drop_cut_boxes(box_on_the_bottom_edge, last, w, h).tolist() == [True]
    inner = window_in_photo((0, 0, 1000, 700), work, (w, h))
    assert inner[:2] == (0, 0) and inner[2] < w and drop_cut_boxes(
        np.array([[2000, 1500, 2300, 1600]], np.float32), inner, w, h).tolist() == [False]  # cut by the tile


def test_boxes_cut_by_an_inner_tile_edge_are_dropped() -> None:
    boxes = np.array([[10, 10, 50, 50], [380, 10, 420, 50], [150, 150, 399, 399]], np.float32)
    keep = drop_cut_boxes(boxes, (0, 0, 400, 400), 1000, 1000)
    assert keep.tolist() == [True, False, False]
    # at the photo's own border a box is not cut
    assert drop_cut_boxes(boxes[:1], (0, 0, 50, 50), 50, 50).tolist() == [True]


def test_merge_removes_duplicates_and_part_boxes_across_passes_only() -> None:
    boxes = np.array([[0, 0, 100, 100], [2, 2, 101, 99], [0, 0, 100, 40], [300, 300, 340, 340]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    kept = merge_boxes(boxes, scores, np.array([0, 1, 1, 1]))
    assert kept.tolist() == [0, 3]  # the duplicate (IoU) and the part inside from another pass go
    same_pass = merge_boxes(boxes, scores, np.zeros(4, int))
    assert same_pass.tolist() == [0, 2, 3]  # within a pass a small box in front of a big one stays
    assert merge_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0)).tolist() == []


# --------------------------------------------------------------------------- the detector folder

def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="fpn_channels"):
        DetectorConfig(fpn_channels=32)
    with pytest.raises(ValueError, match="min_size"):
        DetectorConfig(min_size=600, max_size=500)
    with pytest.raises(ValueError, match="max_detections"):
        DetectorConfig(max_detections=0)


def test_folder_round_trip_gives_the_same_boxes(untrained) -> None:
    det = load_detector(untrained, device="cpu")
    again = load_detector(untrained, device="cpu")
    a, b = det.detect([photo()])[0], again.detect([photo()])[0]
    assert len(a) == SMALL.max_detections and np.array_equal(a.boxes, b.boxes)
    assert a.capped  # it hit the cap of 6: flagged, not silently truncated
    assert det.config == SMALL and det.card.training == {"note": "test"}
    assert (a.boxes[:, 2] <= 200).all() and (a.boxes[:, 3] <= 150).all() and (a.boxes >= 0).all()


def test_the_network_runs_channels_last_with_the_same_boxes(untrained) -> None:
    """Channels-last is a speed setting (oneDNN's convolutions train 1.2-1.4x faster on a CPU): the weights and
    the maps are laid out so, and the boxes equal those of the same weights in the default layout."""
    net, _ = load_detector_net(untrained)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    seen = []
    hook = convs[-1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.from_numpy(np.asarray(photo(), np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        fast = net([x])[0]
        hook.remove()
        plain = net.to(memory_format=torch.contiguous_format)
        plain.backbone.body.conv_stem.register_forward_pre_hook(lambda m, i: (i[0].contiguous(),))
        slow = plain([x])[0]
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not convs[0].weight.is_contiguous(memory_format=torch.channels_last)  # the copy is plain
    assert torch.allclose(fast["boxes"], slow["boxes"], atol=1e-3)
    assert torch.allclose(fast["scores"], slow["scores"], atol=1e-5)


def test_not_a_detector_folder_is_a_clear_error(tmp_path, untrained) -> None:
    with pytest.raises(DetectorError, match="no such detector folder"):
        load_detector_net(tmp_path / "missing")
    (tmp_path / "card.json").write_text("{}")
    with pytest.raises(DetectorError, match="not a detector folder"):
        load_detector_net(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "detector.json").write_text((untrained / "detector.json").read_text())
    (bad / "detector.safetensors").write_bytes(b"not weights")
    with pytest.raises(DetectorError, match="does not fit"):
        load_detector_net(bad)


def test_box_cap_is_a_setting(untrained) -> None:
    det = load_detector(untrained, device="cpu").with_settings(max_detections=15)
    d = det.detect([photo()])[0]
    assert len(d) == 15 and d.capped and d.cap_score <= float(d.scores.min())
    # the cap keeps the best boxes: above a score every dropped box was under, nothing that counts was cut
    assert d.above(d.cap_score).capped and not d.above(d.cap_score + 1e-4).capped
    big = photo(1400, 600, seed=3)  # tiled: each pass's cap and the merged photo's
    t = det.detect([big])[0]
    assert t.capped and t.cap_score is not None and not t.above(t.cap_score + 1e-4).capped


def test_a_photo_with_exactly_the_cap_of_boxes_is_not_capped(untrained) -> None:
    """Capped means a box was left out: a photo whose network pass gives as many boxes as the cap lost none (it
    was flagged "there may be more" before, for a shelf of exactly --max-boxes products); one fewer and the
    best box left out is named."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    det = load_detector(untrained, device="cpu").with_settings(max_detections=5000)
    x = pil_to_tensor(photo()).float() / 255
    (_, scores), = det._run([x])
    n = len(scores)  # every candidate over the score floor: the untrained net's own number
    assert 3 <= n < 5000
    free = det.detect([photo()], tiles="off")[0]
    assert not free.capped and free.cap_score is None
    exact = det.with_settings(max_detections=n).detect([photo()], tiles="off")[0]
    assert not exact.capped and np.array_equal(exact.boxes, free.boxes)
    short = det.with_settings(max_detections=n - 1).detect([photo()], tiles="off")[0]
    assert short.capped and short.cap_score == pytest.approx(float(scores[n - 1]))  # the box the cap left out
    assert short.above(float(scores[n - 1])).capped and not short.above(float(scores[n - 2])).capped


def test_large_photos_are_tiled(untrained) -> None:
    det = load_detector(untrained, device="cpu").with_settings(max_detections=50)
    big = photo(1400, 600, seed=3)  # long side > 2 x max_size (256): auto tiles
    auto, off = det.detect([big])[0], det.detect([big], tiles="off")[0]
    assert (auto.width, auto.height) == (1400, 600)
    assert (auto.boxes[:, 2] <= 1400).all() and (auto.boxes[:, 3] <= 600).all()
    assert not np.array_equal(auto.boxes, off.boxes)  # the tiles saw more than the shrunk whole photo
    assert len(auto) <= 50
    with pytest.raises(ValueError, match="tiles"):
        det.detect([big], tiles="sometimes")


def test_a_large_photo_reaches_the_network_at_the_networks_size(untrained) -> None:
    """The whole pass gave the network the full-size photo as float32, which its transform normalised before
    resizing: two 576 MB copies for a 48 MP phone photo (2.5 GB peak, measured). It is shrunk first now, on its
    8-bit pixels, as the network's transform shrinks it, and the boxes are the network's own on the full photo
    up to that rounding, in the photo's pixels."""
    det = load_detector(untrained, device="cpu").with_settings(max_detections=50)
    shapes = []
    run = det._run
    det._run = lambda tensors: shapes.extend(t.shape for t in tensors) or run(tensors)  # a spy on the real net
    big = photo(1400, 600, seed=3)
    d = det.detect([big], tiles="off")[0]
    assert shapes == [torch.Size([3, 109, 256])]  # floor(600 x min(128 / 600, 256 / 1400)), as torchvision sizes it
    assert (d.width, d.height) == (1400, 600) and d.boxes[:, 2].max() > 256  # in the photo's pixels
    full_boxes, full_scores = run([torch.from_numpy(np.array(big)).permute(2, 0, 1).float() / 255])[0]
    n = 10  # the best boxes: the same, a rounding of the pixels apart
    assert np.allclose(d.scores[:n], full_scores[:n], atol=2e-3)
    nearest = np.abs(d.boxes[:n, None] - full_boxes[None, :3 * n]).max(axis=2).min(axis=1)
    assert nearest.max() < 3.0  # px, of a 1400 px photo (near-tied scores may swap places)
    shapes.clear()
    det.detect([photo(300, 200)], tiles="off")  # under twice the network's size: as it is
    assert shapes == [torch.Size([3, 200, 300])]


def test_tiles_only_where_the_whole_pass_sees_small_products() -> None:
    """A large photo is tiled when the boxes that count look small to the network (median long side under
    min_size / 8) or none count; products it sees whole are not cut into parts by tiles."""
    def boxes(side: float, n: int = 5) -> np.ndarray:
        return np.array([[i * side, 0, (i + 1) * side, side * 0.8] for i in range(n)], np.float32)

    scores = np.array([0.9, 0.9, 0.9, 0.2, 0.2], np.float32)
    # 4000x3000 seen at 0.224 (896 / 4000): 200 px products are 45 px to the network, 800 px ones 179 px
    assert products_look_small(boxes(200), scores, min_score=0.5, scale=0.224, min_size=512)
    assert not products_look_small(boxes(800), scores, min_score=0.5, scale=0.224, min_size=512)
    # only boxes that count decide: two confident big boxes outvote faint small ones
    mixed = np.concatenate([boxes(800, 3), boxes(50, 2)])
    assert not products_look_small(mixed, scores, min_score=0.5, scale=0.224, min_size=512)
    assert products_look_small(mixed, scores, min_score=0.95, scale=0.224, min_size=512)  # none counts: tile
    assert products_look_small(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), min_score=0.5,
                               scale=0.224, min_size=512)


def test_held_by_tiles_means_inside_a_window_and_clear_of_its_cut_edges() -> None:
    windows = [(0, 0, 400, 400), (300, 0, 700, 400)]
    boxes = np.array([[10, 10, 50, 50],      # inside the first window
                      [350, 10, 390, 50],    # inside both
                      [250, 10, 450, 50],    # across the overlap: no window holds it whole
                      [395, 10, 450, 50],    # inside the second, clear of its cut edge at x = 300
                      [100, 10, 399, 50]],   # inside the first, touching its cut edge (x1 = 400 is a cut)
                     np.float32)
    assert held_by_tiles(boxes, windows, 700, 400).tolist() == [True, True, False, True, False]
    assert held_by_tiles(np.zeros((0, 4), np.float32), windows, 700, 400).tolist() == []


def test_the_tiles_overrule_the_whole_pass_only_where_they_count_far_more() -> None:
    """Crowded: each whole-pass box holds two products the tiles found, so the tiles count twice as many and the
    held whole boxes leave the merge. Not crowded: one product the tiles saw as two pieces, the others alike in
    both views; the whole box keeps taking its pieces as parts."""
    def merge(boxes, passes, held):
        scores = np.where(np.array(passes) == 0, 0.9, 0.8).astype(np.float32)
        return merge_tiled(np.array(boxes, np.float32), scores, np.array(passes), np.array(held), iou=0.5,
                           min_score=0.5, contained_ios=0.85)

    pairs = [[0, 0, 100, 50], [200, 0, 300, 50]]
    singles = [[0, 0, 45, 50], [55, 0, 100, 50], [200, 0, 245, 50], [255, 0, 300, 50]]
    crowded = merge(pairs + singles, [0, 0, 1, 1, 1, 1], [True, True, False, False, False, False])
    assert sorted(crowded.tolist()) == [2, 3, 4, 5]
    assert sorted(merge(pairs + singles, [0, 0, 1, 1, 1, 1], [False] * 6).tolist()) == [0, 1]  # nothing held
    products = [[0, 0, 100, 50], [200, 0, 300, 50], [400, 0, 500, 50], [600, 0, 700, 50]]
    pieces = [[0, 0, 45, 50], [55, 0, 100, 50], [201, 0, 300, 50], [400, 0, 499, 50], [600, 0, 700, 51]]
    calm = merge(products + pieces, [0] * 4 + [1] * 5, [True] * 4 + [False] * 5)
    assert sorted(calm.tolist()) == [0, 1, 2, 3]  # 5 tile boxes against 4 whole ones: the whole boxes stay


class _Blobs(torch.nn.Module):
    """Stands in for a trained network, with the one trait that matters here: it sees a photo at the size the
    network would (short side min_size, long side at most max_size) and boxes dark squares on white, and
    squares closer than about 2 px at that size as one box, as a real whole-photo pass boxes neighbours on a
    shrunk dense shelf."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from scipy import ndimage

        out = []
        for x in images:
            h, w = x.shape[1:]
            s = min(self.config.min_size / min(h, w), self.config.max_size / max(h, w))
            seen = torch.nn.functional.interpolate(x[None], size=(round(h * s), round(w * s)), mode="area")[0]
            dark = (seen.mean(0) < 0.5).numpy()
            groups, _ = ndimage.label(ndimage.binary_dilation(dark))
            boxes = []
            for i, (ys, xs) in enumerate(ndimage.find_objects(groups), 1):
                yy, xx = np.nonzero(dark & (groups == i))
                if len(yy):
                    sy, sx = h / seen.shape[1], w / seen.shape[2]
                    boxes.append([xx.min() * sx, yy.min() * sy, (xx.max() + 1) * sx, (yy.max() + 1) * sy])
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((len(boxes),), 0.9)})
        return out


def test_a_dense_photo_is_counted_from_its_tiles_not_the_whole_passs_group_boxes() -> None:
    """Where the products look small, the whole pass boxes pairs of neighbours; the tiles see each product.
    The whole-pass boxes a tile holds whole leave the merge, so each product counts once; before, a counting
    pair box took the two products the tiles found inside it as its parts, and the shelf counted half."""
    config = DetectorConfig(min_size=128, max_size=256)
    shelf = np.full((1800, 2400, 3), 255, np.uint8)
    squares = []
    for y in range(100, 1700 - 60, 140):
        for x in range(100, 2300 - 140, 220):  # pairs: 60 px squares 20 px apart, pairs 80 px apart
            for x0 in (x, x + 80):
                shelf[y:y + 60, x0:x0 + 60] = 40
                squares.append((x0, y))
    det = Detector(_Blobs(config), DetectorCard(config, {}), device="cpu")
    whole = det.detect([Image.fromarray(shelf)], tiles="off")[0]
    assert len(whole) == len(squares) // 2  # the shrunk whole photo boxes each pair as one
    for tiles in ("auto", "on"):
        d = det.detect([Image.fromarray(shelf)], tiles=tiles)[0]
        assert len(d) == len(squares), tiles
        truth = torch.tensor([[x, y, x + 60, y + 60] for x, y in squares], dtype=torch.float32)
        assert (box_iou(truth, torch.from_numpy(d.boxes)).max(1).values > 0.7).all()


def test_onnx_detector_matches_pytorch(untrained, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from skulens.detect.onnx import export_detector, load_onnx_detector

    path = export_detector(untrained, tmp_path / "d.onnx")
    assert path.is_file()
    # beside its card the exported file loads as a detector
    (untrained / "detector.onnx").write_bytes(path.read_bytes())
    ort_det, torch_det = load_onnx_detector(untrained), load_detector(untrained, device="cpu")
    a, b = torch_det.detect([photo(seed=5)])[0], ort_det.detect([photo(seed=5)])[0]
    assert len(a) == len(b)
    np.testing.assert_allclose(a.scores, b.scores, atol=2e-3)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)


def test_the_onnx_check_compares_box_regression_too(untrained, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import torch

    from skulens.detect.model import DetectorError, load_detector_net
    from skulens.detect.onnx import _check, export_detector

    path = export_detector(untrained, tmp_path / "d.onnx")
    net, card = load_detector_net(untrained)
    _check(net, card, path)  # the graph it was exported from passes
    with torch.no_grad():  # same scores everywhere, other boxes: what a scores-only check let through
        net.head.regression_head.bbox_reg.bias.add_(0.5)
    with pytest.raises(DetectorError, match="bbox_regression"):
        _check(net, card, path)


# --------------------------------------------------------------------------- counting output

def test_crops_are_clipped_and_padded() -> None:
    im = photo(100, 80)
    crops = crop_boxes(im, np.array([[10, 10, 50, 40], [90, 70, 100, 80]], np.float32))
    assert crops[0].size == (44 + 1, 32 + 1) or crops[0].size[0] >= 40
    assert crops[1].size[0] >= 2 and crops[1].size[1] >= 2


def test_count_without_classifier_counts_products_and_reports_bad_photos(untrained, tmp_path) -> None:
    det = load_detector(untrained, device="cpu")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    results = [r for r, _ in count_products(det, [photo(), str(bad)], min_score=0.0)]
    assert results[0].total == 6 and results[0].counts == {"product": 6} and results[0].capped
    assert results[1].error and "not an image" in results[1].error and results[1].total == 0
    out = write_counts(results, tmp_path / "c.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["total"] == 6 and len(rows[0]["boxes"]) == 6 and rows[1]["error"]
    csv_text = write_counts(results, tmp_path / "c.csv").read_text().splitlines()
    assert csv_text[0].startswith("source,product,count") and ",product,6," in csv_text[1]


def test_a_photo_too_narrow_to_look_into_is_an_error_not_a_crash(untrained) -> None:
    from skulens.data.decode import ImageDecodeError

    det = load_detector(untrained, device="cpu")
    strip = Image.new("RGB", (2000, 2), (200, 10, 10))  # 0.3 px high at the detector's scale
    # 1000:1 is refused at decode (extreme aspect ratio) before the detector's own "too narrow": either way
    # an error naming the photo, never a crash inside torchvision.
    with pytest.raises(ImageDecodeError, match="too narrow|extreme aspect ratio"):
        det.detect([strip])
    results = [r for r, _ in count_products(det, [strip, photo()], min_score=0.0)]
    assert any(k in results[0].error for k in ("too narrow", "extreme aspect ratio"))
    assert results[1].total > 0  # the next photo is still counted
    # The detector's own rule, past decoding's 25:1 limit: a small max_size makes a 25:1 photo too narrow.
    from dataclasses import replace

    from skulens.detect.detector import check_detectable

    small = replace(det.config, min_size=64, max_size=64)
    with pytest.raises(ImageDecodeError, match="too narrow"):
        check_detectable((2000, 80), small, "strip.jpg")
    check_detectable((640, 480), small, "photo.jpg")


def test_count_with_classifier_names_boxes_or_says_unknown(untrained, tiny_bundle) -> None:
    from skulens.models.predictor import load_model

    det = load_detector(untrained, device="cpu")
    model = load_model(tiny_bundle.bundle, device="cpu")
    sure = next(count_products(det, [photo()], model=model, min_score=0.0, min_confidence=0.0))[0]
    assert all(b.label in model.classes for b in sure.boxes) and sum(sure.counts.values()) == 6
    confidences = sorted(b.confidence for b in sure.boxes)
    t = (confidences[2] + confidences[3]) / 2
    split = next(count_products(det, [photo()], model=model, min_score=0.0, min_confidence=t))[0]
    # open set: a box below the threshold is unknown, never forced into a class; its guess is kept
    assert split.unknown == 3 and sum(split.counts.values()) == 3
    for b, ref in zip(split.boxes, sure.boxes, strict=True):
        assert (b.label is None) == (ref.confidence < t) and b.guess == ref.guess
    picture = split.annotated(photo())
    assert picture.size == (200, 150) and picture.tobytes() != photo().tobytes()


def test_boxes_are_named_by_product_never_by_a_coarse_class(untrained, tiny_bundle) -> None:
    from skulens.models.predictor import load_model

    det = load_detector(untrained, device="cpu")
    model = load_model(tiny_bundle.bundle, device="cpu")
    model.card = model.card.with_(coarse_fallback=1.01)  # predict() answers the coarse class whenever it can
    crops = crop_boxes(photo(), det.detect([photo()])[0].above(0.0).boxes)
    preds = model.predict(crops, top_k=1)
    assert any(p.level == "coarse" for p in preds)  # the case this test is about
    result = next(count_products(det, [photo()], model=model, min_score=0.0, min_confidence=0.0))[0]
    assert all(b.label in model.classes for b in result.boxes) and set(result.counts) <= set(model.classes)
    for b, p in zip(result.boxes, preds, strict=True):
        assert (b.label, b.guess, b.confidence) == (p.fine_label, p.fine_label, pytest.approx(p.fine_confidence))


def test_photo_count_dict_shape() -> None:
    d = PhotoCount("x.jpg", 10, 10).to_dict()
    assert d == {"source": "x.jpg", "width": 10, "height": 10, "total": 0, "counts": {}, "unknown": 0,
                 "capped": False, "error": None, "boxes": []}
    assert len(AnnotatedImage(None, 5, 5)) == 0 and len(Detections([], [], 5, 5)) == 0


def test_count_names_boxes_from_a_search_index(untrained, tiny_bundle, tmp_path) -> None:
    pytest.importorskip("faiss")
    from skulens.detect.count import recognise_boxes
    from skulens.models.predictor import load_model
    from skulens.search.index import IndexRecord, create_index

    det = load_detector(untrained, device="cpu")
    model = load_model(tiny_bundle.bundle, device="cpu")
    im = photo()
    dets = det.detect([im])[0]
    crops = crop_boxes(im, dets.boxes)
    index = create_index("faiss", tmp_path / "idx", model.card.embedding_dim)
    # enrol the first box's crop as a product the classifier has never heard of
    index.add([IndexRecord("shelf/0", "new-jam", "new-jam")], model.embed(crops[:1]))
    boxes = recognise_boxes(model, im, dets, 0.5, index=index, min_similarity=0.999)
    assert boxes[0].label == "new-jam" and boxes[0].confidence == pytest.approx(1.0, abs=1e-3)
    assert all(b.label is None or b.confidence >= 0.999 for b in boxes[1:])  # the rest: unknown unless as close
    assert all(b.guess == "new-jam" for b in boxes)  # the best guess is kept for review


def test_count_refuses_naming_settings_it_would_ignore(untrained, tiny_bundle, tmp_path) -> None:
    """A similarity without an index, or an index without its model, was silently ignored by the Python API."""
    pytest.importorskip("faiss")
    from skulens.deploy.batch_jobs import CountJob
    from skulens.detect.count import count_products
    from skulens.models.predictor import load_model
    from skulens.search.index import IndexRecord, create_index

    det = load_detector(untrained, device="cpu")
    model = load_model(tiny_bundle.bundle, device="cpu")
    index = create_index("faiss", tmp_path / "idx", model.card.embedding_dim)
    for kw, match in (({"model": model, "min_similarity": 0.9}, "setting of the index"),
                      ({"index": index}, "the model it was built with"),
                      ({"model": model, "index": index, "min_similarity": 1.5}, r"must be in \[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            next(iter(count_products(det, [photo()], **kw)))
    with pytest.raises(ValueError, match="setting of the index"):
        CountJob(str(untrained), model=str(tiny_bundle.bundle), min_similarity=0.9)
    [(res, _)] = count_products(det, [photo()], model=model, min_score=0.0)  # the classifier names the boxes
    assert res.total == len(res.boxes) > 0

    import skulens

    # the public count() takes the CLI's --index and --min-similarity too (it had neither)
    im = photo()
    dets = det.detect([im], min_score=0.0)[0]
    index.add([IndexRecord("shelf/0", "new-jam", "new-jam")], model.embed(crop_boxes(im, dets.boxes)[:1]))
    index.save()
    [named] = skulens.count([im], det, model=model, index=tmp_path / "idx", min_similarity=0.999, min_score=0.0)
    with pytest.raises(ValueError, match="with an index the nearest product names them"):  # it was read by nothing
        skulens.count([im], det, model=model, index=tmp_path / "idx", min_confidence=0.9)
    assert named.boxes[0].label == "new-jam" and named.counts.get("new-jam", 0) >= 1


def test_a_part_inside_a_bigger_better_box_is_suppressed() -> None:
    from skulens.detect.tiling import suppress_contained

    boxes = np.array([[0, 0, 100, 200], [30, 0, 70, 30], [200, 0, 240, 40], [0, 0, 90, 190]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # the cap inside the bottle goes; a same-size near-duplicate inside (ratio < 1.5) is NMS's job, not this
    assert suppress_contained(boxes, scores).tolist() == [0, 2, 3]
    assert suppress_contained(boxes, scores, ios=0).tolist() == [0, 1, 2, 3]
    # a better-scored small box inside a worse big one is kept (the big one is not "a part")
    assert suppress_contained(boxes[[1, 0]], np.array([0.9, 0.5], np.float32)).tolist() == [0, 1]


def test_bench_rows_for_detection(untrained, tmp_path, monkeypatch) -> None:
    import torch

    import skulens.detect.count
    from skulens.deploy.bench import bench_detection, detection_markdown, one_megapixel_jpegs

    src = tmp_path / "p.png"
    photo(300, 200).save(src)
    photos = one_megapixel_jpegs([str(src)], 2, size=(400, 300))
    assert len(photos) == 1 and photos[0][:3] == b"\xff\xd8\xff"
    rows = bench_detection(untrained, photos, repeats=1)
    assert rows[0].name == "detector (PyTorch)" and rows[0].photos_per_s > 0
    assert rows[0].boxes_per_photo == 0.0  # untrained: no box reaches the default threshold of 0.5
    assert abs(rows[0].megapixels - 0.12) < 1e-6
    table = detection_markdown(rows)
    assert table.startswith("| detection variant") and "detector (PyTorch)" in table
    # `bench --threads N` reaches the detection rows too (they ran on the libraries' default threads)
    seen, real, before = [], skulens.detect.count.count_products, torch.get_num_threads()

    def counting(*args, **kw):
        seen.append(torch.get_num_threads())
        return real(*args, **kw)

    monkeypatch.setattr(skulens.detect.count, "count_products", counting)
    bench_detection(untrained, photos, repeats=1, threads=1)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before


def _dense_merge(boxes, scores, passes, min_score):
    """merge_boxes as it was, with dense N x N matrices (12 GB for the 20k candidates of a tiled phone photo)."""
    import torch
    from torchvision.ops import nms

    from skulens.detect.tiling import box_intersection

    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    keep = nms(b, s, 0.5)
    kb, kp, ks = b[keep], torch.from_numpy(passes)[keep], s[keep]
    area = (kb[:, 2] - kb[:, 0]).clamp(min=0) * (kb[:, 3] - kb[:, 1]).clamp(min=0)
    inside = (box_intersection(kb, kb) / area[:, None].clamp(min=1e-6)) > 0.8
    inside &= kp[:, None] != kp[None, :]
    inside &= ks[None, :] >= ks[:, None].clamp(max=min_score)
    alive = torch.ones(len(keep), dtype=torch.bool)
    for j in torch.argsort(area, descending=True, stable=True).tolist():
        if alive[j]:
            part = inside[:, j].clone()
            part[j] = False
            alive &= ~part
    return keep[alive].numpy()


def _dense_suppress(boxes, scores):
    import torch

    from skulens.detect.tiling import box_intersection

    order = np.argsort(-scores, kind="stable")
    b = torch.from_numpy(boxes[order])
    area = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).numpy()
    inside = (box_intersection(b, b).numpy() / np.maximum(area[None, :], 1e-6)) > 0.85
    inside &= area[:, None] >= 1.5 * area[None, :]
    alive = np.ones(len(order), bool)
    for i in range(len(order)):
        if alive[i]:
            alive[i + 1:] &= ~inside[i, i + 1:]
    return order[alive]


def test_the_sparse_box_merges_keep_what_the_dense_ones_kept() -> None:
    """The merges of a tiled photo's boxes are computed a block of rows at a time and kept sparse; on random
    boxes (zero-sized ones too, several passes, three count thresholds) they keep exactly what the dense
    matrices kept, in the same order."""
    from skulens.detect.tiling import merge_boxes, suppress_contained

    rng = np.random.default_rng(0)
    for trial in range(150):
        n = 1300 if trial == 0 else int(rng.integers(0, 150))  # one set past a block of 1024 rows
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(0, 80, (n, 2)) * (rng.random((n, 1)) > 0.05)
        boxes = np.c_[xy, xy + wh].astype(np.float32)
        scores, passes = rng.random(n).astype(np.float32), rng.integers(0, 4, n)
        min_score = float(rng.choice([0.0, 0.3, 0.6]))
        got = merge_boxes(boxes, scores, passes, min_score=min_score)
        assert np.array_equal(got, _dense_merge(boxes, scores, passes, min_score)), trial
        assert np.array_equal(suppress_contained(boxes, scores), _dense_suppress(boxes, scores)), trial


class _FaintWhole(_Blobs):
    """The whole-photo pass finds one faint box around everything; the tiles find each square, sure of it."""

    def __init__(self, config: DetectorConfig):
        super().__init__(config)
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls += 1
        if self.calls == 1:
            h, w = images[0].shape[1:]
            return [{"boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]), "scores": torch.tensor([0.3])}]
        return super().forward(images)


def test_a_low_min_score_does_not_let_a_faint_whole_box_delete_sure_products() -> None:
    """At --min-score 0.2 a 0.3 whole-photo box 'counted' and took the 0.9 boxes the tiles found inside it as
    its parts: lowering the threshold removed the products the detector was sure of."""
    config = DetectorConfig(min_size=128, max_size=256)
    photo_ = np.full((600, 800, 3), 255, np.uint8)
    squares = [(x, y) for x in (100, 400, 650) for y in (100, 400)]
    for x, y in squares:
        photo_[y:y + 60, x:x + 60] = 40
    truth = torch.tensor([[x, y, x + 60, y + 60] for x, y in squares], dtype=torch.float32)
    for min_score in (config.min_score, 0.2):
        det = Detector(_FaintWhole(config), DetectorCard(config, {}), device="cpu")
        d = det.detect([Image.fromarray(photo_)], tiles="on", min_score=min_score)[0].above(min_score)
        assert (box_iou(truth, torch.from_numpy(d.boxes)).max(1).values > 0.7).all(), min_score
