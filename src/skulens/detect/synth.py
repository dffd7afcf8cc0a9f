"""Synthetic training scenes for the class-agnostic product detector, with boxes known by construction.

No box annotations exist for training, so the detector learns from composites: product cutouts
(catalogue photos cut from white, a few photo close-ups, and generated product-like shapes) pasted
onto varied backgrounds in shelf, fridge, heap and random layouts. A composite is a pure function of
(seed, index): `CompositeGenerator.gen(i)` draws everything from `np.random.default_rng([seed, i])`,
so training can generate on the fly and a held-out set is just other indices.

Each box is the bbox of the object's *visible* pixels (alpha > 0.5, not covered by later pastes).
A paste that would hide more than `max_occlusion` of an earlier object's own area, or that would put
less than `min_inside` of itself inside the canvas, is tried elsewhere or skipped, so every boxed
object is at least (1 - max_occlusion) visible.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from ..data.catalogue import Catalogue
from ._backgrounds import (
    BACKGROUND_KINDS,
    colour_matrix,
    draw_bin,
    draw_board,
    draw_floor,
    finish,
    lighting,
    make_background,
    photo_thumbnails,
)
from ._cutouts import (
    PROCEDURAL_KINDS,
    SOURCES,
    Cutout,
    catalogue_cutouts,
    cutout_from_white,
    photo_cutouts,
    procedural_cutouts,
    texture_patches,
)
from .boxes import AnnotatedImage

__all__ = [
    "BACKGROUND_KINDS",
    "BLENDS",
    "LAYOUTS",
    "PROCEDURAL_KINDS",
    "SOURCES",
    "CompositeDataset",
    "CompositeGenerator",
    "Cutout",
    "NotOnWhiteError",
    "SynthConfig",
    "catalogue_cutouts",
    "check_several_items",
    "composite_sources",
    "cutout_from_white",
    "held_out_cutouts",
    "held_out_products",
    "photo_cutouts",
    "photo_thumbnails",
    "preview",
    "procedural_cutouts",
    "product_views",
    "texture_patches",
    "write_composites",
]

LAYOUTS = ("shelf", "fridge", "heap", "random")
BLENDS = ("hard", "feather", "blur_edges", "shadow")


@dataclass(frozen=True)
class SynthConfig:
    """How composites look. Weights are relative (a zero weight disables that choice)."""

    width: int = 512
    height: int = 512
    # Each canvas draws a target count in [min, max]: shelves take it as a density and fill their rows
    # (up to max), fridges hold 1-5 per shelf; placements the rules refuse are topped up towards min.
    min_objects: int = 3
    max_objects: int = 60
    layouts: Mapping[str, float] = field(
        default_factory=lambda: {"shelf": 0.4, "fridge": 0.25, "heap": 0.15, "random": 0.2})
    backgrounds: Mapping[str, float] = field(
        default_factory=lambda: {"flat": 0.15, "gradient": 0.15, "texture": 0.4, "photo": 0.3})
    blends: Mapping[str, float] = field(
        default_factory=lambda: {"hard": 0.2, "feather": 0.35, "blur_edges": 0.2, "shadow": 0.25})
    sources: Mapping[str, float] = field(  # which kind of cutout an object is (absent kinds drop out)
        default_factory=lambda: {"catalogue": 0.45, "photo": 0.1, "procedural": 0.45})
    scale: tuple[float, float] = (0.05, 0.75)  # an object's longer side / the canvas's shorter side
    rotation: float = 12.0  # random layout: the largest tilt in degrees (heaps turn freely)
    rotation_share: float = 0.3  # random layout: share of objects tilted
    lying_share: float = 0.25  # fridge and random layouts: share of objects on their side
    max_occlusion: float = 0.4  # the most of an object's area later pastes may cover
    min_inside: float = 0.5  # an object cut by the canvas edge keeps at least this much inside
    empty_share: float = 0.03  # canvases with no object at all: "no product -> no box"
    colour_jitter: float = 0.15  # per object: brightness, contrast, saturation
    hue_shift_share: float = 0.3  # per object: a free hue turn (products of other colours)
    global_jitter: float = 0.1  # the whole canvas
    lighting_share: float = 0.4  # uneven light: darkening ramps and soft shadow blobs
    blur_share: float = 0.25
    noise_share: float = 0.3
    jpeg_share: float = 0.4

    def __post_init__(self) -> None:
        if self.width < 32 or self.height < 32:
            raise ValueError(f"canvas must be at least 32x32, got {self.width}x{self.height}")
        if not 0 <= self.min_objects <= self.max_objects or not 1 <= self.max_objects <= 10_000:
            raise ValueError(f"need 0 <= min_objects <= max_objects (1..10000), got "
                             f"{self.min_objects}..{self.max_objects}")
        for name, known in (("layouts", LAYOUTS), ("backgrounds", BACKGROUND_KINDS), ("blends", BLENDS),
                            ("sources", SOURCES)):
            _check_weights(name, getattr(self, name), known)
        lo, hi = self.scale
        if not 0 < lo <= hi <= 2:
            raise ValueError(f"scale must be 0 < low <= high <= 2, got {self.scale}")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")
        if not 0 < self.min_inside <= 1:
            raise ValueError(f"min_inside must be in (0, 1], got {self.min_inside}")
        for f in fields(self):
            if f.name.endswith(("_share", "_jitter")) and not 0 <= getattr(self, f.name) <= 1:
                raise ValueError(f"{f.name} must be in [0, 1], got {getattr(self, f.name)}")


def _check_weights(name: str, weights: Mapping[str, float], known: Sequence[str]) -> None:
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; choose from {list(known)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{name}: weights must be >= 0 with a positive sum, got {dict(weights)}")


def _pick(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = [k for k, w in weights.items() if w > 0]
    p = np.array([weights[k] for k in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


@dataclass(frozen=True)
class _Look:
    """One product's appearance in one composite; shelf facings of a product share it."""

    index: int  # into the generator's cutouts
    matrix: tuple[float, ...]  # colour jitter, for Image.convert
    blend: str
    flip: bool


@dataclass(frozen=True)
class _Patch:
    """A rendered object: straight RGB and alpha in [0, 1], and where its solid (alpha > 0.5) part lies.

    Alpha is repeated over three channels: numpy multiplies (h, w, 3) by (h, w, 3) several times faster
    than it broadcasts (h, w, 1) over a last axis of 3.
    """

    rgb: np.ndarray  # (h, w, 3) float32
    alpha: np.ndarray  # (h, w, 3) float32
    mask: Image.Image  # the alpha as an 8-bit image, for the drop shadow
    solid: np.ndarray  # alpha > 0.5: the pixels that make the box
    total: int  # solid pixels
    x: int  # top-left of the solid part inside the patch
    y: int
    w: int  # size of the solid part
    h: int


class _Scene:
    """A canvas being filled: pastes with the occlusion and truncation rules, and the visible-pixel map."""

    def __init__(self, canvas: np.ndarray, config: SynthConfig, rng: np.random.Generator) -> None:
        self.canvas, self.config, self.rng = canvas, config, rng
        self.owner = np.full(canvas.shape[:2], -1, np.int16)  # index of the object on top, -1: none
        self.area: list[int] = []  # each object's pixels inside the canvas when pasted
        self.visible: list[int] = []
        self.regions: list[tuple[slice, slice]] = []
        self.labels: list[str] = []
        self.sources: list[str] = []
        self.sized: dict[tuple[int, int, int, bool], Image.Image] = {}  # resized sprites, reused by facings

    def __len__(self) -> int:
        return len(self.area)

    def paste(self, patch: _Patch, x: int, y: int, blend: str, cutout: Cutout) -> bool:
        """Paste `patch` with its solid part's top-left at (x, y); False (and nothing drawn) if the rules
        forbid it."""
        x, y = x - patch.x, y - patch.y
        h, w = patch.solid.shape
        H, W = self.owner.shape
        x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
        if x1 <= x0 or y1 <= y0:
            return False
        px, py = slice(x0 - x, x1 - x), slice(y0 - y, y1 - y)
        inside = patch.solid[py, px]
        count = int(inside.sum())
        if count == 0 or count < self.config.min_inside * patch.total:
            return False
        region = (slice(y0, y1), slice(x0, x1))
        under = self.owner[region][inside]
        covered = np.bincount(under[under >= 0], minlength=len(self.area))
        if covered.any():
            left = np.asarray(self.visible) - covered
            if (left < (1 - self.config.max_occlusion) * np.asarray(self.area))[covered > 0].any():
                return False
        if blend == "shadow":
            self._shadow(patch.mask, x, y)
        self._blend(patch.rgb[py, px], patch.alpha[py, px], region)
        self.owner[region][inside] = len(self.area)
        self.visible = [v - int(c) for v, c in zip(self.visible, covered, strict=True)] + [count]
        self.area.append(count)
        self.regions.append(region)
        self.labels.append(cutout.label)
        self.sources.append(cutout.source)
        return True

    def _blend(self, rgb: np.ndarray, alpha: np.ndarray, region: tuple[slice, slice]) -> None:
        target = self.canvas[region]
        diff = rgb - target
        diff *= alpha
        target += diff

    def _shadow(self, mask: Image.Image, x: int, y: int) -> None:
        """A light drop shadow: the silhouette, blurred, shifted down and sideways, darkening the canvas."""
        rng = self.rng
        w, h = mask.size
        sigma = 1 + 0.03 * max(h, w)
        m = int(2 * sigma)
        dx, dy = int(rng.uniform(-0.08, 0.08) * w) - m, int(rng.uniform(0.0, 0.06) * h) + 1 - m
        # Blurred by shrinking and enlarging again: a soft shadow needs no exact Gaussian, and this is cheap.
        silhouette = Image.new("L", (w + 2 * m, h + 2 * m))
        silhouette.paste(mask, (m, m))
        k = max(1, int(sigma))
        small = silhouette.reduce(k) if k > 1 else silhouette
        shade = small.resize(silhouette.size, Image.Resampling.BILINEAR)
        darken = np.asarray(Image.merge("RGB", (shade, shade, shade)), np.float32)
        darken *= -rng.uniform(0.25, 0.55) / 255
        darken += 1
        H, W = self.owner.shape
        x0, y0 = max(0, x + dx), max(0, y + dy)
        x1, y1 = min(W, x + dx + silhouette.width), min(H, y + dy + silhouette.height)
        if x1 > x0 and y1 > y0:
            self.canvas[y0:y1, x0:x1] *= darken[y0 - y - dy: y1 - y - dy, x0 - x - dx: x1 - x - dx]

    def annotation(self) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
        """Boxes of each object's visible pixels (x1, y1, x2, y2 pixel edges), their labels and sources."""
        boxes, labels, sources = [], [], []
        for k, (ys, xs) in enumerate(self.regions):
            mine = self.owner[ys, xs] == k
            rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
            if len(rows) == 0:
                continue
            x0, y0 = xs.start, ys.start
            boxes.append((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1))
            labels.append(self.labels[k])
            sources.append(self.sources[k])
        return np.asarray(boxes, np.float32).reshape(-1, 4), tuple(labels), tuple(sources)


def _sprite(image: Image.Image, pad: int = 3) -> list[Image.Image]:
    """A cutout ready to resample: padded with transparent pixels that carry the nearest solid pixel's colour
    (so neither resizing nor rotating pulls a black or white fringe into the edge), with 1/2 and 1/4
    reductions to resize from (a big reduction in one bilinear step is slow)."""
    arr = np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)))
    clear = arr[..., 3] <= 8
    if clear.any() and not clear.all():
        _, (iy, ix) = ndimage.distance_transform_edt(clear, return_indices=True)
        arr[..., :3] = arr[iy, ix, :3]
    full = Image.fromarray(np.ascontiguousarray(arr), "RGBA")
    levels = [full]
    while min(levels[-1].size) >= 64 and len(levels) < 3:
        levels.append(levels[-1].reduce(2))
    return levels


_HARD = [0] * 128 + [255] * 128  # a lookup table: alpha > 0.5 -> opaque, else clear
_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


class CompositeGenerator:
    """Seeded composites: `gen(i)` returns (RGB image, its boxes), the same for the same (seed, i)."""

    def __init__(self, cutouts: Sequence[Cutout], config: SynthConfig | None = None, seed: int = 0, *,
                 photos: Sequence[np.ndarray] = ()) -> None:
        """`photos`: small RGB thumbnails (see `photo_thumbnails`) for blurred store backgrounds."""
        if not cutouts:
            raise ValueError("CompositeGenerator needs at least one cutout")
        self.cutouts = list(cutouts)
        self.config = config or SynthConfig()
        self.seed = seed
        self.photos = list(photos)
        self._sprites = [_sprite(c.image) for c in self.cutouts]
        by_source = {s: [i for i, c in enumerate(self.cutouts) if c.source == s] for s in SOURCES}
        self._by_source = {s: idx for s, idx in by_source.items() if idx}
        weights = {s: self.config.sources.get(s, 0.0) for s in self._by_source}
        self._source_weights = weights if sum(weights.values()) > 0 else {s: 1.0 for s in self._by_source}

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue, config: SynthConfig | None = None, seed: int = 0, *,
                       exclude: Collection[str] = (), leave_out_cutouts: Collection[str] = (),
                       photo_share: float = 0.05, n_procedural: int = 300,
                       n_textures: int = 200, n_photos: int = 300, split: str = "train"
                       ) -> CompositeGenerator:
        """Everything from one catalogue, leaving out the products in `exclude` (cutouts and photos alike) and
        the catalogue cutouts of `leave_out_cutouts` (photos that show several items).

        Cutouts: the catalogue photos cut from white; close-ups from a `photo_share` of the `split` photos of
        upright products (cartons, bottles: a shopper holds up one, while a fruit photo shows a pile); and
        `n_procedural` generated shapes textured with patches of `split` photos. Backgrounds: blurred,
        shuffled `split` photos.
        """
        samples = [s for s in catalogue.split(split) if s.label not in exclude]
        left_out = set(exclude) | set(leave_out_cutouts)
        cutouts = [c for c in catalogue_cutouts(catalogue) if c.label not in left_out]
        upright = {c.label for c in cutouts if c.image.height >= 1.3 * c.image.width and _solidity(c) > 0.8}
        cutouts += photo_cutouts([s for s in samples if s.label in upright], share=photo_share, seed=seed)
        textures = texture_patches(samples, n_textures, seed=seed)
        cutouts += procedural_cutouts(np.random.default_rng([seed, 1]), textures, n=n_procedural)
        return cls(cutouts, config, seed, photos=photo_thumbnails(samples, n_photos, seed=seed))

    def gen(self, i: int) -> tuple[Image.Image, AnnotatedImage]:
        """Composite number `i`: the RGB image and its boxes (labels are the cutouts' labels)."""
        image, ann, _ = self._compose(i)
        return image, ann

    def __iter__(self) -> Iterator[tuple[Image.Image, AnnotatedImage]]:
        i = 0
        while True:
            yield self.gen(i)
            i += 1

    def _compose(self, i: int) -> tuple[Image.Image, AnnotatedImage, _Scene]:
        cfg = self.config
        rng = np.random.default_rng([self.seed, i])
        canvas = make_background(_pick(rng, cfg.backgrounds), cfg.width, cfg.height, rng, self.photos)
        scene = _Scene(canvas, cfg, rng)  # every background is a fresh float32 array
        if rng.random() >= cfg.empty_share:
            target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
            layouts = {"shelf": self._shelf, "fridge": self._fridge, "heap": self._heap,
                       "random": self._random}
            layouts[_pick(rng, cfg.layouts)](scene, target)
            self._scatter(scene, cfg.min_objects - len(scene), tries=4)
        light = lighting(cfg.width, cfg.height, rng) if rng.random() < cfg.lighting_share else None
        cast = None
        if cfg.global_jitter:
            cast = colour_matrix(rng, cfg.global_jitter, hue=rng.uniform(-0.1, 0.1))
        image = finish(scene.canvas, rng, light=light, matrix=cast, blur=cfg.blur_share,
                       noise=cfg.noise_share, jpeg=cfg.jpeg_share)
        boxes, labels, _ = scene.annotation()
        return image, AnnotatedImage(None, cfg.width, cfg.height, boxes, labels), scene

    # --- objects ---------------------------------------------------------------------------------

    def _look(self, rng: np.random.Generator) -> _Look:
        group = self._by_source[_pick(rng, self._source_weights)]
        cfg = self.config
        hue = rng.uniform(-np.pi, np.pi) if rng.random() < cfg.hue_shift_share else rng.uniform(-0.05, 0.05)
        matrix = colour_matrix(rng, cfg.colour_jitter, hue=hue)
        index = group[int(rng.integers(len(group)))]
        return _Look(index, matrix, _pick(rng, cfg.blends), bool(rng.random() < 0.3))

    def _render(self, scene: _Scene, look: _Look, size: float, *, by_height: bool = False,
                angle: float = 0.0) -> _Patch | None:
        """The cutout with its height (or else its longer side) at `size` px, turned by `angle` degrees."""
        im = self._sized(scene, look, size, by_height)
        if angle % 90 == 0 and angle % 360:
            im = im.transpose(_TURNS[int(angle % 360)])
        elif angle % 360:
            im = im.rotate(angle, Image.Resampling.BILINEAR, expand=True)
        rgb_im = im.convert("RGB").convert("RGB", matrix=look.matrix)
        mask = im.getchannel("A")
        if look.blend == "hard":
            mask = mask.point(_HARD)
        elif look.blend == "blur_edges":  # a soft seam and a slightly soft object
            mask = mask.filter(ImageFilter.GaussianBlur(scene.rng.uniform(1.2, 2.0)))
            rgb_im = rgb_im.filter(ImageFilter.BoxBlur(1))
        else:  # feather, shadow
            mask = mask.filter(ImageFilter.GaussianBlur(scene.rng.uniform(0.4, 1.2)))
        alpha = np.asarray(Image.merge("RGB", (mask, mask, mask)), np.float32)
        alpha *= np.float32(1 / 255)
        solid = np.asarray(mask) > 127
        rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
        if len(rows) == 0:
            return None
        return _Patch(np.asarray(rgb_im, np.float32), alpha, mask, solid, int(solid.sum()), int(cols[0]),
                      int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))

    def _sized(self, scene: _Scene, look: _Look, size: float, by_height: bool) -> Image.Image:
        """The sprite resized so the cutout's height (or longer side) is `size` px, within the scale range;
        cached per composite, so shelf facings and heaps resize once."""
        levels = self._sprites[look.index]
        w0, h0 = self.cutouts[look.index].image.size
        lo, hi = (s * min(self.config.width, self.config.height) for s in self.config.scale)
        f = float(np.clip(size / (h0 if by_height else max(w0, h0)), lo / max(w0, h0), hi / max(w0, h0)))
        key = (look.index, max(1, round(levels[0].width * f)), max(1, round(levels[0].height * f)), look.flip)
        im = scene.sized.get(key)
        if im is None:
            source = next(lv for lv in reversed(levels) if lv.width >= key[1] or lv is levels[0])
            im = source.resize(key[1:3], Image.Resampling.BILINEAR)
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if look.flip else im
            scene.sized[key] = im
        return im

    def _place(self, scene: _Scene, look: _Look, patch: _Patch | None, x: float, y: float) -> bool:
        """Paste with the solid part's top-left at (x, y)."""
        cutout = self.cutouts[look.index]
        return patch is not None and scene.paste(patch, round(x), round(y), look.blend, cutout)

    # --- layouts ---------------------------------------------------------------------------------

    def _shelf(self, scene: _Scene, target: int) -> None:
        """Rows on shelf boards: products standing side by side, several facings of each, similar heights.

        `target` sets the density (how many rows); the rows are then filled, up to `max_objects`, since
        a shelf with empty rows is not what a shop looks like.
        """
        rng, cfg = scene.rng, self.config
        W, H = cfg.width, cfg.height
        # ~2 x rows^2 items fit a square canvas (items 0.55-0.9 of a row tall, half as wide).
        rows = int(np.clip(round(math.sqrt(target / 2 * H / W) * rng.uniform(0.85, 1.2)), 1, 8))
        row_h = H / rows * rng.uniform(0.9, 1.15)
        board = max(2, int(row_h * rng.uniform(0.06, 0.14)))
        top = -rng.uniform(0, 0.4) * row_h
        floors = [int(top + (r + 1) * row_h) - board for r in range(rows + 1)]
        for y in floors:
            draw_board(scene.canvas, y, board, rng)
        for floor in floors:
            if floor > 0:
                self._shelf_row(scene, floor, board, (row_h - board) * rng.uniform(0.55, 0.92))

    def _shelf_row(self, scene: _Scene, floor: int, board: int, item_h: float) -> None:
        rng, W = scene.rng, self.config.width
        x = -rng.uniform(0, 0.3) * item_h
        while x < W and len(scene) < self.config.max_objects:
            look = self._look(rng)
            patch = self._render(scene, look, item_h * rng.uniform(0.88, 1.08), by_height=True)
            if patch is None:  # too small to have a solid pixel: leave a gap
                x += item_h / 2
                continue
            for _ in range(int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.3, 0.25, 0.15, 0.1]))):
                if x >= W or len(scene) >= self.config.max_objects:
                    break
                self._place(scene, look, patch, x, floor + board * rng.uniform(0.0, 0.3) - patch.h)
                x += patch.w * (1 + rng.uniform(-0.03, 0.08))
            if rng.random() < 0.1:  # an empty slot
                x += patch.w * rng.uniform(0.3, 1.0)

    def _fridge(self, scene: _Scene, target: int) -> None:
        """1-4 fridge shelves (or a table): fewer, larger items, some lying on their side, back to front."""
        rng, cfg = scene.rng, self.config
        W, H = cfg.width, cfg.height
        shelves = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.3, 0.2]))
        shelf_h = H / shelves
        for s in range(shelves):
            depth = shelf_h * rng.uniform(0.12, 0.35)
            floor_top = (s + 1) * shelf_h - depth
            draw_floor(scene.canvas, int(floor_top), int((s + 1) * shelf_h), rng)
            items = []
            for _ in range(min(int(rng.integers(1, 6)), target - len(scene))):
                bottom = floor_top + depth * rng.uniform(0.1, 0.95)
                items.append((bottom, shelf_h * rng.uniform(0.4, 0.85), rng.random() < cfg.lying_share))
            for bottom, size, lying in sorted(items):  # back (higher up) first: nearer items cover them
                look = self._look(rng)
                patch = self._render(scene, look, size, angle=90.0 if lying else 0.0)
                if patch is None:
                    continue
                for _ in range(3):
                    x = rng.uniform(-0.3, W / patch.w - 0.7) * patch.w  # at most 30 % cut off either side
                    if self._place(scene, look, patch, x, bottom - patch.h):
                        break

    def _heap(self, scene: _Scene, target: int) -> None:
        """A bin of one to three products: overlapping, turned every which way.

        Up to eight turned renders are reused for all the items: turning is the costly step, and a bin
        holds look-alikes anyway.
        """
        rng, cfg = scene.rng, self.config
        W, H = cfg.width, cfg.height
        box = (int(rng.uniform(-0.1, 0.2) * W), int(rng.uniform(-0.1, 0.3) * H),
               int(rng.uniform(0.8, 1.1) * W), int(rng.uniform(0.75, 1.1) * H))
        draw_bin(scene.canvas, box, rng)
        looks = [self._look(rng) for _ in range(int(rng.integers(1, 4)))]
        size = min(W, H) * rng.uniform(0.1, 0.3)
        pool = []
        for k in range(min(8, target)):
            look = looks[k % len(looks)]
            scale = float(rng.choice([0.9, 1.0, 1.1]))  # three sizes: the resized sprites are shared
            pool.append((look, self._render(scene, look, size * scale, angle=rng.uniform(0, 360))))
        for _ in range(2 * target):
            if len(scene) >= target:
                break
            look, patch = pool[int(rng.integers(len(pool)))]
            if patch is not None:
                x, y = rng.uniform(box[0], box[2]) - patch.w / 2, rng.uniform(box[1], box[3]) - patch.h / 2
                self._place(scene, look, patch, x, y)

    def _random(self, scene: _Scene, target: int) -> None:
        self._scatter(scene, target, tries=3)

    def _scatter(self, scene: _Scene, count: int, *, tries: int) -> None:
        """`count` more objects anywhere, log-uniform in size, some tilted or lying."""
        rng, cfg = scene.rng, self.config
        W, H = cfg.width, cfg.height
        lo, hi = (s * min(W, H) for s in cfg.scale)
        # Many objects must be smaller to fit: cap the size where `count` of them would about fill the canvas.
        hi = float(np.clip(1.3 * math.sqrt(W * H / max(1, count)), lo, hi))
        lo, hi = math.log(lo), math.log(hi)
        for _ in range(max(0, count)):
            look = self._look(rng)
            angle = rng.uniform(-cfg.rotation, cfg.rotation) if rng.random() < cfg.rotation_share else 0.0
            if rng.random() < cfg.lying_share * 0.5:
                angle = 90.0
            patch = self._render(scene, look, math.exp(rng.uniform(lo, hi)), angle=angle)
            if patch is None:
                continue
            for _ in range(tries):
                x, y = rng.uniform(0, W) - 0.5 * patch.w, rng.uniform(0, H) - 0.5 * patch.h
                if self._place(scene, look, patch, x, y):
                    break


class NotOnWhiteError(ValueError):
    """A photo that does not show one product on a white background (`product_views` has nothing to cut out)."""


def product_views(image: Image.Image, n: int, *, size: int = 320, seed: int = 0) -> list[Image.Image]:
    """`n` shop-like views of one product photo taken on white (a catalogue photo): the product cut out
    (`cutout_from_white`) and put on a varied background (flat, gradient or texture), alone at 45-90 % of
    the frame or as 3-8 copies at 30-50 %, turned up to 12 degrees, under uneven light with a colour cast
    and, now and then, blur, sensor noise and JPEG. Raises NotOnWhiteError when the photo does not stand
    on white (most of its border is not white, or the object fills the frame)."""
    rgb = np.asarray(image.convert("RGB"))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    if (border.min(axis=1) >= 250).mean() < 0.6:  # cutout_from_white's own white (threshold 5)
        raise NotOnWhiteError("the photo does not stand on white: no product to cut out")
    try:
        sprite = cutout_from_white(image, "product").image
    except ValueError as e:  # all white
        raise NotOnWhiteError(str(e)) from e
    if sprite.width * sprite.height > 0.9 * image.width * image.height:
        raise NotOnWhiteError("the photo fills its white frame: no product to cut out")
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n):
        kind = ("flat", "gradient", "texture")[int(rng.integers(3))]
        canvas = make_background(kind, size, size, rng)
        base = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGBA")
        # half the views show one item, the others a few (a crate of fruit, a row of packs)
        copies, share = (1, (0.45, 0.9)) if rng.random() < 0.5 else (int(rng.integers(3, 9)), (0.3, 0.5))
        for _ in range(copies):
            scale = rng.uniform(*share) * size / max(sprite.size)
            patch = sprite.resize((max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale))),
                                  Image.Resampling.BILINEAR)
            patch = patch.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR, expand=True)
            x = int(rng.integers(0, max(1, size - patch.width + 1)))
            y = int(rng.integers(0, max(1, size - patch.height + 1)))
            base.alpha_composite(patch, (x, y))
        views.append(finish(np.asarray(base.convert("RGB"), dtype=np.float32).copy(), rng,
                            light=lighting(size, size, rng), matrix=colour_matrix(rng, 0.2),
                            blur=0.3, noise=0.3, jpeg=0.3))
    return views


def _solidity(cutout: Cutout) -> float:
    """The share of its bbox a cutout fills: ~0.9 for a carton, less for a pear or a leek."""
    return float((np.asarray(cutout.image)[..., 3] > 127).mean())


class CompositeDataset:
    """A map-style dataset over `length` composites, ready for torchvision detection models.

    Item i is (uint8 CHW tensor, {"boxes": float32 (N, 4), "labels": int64 zeros}): label 0 is the one
    "product" class. `set_epoch(e)` moves to composites e * length .. (e + 1) * length - 1, so every
    epoch sees new scenes while any one epoch stays reproducible.
    """

    def __init__(self, generator: CompositeGenerator, length: int, *, start: int = 0) -> None:
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.generator, self.length, self.start = generator, length, start
        self._offset = 0

    def set_epoch(self, epoch: int) -> None:
        self._offset = epoch * self.length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        import torch  # kept local: the generator itself needs no torch

        if not 0 <= i < self.length:
            raise IndexError(i)
        image, ann = self.generator.gen(self.start + self._offset + i)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
        return tensor, {"boxes": torch.from_numpy(ann.boxes.copy()),
                        "labels": torch.zeros(len(ann.boxes), dtype=torch.int64)}


def write_composites(generator: CompositeGenerator, n: int, out_dir: str | os.PathLike[str], *,
                     start: int = 0, image_format: str = "jpg", quality: int = 92,
                     progress: bool = True) -> Path:
    """Write composites start..start+n-1 as images plus a COCO JSON that `read_coco` reads back; returns
    the JSON's path.

    Layout: `out_dir/images/<index>.<image_format>` and `out_dir/annotations.json` (bbox as [x, y, w, h];
    categories are the cutout labels, which a class-agnostic detector treats alike).
    """
    from tqdm.auto import tqdm

    from .annotations import write_coco

    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    written = []
    for i in tqdm(range(start, start + n), desc="composites", unit="image", disable=not progress):
        image, ann = generator.gen(i)
        path = out / "images" / f"{i:07d}.{image_format}"
        image.save(path, quality=quality) if image_format == "jpg" else image.save(path)
        written.append(replace(ann, path=path))
    return write_coco(written, out / "annotations.json")


_SOURCE_COLOURS = {"catalogue": (0, 200, 83), "photo": (41, 121, 255), "procedural": (255, 145, 0)}


def preview(generator: CompositeGenerator, n: int, path: str | os.PathLike[str], *, start: int = 0,
            columns: int = 4) -> Path:
    """Save a PNG grid of composites start..start+n-1 with their boxes drawn, for people to look at.

    Box colours: green for catalogue cutouts, blue for photo close-ups, orange for generated shapes.
    """
    from .draw import contact_sheet, draw_boxes

    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    drawn = []
    for i in range(start, start + n):
        image, ann, scene = generator._compose(i)
        sources = scene.annotation()[2]
        drawn.append(draw_boxes(image, ann.boxes, colors=[_SOURCE_COLOURS[s] for s in sources], width=2))
    cfg = generator.config
    sheet = contact_sheet(drawn, columns=columns, cell=max(cfg.width, cfg.height))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out


class _DetectorRecipe(Protocol):
    canvas: int
    holdout_products: float
    holdout_canvases: int
    seed: int
    several_items: tuple[str, ...]


def held_out_products(catalogue: Catalogue, share: float, seed: int) -> set[str]:
    """The seeded share of the products (those with a catalogue photo) a detector run never trains on."""
    labels = sorted(label for label, p in catalogue.products.items() if p.image is not None)
    return set(random.Random(seed).sample(labels, round(len(labels) * share)))


def held_out_cutouts(catalogue: Catalogue, share: float, seed: int, several: Collection[str] = ()
                     ) -> tuple[list[Cutout], list[str]]:
    """The catalogue cutouts of the held-out products (`held_out_products`) whose catalogue photo shows one item
    (`several` left out: those photos are pasted nowhere), and those products' labels, sorted."""
    shown = held_out_products(catalogue, share, seed) - set(several)
    return [c for c in catalogue_cutouts(catalogue) if c.label in shown], sorted(shown)


def check_several_items(catalogue: Catalogue, labels: Collection[str]) -> set[str]:
    """The labels as a set; ValueError naming those the catalogue lacks (a typo would leave a group pasted)."""
    unknown = sorted(set(labels) - set(catalogue.classes))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not in the catalogue ({len(catalogue.classes)} "
                         f"products, e.g. {', '.join(sorted(catalogue.classes)[:3])})")
    return set(labels)


def composite_sources(data: str | os.PathLike[str] | Catalogue, recipe: _DetectorRecipe, *, length: int,
                      config: SynthConfig | None = None
                      ) -> tuple[CompositeDataset, list[tuple[Image.Image, AnnotatedImage]]]:
    """The detector trainer's synthetic data: `length` training composites, and held-out canvases.

    A seeded `recipe.holdout_products` share of the products is never pasted into (nor photographed for) a
    training canvas; the `recipe.holdout_canvases` held-out canvases show only those products, so a score on
    them measures products the detector never saw. The catalogue photos of `recipe.several_items` are pasted
    nowhere (ValueError naming a label the catalogue lacks).
    """
    from ..data.catalogue import load_catalogue

    catalogue = data if isinstance(data, Catalogue) else load_catalogue(data)
    several = check_several_items(catalogue, recipe.several_items)
    cfg = config or SynthConfig(width=recipe.canvas, height=recipe.canvas)
    held = held_out_products(catalogue, recipe.holdout_products, recipe.seed)
    generator = CompositeGenerator.from_catalogue(catalogue, cfg, recipe.seed, exclude=held, leave_out_cutouts=several)
    holdout: list[tuple[Image.Image, AnnotatedImage]] = []
    unseen = held_out_cutouts(catalogue, recipe.holdout_products, recipe.seed, several)[0] \
        if recipe.holdout_canvases > 0 else []
    if unseen:
        held_cfg = replace(cfg, sources={"catalogue": 1.0}, empty_share=0.0)
        held_gen = CompositeGenerator(unseen, held_cfg, recipe.seed + 1, photos=generator.photos)
        holdout = [held_gen.gen(i) for i in range(recipe.holdout_canvases)]
    return CompositeDataset(generator, length), holdout
