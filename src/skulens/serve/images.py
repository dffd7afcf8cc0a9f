"""Image bytes the service stores: re-encoded from pixels, so EXIF (GPS included), XMP and ICC never survive."""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from ..data.decode import DEFAULT_MAX_PIXELS, decode_image

__all__ = ["STORED_SHORT_SIDE", "content_hash", "encode_jpeg", "stripped_jpeg"]

# 768: ~3x the model's input, enough to retrain at any size skulens uses, small enough to keep by the thousand.
STORED_SHORT_SIDE = 768


def content_hash(data: bytes) -> str:
    """sha256 of the bytes as received: the intake's idempotency key (the same photo twice counts once)."""
    return hashlib.sha256(data).hexdigest()


def stripped_jpeg(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, short_side: int = STORED_SHORT_SIDE) -> bytes:
    """Decode (safely, EXIF orientation applied) and re-encode as a JPEG with no metadata at all."""
    return encode_jpeg(decode_image(data, max_pixels=max_pixels, reduce_to=short_side), short_side=short_side)


def encode_jpeg(img: Image.Image, *, short_side: int = STORED_SHORT_SIDE) -> bytes:
    """Decoded pixels as a JPEG with no metadata at all, the short side shrunk to `short_side` if longer."""
    scale = short_side / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)  # a new image, with a copy of the photo's info
    else:
        img = img.copy()
    # Pillow writes some of the decoded photo's own info back when it saves (a JPEG or GIF comment, XMP), which
    # can hold what a person typed: none of it is kept. No exif=/icc_profile= given either: none written.
    img.info.clear()
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, optimize=True)
    return out.getvalue()
