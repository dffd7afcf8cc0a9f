"""Cutouts for the synthetic composites: catalogue photos cut from white, photo close-ups, generated shapes.

A `Cutout` is an RGBA image cropped to its object; alpha > 0.5 is "the product". Public via `synth`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from ..data.catalogue import Catalogue, Sample
from ..data.decode import decode_image

PROCEDURAL_KINDS = ("carton", "box", "can", "bottle", "jar", "fruit")
SOURCES = ("catalogue", "photo", "procedural")


@dataclass(frozen=True)
class Cutout:
    """One product-like object to paste: RGBA, cropped to the object; `source` is where it came from."""

    image: Image.Image  # RGBA
    label: str
    source: str  # "catalogue" | "photo" | "procedural"

    def __post_init__(self) -> None:
        if self.image.mode != "RGBA":
            raise ValueError(f"cutout {self.label!r}: image must be RGBA, got {self.image.mode}")
        if self.source not in SOURCES:
            raise ValueError(f"cutout {self.label!r}: source must be one of {SOURCES}, got {self.source!r}")


def cutout_from_white(image: Image.Image, label: str, source: str = "catalogue", *,
                      threshold: int = 5, halo_px: int = 5) -> Cutout:
    """Cut a product out of its white background.

    Background is the white (every channel >= 255 - `threshold`) area connected to the image border,
    so white parts inside the product (a label, a cut fruit's flesh) stay; the threshold is strict
    because white cartons on white are separated only by their faint grey outline. The product's
    near-white rim (the JPEG halo, up to `halo_px` deep) is then peeled off, pieces of one product
    (a kiwi and its half) stay together, specks go, the edge is softened, and the result is cropped.
    """
    rgb = np.asarray(image.convert("RGB"))
    lightness = rgb.min(axis=2)
    regions, _ = ndimage.label(lightness >= 255 - threshold)
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    background = np.isin(regions, border[border > 0])
    # JPEG ringing leaves a few pixels of off-white around the product: grow the background into
    # light pixels, but only `halo_px` pixels deep, so a white carton loses at most its outermost rim.
    halo = ndimage.binary_dilation(background, iterations=halo_px, mask=lightness >= 225)
    fg = _drop_specks(ndimage.binary_opening(ndimage.binary_fill_holes(~(background | halo)), iterations=1))
    if not fg.any():
        raise ValueError(f"cutout {label!r}: nothing but white background")
    # Background pixels take their nearest product pixel's colour, so the soft edge has no white fringe.
    _, (iy, ix) = ndimage.distance_transform_edt(~fg, return_indices=True)
    alpha = np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(0.6)))
    return _crop_to_alpha(np.dstack([rgb[iy, ix], alpha]), label, source)


def catalogue_cutouts(catalogue: Catalogue, *, threshold: int = 5) -> list[Cutout]:
    """One cutout per product that has a catalogue ("iconic") photo on white, in catalogue order."""
    cutouts = []
    for label, product in catalogue.products.items():
        if product.image is None:
            continue
        image = decode_image(product.image)
        cutouts.append(cutout_from_white(image, label, "catalogue", threshold=threshold))
    return cutouts


def photo_cutouts(samples: Sequence[Sample], *, share: float = 0.05, crop: float = 0.6, size: int = 192,
                  seed: int = 0) -> list[Cutout]:
    """Close-ups from labelled photos: a central crop with a soft elliptical/rounded mask.

    In-store photos are a shopper holding one product in the middle, so the centre is mostly product;
    the mask edge is still background, so only a small `share` of the photos is used.
    """
    if not 0.0 <= share <= 1.0 or not 0.1 <= crop <= 1.0:
        raise ValueError(f"share must be in [0, 1] and crop in [0.1, 1], got {share}, {crop}")
    rng = np.random.default_rng(seed)
    count = round(len(samples) * share)
    chosen = sorted(rng.choice(len(samples), size=count, replace=False).tolist()) if count else []
    cutouts = []
    for index in chosen:
        sample = samples[index]
        rgb = decode_image(sample.path)
        w, h = rgb.size
        cw, ch = w * crop * rng.uniform(0.7, 1.0), h * crop * rng.uniform(0.85, 1.15)
        cx, cy = w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h
        ch = min(ch, h)
        box = (max(0, cx - cw / 2), max(0, cy - ch / 2), min(w, cx + cw / 2), min(h, cy + ch / 2))
        patch = rgb.crop(tuple(round(v) for v in box))
        patch.thumbnail((size, size), Image.Resampling.BILINEAR)
        mask = _soft_mask(patch.size, rounded=bool(rng.random() < 0.5), rng=rng)
        cutouts.append(Cutout(Image.merge("RGBA", (*patch.split(), mask)), sample.label, "photo"))
    return cutouts


def texture_patches(samples: Sequence[Sample], n: int, *, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """`n` random `size`-pixel RGB crops of in-store photos (one per photo), to fill generated shapes."""
    rng = np.random.default_rng(seed)
    if not samples or n <= 0:
        return []
    chosen = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    patches = []
    for index in chosen.tolist():
        rgb = decode_image(samples[index].path)
        w, h = rgb.size
        side = int(min(w, h) * rng.uniform(0.1, 0.3))  # close: one product's surface, not a pile
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        patch = rgb.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)
        patches.append(np.asarray(patch))
    return patches


def procedural_cutouts(rng: np.random.Generator, textures: Sequence[np.ndarray] = (), *, n: int = 200,
                       kinds: Sequence[str] = PROCEDURAL_KINDS) -> list[Cutout]:
    """`n` generated product-like shapes (cartons, boxes, cans, bottles, jars, round fruit).

    Each is filled with a texture patch (when given, 40 % of the time) or a flat colour with label bands
    and text-like strokes, then shaded (cylindrical for cans and bottles, radial for fruit), so the
    detector learns "a product-shaped object" rather than the catalogue's 81 items.
    """
    unknown = set(kinds) - set(PROCEDURAL_KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown procedural kinds {sorted(unknown)}; choose from {PROCEDURAL_KINDS}")
    return [_procedural(str(kinds[int(rng.integers(len(kinds)))]), rng, textures) for _ in range(n)]


# --- helpers -------------------------------------------------------------------------------------


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """Keep components of at least 1 % of the largest one (and 0.2 % of the image)."""
    regions, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(regions.ravel())[1:]
    keep = np.flatnonzero(sizes >= max(sizes.max() * 0.01, mask.size * 0.002)) + 1
    return np.isin(regions, keep)


def _crop_to_alpha(rgba: np.ndarray, label: str, source: str) -> Cutout:
    ys, xs = np.nonzero(rgba[..., 3] > 8)
    if len(ys) == 0:
        raise ValueError(f"cutout {label!r}: empty alpha")
    crop = np.ascontiguousarray(rgba[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1])
    return Cutout(Image.fromarray(crop, "RGBA"), label, source)


def _soft_mask(size: tuple[int, int], *, rounded: bool, rng: np.random.Generator) -> Image.Image:
    w, h = size
    s = 3  # supersampling for a smooth edge
    mask = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(mask)
    if rounded:
        radius = int(min(w, h) * s * rng.uniform(0.15, 0.4))
        draw.rounded_rectangle((0, 0, w * s - 1, h * s - 1), radius=radius, fill=255)
    else:
        draw.ellipse((0, 0, w * s - 1, h * s - 1), fill=255)
    return mask.resize(size, Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(min(w, h) * 0.02))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(0, 255, 3)
    if rng.random() < 0.3:  # packaging is often white or near-white
        base = rng.uniform(200, 255) + rng.uniform(-15, 15, 3)
    return np.clip(base, 0, 255)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


def _fill(w: int, h: int, rng: np.random.Generator, textures: Sequence[np.ndarray]) -> np.ndarray:
    """An RGB float32 (h, w, 3) surface: a photo texture, or a flat colour with label bands and strokes."""
    if textures and rng.random() < 0.4:
        tex = textures[int(rng.integers(len(textures)))]
        return np.asarray(Image.fromarray(tex).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    img = Image.new("RGB", (w, h), _rgb(_random_colour(rng)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):  # label bands
        y0 = rng.uniform(0, h)
        draw.rectangle((0, y0, w, y0 + rng.uniform(0.05, 0.4) * h), fill=_rgb(_random_colour(rng)))
    if rng.random() < 0.5:  # a logo disc
        r = rng.uniform(0.1, 0.35) * w
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r), fill=_rgb(_random_colour(rng)))
    ink = _rgb(rng.uniform(0, 80, 3) if rng.random() < 0.7 else _random_colour(rng))
    for _ in range(int(rng.integers(0, 12))):  # text-like strokes
        x0, y0 = rng.uniform(0.05, 0.7) * w, rng.uniform(0.05, 0.95) * h
        th = max(1.0, rng.uniform(0.015, 0.06) * h)
        draw.rectangle((x0, y0, x0 + rng.uniform(0.1, 0.6) * w, y0 + th), fill=ink)
    return np.asarray(img, np.float32)


def _shape_mask(kind: str, w: int, h: int, rng: np.random.Generator) -> tuple[Image.Image, int, int]:
    """The silhouette of `kind` at (w, h), drawn 3x supersampled; returns (mask, body top, body bottom)."""
    s = 3
    W, H = w * s, h * s
    mask = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(mask)
    top, bottom = 0, H
    if kind == "carton":
        top = int(H * rng.uniform(0.08, 0.18))
        d.rectangle((0, top, W - 1, H - 1), fill=255)
        if rng.random() < 0.6:  # gable top
            d.polygon([(0, top), (W * 0.15, 0), (W * 0.85, 0), (W - 1, top)], fill=255)
        else:  # flat top with a screw cap
            d.rectangle((0, top * 0.6, W - 1, top), fill=255)
            cw = W * rng.uniform(0.2, 0.35)
            cx = W * rng.uniform(0.3, 0.7)
            d.rectangle((cx - cw / 2, 0, cx + cw / 2, top * 0.6), fill=255)
    elif kind == "box":
        d.rectangle((0, 0, W - 1, H - 1), fill=255)
    elif kind == "can":
        e = int(W * rng.uniform(0.08, 0.18))
        top, bottom = e, H - e
        d.rectangle((0, e, W - 1, H - e), fill=255)
        d.ellipse((0, 0, W - 1, 2 * e), fill=255)
        d.ellipse((0, H - 2 * e - 1, W - 1, H - 1), fill=255)
    elif kind in ("bottle", "jar"):
        neck_w = W * (rng.uniform(0.25, 0.4) if kind == "bottle" else rng.uniform(0.7, 0.9))
        neck_h = H * (rng.uniform(0.12, 0.25) if kind == "bottle" else rng.uniform(0.05, 0.1))
        shoulder = H * (rng.uniform(0.1, 0.25) if kind == "bottle" else rng.uniform(0.02, 0.06))
        top = int(neck_h + shoulder)
        r = W * rng.uniform(0.05, 0.2)
        d.rounded_rectangle((0, top, W - 1, H - 1), radius=r, fill=255)
        x0, x1 = (W - neck_w) / 2, (W + neck_w) / 2
        d.polygon([(x0, neck_h), (x1, neck_h), (W - 1, top + r), (0, top + r)], fill=255)  # shoulder
        d.rectangle((x0, 0, x1, neck_h), fill=255)
    else:  # fruit: a wobbly ellipse
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        radius = 1 + sum(rng.uniform(-0.06, 0.06) * np.cos(k * t + rng.uniform(0, 6.3)) for k in (2, 3, 5))
        xs, ys = W / 2 * (1 + 0.94 * radius * np.cos(t)), H / 2 * (1 + 0.94 * radius * np.sin(t))
        pts = list(zip(xs.tolist(), ys.tolist(), strict=True))
        d.polygon(pts, fill=255)
    return mask.resize((w, h), Image.Resampling.BOX), top // s, bottom // s


def _shading(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A (h, w) light multiplier: a cylinder for round packaging, a sphere for fruit, faces for boxes."""
    x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    light = rng.uniform(-0.5, 0.5)  # where the highlight sits
    if kind in ("can", "bottle", "jar"):
        cyl = np.sqrt(np.clip(1 - x**2, 0, 1))
        spec = np.exp(-((x - light) ** 2) / 0.02) * rng.uniform(0.1, 0.5)
        return np.broadcast_to(0.55 + 0.45 * cyl + spec, (h, w)).astype(np.float32)
    if kind == "fruit":
        y = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / h * 2 - 1
        r2 = x[None, :] ** 2 + y**2
        sph = np.sqrt(np.clip(1 - r2, 0, 1))
        spec = np.exp(-((x[None, :] - light) ** 2 + (y + 0.4) ** 2) / 0.05) * rng.uniform(0.1, 0.4)
        return (0.5 + 0.5 * sph + spec).astype(np.float32)
    shade = np.ones((h, w), np.float32)
    if rng.random() < 0.6:  # a side face, turned away from the light
        side = int(w * rng.uniform(0.15, 0.35))
        if rng.random() < 0.5:
            shade[:, :side] = rng.uniform(0.55, 0.8)
        else:
            shade[:, w - side:] = rng.uniform(0.55, 0.8)
    return shade * np.linspace(rng.uniform(0.85, 1.1), rng.uniform(0.85, 1.1), h, dtype=np.float32)[:, None]


_ASPECTS = {  # height / width ranges
    "carton": (1.6, 2.8), "box": (0.6, 1.6), "can": (1.2, 2.0), "bottle": (2.2, 3.6), "jar": (0.9, 1.5),
    "fruit": (0.75, 1.3),
}


def _procedural(kind: str, rng: np.random.Generator, textures: Sequence[np.ndarray]) -> Cutout:
    h = int(rng.integers(140, 224))
    w = max(16, int(h / rng.uniform(*_ASPECTS[kind])))
    mask, top, bottom = _shape_mask(kind, w, h, rng)
    rgb = _fill(w, h, rng, textures) if kind != "fruit" else _fruit_fill(w, h, rng, textures)
    if kind in ("bottle", "jar", "carton") and top > 0 and rng.random() < 0.8:  # a cap in its own colour
        cap_h = max(2, int(top * (0.45 if kind == "bottle" else 0.9)))
        rgb[:cap_h] = _random_colour(rng)
    if kind == "can":  # metallic lid and base
        metal = rng.uniform(150, 220)
        rgb[: top + 1] = metal
        rgb[bottom:] = metal * 0.85
    rgb = np.clip(rgb * _shading(kind, w, h, rng)[..., None], 0, 255)
    rgba = np.dstack([rgb.astype(np.uint8), np.asarray(mask)])
    return _crop_to_alpha(rgba, f"procedural:{kind}", "procedural")


def _fruit_fill(w: int, h: int, rng: np.random.Generator, textures: Sequence[np.ndarray]) -> np.ndarray:
    """Fruit skin: one hue with low-frequency mottling (or a photo texture)."""
    if textures and rng.random() < 0.3:
        return _fill(w, h, rng, textures)
    base = _random_colour(rng)
    blot = rng.uniform(-1, 1, (4, 4, 3)).astype(np.float32)
    blots = Image.fromarray(((blot + 1) * 127.5).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    mottle = np.asarray(blots, np.float32) / 127.5 - 1
    speck = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(base + mottle * rng.uniform(10, 40) + speck, 0, 255).astype(np.float32)

