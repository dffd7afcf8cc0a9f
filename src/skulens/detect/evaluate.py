"""How well a class-agnostic product detector (and an optional per-box recogniser) counts a shelf.

`evaluate_detections` is pure: annotated photos and detections in, a `DetectionReport` out. AP comes from
torchmetrics' MeanAveragePrecision (pycocotools backend, one class, every detection so the ranking is whole);
recall, false boxes and counts use only detections at or above the score threshold, matched greedily to the
ground truth at IoU 0.5, best score first (the COCO rule). `evaluate_detector` runs a detector and a
recogniser over the photos and, given `out_dir`, writes report.json, report.md and grid.png there; a photo
that cannot be decoded is left out of the scores and listed in the report (`skipped`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_area, box_iou

from skulens.data.decode import ImageDecodeError, decode_image
from skulens.detect.boxes import AnnotatedImage, Detections
from skulens.detect.detector import MAX_PIXELS
from skulens.detect.draw import PREDICTED, UNKNOWN, contact_sheet, draw_boxes
from skulens.detect.tiling import box_intersection
from skulens.evaluate import markdown

if TYPE_CHECKING:
    from skulens.detect.detector import Detector
    from skulens.models.predictor import Model

__all__ = [
    "DetectFn",
    "DetectionReport",
    "RecogniseFn",
    "average_precision",
    "evaluate_counting",
    "evaluate_detections",
    "evaluate_detector",
    "false_kinds",
    "format_markdown",
    "match",
    "write_detection_report",
]

DetectFn = Callable[[list[AnnotatedImage]], Sequence[Detections]]
RecogniseFn = Callable[[AnnotatedImage, Detections], Sequence[str | None]]

MATCH_IOU = 0.5
# A false box is: a second box on a product already counted, one box over several products, a piece of one
# product, a box that overlaps a product poorly, or a box on no product at all.
FALSE_KINDS = ("duplicate", "merge", "part", "misplaced", "background")
_WORST_ROWS = 10
_TAGGED_BOXES = 25  # beyond this many boxes in a grid cell, label tags hide the photo: boxes only
_CELL = 320


@dataclass(frozen=True)
class DetectionReport:
    """Detection and counting quality over a set of photos. Fractions are in [0, 1]; NaN when undefined
    (AP and recall without any ground-truth box). `to_dict()` is the JSON form (NaN becomes null)."""

    images: int
    boxes: int  # ground-truth boxes
    ap50: float  # class-agnostic AP at IoU 0.5
    ap: float  # class-agnostic AP averaged over IoU 0.50:0.95
    recall50: float  # share of ground-truth boxes matched at IoU 0.5 by detections above the threshold
    false_per_image: float  # detections above the threshold matching no ground truth, per photo
    count_mae: float  # mean |detections above the threshold - ground-truth boxes| per photo
    count_exact: float  # share of photos counted exactly
    per_product: dict[str, Any] | None  # with a recogniser: per-label count accuracy (see _per_product)
    per_image: list[dict[str, Any]]
    score_threshold: float
    # Where the count errors come from: false boxes by kind (FALSE_KINDS) and missed boxes per true label.
    errors: dict[str, Any] = field(default_factory=dict)
    # Photos left out because they could not be decoded: {"file", "error"} each (`evaluate_detector`).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # Photos whose detections reached the box cap (`max_detections`): their counts may be short.
    capped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def evaluate_detections(
    images: Sequence[AnnotatedImage],
    detections: Sequence[Detections],
    *,
    score_threshold: float = 0.5,
    recognised: Sequence[Sequence[str | None]] | None = None,
    label_map: Callable[[str], str] | None = None,
) -> DetectionReport:
    """Score `detections` (one per photo, all of them, low scores included) against `images`' boxes.

    recognised: per photo, a label (None = unknown) for each detection, or only for those at or above
    `score_threshold` (in order); product counts use the labels of those above the threshold.
    label_map: maps a ground-truth annotation name to the recogniser's label name (default: the same name).
    """
    if not images:
        raise ValueError("no photos to evaluate")
    if len(detections) != len(images):
        raise ValueError(f"{len(images)} photos but {len(detections)} detections")
    if recognised is not None and len(recognised) != len(images):
        raise ValueError(f"{len(images)} photos but {len(recognised)} recognised label lists")
    for img, det in zip(images, detections):
        if (det.width, det.height) != (img.width, img.height):
            raise ValueError(f"{img.path}: detections are in a {det.width}x{det.height} pixel grid but the "
                             f"photo is {img.width}x{img.height}")
    rows = []
    for i, (img, det) in enumerate(zip(images, detections)):
        kept = det.above(score_threshold)
        labels = None if recognised is None else _kept_labels(det, recognised[i], score_threshold)
        rows.append({**_photo_row(img, kept, labels, label_map or _identity), "capped": bool(kept.capped)})
    ap50, ap = average_precision(images, detections)
    n_gt = sum(r["truth"] for r in rows)
    kinds: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    truth_labels: Counter[str] = Counter()
    for img, r in zip(images, rows, strict=True):
        kinds.update(r["false_kinds"])
        missed.update(r["missed_labels"])
        truth_labels.update(img.labels)
    errors = [abs(r["predicted"] - r["truth"]) for r in rows]
    return DetectionReport(
        images=len(images),
        boxes=n_gt,
        ap50=ap50,
        ap=ap,
        recall50=sum(r["matched"] for r in rows) / n_gt if n_gt else math.nan,
        false_per_image=sum(r["false"] for r in rows) / len(rows),
        count_mae=float(np.mean(errors)),
        count_exact=float(np.mean([e == 0 for e in errors])),
        per_product=None if recognised is None else _per_product(rows),
        per_image=rows,
        score_threshold=float(score_threshold),
        errors={"false": {k: kinds.get(k, 0) for k in FALSE_KINDS},
                "missed": {label: {"missed": missed.get(label, 0), "boxes": n}
                           for label, n in sorted(truth_labels.items())}},
        capped=sum(r["capped"] for r in rows),
    )


def _kept_labels(det: Detections, labels: Sequence[str | None], score_threshold: float) -> list[str | None]:
    """The labels of `det`'s detections at or above the threshold, from labels for all or for only those."""
    keep = det.scores >= score_threshold
    if len(labels) == len(det):
        return [label for label, k in zip(labels, keep) if k]
    if len(labels) == int(keep.sum()):
        return list(labels)
    raise ValueError(f"{len(labels)} recognised labels for {len(det)} detections "
                     f"({int(keep.sum())} at or above {score_threshold})")


def match(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou: float = MATCH_IOU) -> np.ndarray:
    """For each detection, the index of the ground-truth box it matches, or -1.

    Greedy, best score first: each detection takes the still-free ground-truth box it overlaps most, if that
    overlap is at least `iou`; a second box on a taken product is a false positive (COCO's rule).
    """
    out = np.full(len(boxes), -1, dtype=np.int64)
    if len(truth) == 0 or len(boxes) == 0:
        return out
    # nan_to_num: two zero-area boxes give 0/0.
    ious = np.nan_to_num(box_iou(torch.from_numpy(boxes), torch.from_numpy(truth)).numpy())
    free = np.ones(len(truth), dtype=bool)
    for d in np.argsort(-scores, kind="stable"):
        overlap = np.where(free, ious[d], -1.0)
        g = int(overlap.argmax())
        if overlap[g] >= iou:
            out[d] = g
            free[g] = False
    return out


def average_precision(images: Sequence[AnnotatedImage], detections: Sequence[Detections]) -> tuple[float, float]:
    """Class-agnostic (AP@0.5, AP@[.5:.95]) by torchmetrics + pycocotools; NaN without ground truth."""
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as e:
        raise ImportError("detection AP needs torchmetrics and pycocotools: pip install 'skulens[detect]'") from e
    if sum(len(img) for img in images) == 0:
        return math.nan, math.nan
    # pycocotools ranks only the top maxDets[-1] detections of each photo; torchmetrics' default [1, 10, 100]
    # would cut a 300-product shelf short and cap its AP far below 1, so the last threshold covers every
    # detection of the densest photo (at least 1000). 100 stays in the list: see the `map` note below.
    most = max(1000, max(len(d) for d in detections))
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", max_detection_thresholds=[1, 100, most],
                                  extended_summary=True, backend="pycocotools")
    metric.update(
        [{"boxes": torch.from_numpy(d.boxes), "scores": torch.from_numpy(d.scores),
          "labels": _one_class(len(d))} for d in detections],
        [{"boxes": torch.from_numpy(img.boxes), "labels": _one_class(len(img))} for img in images],
    )
    result = metric.compute()
    if "precision" not in result:  # torchmetrics skips COCOeval when no photo has any box at all
        return 0.0, 0.0
    # `map_50` is taken at maxDets[-1], but pycocotools' summarize() computes `map` (AP@[.5:.95]) at a
    # hard-coded maxDets=100 whatever the thresholds (cocoapi #558, torchmetrics #1153, #2560). So AP@[.5:.95]
    # is read from COCOeval's own precision table the way summarize() does, at the last maxDets.
    precision = result["precision"][:, :, :, 0, -1]  # (IoU, recall thresholds, classes), area "all"
    valid = precision[precision > -1]
    ap = float(valid.mean()) if valid.numel() else 0.0
    return max(0.0, float(result["map_50"])), ap


def _one_class(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64)  # class 0 for every box: the detector is class-agnostic


def evaluate_counting(
    detector: Detector,
    images: Sequence[AnnotatedImage],
    *,
    model: Model | None = None,
    min_score: float | None = None,
    min_confidence: float = 0.5,
    tiles: str = "auto",
    label_map: Callable[[str], str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> DetectionReport:
    """`evaluate_detector` for a loaded detector, with `model` naming the boxes as `count_products` does
    (min_score None: the detector's own threshold); what `skulens detect evaluate` runs."""
    from .count import recognise_boxes

    threshold = detector.config.min_score if min_score is None else min_score

    def detect(batch: list[AnnotatedImage]) -> list[Detections]:
        return detector.detect([im.path for im in batch], tiles=tiles, min_score=threshold)

    def recognise(image: AnnotatedImage, dets: Detections) -> list[str | None]:
        photo = decode_image(image.path, max_pixels=MAX_PIXELS)
        return [b.label for b in recognise_boxes(model, photo, dets, min_confidence)]

    return evaluate_detector(detect, images, recognise=None if model is None else recognise,
                             score_threshold=threshold, label_map=label_map, out_dir=out_dir, progress=progress)


def evaluate_detector(
    detect: DetectFn,
    images: Sequence[AnnotatedImage],
    *,
    recognise: RecogniseFn | None = None,
    score_threshold: float = 0.5,
    label_map: Callable[[str], str] | None = None,
    out_dir: str | Path | None = None,
    grid: int = 16,
    progress: bool = True,
    batch_size: int = 8,
) -> DetectionReport:
    """Run `detect` (and `recognise`, on the detections at or above the threshold) over `images`, score them
    with `evaluate_detections`, and with `out_dir` write report.json, report.md and grid.png there.

    detect: takes a list of photos (it opens `img.path` itself), returns one `Detections` per photo; it is
    called `batch_size` photos at a time. A photo it cannot decode (ImageDecodeError) is left out of the
    scores and listed in the report's `skipped`, so one bad file among many costs its row, not the run;
    ImageDecodeError when no photo can be decoded.
    """
    from tqdm.auto import tqdm

    images = list(images)
    read: list[AnnotatedImage] = []
    detections: list[Detections] = []
    skipped: list[dict[str, Any]] = []
    with tqdm(total=len(images), desc="detect", unit="photo", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            try:
                found = list(detect(chunk))
                done = chunk
            except ImageDecodeError:  # which photo(s): one at a time
                found, done = [], []
                for img in chunk:
                    try:
                        found += list(detect([img]))
                        done.append(img)
                    except ImageDecodeError as e:
                        skipped.append({"file": None if img.path is None else str(img.path), "error": e.reason})
            if len(found) != len(done):
                raise ValueError(f"detect returned {len(found)} results for {len(done)} photos")
            read += done
            detections += found
            bar.update(len(chunk))
    if not read:
        first, others = skipped[0], len(skipped) - 1
        raise ImageDecodeError(str(first["file"]), first["error"] + (
            f" (and none of the other {others} photos could be decoded either)" if others else ""))
    images = read
    recognised = None
    if recognise is not None:
        pairs = tqdm(list(zip(images, detections)), desc="recognise", unit="photo", disable=not progress)
        recognised = [list(recognise(img, det.above(score_threshold))) for img, det in pairs]
    report = evaluate_detections(images, detections, score_threshold=score_threshold, recognised=recognised,
                                 label_map=label_map)
    if skipped:
        report = replace(report, skipped=skipped)
    if out_dir is not None:
        write_detection_report(report, images, detections, out_dir, recognised=recognised, grid=grid)
    return report


# --------------------------------------------------------------------------- per photo and per product


def _identity(label: str) -> str:
    return label


def _photo_row(
    img: AnnotatedImage, kept: Detections, labels: list[str | None] | None, label_map: Callable[[str], str]
) -> dict[str, Any]:
    matched_to = match(img.boxes, kept.boxes, kept.scores)
    n_matched = int((matched_to >= 0).sum())
    hit = np.zeros(len(img), bool)
    hit[matched_to[matched_to >= 0]] = True
    row: dict[str, Any] = {
        "file": None if img.path is None else str(img.path),
        "truth": len(img),
        "predicted": len(kept),
        "error": len(kept) - len(img),  # signed: positive means over-counted
        "matched": n_matched,
        "false": len(kept) - n_matched,
        "missed": len(img) - n_matched,
        "false_kinds": dict(Counter(false_kinds(img.boxes, kept.boxes[matched_to < 0]))),
        "missed_labels": dict(Counter(label for label, h in zip(img.labels, hit, strict=True) if not h)),
    }
    if labels is not None:
        truth = [label_map(label) for label in img.labels]
        row["truth_labels"] = dict(Counter(truth))
        row["predicted_labels"] = dict(Counter(label for label in labels if label is not None))
        row["unknown"] = sum(label is None for label in labels)
        pairs = [(labels[d], truth[g]) for d, g in enumerate(matched_to) if g >= 0]
        row["boxes_labelled_right"] = sum(p == t for p, t in pairs)
    return row


def false_kinds(truth: np.ndarray, boxes: np.ndarray) -> list[str]:
    """Why each unmatched box is false (one of FALSE_KINDS), from its overlaps with the true boxes."""
    if not len(boxes) or not len(truth):
        return ["background"] * len(boxes)
    b = torch.from_numpy(np.ascontiguousarray(boxes, np.float32).reshape(-1, 4))
    t = torch.from_numpy(np.ascontiguousarray(truth, np.float32).reshape(-1, 4))
    inter = box_intersection(b, t).numpy()  # (boxes, truth)
    area = box_area(b).clamp(min=1e-6).numpy()[:, None]
    areas = box_area(t).clamp(min=1e-6).numpy()[None, :]
    iou = inter / (area + areas - inter)
    kinds = []
    for i in range(len(b)):
        if iou[i].max() >= MATCH_IOU:
            kinds.append("duplicate")  # it overlaps a product well, but that product was taken by a better box
        elif (inter[i] / areas[0] >= 0.8).sum() >= 2:
            kinds.append("merge")
        elif (inter[i] / area[i]).max() >= 0.8:
            kinds.append("part")
        else:
            kinds.append("misplaced" if iou[i].max() >= 0.1 else "background")
    return kinds


def _per_product(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Count accuracy per ground-truth label: over the photos showing that product, the share where the
    recognised count of it equals the true count. `accuracy` pools every (photo, product) pair."""
    products: dict[str, dict[str, Any]] = {}
    spurious = 0
    for row in rows:
        truth, predicted = row["truth_labels"], row["predicted_labels"]
        for label, n in truth.items():
            p = products.setdefault(label, {"photos": 0, "exact": 0, "truth": 0, "predicted": 0})
            p["photos"] += 1
            p["exact"] += int(predicted.get(label, 0) == n)
            p["truth"] += n
            p["predicted"] += predicted.get(label, 0)
        spurious += sum(1 for label in predicted if label not in truth)
    for p in products.values():
        p["accuracy"] = p["exact"] / p["photos"]
    pairs = sum(p["photos"] for p in products.values())
    matched = sum(r["matched"] for r in rows)
    return {
        "accuracy": sum(p["exact"] for p in products.values()) / pairs if pairs else math.nan,
        "pairs": pairs,
        # Of the detections that matched a true box, the share whose recognised label is that box's label.
        "box_accuracy": sum(r["boxes_labelled_right"] for r in rows) / matched if matched else math.nan,
        "unknown_boxes": sum(r["unknown"] for r in rows),
        "spurious_pairs": spurious,  # (photo, label) pairs recognised in a photo that has no such product
        "products": dict(sorted(products.items())),
    }


# --------------------------------------------------------------------------- files


def write_detection_report(
    report: DetectionReport,
    images: Sequence[AnnotatedImage],
    detections: Sequence[Detections],
    out_dir: str | Path,
    *,
    recognised: Sequence[Sequence[str | None]] | None = None,
    grid: int = 16,
) -> Path:
    """Write report.json, report.md and (with `grid` > 0 photos) grid.png into `out_dir`; return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n",
                                     encoding="utf-8")
    has_grid = grid > 0
    if has_grid:
        worst = _worst_first(report)[:grid]
        cells = [_grid_cell(images[i], detections[i], report.score_threshold,
                            None if recognised is None else recognised[i]) for i in worst]
        titles = [_cell_title(images[i], report.per_image[i]) for i in worst]
        contact_sheet(cells, columns=4, cell=_CELL, titles=titles).save(out / "grid.png")
    (out / "report.md").write_text(format_markdown(report, grid="grid.png" if has_grid else None),
                                   encoding="utf-8")
    return out


def format_markdown(report: DetectionReport, *, grid: str | None = None) -> str:
    """The human summary: headline table, per-product counts, worst photos, the grid picture."""
    thr = f"{report.score_threshold:.2f}"
    lines = ["# Detection report", "",
             f"{report.images} photos, {report.boxes} ground-truth boxes, score threshold {thr}.", ""]
    lines += markdown.table(("metric", "value"), [
        ("AP@0.5", _pct(report.ap50)),
        ("AP@[.5:.95]", _pct(report.ap)),
        (f"recall@0.5 (score >= {thr})", _pct(report.recall50)),
        ("false boxes per photo", f"{report.false_per_image:.2f}"),
        ("count MAE (boxes per photo)", f"{report.count_mae:.2f}"),
        ("photos counted exactly", _pct(report.count_exact)),
        *([("photos at the box cap (counts may be short)", report.capped)] if report.capped else []),
    ])
    if report.per_product is not None:
        pp = report.per_product
        summary = (f"Exact per-product count in {_pct(pp['accuracy'])} of {pp['pairs']} (photo, product) pairs; "
                   f"{_pct(pp['box_accuracy'])} of matched boxes labelled right; {pp['unknown_boxes']} boxes "
                   f"unknown; {pp['spurious_pairs']} products recognised in photos without them.")
        lines += ["", "## Product counts", "", summary, ""]
        lines += markdown.table(("product", "photos", "exact count", "true boxes", "predicted boxes"), [
            (label, p["photos"], _pct(p["accuracy"]), p["truth"], p["predicted"])
            for label, p in sorted(pp["products"].items(), key=lambda kv: (kv[1]["accuracy"], kv[0]))
        ])
    if report.errors:
        false, missed = report.errors["false"], report.errors["missed"]
        lines += ["", "## Where the count errors come from", "",
                  "False boxes: " + ", ".join(f"{n} {kind}" for kind, n in false.items()) + " (duplicate: a "
                  "second box on one product; merge: one box over several; part: a piece of one product; "
                  "misplaced: a poor overlap; background: on no product).", ""]
        worst = sorted(((v["missed"] / v["boxes"], label, v) for label, v in missed.items() if v["missed"]),
                       reverse=True)[:_WORST_ROWS]
        if worst:
            lines += markdown.table(("true label", "missed", "boxes", "share missed"),
                            [(label, v["missed"], v["boxes"], _pct(share)) for share, label, v in worst])
        else:
            lines.append("No true box was missed.")
    if report.skipped:
        lines += ["", f"## Photos left out ({len(report.skipped)}: could not be decoded)", ""]
        lines += markdown.table(("photo", "error"), [(_photo_name(r, i), r["error"]) for i, r in enumerate(report.skipped)])
    lines += ["", "## Worst photos by count error", ""]
    lines += markdown.table(("photo", "true", "predicted", "error", "matched", "false", "missed"), [
        (_photo_name(r, i), r["truth"], r["predicted"], f"{r['error']:+d}", r["matched"], r["false"], r["missed"])
        for i, r in ((i, report.per_image[i]) for i in _worst_first(report)[:_WORST_ROWS])
    ])
    if grid is not None:
        lines += ["", f"![predicted (green, orange = unknown) against truth (dashed)]({grid})"]
    return "\n".join(lines) + "\n"


def _worst_first(report: DetectionReport) -> list[int]:
    rows = report.per_image
    return sorted(range(len(rows)), key=lambda i: (-abs(rows[i]["error"]), -(rows[i]["false"] + rows[i]["missed"])))


def _grid_cell(img: AnnotatedImage, det: Detections, score_threshold: float,
               labels: Sequence[str | None] | None) -> Image.Image:
    if img.path is None:  # a photo made by construction: its boxes on a blank canvas
        photo = Image.new("RGB", (img.width, img.height), (128, 128, 128))
    else:
        # reduce_to: drawn at about the cell's size, so lines and tags keep their size in the sheet.
        photo = decode_image(img.path, reduce_to=_CELL, max_pixels=MAX_PIXELS)
    scale = np.array([photo.width / img.width, photo.height / img.height] * 2, dtype=np.float32)
    kept = det.above(score_threshold)
    tagged = len(kept) <= _TAGGED_BOXES
    names = None if labels is None else _kept_labels(det, labels, score_threshold)
    # Unknown boxes stay orange even when there are too many boxes for tags.
    colors = None if names is None else [UNKNOWN if name is None else PREDICTED for name in names]
    return draw_boxes(photo, kept.boxes * scale, truth=img.boxes * scale, colors=colors,
                      labels=names if tagged else None, scores=kept.scores if tagged else None)


def _cell_title(img: AnnotatedImage, row: dict[str, Any]) -> str:
    name = "photo" if img.path is None else Path(img.path).name
    return f"{name}  true {row['truth']} / found {row['predicted']}"


def _photo_name(row: dict[str, Any], index: int) -> str:
    return f"#{index}" if row["file"] is None else Path(row["file"]).name


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
