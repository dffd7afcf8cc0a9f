"""Draw detections on photos, and lay photos out in a grid, for people to look at.

Everything here takes and returns PIL images and never touches a file. Sizes scale with the photo, so a
box drawn on a 4000 px shelf photo is as visible as one on a 320 px thumbnail, and every line and tag has a
dark edge so it reads on white shelves and dark fridges alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps

from skulens.detect.boxes import as_boxes

__all__ = ["PREDICTED", "TRUTH", "UNKNOWN", "Color", "contact_sheet", "draw_boxes"]

Color = tuple[int, int, int]

PREDICTED: Color = (0, 200, 83)  # green: a detection, labelled or not
UNKNOWN: Color = (255, 145, 0)  # orange: a detection the recogniser could not name
TRUTH: Color = (255, 255, 255)  # white dashes over dark ones: ground truth, under the predictions
_EDGE: Color = (0, 0, 0)
_SHEET_BACKGROUND: Color = (32, 32, 32)

ColorArg = Color | str | Sequence[Color | str] | None


def _line_width(size: tuple[int, int]) -> int:
    # 1 px on a 320 px thumbnail, 9 px on a 3000 px phone photo: a box stays visible when the photo is shrunk.
    return max(1, round(min(size) / 320))


def _font_size(size: tuple[int, int]) -> int:
    # 10 px: the smallest PIL's default font stays legible at; 1/50 of the short side on big photos.
    return max(10, round(min(size) / 50))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_boxes(
    image: Image.Image,
    boxes: object,
    *,
    labels: Sequence[str | None] | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    colors: ColorArg = None,
    width: int | None = None,
    truth: object | None = None,
) -> Image.Image:
    """A copy of `image` (as RGB, same size) with `boxes` (N, 4 xyxy pixels) drawn on it.

    labels: one per box; a None label is drawn in orange as "unknown". scores: one per box, shown after the
    label. Boxes with a label or a score get a filled tag above them (inside the box when it touches the top).
    colors: one colour for all boxes or one per box (default green, orange for unknown labels).
    width: line width in pixels (default scaled to the image). truth: ground-truth boxes drawn thin and
    dashed underneath, to compare against.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    arr = _ordered(as_boxes(boxes))
    n = len(arr)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{n} boxes but {len(labels)} labels")
    if scores is not None and len(scores) != n:
        raise ValueError(f"{n} boxes but {len(scores)} scores")
    lw = width if width is not None else _line_width(out.size)
    draw = ImageDraw.Draw(out)
    if truth is not None:
        for box in _ordered(as_boxes(truth)):
            _dashed_rectangle(draw, box, max(1, lw // 2), dash=max(4, 4 * lw))
    box_colors = _box_colors(colors, labels, n)
    for box, color in zip(arr, box_colors):
        _framed_rectangle(draw, box, color, lw)
    # Tags after every box, so no box line crosses another box's text.
    font = _font(_font_size(out.size))
    for i, (box, color) in enumerate(zip(arr, box_colors)):
        text = _tag_text(labels[i] if labels is not None else None, labels is not None,
                         None if scores is None else float(scores[i]))
        if text:
            _tag(draw, box, text, color, font, out.size)
    return out


def contact_sheet(
    images: Sequence[Image.Image],
    *,
    columns: int = 4,
    cell: int = 320,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """`images` in a grid of `cell` x `cell` squares, `min(columns, len(images))` wide, row by row.

    Each image is scaled (up or down, aspect kept) to fit its square and centred; a title, when given, sits on a
    dark band at the top of the square. The sheet is exactly `columns_used * cell` by `rows * cell` pixels.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if columns < 1 or cell < 16:
        raise ValueError(f"columns must be >= 1 and cell >= 16, got columns={columns}, cell={cell}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * cell, rows * cell), _SHEET_BACKGROUND)
    font = _font(max(10, cell // 20))
    band = 0 if titles is None else _text_size(font, "Ag")[1] + 6
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(images):
        x0, y0 = (i % cols) * cell, (i // cols) * cell
        fitted = ImageOps.contain(img.convert("RGB"), (cell, cell - band))
        sheet.paste(fitted, (x0 + (cell - fitted.width) // 2, y0 + band + (cell - band - fitted.height) // 2))
        if titles is not None:
            draw.text((x0 + 3, y0 + 3), _fit_text(titles[i], font, cell - 6), fill=(240, 240, 240), font=font)
    return sheet


def _ordered(boxes: np.ndarray) -> np.ndarray:
    # PIL refuses x2 < x1; a box is a box whichever corner came first.
    return np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)


def _box_colors(colors: ColorArg, labels: Sequence[str | None] | None, n: int) -> list[Color | str]:
    if colors is None:
        if labels is None:
            return [PREDICTED] * n
        return [UNKNOWN if label is None else PREDICTED for label in labels]
    if isinstance(colors, str) or (isinstance(colors, tuple) and colors and isinstance(colors[0], int)):
        return [colors] * n  # type: ignore[list-item]
    per_box = list(colors)  # type: ignore[arg-type]
    if len(per_box) != n:
        raise ValueError(f"{n} boxes but {len(per_box)} colors")
    return per_box


def _framed_rectangle(draw: ImageDraw.ImageDraw, box: np.ndarray, color: Color | str, lw: int) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    # A 1 px dark edge either side of the coloured line: green on a green shelf still shows.
    draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=_EDGE, width=lw + 2)
    draw.rectangle((x1, y1, x2, y2), outline=color, width=lw)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: np.ndarray, lw: int, dash: int) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        steps = max(1, int(length // dash))
        for k in range(steps):
            t0, t1 = k / steps, (k + 1) / steps
            p0 = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
            p1 = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
            # White and black dashes in turn: one of the two shows on any background.
            draw.line((p0, p1), fill=TRUTH if k % 2 == 0 else _EDGE, width=lw)


def _tag_text(label: str | None, labelled: bool, score: float | None) -> str:
    parts = []
    if labelled:
        parts.append("unknown" if label is None else label)
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(parts)


def _text_size(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - min(left, 0)), int(bottom - min(top, 0))


def _tag(
    draw: ImageDraw.ImageDraw,
    box: np.ndarray,
    text: str,
    color: Color | str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    size: tuple[int, int],
) -> None:
    pad = max(1, _font_size(size) // 5)
    tw, th = _text_size(font, text)
    w, h = tw + 2 * pad, th + 2 * pad
    x = min(max(0.0, float(box[0])), max(0.0, size[0] - w))
    y = float(box[1]) - h if float(box[1]) - h >= 0 else float(box[1])
    draw.rectangle((x, y, x + w, y + h), fill=color, outline=_EDGE)
    draw.text((x + pad, y + pad), text, fill=_readable_on(color), font=font)


def _readable_on(color: Color | str) -> Color:
    r, g, b = ImageColor.getrgb(color)[:3] if isinstance(color, str) else color
    # Rec. 601 luma: dark text on light tags (green, orange), white on dark ones.
    return _EDGE if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _fit_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    if _text_size(font, text)[0] <= width:
        return text
    while text and _text_size(font, text + "...")[0] > width:
        text = text[:-1]
    return text + "..."
