"""Detection evaluation and drawing: hand-made boxes, tiny photos, no model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.detect.boxes import AnnotatedImage, Detections
from skulens.detect.draw import contact_sheet, draw_boxes
from skulens.detect.evaluate import evaluate_detections, evaluate_detector, format_markdown, match

W, H = 200, 100
TWO = [[10, 10, 50, 60], [100, 20, 150, 90]]


def photo(boxes: list[list[float]], labels: tuple[str, ...] | None = None, path: Path | None = None) -> AnnotatedImage:
    return AnnotatedImage(path, W, H, np.array(boxes, np.float32).reshape(-1, 4),
                          labels if labels is not None else ("product",) * len(boxes))


def found(boxes: list[list[float]], scores: list[float] | None = None) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4),
                      np.array(scores if scores is not None else [0.9] * len(boxes), np.float32), W, H)


def test_perfect_detections_score_one() -> None:
    r = evaluate_detections([photo(TWO)], [found(TWO)])
    assert r.ap50 == pytest.approx(1.0) and r.ap == pytest.approx(1.0)
    assert r.recall50 == 1.0 and r.count_exact == 1.0 and r.count_mae == 0.0 and r.false_per_image == 0.0
    assert (r.images, r.boxes, r.per_product) == (1, 2, None)
    assert r.per_image[0] | {"file": None} == {"file": None, "truth": 2, "predicted": 2, "error": 0, "matched": 2,
                                               "false": 0, "missed": 0, "false_kinds": {}, "missed_labels": {},
                                               "capped": False}
    assert r.errors["false"] == dict.fromkeys(("duplicate", "merge", "part", "misplaced", "background"), 0)
    assert "No true box was missed." in format_markdown(r)


def test_one_missed_box() -> None:
    r = evaluate_detections([photo(TWO)], [found(TWO[:1])])
    assert r.recall50 == 0.5 and r.count_mae == 1.0 and r.count_exact == 0.0
    assert r.per_image[0]["missed"] == 1 and r.per_image[0]["error"] == -1
    assert r.ap50 == pytest.approx(0.5, abs=0.01)


def test_a_false_box_counts_only_above_the_threshold() -> None:
    stray = [160, 5, 190, 30]
    below = evaluate_detections([photo(TWO)], [found([*TWO, stray], [0.9, 0.8, 0.3])], score_threshold=0.5)
    assert below.false_per_image == 0.0 and below.count_exact == 1.0 and below.recall50 == 1.0
    above = evaluate_detections([photo(TWO)], [found([*TWO, stray], [0.9, 0.8, 0.6])], score_threshold=0.5)
    assert above.false_per_image == 1.0 and above.count_mae == 1.0 and above.per_image[0]["false"] == 1
    # The stray box is ranked last either way, so AP is untouched by it.
    assert below.ap50 == pytest.approx(1.0) and above.ap50 == pytest.approx(1.0)


def test_a_duplicate_box_is_a_false_positive() -> None:
    r = evaluate_detections([photo(TWO)], [found([TWO[0], TWO[0], TWO[1]], [0.9, 0.8, 0.7])])
    assert r.per_image[0]["matched"] == 2 and r.per_image[0]["false"] == 1 and r.recall50 == 1.0
    assert 0.5 < r.ap50 < 1.0  # AP agrees: the duplicate, ranked between the two hits, costs precision


def test_false_boxes_are_sorted_by_kind_and_misses_by_true_label() -> None:
    """Each false box says why it is false; each missed box is tallied under its true label."""
    truth = photo([[10, 10, 50, 60], [60, 10, 100, 60], [120, 20, 160, 90]], ("milk", "milk", "lemon"))
    boxes = [[10, 10, 50, 60],      # milk 1: a hit
             [11, 11, 50, 60],      # the same milk again: duplicate
             [8, 8, 102, 62],       # over both milks: merge
             [120, 20, 140, 50],    # a corner of the lemon, which nothing else found: part
             [140, 50, 180, 98],    # partly over the lemon: misplaced
             [170, 2, 198, 12]]     # on nothing: background
    r = evaluate_detections([truth], [found(boxes, [0.9, 0.85, 0.8, 0.7, 0.6, 0.55])])
    assert r.errors["false"] == {"duplicate": 1, "merge": 1, "part": 1, "misplaced": 1, "background": 1}
    assert r.errors["missed"] == {"lemon": {"missed": 1, "boxes": 1}, "milk": {"missed": 1, "boxes": 2}}
    assert r.per_image[0]["missed_labels"] == {"milk": 1, "lemon": 1} and r.per_image[0]["false"] == 5
    md = format_markdown(r)
    assert "1 duplicate, 1 merge, 1 part, 1 misplaced, 1 background" in md and "| lemon | 1 | 1 | 100.0% |" in md


def test_greedy_matching_goes_best_score_first() -> None:
    truth = np.array([[0, 0, 10, 10]], np.float32)
    boxes = np.array([[0, 0, 10, 9], [0, 0, 10, 10]], np.float32)
    assert match(truth, boxes, np.array([0.9, 0.5], np.float32)).tolist() == [0, -1]
    assert match(truth, boxes, np.array([0.5, 0.9], np.float32)).tolist() == [-1, 0]
    assert match(np.zeros((0, 4), np.float32), boxes, np.ones(2, np.float32)).tolist() == [-1, -1]


def test_a_loose_box_scores_full_ap50_but_less_over_iou_thresholds() -> None:
    r = evaluate_detections([photo([[0, 0, 100, 100]])], [found([[0, 0, 100, 60]])])  # IoU 0.6
    assert r.ap50 == pytest.approx(1.0)
    assert 0.0 < r.ap < 1.0
    assert r.recall50 == 1.0


def test_an_empty_photo_found_empty_is_exact() -> None:
    r = evaluate_detections([photo([]), photo(TWO)], [found([]), found(TWO)])
    assert r.count_exact == 1.0 and r.count_mae == 0.0 and r.false_per_image == 0.0
    assert r.ap50 == pytest.approx(1.0)
    only_empty = evaluate_detections([photo([])], [found([])])
    assert only_empty.count_exact == 1.0 and math.isnan(only_empty.ap50) and math.isnan(only_empty.recall50)
    assert only_empty.to_dict()["ap50"] is None  # NaN is not JSON


def test_no_detections_at_all_score_zero() -> None:
    r = evaluate_detections([photo(TWO)], [found([])])
    assert r.ap50 == 0.0 and r.ap == 0.0 and r.recall50 == 0.0 and r.count_mae == 2.0


def test_a_dense_shelf_of_400_boxes_still_scores_one() -> None:
    # torchmetrics' default keeps 100 detections per photo; 400 products need the larger maximum.
    xs, ys = np.meshgrid(np.arange(20) * 10.0, np.arange(20) * 5.0)
    boxes = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + 8, ys.ravel() + 4], axis=1).astype(np.float32)
    img = AnnotatedImage(None, W, H, boxes, ("product",) * 400)
    det = Detections(boxes, np.linspace(1.0, 0.6, 400), W, H)
    r = evaluate_detections([img], [det])
    assert r.ap50 == pytest.approx(1.0) and r.ap == pytest.approx(1.0)
    assert r.recall50 == 1.0 and r.count_exact == 1.0


def test_per_product_counts_with_a_recogniser_that_swaps_one_label() -> None:
    images = [photo(TWO, ("Cola 330", "Milk 1L")), photo(TWO, ("cola 330", "cola 330"))]
    detections = [found(TWO), found(TWO)]
    # Photo 0 right; photo 1 calls one cola a milk, and there is a low-score box the labels skip.
    recognised = [["cola-330", "milk-1l"], ["cola-330", "milk-1l"]]
    r = evaluate_detections(images, detections, recognised=recognised,
                            label_map=lambda name: name.lower().replace(" ", "-"))
    pp = r.per_product
    assert pp is not None
    assert pp["products"]["cola-330"] == {"photos": 2, "exact": 1, "truth": 3, "predicted": 2, "accuracy": 0.5}
    assert pp["products"]["milk-1l"]["accuracy"] == 1.0
    assert pp["pairs"] == 3 and pp["accuracy"] == pytest.approx(2 / 3)
    assert pp["box_accuracy"] == pytest.approx(3 / 4) and pp["spurious_pairs"] == 1 and pp["unknown_boxes"] == 0
    assert r.count_exact == 1.0  # the boxes were all found; only the names were wrong


def test_recognised_labels_may_cover_all_detections_or_only_the_kept_ones() -> None:
    det = found([*TWO, [160, 5, 190, 30]], [0.9, 0.8, 0.1])
    img = photo(TWO, ("a", "b"))
    every = evaluate_detections([img], [det], recognised=[["a", None, "b"]])
    kept = evaluate_detections([img], [det], recognised=[["a", None]])
    assert every.per_product == kept.per_product
    assert every.per_product is not None and every.per_product["unknown_boxes"] == 1
    with pytest.raises(ValueError, match="recognised labels"):
        evaluate_detections([img], [det], recognised=[["a"]])


def test_mismatched_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="2 photos but 1"):
        evaluate_detections([photo(TWO), photo(TWO)], [found(TWO)])
    with pytest.raises(ValueError, match="pixel grid"):
        evaluate_detections([photo(TWO)], [Detections(np.array(TWO, np.float32), np.ones(2), W * 2, H)])


def _write_photos(tmp_path: Path, n: int) -> list[AnnotatedImage]:
    images = []
    for i in range(n):
        path = tmp_path / f"shelf_{i}.png"
        Image.new("RGB", (W, H), (90 + 10 * i, 120, 150)).save(path)
        images.append(photo(TWO, ("cola", "milk"), path))
    return images


def test_evaluate_detector_writes_the_report_files(tmp_path: Path) -> None:
    images = _write_photos(tmp_path, 5)
    calls: list[int] = []

    def detect(batch: list[AnnotatedImage]) -> list[Detections]:
        calls.append(len(batch))
        # The last photo misses a box; the others are found whole.
        return [found(TWO[:1] if img.path is not None and img.path.name == "shelf_4.png" else TWO)
                for img in batch]

    def recognise(img: AnnotatedImage, det: Detections) -> list[str | None]:
        return ["cola", None][: len(det)]

    out = tmp_path / "report"
    r = evaluate_detector(detect, images, recognise=recognise, out_dir=out, progress=False, batch_size=2)
    assert calls == [2, 2, 1]
    assert r.images == 5 and r.recall50 == pytest.approx(9 / 10) and r.count_exact == pytest.approx(4 / 5)
    data = json.loads((out / "report.json").read_text())
    assert data["ap50"] == pytest.approx(r.ap50) and data["per_image"][4]["missed"] == 1
    md = (out / "report.md").read_text()
    for heading in ("AP@0.5", "AP@[.5:.95]", "count MAE", "## Product counts", "## Worst photos", "shelf_4.png"):
        assert heading in md
    # Worst photo first in the table.
    assert md.index("shelf_4.png") < md.index("shelf_0.png")
    with Image.open(out / "grid.png") as sheet:
        assert sheet.size == (4 * 320, 2 * 320)


def test_the_grid_holds_at_most_grid_photos(tmp_path: Path) -> None:
    images = _write_photos(tmp_path, 3)
    evaluate_detector(lambda batch: [found(TWO) for _ in batch], images, out_dir=tmp_path / "r", grid=2,
                      progress=False)
    with Image.open(tmp_path / "r" / "grid.png") as sheet:
        assert sheet.size == (2 * 320, 320)
    evaluate_detector(lambda batch: [found(TWO) for _ in batch], images, out_dir=tmp_path / "r0", grid=0,
                      progress=False)
    assert not (tmp_path / "r0" / "grid.png").exists() and (tmp_path / "r0" / "report.md").exists()


def test_draw_boxes_changes_box_edges_and_nothing_far_away() -> None:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8))
    drawn = draw_boxes(base, [[40, 50, 100, 110]], labels=["cola"], scores=[0.87], truth=[[45, 55, 100, 110]])
    assert drawn.size == base.size and drawn.mode == "RGB" and drawn is not base
    a, b = np.asarray(base), np.asarray(drawn)
    assert (a[80, 40] != b[80, 40]).any() and (a[110, 70] != b[110, 70]).any()  # left and bottom edges
    assert (a[:, 120:] == b[:, 120:]).all() and (a[:30, :] == b[:30, :]).all()  # far right, far above
    assert (np.asarray(base) == a).all()  # the input is left alone


def test_unknown_labels_are_drawn_orange() -> None:
    base = Image.new("RGB", (100, 100), (0, 0, 0))
    known = np.asarray(draw_boxes(base, [[10, 30, 90, 90]], labels=["x"], width=3))
    unknown = np.asarray(draw_boxes(base, [[10, 30, 90, 90]], labels=[None], width=3))
    assert tuple(known[60, 11]) == (0, 200, 83) and tuple(unknown[60, 11]) == (255, 145, 0)


def test_contact_sheet_is_a_grid_of_cells() -> None:
    imgs = [Image.new("RGB", (50 + 10 * i, 40), (255, 0, 0)) for i in range(5)]
    sheet = contact_sheet(imgs, columns=2, cell=64, titles=[f"photo {i}" for i in range(5)])
    assert sheet.size == (128, 192)
    assert contact_sheet(imgs[:1], cell=64).size == (64, 64)
    with pytest.raises(ValueError):
        contact_sheet([])


# -- found by a mutation review (session 38): each of these went unnoticed when the rule it checks was broken --


def test_a_box_scoring_exactly_the_threshold_counts() -> None:
    d = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0.5, 0.49]), 64, 64)
    assert len(d.above(0.5)) == 1


def test_a_cap_that_cut_only_boxes_below_the_threshold_is_not_reported() -> None:
    d = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9]), 64, 64, capped=True, cap_score=0.2)
    assert not d.above(0.5).capped
    assert d.above(0.1).capped


def test_a_box_cut_by_each_inner_edge_of_a_middle_tile_is_dropped() -> None:
    from skulens.detect.tiling import drop_cut_boxes

    boxes = np.array([[101, 150, 150, 200], [150, 101, 200, 150], [250, 150, 299, 200],
                      [150, 250, 200, 299], [150, 150, 200, 200]], np.float32)  # left, top, right, bottom cut; whole
    assert drop_cut_boxes(boxes, (100, 100, 300, 300), 400, 400).tolist() == [False, False, False, False, True]


def test_a_product_counted_too_many_times_is_not_an_exact_count() -> None:
    img = AnnotatedImage(None, 100, 100, np.array([[10, 10, 40, 40]], np.float32), ("milk",))
    det = Detections(np.array([[10, 10, 40, 40], [60, 60, 90, 90]], np.float32), np.array([0.9, 0.8]), 100, 100)
    r = evaluate_detections([img], [det], recognised=[["milk", "milk"]])
    assert r.per_product["products"]["milk"]["predicted"] == 2
    assert r.per_product["products"]["milk"]["accuracy"] == 0.0
    assert r.per_product["accuracy"] == 0.0
