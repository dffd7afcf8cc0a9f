"""Import real box annotations (Pascal VOC, COCO JSON, YOLO txt) as :class:`AnnotatedImage` lists.

Every reader returns absolute pixel corners ``(x1, y1, x2, y2)`` (see :mod:`.boxes`), images sorted by
path, and a photo without objects as an image with zero boxes (an empty shelf is data too). Every
problem raises :class:`AnnotationError`, naming the file and the line (XML, YOLO) or the JSON index.

Conventions, kept as given rather than guessed at:

* VOC corners are 1-based pixel indices; they are used as written (no ``xmin - 1``), as VOC sets such
  as the fridge sample are used in practice: one pixel is below any annotator's precision.
* A box sticking out of its image by up to ``EDGE_SLOP`` px is clipped to it; more is an error (a
  wrong image size or coordinate order, not annotator jitter), and so is a box wholly outside.
* YOLO boxes are fractions of the displayed (EXIF-rotated) photo, so its size comes from the header
  with the orientation applied; VOC and COCO sizes come from the file (the header only when absent).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any
from xml.etree import ElementTree as ET
from xml.parsers import expat

import yaml
from PIL import Image

from ..data.catalogue import IMAGE_SUFFIXES
from ..data.image_list import non_utf8_names
from .boxes import AnnotatedImage

__all__ = [
    "EDGE_SLOP", "AnnotationError", "detect_format", "load_annotations", "read_coco", "read_voc",
    "read_yolo", "write_coco",
]

EDGE_SLOP = 2.0  # px a box may stick out and be clipped: tools round corners outward, VOC is 1-based
_YOLO_SLOP = 1e-3  # how far a YOLO fraction may leave [0, 1]: exporters' float round-off
_MAX_JSON = 200 * 2**20  # ~1M boxes; a shop's set is far smaller (COCO train2017, 448 MB, is refused)
_MAX_SMALL = 16 * 2**20  # one XML or label file describes one photo
_NAMES_FILES = ("classes.txt", "obj.names")
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 turn the photo by 90 degrees, swapping width and height
_TRANSPOSED = frozenset({5, 6, 7, 8})

log = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """Annotations that cannot be imported as given; the message names the file and line or JSON index."""


def load_annotations(path: str | os.PathLike[str], *, format: str = "auto") -> list[AnnotatedImage]:
    """Read the annotations at `path` as `format`: "voc", "coco", "yolo" or "auto" (:func:`detect_format`)."""
    readers = {"voc": read_voc, "coco": read_coco, "yolo": read_yolo}
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in readers:
        raise AnnotationError(f"unknown annotation format {format!r}; expected auto, voc, coco or yolo")
    images = readers[fmt](path)
    bad = non_utf8_names(im.path for im in images)  # before the photos are detected or cached
    if bad:
        raise AnnotationError(f"{path}: {bad}")
    seen: set[Path] = set()
    for im in images:  # two entries (COCO images, VOC files) for one photo: it would be scored or trained twice
        if im.path in seen:
            raise AnnotationError(f"{path}: the photo {im.path} is annotated twice; keep one entry for it")
        seen.add(im.path)
    return images


def detect_format(path: str | os.PathLike[str]) -> str:
    """Which reader fits `path`: "voc" or "coco" (.xml / .json files, or a folder of them), or "yolo"."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".xml", ".json"):
        return "voc" if p.suffix.lower() == ".xml" else "coco"
    if not p.is_dir():
        what = "not a .xml, .json or folder" if p.exists() else "no such file or folder"
        raise AnnotationError(f"{p}: {what}")
    if (p / "images").is_dir() and (p / "labels").is_dir():
        return "yolo"
    if _files(p, "*.xml"):
        return "voc"
    if _files(p, "*.json"):
        return "coco"
    splits = sorted(d.name for d in p.iterdir() if (d / "images").is_dir() and (d / "labels").is_dir())
    if splits:  # Roboflow's YOLO export: data.yaml at the root, train/ valid/ test/ below it
        raise AnnotationError(f"{p}: a YOLO dataset split into {', '.join(splits)}; point at one of them "
                              f"(e.g. {p / splits[0]})")
    raise AnnotationError(f"{p}: no annotations found; looked for Pascal VOC *.xml and COCO *.json files "
                          "(here or in annotations/) and for YOLO images/ + labels/ folders")


def read_voc(path: str | os.PathLike[str]) -> list[AnnotatedImage]:
    """One Pascal VOC .xml file, or a folder of them (or a dataset root with an annotations/ folder)."""
    p = Path(path)
    files = [p] if p.is_file() else _files(p, "*.xml")
    if not files:
        raise AnnotationError(f"{p}: no Pascal VOC .xml files (looked here and in annotations/)")
    return _sorted(_voc_image(f) for f in files)


def _voc_image(xml: Path) -> AnnotatedImage:
    root, lines = _parse_xml(xml)
    if root.tag != "annotation":
        raise AnnotationError(f"{xml}: not Pascal VOC (root element <{root.tag}>, expected <annotation>)")
    name, rel = (root.findtext("filename") or "").strip(), (root.findtext("path") or "").strip()
    if not name and not rel:
        raise AnnotationError(f"{xml}: no <filename> or <path> says which image it describes")
    name = name or PureWindowsPath(rel).name  # PureWindowsPath: LabelImg on Windows writes C:\...\x.jpg
    here = xml.parent
    candidates = [here / d / name for d in (".", "images", "JPEGImages")]
    candidates += [here.parent / d / name for d in ("images", "JPEGImages")] + ([here / rel] if rel else [])
    image = _find_image(str(xml), name, candidates)
    size, w, h = root.find("size"), 0.0, 0.0
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        w, h = _xml_number(size, "width", xml, lines), _xml_number(size, "height", xml, lines)
    width, height = _checked_size(image, (int(w), int(h)) if 0 < w < 1e6 and 0 < h < 1e6 else None,
                                  f"{xml}: line {lines[id(size)]}" if size is not None else str(xml))
    boxes, labels = [], []
    for obj in root.findall("object"):
        label, bndbox = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if not label or bndbox is None:
            what = "<name>" if not label else "<bndbox>"
            raise AnnotationError(f"{xml}: line {lines[id(obj)]}: <object> has no {what}")
        corners = [_xml_number(bndbox, t, xml, lines) for t in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(_check_box(corners, width, height, f"{xml}: line {lines[id(bndbox)]}"))
        labels.append(label)
    return AnnotatedImage(_abs(image), width, height, boxes, tuple(labels))


def _parse_xml(path: Path) -> tuple[ET.Element, dict[int, int]]:
    """The tree and each element's line (by id), parsed with expat refusing any DTD ("billion laughs")."""
    data = _read(path, _MAX_SMALL)
    parser, builder, lines = expat.ParserCreate(), ET.TreeBuilder(), {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[id(builder.start(tag, attrs))] = parser.CurrentLineNumber

    def refuse(*_: object) -> None:
        raise AnnotationError(f"{path}: line {parser.CurrentLineNumber}: DOCTYPE/ENTITY declarations are "
                              "refused (entity-expansion attacks); annotation files need none")

    parser.StartElementHandler, parser.EndElementHandler = start, builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        reason = expat.ErrorString(exc.code)
        raise AnnotationError(f"{path}: line {exc.lineno}: malformed XML ({reason})") from None
    return builder.close(), lines


def _xml_number(parent: ET.Element, tag: str, xml: Path, lines: dict[int, int]) -> float:
    child = parent.find(tag)
    if child is None:
        raise AnnotationError(f"{xml}: line {lines[id(parent)]}: <{parent.tag}> has no <{tag}>")
    try:
        return float((child.text or "").strip())
    except ValueError:
        where = f"{xml}: line {lines[id(child)]}"
        raise AnnotationError(f"{where}: <{tag}> is not a number: {child.text!r}") from None


def read_coco(path: str | os.PathLike[str]) -> list[AnnotatedImage]:
    """A COCO instances .json (or a folder holding exactly one); images beside it or in images/ there."""
    p = Path(path)
    if p.is_dir():
        found = _files(p, "*.json")
        if len(found) != 1:
            raise AnnotationError(f"{p}: {len(found) or 'no'} COCO .json files here or in annotations/; "
                                  "point at the one to read")
        p = found[0]
    try:
        doc = json.loads(_read(p, _MAX_JSON))
    except ValueError as exc:  # JSONDecodeError names the line and column; UnicodeDecodeError the byte
        raise AnnotationError(f"{p}: invalid JSON ({exc})") from None
    except RecursionError:
        raise AnnotationError(f"{p}: invalid JSON (nested too deeply)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not doc["images"]:
        raise AnnotationError(f"{p}: not a COCO file with images (needs a non-empty 'images' list)")
    if doc.get("annotations") is None:  # read as no boxes, every product would be a false box in a score
        raise AnnotationError(f"{p}: no 'annotations' list: a COCO file without labels (such as image_info_test) "
                              "has no boxes to train or score on; photos without products: \"annotations\": []")
    names: dict[Any, str] = {}
    for i, cat in enumerate(_list(doc, "categories", p)):
        if not isinstance(cat, dict) or not _is_key(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise AnnotationError(f"{p}: categories[{i}]: needs an 'id' and a 'name'")
        if cat["id"] in names:  # the last one won: every box of the first category took the second's name
            raise AnnotationError(f"{p}: categories[{i}]: duplicate category id {cat['id']!r} (also "
                                  f"{names[cat['id']]!r})")
        names[cat["id"]] = cat["name"]
    images = _coco_images(doc["images"], p)
    boxes: dict[Any, list[list[float]]] = {key: [] for key in images}
    labels: dict[Any, list[str]] = {key: [] for key in images}
    crowded: set[Any] = set()
    for i, ann in enumerate(_list(doc, "annotations", p)):
        where = f"{p}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{where}: not an object")
        crowd = ann.get("iscrowd", 0)
        if isinstance(crowd, str) or crowd not in (0, 1):  # 0, 1 (and False, True); "0" or 0.5 are refused
            raise AnnotationError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
        if crowd:  # a crowd region is an RLE blob over many products, not one product's box: the photo is left
            crowded.add(ann.get("image_id"))  # out (trained on, its products were background; scored, false boxes)
            continue
        key, cat, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if not _is_key(key) or key not in images:
            raise AnnotationError(f"{where}: unknown image_id {key!r}")
        if not _is_key(cat) or cat not in names:
            raise AnnotationError(f"{where}: unknown category_id {cat!r}")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise AnnotationError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
        try:
            x, y, bw, bh = map(float, bbox)
        except OverflowError:  # an integer past any float (10**400); 1e400 is already inf, refused as a box
            raise AnnotationError(f"{where}: bbox {str(bbox)[:80]}: a number too large for a box") from None
        if not (bw > 0 and bh > 0):  # said here in the file's own terms: the corners below are not in the file
            raise AnnotationError(f"{where}: bbox {str(bbox)[:80]}: width and height must be > 0 ([x, y, width, "
                                  "height])")
        _, w, h = images[key]
        boxes[key].append(_check_box([x, y, x + bw, y + bh], w, h, where))
        labels[key].append(names[cat])
    crowded &= set(images)
    if crowded:
        log.warning("%s: %d photo(s) with iscrowd regions left out (a crowd region covers many products as one: "
                    "skulens neither trains nor scores on such a photo), e.g. %s", p, len(crowded),
                    images[next(iter(crowded))][0].name)
    sides = [min(b[2] - b[0], b[3] - b[1]) for k in boxes for b in boxes[k]]
    if sides and max(sides) < 2:
        log.warning("%s: every box is under 2 px: COCO bboxes are in pixels [x, y, width, height], not fractions "
                    "of the photo", p)
    return _sorted(AnnotatedImage(_abs(f), w, h, boxes[k], tuple(labels[k]))
                   for k, (f, w, h) in images.items() if k not in crowded)


def _coco_images(entries: list[Any], path: Path) -> dict[Any, tuple[Path, int, int]]:
    """Image id -> (file, width, height); the size from the header where the entry lacks it."""
    images: dict[Any, tuple[Path, int, int]] = {}
    for i, im in enumerate(entries):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict) or not _is_key(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise AnnotationError(f"{where}: needs an 'id' and a 'file_name'")
        if im["id"] in images:
            raise AnnotationError(f"{where}: duplicate image id {im['id']!r}")
        name = im["file_name"]
        file = _find_image(where, name, [path.parent / name, path.parent / "images" / name,
                                         path.parent.parent / "images" / name])  # COCO's annotations/ beside images/
        w, h = im.get("width"), im.get("height")
        ok = isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0
        images[im["id"]] = (file, *_checked_size(file, (w, h) if ok else None, where))
    return images


def write_coco(images: Sequence[AnnotatedImage], path: str | os.PathLike[str], *,
               root: str | os.PathLike[str] | None = None) -> Path:
    """Write `images` as one COCO instances .json that :func:`read_coco` reads back; returns its path.

    ``file_name`` is each image's path relative to `root` (default: the JSON's folder; it must be that
    folder or its images/ folder, where :func:`read_coco` looks), absolute for an image outside it.
    Categories are the sorted label names with ids from 1.
    """
    out = Path(path)
    base = _abs(root if root is not None else out.parent)
    if base not in (_abs(out.parent), _abs(out.parent / "images")):
        raise ValueError(f"root {base} must be {out.parent} or its images/ folder, where read_coco looks")
    cats = {name: i for i, name in enumerate(sorted({lb for im in images for lb in im.labels}), 1)}
    entries, anns = [], []
    for i, im in enumerate(images, 1):
        if im.path is None:
            raise ValueError(f"images[{i - 1}] has no path; save the photo before writing COCO")
        file = _abs(im.path)
        name = file.relative_to(base).as_posix() if file.is_relative_to(base) else str(file)
        entries.append({"id": i, "file_name": name, "width": im.width, "height": im.height})
        for (x1, y1, x2, y2), label in zip(im.boxes.tolist(), im.labels, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[label], "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": i, "name": n} for n, i in cats.items()]
    doc = {"images": entries, "annotations": anns, "categories": categories}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # write then rename: a crash never leaves half a cache
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    tmp.replace(out)
    return out


def read_yolo(path: str | os.PathLike[str]) -> list[AnnotatedImage]:
    """A YOLO folder: images/ and labels/ (same relative paths, .txt), names from classes.txt, obj.names or
    data.yaml (here, in labels/, or in the parent folder as Roboflow exports a split); without one the labels
    are the class ids, with a warning."""
    root = Path(path)
    img_dir, lbl_dir = root / "images", root / "labels"
    if not (img_dir.is_dir() and lbl_dir.is_dir()):
        raise AnnotationError(f"{root}: a YOLO dataset needs images/ and labels/ folders")
    names = _yolo_names(root)
    photos = sorted(f for f in img_dir.rglob("*")
                    if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())
    if not photos:
        raise AnnotationError(f"{img_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    stems: dict[Path, Path] = {}
    for f in photos:  # a.jpg and a.png would both read labels/a.txt: one photo given the other's boxes
        stem = f.relative_to(img_dir).with_suffix("")
        if stem in stems:
            raise AnnotationError(f"{f}: {stems[stem].name} has the same name, and both would take the boxes of "
                                  f"{lbl_dir / stem.with_suffix('.txt')}: rename one")
        stems[stem] = f
    texts = {}  # the label files by photo, their suffix in any case (a.TXT was skipped: an empty shelf)
    for txt in sorted(t for t in lbl_dir.rglob("*") if t.suffix.lower() == ".txt" and t.is_file()):
        stem = txt.relative_to(lbl_dir).with_suffix("")
        if txt.name not in _NAMES_FILES and stem not in stems:
            raise AnnotationError(f"{txt}: its image is missing from {img_dir}")
        texts[stem] = txt
    images = [_yolo_image(f, texts.get(stem, lbl_dir / stem.with_suffix(".txt")), names) for stem, f in stems.items()]
    if names is None and any(len(im) for im in images):
        log.warning("%s: no data.yaml, classes.txt or obj.names (here, in labels/ or the parent folder): the box "
                    "labels are the class ids", root)
    return images


def _yolo_image(image: Path, label: Path, names: dict[int, str] | None) -> AnnotatedImage:
    try:
        width, height = _image_size(image)
    except AnnotationError as e:
        # YOLO boxes are fractions of a size only the photo knows. As VOC and COCO photos that cannot be read,
        # it stays in the list, boxless: `detect evaluate` leaves it out of the scores and lists it, training
        # names it; one bad file does not stop the rest from loading.
        log.warning("%s (its boxes cannot be placed)", e)
        return AnnotatedImage(_abs(image), 1, 1)
    boxes, labels = [], []
    text = _read(label, _MAX_SMALL).decode("utf-8-sig", "replace") if label.is_file() else ""
    for n, line in enumerate(text.splitlines(), 1):
        parts, where = line.split(), f"{label}: line {n}"
        if not parts:
            continue
        if len(parts) != 5:
            # 6: a prediction file's confidence column; 7 or more: a polygon (class, then x y pairs)
            hint = (" (a sixth number is a prediction's confidence: give the ground-truth labels)" if len(parts) == 6
                    else " (segmentation polygons are not supported)" if len(parts) > 6 else "")
            raise AnnotationError(f"{where}: expected 5 numbers 'class cx cy w h', got {len(parts)}{hint}")
        try:
            cls, cx, cy, bw, bh = (float(v) for v in parts)
        except ValueError:
            raise AnnotationError(f"{where}: not a number in {line.strip()!r}") from None
        if not cls.is_integer() or cls < 0 or (names is not None and int(cls) not in names):
            known = "an id >= 0" if names is None else f"one of the {len(names)} class ids in the names file"
            raise AnnotationError(f"{where}: class {parts[0]} is not {known}")
        if not all(-_YOLO_SLOP <= v <= 1 + _YOLO_SLOP for v in (cx, cy, bw, bh)):
            got = " ".join(parts[1:])
            raise AnnotationError(f"{where}: cx cy w h must be fractions in [0, 1], got {got}")
        x1, y1 = (cx - bw / 2) * width, (cy - bh / 2) * height
        corners = [x1, y1, x1 + bw * width, y1 + bh * height]
        boxes.append(_check_box(corners, width, height, where))
        labels.append(names[int(cls)] if names is not None else str(int(cls)))
    return AnnotatedImage(_abs(image), width, height, boxes, tuple(labels))


def _yolo_names(root: Path) -> dict[int, str] | None:
    """Class names by id from classes.txt / obj.names (here or in labels/) or data.yaml, else from the same files
    in the parent folder (a split of a Roboflow export: ds/data.yaml over ds/train/); None if absent."""
    for folders, parent in (((root, root / "labels"), False), ((root.parent,), True)):
        for file in (d / name for d in folders for name in _NAMES_FILES):
            if file.is_file():
                text = _read(file, _MAX_SMALL).decode("utf-8-sig", "replace")
                return dict(enumerate(s.strip() for s in text.splitlines() if s.strip()))
        for folder in folders:  # data.yaml here or in labels/, as the warning says
            names = _yaml_names(folder / "data.yaml", optional=parent)
            if names is not None:
                return names
    return None


def _yaml_names(file: Path, *, optional: bool) -> dict[int, str] | None:
    """The 'names' of a YOLO data.yaml; None without the file (or, `optional`, without a 'names' key)."""
    if not file.is_file():
        return None
    try:
        doc = yaml.safe_load(_read(file, _MAX_SMALL))
    except yaml.YAMLError as exc:
        raise AnnotationError(f"{file}: invalid YAML ({exc})") from None
    except RecursionError:
        raise AnnotationError(f"{file}: invalid YAML (nested too deeply)") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if names is None and optional:
        return None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        return {k: str(v) for k, v in names.items()}
    raise AnnotationError(f"{file}: 'names' must be a list or an {{id: name}} mapping")


def _check_box(box: Sequence[float], width: int, height: int, where: str) -> list[float]:
    """`box` clipped to the image; an error if degenerate, wholly outside or out by over EDGE_SLOP px."""
    x1, y1, x2, y2 = box
    shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
    if not (x2 > x1 and y2 > y1):  # written as `not >` so NaN fails too
        raise AnnotationError(f"{where}: degenerate box {shown} (needs x2 > x1 and y2 > y1)")
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
               min(max(y2, 0.0), height)]
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise AnnotationError(f"{where}: box {shown} lies wholly outside the {width}x{height} image")
    out = max(-x1, -y1, x2 - width, y2 - height)
    if out > EDGE_SLOP:
        raise AnnotationError(f"{where}: box {shown} sticks out of the {width}x{height} image by {out:g} px "
                              f"(over {EDGE_SLOP:g}: wrong image size or coordinate order?)")
    return clipped


def _checked_size(image: Path, stated: tuple[int, int] | None, where: str) -> tuple[int, int]:
    """The photo's displayed size; an annotation that states another one is an error: its boxes are in another
    pixel grid (most often the photo as stored, before its EXIF rotation), and scaling them would misplace them.
    A photo whose header cannot be read takes the stated size: its decode fails where the photo is used (`detect
    evaluate` leaves it out of the scores and lists it, training names it); with no size stated it is an error."""
    try:
        actual, rotated = _displayed_size(image)
    except AnnotationError:
        if stated is None:
            raise
        return stated
    if stated is not None and stated != actual:
        turned = " (the photo is turned by its EXIF orientation: were the boxes drawn on it unturned?)" if (
            rotated and stated == actual[::-1]) else ""
        raise AnnotationError(f"{where}: the annotation says the image is {stated[0]}x{stated[1]} but {image} is "
                              f"{actual[0]}x{actual[1]} as displayed{turned}")
    if stated is not None and rotated and actual[0] == actual[1]:  # a square turned photo: no size can tell
        log.warning("%s: %s is square and turned by its EXIF orientation: its boxes must be drawn on the photo as "
                    "displayed (turned), as they are read; ones drawn on the stored pixels would be misplaced",
                    where, image)
    return actual


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, from the header alone (no decode), EXIF rotation applied."""
    return _displayed_size(path)[0]


def _displayed_size(path: Path) -> tuple[tuple[int, int], bool]:
    """(width, height) as displayed, and whether its EXIF orientation turns the photo by a quarter."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                turned = im.getexif().get(_ORIENTATION) in _TRANSPOSED
            except Exception:  # noqa: BLE001 - mangled EXIF: keep the photo as stored, as decode.py does
                turned = False
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AnnotationError(f"{path}: not a readable image ({exc})") from None
    return ((height, width) if turned else (width, height)), turned


def _find_image(where: str, name: str, candidates: Iterable[Path]) -> Path:
    tried = list(dict.fromkeys(candidates))
    for file in tried:
        if file.is_file():
            return file
    raise AnnotationError(f"{where}: image {name!r} not found; looked for {', '.join(map(str, tried))}")


def _files(folder: Path, pattern: str) -> list[Path]:
    """The `pattern` files in `folder`, else in its annotations/ (or Annotations/) folder."""
    for d in (folder, folder / "annotations", folder / "Annotations"):
        found = sorted(d.glob(pattern)) if d.is_dir() else []
        if found:
            return found
    return []


def _read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise AnnotationError(f"{path}: {size / 2**20:.0f} MB is over the {limit // 2**20} MB limit")
        return path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _list(doc: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise AnnotationError(f"{path}: '{key}' must be a list")
    return value


def _is_key(value: object) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _abs(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(path))  # normalises "annotations/../images" without following links


def _sorted(images: Iterable[AnnotatedImage]) -> list[AnnotatedImage]:
    return sorted(images, key=lambda im: str(im.path))
