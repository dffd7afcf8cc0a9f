"""Tests for skulens.data.decode: every rejection rule and every mode conversion, on tiny real files."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from skulens.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, sniff_format, to_rgb


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _rgb(size: tuple[int, int] = (16, 12), colour: tuple[int, int, int] = (200, 30, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width x height`` whose pixel data is a single tiny row: a bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


# --- sniffing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_sniff_format_recognises_real_files(fmt: str) -> None:
    assert sniff_format(_encode(_rgb(), fmt)) == fmt


@pytest.mark.parametrize(
    "data", [b"", b"hello, world", b"BM but not a bitmap header", b"RIFF\x00\x00\x00\x00WAVE"]
)
def test_sniff_format_rejects_non_images(data: bytes) -> None:
    assert sniff_format(data) is None


# --- rejections ----------------------------------------------------------------------------------


def test_error_carries_source_and_reason(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.source == str(path)
    assert info.value.reason == "empty file"
    assert str(info.value) == f"{path}: empty file"
    assert isinstance(info.value, ValueError)


def test_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ImageDecodeError("a.jpg", "empty file")))
    assert (error.source, error.reason, str(error)) == ("a.jpg", "empty file", "a.jpg: empty file")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")


def test_text_with_image_name_is_not_an_image(tmp_path: Path) -> None:
    path = _write(tmp_path / "photo.jpg", b"this is a text file, honest\n")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.reason.startswith("not an image (")


def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="<bytes>: empty file"):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_an_error(tmp_path: Path, fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(noise, fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never flipped globally


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jpg", b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(path)


def test_too_many_pixels_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.png", _encode(_rgb((100, 80)), "PNG"))
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, max_pixels=5000)
    assert info.value.reason == "too many pixels (100 x 80 > 5000)"


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    # Almost no pixel data: if the decoder ran, this would be "corrupt", not "too many pixels".
    with pytest.raises(ImageDecodeError, match=r"too many pixels \(8000 x 8000 > 40000000\)"):
        decode_image(_png_header_only(8000, 8000))
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_default_limit_admits_large_phone_photos() -> None:
    # Header-only 6000x6000: passes the pixel check, then fails only as a truncated file.
    with pytest.raises(ImageDecodeError, match="corrupt|truncated"):
        decode_image(_png_header_only(6000, 6000))


def test_pillow_bomb_guard_is_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(_encode(_rgb((30, 30)), "PNG"), max_pixels=10**9)


# --- formats and orientation ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_each_format_decodes_to_loaded_rgb(tmp_path: Path, fmt: str) -> None:
    # A misleading extension on purpose: the bytes decide.
    path = _write(tmp_path / "image.dat", _encode(_rgb((16, 12), (0, 0, 255)), fmt))
    img = decode_image(path)
    assert img.mode == "RGB" and img.size == (16, 12)
    r, g, b = img.getpixel((8, 6))
    assert b > 200 and r < 50 and g < 50


def test_bytes_input() -> None:
    img = decode_image(_encode(_rgb((5, 7)), "PNG"))
    assert img.size == (5, 7) and img.getpixel((0, 0)) == (200, 30, 40)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _write(tmp_path / "rotated.jpg", _encode(_rgb((40, 20)), "JPEG", exif=exif.tobytes()))
    assert decode_image(path).size == (20, 40)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, _, b = decode_image(buffer.getvalue()).getpixel((4, 4))
    assert r > 200 and b < 50


# --- mode conversions ----------------------------------------------------------------------------


def test_rgba_transparent_becomes_white_and_opaque_is_kept() -> None:
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (10, 20, 30, 255))
    out = decode_image(_encode(img, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (10, 20, 30)


def test_half_transparent_black_is_composited_to_grey() -> None:
    out = decode_image(_encode(Image.new("RGBA", (1, 1), (0, 0, 0, 128)), "PNG"))
    assert all(125 <= v <= 129 for v in out.getpixel((0, 0)))


def test_la_transparent_becomes_white() -> None:
    out = decode_image(_encode(Image.new("LA", (1, 1), (0, 0)), "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_becomes_white() -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 250, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    out = decode_image(_encode(img, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (250, 0, 0)


def test_palette_without_transparency() -> None:
    img = Image.new("P", (1, 1), 0)
    img.putpalette([12, 34, 56] + [0] * 765)
    assert decode_image(_encode(img, "PNG")).getpixel((0, 0)) == (12, 34, 56)


def test_pa_mode_via_to_rgb() -> None:
    img = Image.new("RGBA", (1, 1), (0, 0, 0, 0)).convert("PA")
    assert img.mode == "PA"
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg() -> None:
    out = decode_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 220 and g < 40 and b < 40  # pure red


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = decode_image(_encode(img, "PNG"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_int32_mode_in_sixteen_bit_range() -> None:
    img = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert img.mode == "I"
    out = decode_image(_encode(img, "TIFF"))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


def test_int32_mode_out_of_range_is_stretched() -> None:
    out = to_rgb(Image.fromarray(np.array([[-1000, 1000]], dtype=np.int32)))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


def test_float_mode() -> None:
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert img.mode == "F"
    out = decode_image(_encode(img, "TIFF"))
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    stretched = to_rgb(Image.fromarray(np.array([[10.0, 20.0]], dtype=np.float32)))
    assert [stretched.getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_greyscale_and_bilevel() -> None:
    assert decode_image(_encode(Image.new("L", (1, 1), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    assert decode_image(_encode(Image.new("1", (1, 1), 1), "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(_encode(Image.new("1", (1, 1), 0), "BMP")).getpixel((0, 0)) == (0, 0, 0)


# --- reduce_to -----------------------------------------------------------------------------------


def test_reduce_to_sets_short_side_for_jpeg_and_uses_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str | None, tuple[int, int] | None]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None):
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = decode_image(_encode(_rgb((1600, 1200)), "JPEG"), reduce_to=100)
    assert calls == [("RGB", (100, 100))]
    assert out.size == (133, 100)


def test_reduce_to_portrait_png() -> None:
    out = decode_image(_encode(_rgb((300, 400)), "PNG"), reduce_to=150)
    assert out.size == (150, 200)


def test_reduce_to_never_upscales() -> None:
    assert decode_image(_encode(_rgb((40, 30)), "JPEG"), reduce_to=100).size == (40, 30)
    assert decode_image(_encode(_rgb((40, 30)), "PNG"), reduce_to=30).size == (40, 30)


def test_reduce_to_after_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_encode(_rgb((400, 200)), "JPEG", exif=exif.tobytes()), reduce_to=50)
    assert out.size == (50, 100)


def test_reduce_to_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reduce_to"):
        decode_image(_encode(_rgb(), "PNG"), reduce_to=0)


def test_pil_to_rgb_copies_only_what_it_must_turn_or_convert() -> None:
    from skulens.data.decode import pil_to_rgb

    upright = Image.new("RGB", (40, 20), (10, 200, 30))
    assert pil_to_rgb(upright) is upright  # nothing to do: not copied (an 80 MP shelf photo is 240 MB)
    turned = Image.new("RGB", (40, 20), (10, 200, 30))
    exif = turned.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees to view
    out = pil_to_rgb(Image.open(io.BytesIO(_save_jpeg(turned, exif))))
    assert out.size == (20, 40)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    flat = pil_to_rgb(rgba)
    assert flat is not rgba and flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)
    assert rgba.mode == "RGBA"  # the caller's image is not changed


def _save_jpeg(im: Image.Image, exif: Image.Exif) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_an_image_past_pillows_own_bomb_guard_names_this_limit() -> None:
    """A 20000 x 20000 PNG (a few hundred KB) stopped at Pillow's guard, whose message named Pillow's limit
    (178956970 pixels), not the one the caller set."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_png_header_only(20000, 20000))
    assert info.value.reason == "too many pixels (400000000 > 40000000)"


def test_a_photo_over_pillows_warning_size_is_refused_without_its_warning(tmp_path: Path) -> None:
    """Pillow's DecompressionBombWarning (over 89.5 MP) printed two raw lines before skulens' one-line refusal."""
    import subprocess
    import sys

    (tmp_path / "h.png").write_bytes(_png_header_only(12000, 9000))
    code = ("import sys; from skulens.data.decode import decode_image, ImageDecodeError\n"
            "try: decode_image(sys.argv[1], max_pixels=80_000_000)\n"
            "except ImageDecodeError as e: print(e.reason)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "h.png")], check=True, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.strip() == "too many pixels (12000 x 9000 > 80000000)" and r.stderr == "", r.stderr


def test_a_pixel_limit_above_pillows_own_names_pillows() -> None:
    """`serve --max-pixels` above Pillow's guard: the message said '225000000 > 300000000', against itself."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_png_header_only(15000, 15000), max_pixels=300_000_000)
    assert info.value.reason == f"too many pixels (225000000 > {2 * Image.MAX_IMAGE_PIXELS}, Pillow's own limit)"


def test_a_progressive_jpeg_is_limited_at_its_stored_size_when_decoded_small() -> None:
    """A progressive JPEG decoded at 1/8 still costs memory for its whole size (libjpeg keeps every coefficient): a
    1 MB, 169 MP one passed a 40 MP limit and took ~500 MB of the service per upload. A baseline JPEG of the same
    size still decodes at 1/8 under the limit."""
    photo = _rgb((160, 120))
    baseline = decode_image(_encode(photo, "JPEG"), max_pixels=5000, reduce_to=10)
    assert baseline.size == (13, 10)  # decoded at 1/8: 20 x 15 = 300 pixels, under the limit
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_encode(photo, "JPEG", progressive=True), max_pixels=5000, reduce_to=10)
    assert info.value.reason == "too many pixels (progressive JPEG, 160 x 120 > 5000)"
    assert decode_image(_encode(photo, "JPEG", progressive=True), max_pixels=20000, reduce_to=10).size == (13, 10)
