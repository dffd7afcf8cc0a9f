"""Safe image decoding: every image skulens reads goes through :func:`decode_image`.

Policy, in the order it is applied:

* **Fail loudly, with the source named.** Anything that cannot become a
  sensible RGB image raises :class:`ImageDecodeError` (a ``ValueError``) whose
  message starts with the file or ``<bytes>``; a training run or a request
  handler can then skip or report it instead of crashing deep inside a worker.
* **Trust the bytes, not the name.** The real format comes from the magic
  bytes (:func:`sniff_format`), and Pillow is only allowed to try that one
  decoder. Only the six formats product photos arrive in are accepted; a
  text file called ``photo.jpg`` is "not an image".
* **Check the size before decoding.** Pillow reads the header lazily, so the
  pixel count is checked against ``max_pixels`` before a single pixel is
  decoded (decompression bombs); Pillow's own bomb guard is mapped to the
  same error. So is the aspect ratio, against ``max_aspect``: a 100000 x 1
  PNG is a few hundred bytes and 0.1 MP, but resizing its short side to a
  model's input makes it tens of gigabytes.
* **No silent truncation.** ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone
  (it is process-global); a truncated file is an error, not a grey band.
* **Canonical output.** EXIF orientation is applied, the first frame of an
  animation is used, and every mode becomes 8-bit RGB: transparency is
  composited on white (product shots are on white; black would invent dark
  backgrounds), 16-bit and float greyscale are rescaled rather than clipped.
* **Cheap downscaling.** ``reduce_to`` lets JPEGs decode at 1/2, 1/4 or 1/8
  scale inside libjpeg, then resizes so the short side equals ``reduce_to``.
  Images are never upscaled.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import ExifTags, Image, ImageOps

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_MAX_ASPECT", "DEFAULT_MAX_PIXELS", "ImageDecodeError", "decode_any", "decode_image", "pil_to_rgb",
           "sniff_format", "to_rgb"]

logger = logging.getLogger(__name__)

# 40 MP: a 6000x6000 phone photo (36 MP) passes, a 20000x20000 (400 MP) bomb does not.
DEFAULT_MAX_PIXELS = 40_000_000
# Pillow warns of any photo over 89.5 MP as it opens the header: skulens checks its own limit there (40 MP, 80 for
# count) and refuses in one line, so the warning only printed two raw lines before that refusal.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module="PIL.Image")
# Long side over short side: a 360-degree shelf panorama (about 8:1) passes, a 100000 x 1 strip does not.
DEFAULT_MAX_ASPECT = 25.0

# 2.0: reduce by an integer box filter first, then Lanczos over the last <2x; as fast as
# bilinear on big inputs and as sharp as Lanczos (what Image.thumbnail does).
_REDUCING_GAP = 2.0

_BYTES_SOURCE = "<bytes>"
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Sizes of the known BMP info headers: "BM" alone is too weak a signature for text files.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


class ImageDecodeError(ValueError):
    """An input that cannot be decoded into an RGB image; ``str(e) == f"{source}: {reason}"``."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, str]]:
        # Needed so the error survives the trip back from a DataLoader worker process.
        return (type(self), (self.source, self.reason))


def sniff_format(data: bytes) -> str | None:
    """Return the Pillow format name the magic bytes announce, or None if not a supported image."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    # Classic TIFF (42) and BigTIFF (43), little- and big-endian.
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def decode_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the raw bytes) into a fully loaded 8-bit RGB image.

    Raises:
        ImageDecodeError: empty, missing, unreadable, not an image, corrupt or truncated,
            more than ``max_pixels`` pixels, or a long side more than ``max_aspect`` times the short one.
    """
    if reduce_to is not None and reduce_to < 1:
        raise ValueError(f"reduce_to must be a positive int, got {reduce_to}")
    name, data = _read_source(source)
    if not data:
        raise ImageDecodeError(name, "empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(name, f"not an image (unrecognised header {data[:8]!r})")
    drafted = reduce_to is not None and fmt == "JPEG"
    img = _open_checked(name, data, fmt, max_pixels, max_aspect, pixels=not drafted)
    if drafted and img.info.get("progressive"):
        # libjpeg holds a progressive JPEG's coefficients for the whole photo whatever the scale it decodes at
        # (a 1 MB, 169 MP progressive JPEG took ~500 MB at 1/8): its stored size is what is limited
        _check_size(name, img.size, max_pixels, max_aspect, empty="corrupt JPEG", what="progressive JPEG, ")
    if drafted:
        # Asks libjpeg for the largest 1/1..1/8 scale that keeps both sides >= reduce_to; the pixel limit is for
        # what is decoded (a 48 MP phone JPEG wanted at 224 px decodes at 1/8, 0.75 MP: it was refused)
        img.draft("RGB", (reduce_to, reduce_to))
        _check_size(name, img.size, max_pixels, max_aspect, empty="corrupt JPEG")
    _load(name, img, fmt)
    img = _apply_orientation(name, img)
    img = to_rgb(img, source=name)
    if reduce_to is not None:
        img = _shrink_short_side(img, reduce_to)
    return img


def _read_source(source: str | os.PathLike[str] | bytes) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _BYTES_SOURCE, bytes(source)
    path = Path(source)
    name = str(path)
    try:
        # Whole file into memory: photos are a few MB, and it frees the file handle at once
        # (Pillow keeps multi-frame GIF/TIFF files open otherwise).
        return name, path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(name, "is a directory, not a file") from None
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from exc


def _open_checked(name: str, data: bytes, fmt: str, max_pixels: int, max_aspect: float, *,
                  pixels: bool = True) -> Image.Image:
    """Parse only the header, then refuse oversized (`pixels`: the caller checks the size it will decode) or
    extremely elongated images before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:  # past Pillow's own guard (2 x 89.5 MP): say this limit, not its
        found = re.search(r"\((\d+) pixels\)", str(exc))
        guard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = max_pixels if max_pixels < guard else f"{guard}, Pillow's own limit"  # a --max-pixels above it
        raise ImageDecodeError(name, f"too many pixels ({found[1] if found else 'more'} > {limit})") from None
    except Image.UnidentifiedImageError:
        # Its message only repeats the BytesIO repr; the sniffed format says more.
        raise ImageDecodeError(name, f"corrupt {fmt} (unreadable header)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(name, f"corrupt {fmt} ({exc})") from exc
    _check_size(name, img.size, max_pixels if pixels else math.inf, max_aspect, empty=f"corrupt {fmt}")
    return img


def _check_size(name: str, size: tuple[int, int], max_pixels: float, max_aspect: float, *, empty: str,
                what: str = "") -> None:
    """The size policy, before any pixel is decoded: the pixel limit, no empty side, the aspect limit."""
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(name, f"too many pixels ({what}{width} x {height} > {max_pixels})")
    if width < 1 or height < 1:
        raise ImageDecodeError(name, f"{empty} (size {width} x {height})")
    if max(width, height) > max_aspect * min(width, height):
        raise ImageDecodeError(name, f"extreme aspect ratio ({width} x {height}, more than {max_aspect:g}:1)")


def _load(name: str, img: Image.Image, fmt: str) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"too many pixels ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(name, f"corrupt or truncated {fmt} ({exc})") from exc


def _apply_orientation(name: str, img: Image.Image) -> Image.Image:
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: saves a full-size copy
    except Exception as exc:  # noqa: BLE001 - any EXIF parser failure
        # A mangled EXIF block should not cost us an otherwise good photo; keep it as stored.
        logger.debug("%s: ignoring unreadable EXIF orientation (%s)", name, exc)
    return img


def decode_any(im: Image.Image | str | os.PathLike[str] | bytes, source: str = "<image>", *,
               max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None) -> Image.Image:
    """One input of the Python API as an RGB photo, whatever its form: a path or bytes decoded
    (`decode_image`), a caller's PIL image checked and shrunk as a file is (`pil_to_rgb`), so both give the
    model the same pixels (but for a big JPEG file, which libjpeg may decode at 1/2-1/8 scale first)."""
    if isinstance(im, Image.Image):
        return pil_to_rgb(im, source, max_pixels=max_pixels, reduce_to=reduce_to)
    return decode_image(im, max_pixels=max_pixels, reduce_to=reduce_to)


def pil_to_rgb(im: Image.Image, source: str = "<image>", *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect: float = DEFAULT_MAX_ASPECT, reduce_to: int | None = None) -> Image.Image:
    """A caller's PIL image under decode_image's policy: pixel and aspect limits, fully loaded (a truncated lazy
    file is an ImageDecodeError, not an OSError), EXIF orientation applied, alpha on white, high bit depths
    rescaled, and (reduce_to) the short side shrunk to reduce_to as decode_image shrinks a file. The caller's
    image is not changed; an upright RGB one that needs no shrinking is returned as it is (not copied: up to
    240 MB for an 80 MP shelf photo)."""
    if reduce_to is not None and reduce_to < 1:
        raise ValueError(f"reduce_to must be a positive int, got {reduce_to}")
    _check_size(source, im.size, max_pixels, max_aspect, empty="empty image")
    _load(source, im, "image")
    try:
        turned = im.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1)
        upright = ImageOps.exif_transpose(im) if turned else im  # a copy: the caller's keeps its pixels and EXIF
    except Exception:  # noqa: BLE001 - a mangled EXIF block: keep the image as stored, as decode_image does
        upright = im
    rgb = to_rgb(upright if upright is not None else im, source=source)
    return rgb if reduce_to is None else _shrink_short_side(rgb, reduce_to)


def to_rgb(img: Image.Image, *, source: str = "<image>") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha on white, high bit depths rescaled).

    ``source`` only names the image in the :class:`ImageDecodeError` for an unsupported mode.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        return _on_white(img.convert("RGBA")) if has_alpha else img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _on_white(img.convert("RGBA"))
    if "transparency" in img.info and mode in ("L", "RGB"):
        return _on_white(img.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_depth_to_rgb(img)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(source, f"unsupported image mode {mode!r}") from exc


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Rescale 16-bit / 32-bit / float greyscale to 0..255; Pillow's own convert clips at 255."""
    import numpy as np  # lazy: only exotic scans and medical-style TIFFs get here

    arr = np.asarray(img).astype(np.float64)
    if img.mode in _SIXTEEN_BIT_MODES:
        scaled = arr / 257.0  # 65535 / 255: the full 16-bit range maps onto the full 8-bit range
    elif img.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        scaled = arr / 257.0  # Pillow's "I" from a file is almost always a 16-bit container
    elif img.mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        scaled = arr * 255.0  # normalised float data
    else:
        scaled = _stretch(arr)
    out = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
    return Image.fromarray(out).convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map [min, max] linearly onto [0, 255]; values outside any known range carry no scale."""
    import numpy as np

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _shrink_short_side(img: Image.Image, reduce_to: int) -> Image.Image:
    width, height = img.size
    short = min(width, height)
    if short <= reduce_to:
        return img  # never upscale
    scale = reduce_to / short
    size = (
        reduce_to if width == short else max(1, round(width * scale)),
        reduce_to if height == short else max(1, round(height * scale)),
    )
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
