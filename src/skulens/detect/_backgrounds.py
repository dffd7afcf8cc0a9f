"""The scene around the pasted objects: backgrounds, shelf boards and bins, and whole-canvas photo effects.

Everything works on float32 (H, W, 3) arrays in [0, 255] and draws its randomness from the caller's
generator, so a composite is a pure function of (seed, index). Public via `synth`.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from ..data.catalogue import Sample
from ..data.decode import decode_image

BACKGROUND_KINDS = ("flat", "gradient", "texture", "photo")
TEXTURE_KINDS = ("stripes", "checks", "wood", "noise", "bands")


def photo_thumbnails(samples: Sequence[Sample], n: int, *, size: int = 24, seed: int = 0) -> list[np.ndarray]:
    """`n` in-store photos shrunk to `size` pixels: blown up to a canvas they are blurred beyond recognition.

    24 px: upscaled to 512 a product is a smear, so photos give colours and layout, never "products are
    background" (the composites' only products are the pasted, boxed ones).
    """
    if not samples or n <= 0:
        return []
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    thumbs = [decode_image(samples[i].path, reduce_to=4 * size) for i in chosen.tolist()]
    return [np.asarray(t.resize((size, size), Image.Resampling.BOX)) for t in thumbs]


def make_background(kind: str, width: int, height: int, rng: np.random.Generator,
                    photos: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A (height, width, 3) float32 background of `kind` (one of BACKGROUND_KINDS)."""
    if kind == "photo" and photos:
        return _photo(photos[int(rng.integers(len(photos)))], width, height, rng)
    if kind == "flat":
        return np.broadcast_to(_colour(rng), (height, width, 3)).astype(np.float32)
    if kind == "gradient":
        return _gradient(width, height, _colour(rng), _colour(rng), rng)
    texture = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    # Made at half size and enlarged: a background needs no finer detail, and it costs a quarter.
    half = make_texture(texture, max(1, width // 2), max(1, height // 2), rng)
    return np.asarray(_enlarge(half, (width, height)), np.float32)


def make_texture(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural texture: stripes (cloth), checks/plaid, wood grain, cloudy noise or shelf-like bands."""
    if kind == "stripes":
        out = _stripes(height if rng.random() < 0.6 else width, rng)
        out = out[:, None, :] if out.shape[0] == height else out[None, :, :]
        return np.ascontiguousarray(np.broadcast_to(out, (height, width, 3)), np.float32)
    if kind == "checks":
        rows, cols = _stripes(height, rng), _stripes(width, rng)
        return (rows[:, None, :] + cols[None, :, :]) * 0.5
    if kind == "wood":
        base, dark = _colour(rng, (90, 200)), rng.uniform(0.55, 0.8)
        warp = smooth_noise(width, height, rng, cells=3) * rng.uniform(10, 40)
        y = np.arange(height, dtype=np.float32)[:, None] + warp
        grain = 0.5 + 0.5 * np.sin(y * rng.uniform(0.1, 0.4))
        fine = smooth_noise(width, height, rng, cells=48, anisotropy=8) * 0.15
        return base * (dark + (1 - dark) * grain + fine)[..., None]
    if kind == "noise":
        a, b = _colour(rng), _colour(rng)
        t = smooth_noise(width, height, rng, cells=int(rng.integers(2, 12)))[..., None] * 0.5 + 0.5
        return a * (1 - t) + b * t
    return _bands(width, height, rng)


def smooth_noise(width: int, height: int, rng: np.random.Generator, *, cells: int = 4,
                 anisotropy: int = 1) -> np.ndarray:
    """Value noise in [-1, 1] of shape (height, width): a cells x cells grid, bicubically upsampled."""
    grid = rng.uniform(-1, 1, (max(2, cells // anisotropy), max(2, cells))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC))


def draw_board(canvas: np.ndarray, y: int, thickness: int, rng: np.random.Generator) -> None:
    """A shelf board's front edge from row `y` down, with a lit top lip and sometimes price tags."""
    h, w, _ = canvas.shape
    y0, y1 = max(0, y), min(h, y + thickness)
    if y1 <= y0:
        return
    colour = _colour(rng)
    canvas[y0:y1] = colour * np.linspace(1.1, 0.8, y1 - y0, dtype=np.float32)[:, None, None]
    canvas[y0: min(y1, y0 + max(1, thickness // 6))] = np.minimum(colour * 1.3 + 20, 255)
    if rng.random() < 0.6 and thickness >= 6:  # price tags
        tag_w = int(rng.uniform(0.04, 0.1) * w)
        for x in range(int(rng.integers(0, w // 4 + 1)), w, int(rng.uniform(0.15, 0.35) * w)):
            top = y0 + max(1, thickness // 5)
            canvas[top: y1 - 1, x: x + tag_w] = _colour(rng, (200, 255))
            canvas[top + (y1 - top) // 2: top + (y1 - top) // 2 + 1, x + 2: x + tag_w - 2] = 30.0


def draw_floor(canvas: np.ndarray, y0: int, y1: int, rng: np.random.Generator) -> None:
    """A fridge or table surface seen from the front: a band that darkens towards the front."""
    h = canvas.shape[0]
    y0, y1 = max(0, y0), min(h, y1)
    if y1 > y0:
        colour = _colour(rng, (10, 120)) if rng.random() < 0.6 else _colour(rng)
        canvas[y0:y1] = colour * np.linspace(1.0, 0.7, y1 - y0, dtype=np.float32)[:, None, None]


def draw_bin(canvas: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """A crate or basket (a rectangle or ellipse, darker at its edges) that a heap lies in."""
    h, w, _ = canvas.shape
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 - cx0 < 4 or cy1 - cy0 < 4:
        return
    # Shaded at quarter size and enlarged: the bin is a smooth shape, and full size costs 16 times more.
    qw, qh = (cx1 - cx0) // 4, (cy1 - cy0) // 4
    u = (np.linspace(cx0, cx1, qw, dtype=np.float32) - (x0 + x1) / 2) / max(1, (x1 - x0) / 2)
    v = (np.linspace(cy0, cy1, qh, dtype=np.float32) - (y0 + y1) / 2) / max(1, (y1 - y0) / 2)
    if rng.random() < 0.4:
        r = np.sqrt(u[None, :] ** 2 + v[:, None] ** 2)
    else:
        r = np.maximum(np.abs(u)[None, :], np.abs(v)[:, None])
    shade = _colour(rng, (20, 160)) * (1.0 - 0.35 * np.minimum(r, 1)[..., None] ** 4)
    size = (cx1 - cx0, cy1 - cy0)
    shade_big = _enlarge(shade, size)
    edge = np.clip((1 - r) * min(qw, qh) / 2, 0, 1)  # a one-pixel ramp at quarter size: a smooth rim enlarged
    mask_big = Image.fromarray((edge * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    region = canvas[cy0:cy1, cx0:cx1]
    weight = np.asarray(Image.merge("RGB", (mask_big,) * 3), np.float32) / 255
    region += (np.asarray(shade_big, np.float32) - region) * weight


def lighting(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Uneven light as an RGB multiply mask: a darkening ramp across the canvas, or soft shadow blobs.

    Darkening only: brighter light is the global colour jitter's job. Made at 1/8 size and enlarged
    (the light varies slowly), and applied by Pillow on 8-bit pixels.
    """
    w, h = max(2, width // 8), max(2, height // 8)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32)
        ramp = float(np.cos(angle)) * x[None, :] + float(np.sin(angle)) * y[:, None]  # float(): stay float32
        ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
        gain = 1 - ramp * rng.uniform(0.15, 0.5)
    else:
        gain = 1 - np.clip(smooth_noise(w, h, rng, cells=3), 0, 1) * rng.uniform(0.2, 0.5)
    small = Image.fromarray((gain * 255).astype(np.uint8))
    return small.resize((width, height), Image.Resampling.BILINEAR).convert("RGB")


def colour_matrix(rng: np.random.Generator, strength: float, hue: float = 0.0) -> tuple[float, ...]:
    """A random colour transform for `Image.convert("RGB", matrix)`: brightness, contrast, saturation, hue.

    One affine map for all of it (the hue turns about the grey axis, as in YIQ), applied by Pillow on
    8-bit pixels: jitter costs one pass in C.
    """
    sat = 1 + rng.uniform(-strength, strength)
    contrast = 1 + rng.uniform(-strength, strength)
    bright = rng.uniform(-strength, strength) * 128
    c, s = np.cos(hue), np.sin(hue)
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = c * np.eye(3) + s * cross + (1 - c) * np.outer(k, k)  # Rodrigues: turn about (1, 1, 1)
    m = contrast * (sat * rot + (1 - sat) * np.full((3, 3), 1 / 3))
    offset = (1 - contrast) * 128 + bright
    return tuple(float(v) for row in m for v in (*row, offset))


def finish(canvas: np.ndarray, rng: np.random.Generator, *, light: Image.Image | None,
           matrix: tuple[float, ...] | None, blur: float, noise: float, jpeg: float) -> Image.Image:
    """The camera: uneven `light`, a colour cast (`matrix`), then optional blur, sensor noise and JPEG, each
    with its probability. Works on 8-bit images in Pillow from the start (`canvas` is clipped in place)."""
    image = Image.fromarray(np.clip(canvas, 0, 255, out=canvas).astype(np.uint8))
    if light is not None:
        image = ImageChops.multiply(image, light)
    if matrix is not None:
        image = image.convert("RGB", matrix=matrix)
    if rng.random() < blur:  # a soft, low-resolution camera: down and up again (1/5 of a blur filter's cost)
        f = rng.uniform(1.3, 2.5)
        small = image.resize((max(1, round(image.width / f)), max(1, round(image.height / f))),
                             Image.Resampling.BILINEAR)
        image = small.resize(image.size, Image.Resampling.BILINEAR)
    if rng.random() < noise:  # luminance grain: a window of a fixed noise field, scaled, added by Pillow
        field = _grain(image.width, image.height)
        x = int(rng.integers(0, field.width - image.width + 1))
        y = int(rng.integers(0, field.height - image.height + 1))
        k = rng.uniform(0.06, 0.3)  # the field's sigma is 32: grain sigma 2-10
        window = field.crop((x, y, x + image.width, y + image.height))
        grey = window.point([round(128 + (v - 128) * k) for v in range(256)])
        image = ImageChops.add(image, Image.merge("RGB", (grey, grey, grey)), offset=-128)
    if rng.random() < jpeg:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(rng.integers(25, 85)))
        image = Image.open(buf).convert("RGB")
    return image


# --- helpers -------------------------------------------------------------------------------------


def _enlarge(arr: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A small float RGB array as an 8-bit image, bilinearly resized to `size` (width, height)."""
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)


@functools.lru_cache(maxsize=4)
def _grain(width: int, height: int) -> Image.Image:
    """A fixed field of Gaussian noise (sigma 32 around 128), 256 px larger than the canvas each way.

    Fixed (seed 0) so it is the same in every process; composites differ by the window and the scale.
    """
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((height + 256, width + 256), dtype=np.float32) * 32 + 128.5
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))


def _colour(rng: np.random.Generator, span: tuple[float, float] = (0, 255)) -> np.ndarray:
    return rng.uniform(*span, 3).astype(np.float32)


def _gradient(width: int, height: int, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A linear blend from colour `a` to `b` in a random direction (made at 1/8 size: it is linear anyway)."""
    w, h = max(2, width // 8), max(2, height // 8)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32)
    t = float(np.cos(angle)) * x[None, :] + float(np.sin(angle)) * y[:, None]  # float(): stay float32
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    small = a * (1 - t[..., None]) + b * t[..., None]
    return np.asarray(_enlarge(small, (width, height)), np.float32)


def _stripes(length: int, rng: np.random.Generator) -> np.ndarray:
    """A (length, 3) profile of stripes: 2-4 colours repeating at random widths, like a striped cloth."""
    palette = [_colour(rng) for _ in range(int(rng.integers(2, 5)))]
    widths = rng.integers(2, max(3, length // 8), size=length)
    out = np.empty((length, 3), np.float32)
    pos, k = 0, 0
    while pos < length:
        out[pos: pos + widths[k]] = palette[k % len(palette)]
        pos += int(widths[k])
        k += 1
    return out


def _bands(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Horizontal bands of varied heights and colours: shelf fronts and the rows behind them."""
    out = np.empty((height, width, 3), np.float32)
    y = 0
    while y < height:
        band = int(rng.uniform(0.03, 0.3) * height) + 1
        out[y: y + band] = _colour(rng) * np.linspace(1.0, rng.uniform(0.6, 1.1), min(band, height - y),
                                                      dtype=np.float32)[:, None, None]
        y += band
    return out


def _photo(thumb: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A thumbnail cut into a grid, shuffled and blown up: blurred store colours, no recognisable product."""
    k = int(rng.integers(1, 4))
    th, tw = thumb.shape[0] // k, thumb.shape[1] // k
    tiles = [thumb[i * th: (i + 1) * th, j * tw: (j + 1) * tw] for i in range(k) for j in range(k)]
    order = rng.permutation(len(tiles))
    grid = np.concatenate([np.concatenate([tiles[order[i * k + j]] for j in range(k)], axis=1)
                           for i in range(k)], axis=0)
    if rng.random() < 0.5:
        grid = grid[:, ::-1]
    # Blurred at 1/4 size (cheap), then enlarged: the blur is ~2 % of the canvas, no product survives it.
    small = Image.fromarray(np.ascontiguousarray(grid)).resize((max(1, width // 4), max(1, height // 4)),
                                                                Image.Resampling.BICUBIC)
    small = small.filter(ImageFilter.GaussianBlur(max(width, height) / 256))
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), np.float32)
