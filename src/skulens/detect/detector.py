"""A loaded detector: photos in, class-agnostic product boxes out (with tiling for large photos)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.decode import ImageDecodeError, decode_any
from ..models.inference import resolve_device
from ..models.predictor import source_name
from .boxes import Detections
from .model import DetectorCard, DetectorConfig, load_detector_net
from .options import check_tiles
from .tiling import (
    drop_cut_boxes,
    held_by_tiles,
    merge_tiled,
    products_look_small,
    suppress_contained,
    tile_grid,
    window_in_photo,
)

__all__ = ["MAX_PIXELS", "Detector", "load_detector", "shelf_photo"]

ImageInput = str | os.PathLike | bytes | Image.Image
# Shelf photos are decoded up to 80 MP (a 48-64 MP phone photo at full size; under Pillow's own 89 MP bomb
# warning), not the 40 MP of a product photo: the detector tiles them, and the crops it names keep their detail.
MAX_PIXELS = 80_000_000


def shelf_photo(im: ImageInput, source: str = "<image>") -> Image.Image:
    """The RGB photo to look into, under the decoder's rules up to MAX_PIXELS: a file or bytes decoded, a
    caller's PIL image checked as a file would be (size and aspect limits, EXIF orientation, alpha on white)."""
    return decode_any(im, source, max_pixels=MAX_PIXELS)


class Detector:
    """Finds products (one class) in photos. `detect` returns one `Detections` per photo, best first.

    tiles: "auto" tiles a photo whose long side is over twice the detector's max_size (phone photos) when the
    products it finds whole look small (`tiling.products_look_small`: a dense shelf); "on" always tiles, "off"
    never does. A tiled photo is looked at whole and in overlapping windows of
    min_size pixels over a copy whose long side is 2 x max_size, and the boxes are merged (`tiling.merge_tiled`:
    where the products look small and the tiles count far more of them than the whole pass, a crowded shelf,
    the whole pass's boxes that a tile holds whole are left out; they box groups of packed neighbours).
    """

    def __init__(self, net: torch.nn.Module, card: DetectorCard, *, device: str = "auto",
                 path: Path | None = None):
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.card = card
        self.path = path
        self._ask_past_cap()

    def _ask_past_cap(self) -> None:
        # The network returns one box more than the cap: a pass is capped only when a box was really left out
        # (at exactly the cap's number of boxes, a photo of that many products was flagged "may be more").
        cap = self.card.config.max_detections
        self.net.detections_per_img = cap + 1
        self.net.topk_candidates = max(getattr(self.net, "topk_candidates", 0), 2 * cap)

    @property
    def config(self) -> DetectorConfig:
        return self.card.config

    def with_settings(self, *, max_detections: int | None = None) -> Detector:
        """This detector, changed in place, with another box cap (per pass, and for the merged photo)."""
        if max_detections is not None:
            config = replace(self.card.config, max_detections=max_detections)
            self.card = DetectorCard(config, self.card.training, self.card.schema)
            self._ask_past_cap()
        return self

    def detect(self, images: Sequence[ImageInput], *, tiles: str = "auto", batch_size: int = 4,
               min_score: float | None = None) -> list[Detections]:
        """Boxes per photo (files decoded up to MAX_PIXELS), every candidate down to the score floor. A photo
        that cannot be decoded raises ImageDecodeError naming it. min_score: the score at which the caller counts
        a box as a product (None: the detector's own); a tiled photo's merge lets only such a box remove the
        parts of it that other passes found."""
        check_tiles(tiles)
        min_score = self.config.min_score if min_score is None else min_score
        out = []
        for i, im in enumerate(images):
            source = source_name(im, i)
            pil = shelf_photo(im, source)
            check_detectable(pil.size, self.config, source)
            out.append(self._detect_one(pil, tiles, batch_size, min_score))
        return out

    def _detect_one(self, pil: Image.Image, tiles: str, batch_size: int, min_score: float) -> Detections:
        w, h = pil.size
        cfg = self.config
        tiled = tiles == "on" or (tiles == "auto" and max(w, h) > 2 * cfg.max_size)
        results = [self._run_whole(pil)]
        small = False
        if tiled:  # the network's own resize: short side min_size, long side at most max_size
            seen_at = network_scale(cfg, w, h)
            small = products_look_small(*results[0], min_score=min_score, scale=seen_at, min_size=cfg.min_size)
            tiled = small or tiles == "on"
        if not tiled:
            boxes, scores, cap = _at_cap(*results[0], cfg.max_detections)
            keep = suppress_contained(boxes, scores, ios=cfg.contained_ios)
            return Detections(boxes[keep], scores[keep], w, h, capped=cap is not None, cap_score=cap)
        scale = min(1.0, 2 * cfg.max_size / max(w, h))
        work = pil if scale == 1.0 else pil.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        windows = tile_grid(work.width, work.height, cfg.min_size)
        in_photo = [window_in_photo(win, work.size, (w, h)) for win in windows]
        crops = [_to_tensor(work.crop(win)) for win in windows]
        for i in range(0, len(crops), batch_size):
            results += self._run(crops[i:i + batch_size])
        all_boxes, all_scores, passes, caps = [], [], [], []
        for p, found in enumerate(results):
            boxes, scores, left_out = _at_cap(*found, cfg.max_detections)
            caps.append(left_out)
            if p > 0:  # a tile: back to photo coordinates, products cut by the window dropped
                x0, y0 = windows[p - 1][:2]
                boxes = (boxes + np.array([x0, y0, x0, y0], np.float32)) / scale
                keep = drop_cut_boxes(boxes, in_photo[p - 1], w, h, margin=2.0 / scale)
                boxes, scores = boxes[keep], scores[keep]
            all_boxes.append(boxes)
            all_scores.append(scores)
            passes.append(np.full(len(boxes), p))
        boxes, scores, passes = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(passes)
        held = np.zeros(len(boxes), bool)
        if small:  # only where the products look small may the tiles overrule the whole pass
            held = (passes == 0) & held_by_tiles(boxes, in_photo, w, h, margin=2.0 / scale)
        # a whole-photo box takes the tile boxes inside it only when it counts at the detector's own threshold
        # too: at a low --min-score, faint whole boxes (0.34) deleted the confident products tiles found (0.72)
        keep = merge_tiled(boxes, scores, passes, held, iou=cfg.nms_iou, min_score=max(min_score, cfg.min_score),
                           contained_ios=cfg.contained_ios)
        if len(keep) > cfg.max_detections:  # the merged photo's own cap: the best boxes stay
            caps.append(float(scores[keep[cfg.max_detections]]))
            keep = keep[: cfg.max_detections]
        known = [c for c in caps if c is not None]
        cap = max(known) if known else None
        return Detections(boxes[keep], scores[keep], w, h, capped=cap is not None, cap_score=cap)

    def _run_whole(self, pil: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """The whole-photo pass, its boxes in the photo's pixels. A photo over twice the size the network looks at
        is resized here first, as the network's own transform resizes it (bilinear, the same scale factor, so the
        network's resize is then the identity), but on its 8-bit pixels: that transform normalises the full-size
        photo as float32 before it resizes (two 576 MB copies for a 48 MP phone photo, 2.5 GB peak). The answer
        is the network's own up to the rounding of the resized pixels to 8 bits. Smaller photos go as they are."""
        w, h = pil.size
        seen_at = network_scale(self.config, w, h)
        if seen_at >= 0.5:
            return self._run([_to_tensor(pil)])[0]
        pixels = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)[None]  # writable: torch asks
        small = torch.nn.functional.interpolate(pixels, scale_factor=seen_at, mode="bilinear",
                                                recompute_scale_factor=True, align_corners=False)[0]
        boxes, scores = self._run([small.float().div_(255)])[0]
        sh, sw = small.shape[-2:]
        return boxes * np.array([w / sw, h / sh] * 2, np.float32), scores

    @torch.inference_mode()
    def _run(self, tensors: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        outs = self.net([t.to(self.device) for t in tensors])
        return [(o["boxes"].float().cpu().numpy(), o["scores"].float().cpu().numpy()) for o in outs]


def _at_cap(boxes: np.ndarray, scores: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A pass's boxes and scores cut to the cap (the network returns up to cap + 1, best first), and the best score
    it left out: None when nothing was left out."""
    left_out = float(scores[cap]) if len(scores) > cap else None
    return boxes[:cap], scores[:cap], left_out


def network_scale(config: DetectorConfig, w: int, h: int) -> float:
    """The scale the network's own transform resizes a w x h photo by: short side to min_size, long side at most
    max_size (torchvision's GeneralizedRCNNTransform)."""
    return min(config.min_size / min(w, h), config.max_size / max(w, h))


MIN_SIDE_PX = 8  # the short side at the detector's scale: below it there is nothing to find, and resizing fails


def check_detectable(size: tuple[int, int], config: DetectorConfig, source: str | os.PathLike) -> None:
    """ImageDecodeError for a photo too narrow to look into: the detector scales the short side towards
    min_size with the long side at most max_size, so a 1000x1 strip would become 0 px high and fail inside
    torchvision (and, in the service, fail every request batched with it)."""
    w, h = size
    scale = network_scale(config, w, h)
    if min(w, h) * scale < MIN_SIDE_PX:
        raise ImageDecodeError(str(source), f"a {w}x{h} photo is too narrow to look for products in (its short "
                               f"side would be {min(w, h) * scale:.1f} px at the detector's scale, under {MIN_SIDE_PX})")


def _to_tensor(pil: Image.Image) -> torch.Tensor:
    arr = np.array(pil, dtype=np.uint8)  # a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


def load_detector(path: str | os.PathLike, *, device: str = "auto") -> Detector:
    """A detector folder written by `skulens detect train`, in PyTorch (`open_detector` picks a backend)."""
    net, card = load_detector_net(path)
    return Detector(net, card, device=device, path=Path(path))
