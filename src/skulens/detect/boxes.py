"""The box types every detection stage shares: annotated photos in, detections out.

Boxes are always absolute pixel corners `(x1, y1, x2, y2)` in the photo's own (EXIF-rotated) pixel
grid, as float32 arrays of shape (N, 4); the importers convert VOC, COCO and YOLO to this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PRODUCT", "AnnotatedImage", "Detections", "as_boxes"]

PRODUCT = "product"  # the detector's one class: a shop adds SKUs without retraining detection


def as_boxes(boxes: object) -> np.ndarray:
    """`boxes` as a float32 (N, 4) array (an empty list becomes shape (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


@dataclass(frozen=True)
class AnnotatedImage:
    """One photo with its ground-truth boxes (from an annotation file or made by construction).

    labels: one per box, the annotation's own class name (the detector itself is class-agnostic;
    the names are kept for per-product count accuracy).
    """

    path: Path | None
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", as_boxes(self.boxes))
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{self.path}: {len(self.boxes)} boxes but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True)
class Detections:
    """What the detector found in one photo: boxes (N, 4) in photo pixels and their scores, best first.

    capped: the cap (`max_detections`) left boxes out on this photo, so there may be more products than
    boxes; raise the cap rather than trust the count. cap_score: the best score of a box the cap left out (over
    the passes of a tiled photo), when known.
    """

    boxes: np.ndarray
    scores: np.ndarray
    width: int
    height: int
    capped: bool = False
    cap_score: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", as_boxes(self.boxes))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32).reshape(-1))
        if len(self.scores) != len(self.boxes):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.boxes)

    def above(self, threshold: float) -> Detections:
        """The boxes scoring at least `threshold`. Still `capped` only when the cap may have cut such boxes:
        it keeps the best-scoring ones, so when every box it dropped scored below `threshold` (`cap_score`
        under it), nothing that would count was lost."""
        keep = self.scores >= threshold
        cut = self.capped and (self.cap_score is None or self.cap_score >= threshold)
        return Detections(self.boxes[keep], self.scores[keep], self.width, self.height, cut,
                          self.cap_score if cut else None)
