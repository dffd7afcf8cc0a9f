"""Large photos in overlapping tiles, and the tiles' boxes merged back into one set (pure functions).

A 4000x3000 phone photo of a shelf, shrunk whole to the detector's input, leaves 300 products a few
pixels wide. Tiling runs the detector on overlapping windows at a finer scale, then:
- drops a tile's box that touches a cut edge of the tile (a product cut in half; the overlap makes sure
  a neighbouring tile sees it whole), and
- merges the rest with NMS by IoU and by "intersection over the smaller box" (the same product seen
  whole in the global pass and in a tile, or a part-box inside a whole-box from another pass: the part
  goes, whatever its score, when the whole box counts as a product);
- on a crowded photo, where the tiles count far more products than the whole pass (at 1/4.5 scale it boxes
  groups of packed neighbours), trusts the tiles instead: the whole pass's boxes a tile holds whole leave
  the merge (`merge_tiled`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchvision.ops import nms

__all__ = ["CROWDED", "box_intersection", "drop_cut_boxes", "held_by_tiles", "merge_boxes", "merge_tiled",
           "products_look_small", "suppress_contained", "tile_grid", "window_in_photo"]

# The tiles count at least this many times the whole pass's products: it boxes groups (benchmarks/RESULTS.md,
# "crowded shelves": 1.9-2.4 on dense shelves, 1.5-1.7 on dense heaps, 1.0-1.3 on photos of 60-200 products
# that are not packed).
CROWDED = 1.5


def tile_grid(width: int, height: int, tile: int, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Windows (x0, y0, x1, y1) of side `tile` (clipped to the photo) covering it with `overlap`."""
    if tile <= 0 or not 0 <= overlap < 1:
        raise ValueError(f"need tile > 0 and 0 <= overlap < 1, got {tile}, {overlap}")

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        count = math.ceil((n - tile) / (tile * (1 - overlap))) + 1
        step = (n - tile) / (count - 1)
        return [round(i * step) for i in range(count)]

    return [(x, y, min(width, x + tile), min(height, y + tile)) for y in starts(height) for x in starts(width)]


def window_in_photo(window: tuple[int, int, int, int], work_size: tuple[int, int], photo_size: tuple[int, int]
                    ) -> tuple[int, int, int, int]:
    """A tile of a resized working copy (`work_size`) in photo pixels. An edge on the working copy's border is
    the photo's border exactly: scaling back by rounding can land a pixel short of it (4000x3001 worked at
    1792x1344 gives 3000), and `drop_cut_boxes` would then take the photo's own edge for a cut."""
    (x0, y0, x1, y1), (ww, wh), (w, h) = window, work_size, photo_size
    sx, sy = w / ww, h / wh
    return (0 if x0 <= 0 else round(x0 * sx), 0 if y0 <= 0 else round(y0 * sy),
            w if x1 >= ww else round(x1 * sx), h if y1 >= wh else round(y1 * sy))


def drop_cut_boxes(boxes: np.ndarray, window: tuple[int, int, int, int], width: int, height: int,
                   margin: float = 2.0) -> np.ndarray:
    """Mask of the boxes (photo coordinates) that do not touch an edge of `window` inside the photo."""
    x0, y0, x1, y1 = window
    keep = np.ones(len(boxes), bool)
    if x0 > 0:
        keep &= boxes[:, 0] > x0 + margin
    if y0 > 0:
        keep &= boxes[:, 1] > y0 + margin
    if x1 < width:
        keep &= boxes[:, 2] < x1 - margin
    if y1 < height:
        keep &= boxes[:, 3] < y1 - margin
    return keep


def held_by_tiles(boxes: np.ndarray, windows: list[tuple[int, int, int, int]], width: int, height: int,
                  margin: float = 2.0) -> np.ndarray:
    """Mask of the boxes (photo coordinates) that some window holds whole: inside it and clear of its inner
    edges, where `drop_cut_boxes` keeps a tile's box. That tile looked at the same place closer."""
    held = np.zeros(len(boxes), bool)
    for window in windows:
        x0, y0, x1, y1 = window
        inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
        held |= inside & drop_cut_boxes(boxes, window, width, height, margin)
    return held


def products_look_small(boxes: np.ndarray, scores: np.ndarray, *, min_score: float, scale: float,
                        min_size: int) -> bool:
    """Whether a large photo needs tiles, from its whole-photo pass: the boxes that count (score >= min_score),
    scaled as the network saw them (`scale`), have a median long side under min_size / 8 (a dense shelf at 1/4.5
    scale), or there are none. Tiles look closer; they also cut products the whole pass sees whole into parts,
    and over-count them (benchmarks/RESULTS.md, "tiles only where the products look small")."""
    counted = boxes[scores >= min_score]
    if len(counted) == 0:
        return True
    long_side = np.maximum(counted[:, 2] - counted[:, 0], counted[:, 3] - counted[:, 1]) * scale
    return float(np.median(long_side)) < min_size / 8


def merge_boxes(boxes: np.ndarray, scores: np.ndarray, passes: np.ndarray, *, iou: float = 0.5,
                containment: float = 0.8, min_score: float = 0.0) -> np.ndarray:
    """Indices of the boxes kept, best first: NMS by IoU, then a box lying mostly (`containment` of its own
    area) inside a kept box from another pass goes: it is a part of that whole box. A whole box that counts as
    a product (score >= `min_score`, the count's threshold) takes its parts whichever scored higher; one below
    it takes only parts it outscores, so a faint whole-photo box never wipes out the confident boxes a tile
    found inside it and is then dropped by the threshold itself. Within one pass a small product in front of
    a big one is a real second box."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    b, s = torch.from_numpy(np.ascontiguousarray(boxes, np.float32)), torch.from_numpy(scores.astype(np.float32))
    keep = nms(b, s, iou)  # sorted by score
    kb, kp, ks = b[keep], torch.from_numpy(np.asarray(passes))[keep], s[keep]
    area = (kb[:, 2] - kb[:, 0]).clamp(min=0) * (kb[:, 3] - kb[:, 1]).clamp(min=0)

    def inside(rows: slice, inter: torch.Tensor) -> torch.Tensor:
        """[i, j]: box i (of `rows`) lies mostly inside box j, which comes from another pass"""
        out = (inter / area[rows, None].clamp(min=1e-6)) > containment
        out &= kp[rows, None] != kp[None, :]
        return out & (ks[None, :] >= ks[rows, None].clamp(max=min_score))  # the whole counts, or outscores the part

    parts = _pairs_by(kb, inside, by_row=False)
    alive = np.ones(len(keep), bool)
    for j in torch.argsort(area, descending=True, stable=True).tolist():  # wholes decide before their parts
        if alive[j] and j in parts:
            alive[parts[j][parts[j] != j]] = False
    return keep.numpy()[alive]


def merge_tiled(boxes: np.ndarray, scores: np.ndarray, passes: np.ndarray, held: np.ndarray, *, iou: float,
                min_score: float, contained_ios: float, crowded: float = CROWDED) -> np.ndarray:
    """Indices kept, best first, of a tiled photo's boxes (pass 0 is the whole photo; `held` marks its boxes that
    a tile holds whole, `held_by_tiles`). The plain merge (`merge_boxes`, then `suppress_contained`) lets a whole
    box that counts take the tile boxes inside it as its parts. Where the merge without the held whole boxes
    counts at least `crowded` times the products the whole pass counts alone, that pass is boxing groups of
    packed neighbours, and the whole boxes took real products as parts: the merge without them is kept."""
    def merged(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        kept = idx[merge_boxes(boxes[mask], scores[mask], passes[mask], iou=iou, min_score=min_score)]
        return kept[suppress_contained(boxes[kept], scores[kept], ios=contained_ios)]

    def counted(kept: np.ndarray) -> int:
        return int((scores[kept] >= min_score).sum())

    if held.any():
        tiles = merged(~held)
        if counted(tiles) >= crowded * counted(merged(passes == 0)):
            return tiles
    return merged(np.ones(len(boxes), bool))


def suppress_contained(boxes: np.ndarray, scores: np.ndarray, *, ios: float = 0.85, ratio: float = 1.5
                       ) -> np.ndarray:
    """Indices kept (best first) after dropping each box that lies `ios` inside a better-scored box at least
    `ratio` times its area: a bottle's cap, a part of a carton lying down. Measured on held-out composites
    and on the fridge photos, it lowered the count error on both (benchmarks/RESULTS.md)."""
    order = np.argsort(-scores, kind="stable")
    if len(order) < 2 or ios <= 0:
        return order
    b = torch.from_numpy(np.ascontiguousarray(boxes[order], np.float32))
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    later = torch.arange(len(order))

    def holds(rows: slice, inter: torch.Tensor) -> torch.Tensor:
        """[i, k]: box i (of `rows`, better scored) holds the later box k, `ratio` times smaller, `ios` inside"""
        out = (inter / area[None, :].clamp(min=1e-6)) > ios
        out &= area[rows, None] >= ratio * area[None, :]
        return out & (later[None, :] > later[rows, None])

    held = _pairs_by(b, holds, by_row=True)
    alive = np.ones(len(order), bool)
    for i in range(len(order)):
        if alive[i] and i in held:
            alive[held[i]] = False
    return order[alive]


def _pairs_by(b: torch.Tensor, relation: Callable[[slice, torch.Tensor], torch.Tensor], *, by_row: bool,
              chunk: int = 1024) -> dict[int, np.ndarray]:
    """The pairs (i, j) of boxes `b` for which `relation(rows, intersections of those rows with every box)` holds,
    as {i: its js} (by_row) or {j: its is}. Computed `chunk` rows at a time and kept sparse: a tiled phone photo
    gives tens of thousands of candidate boxes, whose dense N x N matrices took over 12 GB."""
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(b), chunk):
        rows = slice(start, start + chunk)
        i, j = torch.nonzero(relation(rows, box_intersection(b[rows], b)), as_tuple=True)
        found.append(((i + start).numpy(), j.numpy()))
    key, value = (np.concatenate(x) for x in zip(*found)) if found else (np.zeros(0, np.int64),) * 2
    if not by_row:
        key, value = value, key
    if len(key) == 0:
        return {}
    order = np.argsort(key, kind="stable")
    key, value = key[order], value[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return {int(key[s]): v for s, v in zip(starts, np.split(value, starts[1:]), strict=True)}


def box_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection areas, len(a) x len(b), of (x1, y1, x2, y2) boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]
