"""Enrolment: add a product to a trained model from a few photos, without retraining the network.

The new class gets a row in the fine head, initialised by *imprinting* (Qi et al., CVPR 2018: the
centred mean of its photos' features, scaled like the trained rows) and then fitted for a few hundred
milliseconds against a reference bank of trained-class features, and the views of the products enrolled
before it, with every other weight frozen, so its scores live on the same scale as the trained classes.
`predict` (and any export made afterwards) knows the product at once; `skulens retrain` later folds the
kept photos into a normal fine-tune.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.catalogue import label_key, unprintable
from ..data.decode import ImageDecodeError, decode_any, decode_image
from ..data.transforms import create_transform, to_uint8_tensor
from ..models.bundle import (
    BundleError,
    atomic_save_tensors,
    load_bundle,
    read_card,
    rewrites_bundle,
    save_bundle,
)
from ..models.card import ModelCard
from ..models.classifier import SkuModel

__all__ = ["CATALOGUE_FILE", "ENROLLED_DIR", "ENROLLED_FILE", "EnrolResult", "EnrolmentError", "UnenrolResult",
           "catalogue_map", "drop_class", "enroll", "imprint_class", "is_enrolled", "learn_shop_map", "reference_bank",
           "unenroll"]

log = logging.getLogger(__name__)

ENROLLED_DIR = "enrolled"
BANK_FILE = "reference_bank.safetensors"
_VIEWS = 8  # augmented views per enrolment photo: one photo is still a usable class
_BANK_PER_CLASS = 8
_STUDIO_VIEWS = 16  # scene-like views of a photo taken on white
_TEXT_WEIGHT = 0.2  # share of the positives given to the description (photo 0.8 / text 0.2: see search_grocery)
CATALOGUE_FILE = "catalogue_views.safetensors"  # the trained products' catalogue photos, as enrolment sees them
ENROLLED_FILE = "enrolled_views.safetensors"  # the enrolled products' positives, kept as later enrolments' negatives
_ENROLLED_ROWS = 16  # of them per product: the photos as they are first, then their other views evenly
_MAP_RIDGE = 0.1  # the catalogue-to-shop map's ridge, relative to the catalogue features' mean squared spread
_MAP_MIN_PRODUCTS = 10  # fewer trained products with a catalogue photo: no map is learned


class EnrolmentError(ValueError):
    """The product cannot be enrolled as asked (known label, no usable photo, ...)."""


@dataclass(frozen=True)
class EnrolResult:
    label: str
    coarse_label: str | None
    coarse_inferred: bool
    images: int  # photos used
    skipped: tuple[tuple[str, str], ...]  # (photo, reason) of photos that did not decode
    bundle: Path
    reference: int  # reference features the new row was fitted against (0: imprinting only)
    self_check: float  # fraction of the enrolment photos the updated model predicts as the product
    index_entries: int = 0
    kept: tuple[str, ...] = field(default=())  # photos stored in the bundle for retrain
    on_white: int = 0  # photos that stood on white and were also seen in studio views
    text_rows: int = 0  # positives that came from the text (0: no text, no aligner, or text_weight 0)
    mapped_rows: int = 0  # positives carried from catalogue to shop look by the learned map (`catalogue_map`)


def _augmented(net: SkuModel, card: ModelCard, images: Sequence[torch.Tensor]) -> torch.Tensor:
    """The photos in `_VIEWS` augmented views each (view-major rows), drawn from a generator seeded by the photos
    themselves: the same photos give the same enrolment (the global random state is left as it was)."""
    seed = 0
    for im in images:
        seed = zlib.crc32(im.numpy().tobytes(), seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _features(net, images, create_transform(card, train=True), views=_VIEWS)


@torch.no_grad()
def _features(net: SkuModel, images: Sequence[torch.Tensor], transform, views: int = 1) -> torch.Tensor:
    """Pooled (un-normalised) backbone features, the input of the heads; fp32 for a stable fit."""
    net.eval()
    if not len(images):
        return torch.zeros(0, net.head.in_features)
    batches = []
    for _ in range(views):
        for start in range(0, len(images), 32):  # bounded memory for a large reference bank
            x = torch.stack([transform(im) for im in images[start:start + 32]])
            batches.append(net.backbone(x).float())
    return torch.cat(batches)


def imprint_class(head: torch.nn.Linear, positives: torch.Tensor, reference: torch.Tensor | None = None,
                  reference_targets: torch.Tensor | None = None, *, steps: int = 150, lr: float = 0.01
                  ) -> torch.nn.Linear:
    """A copy of `head` with one more output row for the class whose features are `positives`.

    Pure tensor code: imprint (centred mean, scaled to the mean norm of the trained rows, mean bias), then,
    given a reference bank (features + their class indices), fit only the new row with cross-entropy over
    all rows (the trained rows frozen), positives and references weighted equally.
    """
    w, b = head.weight.detach().float(), head.bias.detach().float()
    centre = reference.mean(0) if reference is not None and len(reference) else positives.mean(0) * 0
    direction = F.normalize(positives.mean(0) - centre, dim=0)
    scale = w.norm(dim=1).mean()
    w_new = (direction * scale).clone().requires_grad_(True)
    b_new = (b.mean() - (direction * scale) @ centre).clone().detach().requires_grad_(True)
    if reference is not None and reference_targets is not None and len(reference):
        opt = torch.optim.Adam([w_new, b_new], lr=lr)
        new_index = w.shape[0]
        pos_t = torch.full((len(positives),), new_index, dtype=torch.long)
        for _ in range(steps):
            logits_pos = torch.cat([positives @ w.T + b, (positives @ w_new + b_new)[:, None]], 1)
            logits_ref = torch.cat([reference @ w.T + b, (reference @ w_new + b_new)[:, None]], 1)
            loss = F.cross_entropy(logits_pos, pos_t) + F.cross_entropy(logits_ref, reference_targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = torch.nn.Linear(head.in_features, head.out_features + 1)
    with torch.no_grad():
        out.weight.copy_(torch.cat([w, w_new.detach()[None]]))
        out.bias.copy_(torch.cat([b, b_new.detach()[None]]))
    return out.to(head.weight.dtype)


def reference_bank(bundle: Path, net: SkuModel, card: ModelCard, data: str | os.PathLike | None,
                   progress: bool = False) -> tuple[torch.Tensor, list[str]] | None:
    """Features of a few training photos per trained class, cached in the bundle (reference_bank.safetensors)."""
    path = bundle / BANK_FILE
    cached = _read_cache(path, data, "reference photos", legacy_labels=bundle / (BANK_FILE + ".labels"))
    if cached is not None:
        return cached
    source = data or card.dataset.get("path")
    if not source or not Path(source).exists():
        log.warning("no reference photos (the training data at %r is not here): the new class is imprinted "
                    "without fitting; pass --data to fit it against the trained classes", source)
        return None
    from ..data.catalogue import load_catalogue
    from ..data.dataset import decode_all

    cat = load_catalogue(source)
    known = set(card.classes)
    rng = np.random.default_rng(0)
    by_label: dict[str, list[Path]] = {}
    for s in cat.split("train"):
        if s.label in known:
            by_label.setdefault(s.label, []).append(s.path)
    paths, labels = [], []
    for label, ps in sorted(by_label.items()):
        for i in rng.permutation(len(ps))[:_BANK_PER_CLASS]:
            paths.append(ps[i])
            labels.append(label)
    decoded = decode_all(paths, card.resize_to, desc="reference photos", progress=progress)
    feats = _features(net, decoded.images, create_transform(card))
    labels = [labels[i] for i in decoded.kept]
    _write_cache(path, feats, labels, source)
    (bundle / (BANK_FILE + ".labels")).unlink(missing_ok=True)  # an older bank's, now stale
    return feats, labels


def _read_cache(path: Path, data: str | os.PathLike | None, what: str, legacy_labels: Path | None = None
                ) -> tuple[torch.Tensor, list[str]] | None:
    """The features and labels `_write_cache` keeps at `path`, when they were made from `data` (from whatever
    source, without `data`); None, said in the log, when they are absent, made from other data, or unreadable (cut
    short by a kill or a full disk): the caller makes them again. `legacy_labels`: where a reference bank from
    before session 30 kept its labels (beside it, not in it)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            made_from = meta.get("source")  # None: a bank from before the source was recorded
            if data is not None and made_from != str(Path(data).resolve()):
                log.info("%s: the cached ones were made from %s, not --data %s; made again", what, made_from, data)
                return None
            labels = (json.loads(meta["labels"]) if "labels" in meta or legacy_labels is None
                      else legacy_labels.read_text(encoding="utf-8").splitlines())
            features = f.get_tensor("features")
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        log.warning("%s: the cached ones are unreadable (%s); made again", what, e)
        return None
    if len(labels) != len(features):
        log.info("%s: the cached labels do not match their features; made again", what)
        return None
    return features, labels


def _write_cache(path: Path, feats: torch.Tensor, labels: list[str], source: str | os.PathLike) -> None:
    """Features and their labels in one file, written beside it and swapped in: a kill or a full disk leaves the
    old cache or the new one, never one's features with the other's labels."""
    atomic_save_tensors({"features": feats.contiguous()}, path,
                        metadata={"source": str(Path(source).resolve()), "labels": json.dumps(labels)})


def _studio_views(pils: Sequence, card: ModelCard, n: int) -> tuple[list[torch.Tensor], list[int]]:
    """`n` scene-like views of every photo that stands on white (none for the others), and which photos
    those are (their indices, in order)."""
    from ..detect.synth import NotOnWhiteError, product_views

    out: list[torch.Tensor] = []
    white: list[int] = []
    if n <= 0:
        return out, white
    for i, pil in enumerate(pils):
        # seeded by the photo itself: the same photo gets the same views, two products different ones
        seed = zlib.crc32(pil.tobytes())
        try:
            views = product_views(pil, n, size=card.resize_to, seed=seed)
        except NotOnWhiteError:  # a shop photo: already the kind of picture queries are
            continue
        out += [to_uint8_tensor(v) for v in views]
        white.append(i)
    return out, white


def _catalogue_rows(net: SkuModel, card: ModelCard, pil: Any, views: int = _STUDIO_VIEWS) -> torch.Tensor | None:
    """The features an enrolment takes from one catalogue photo: as it is, 8 augmented views, `views` studio
    views; None when it does not stand on white."""
    studio, white = _studio_views([pil], card, views)
    if not white:
        return None
    t = [to_uint8_tensor(pil)]
    return torch.cat([_features(net, t, create_transform(card)),
                      _augmented(net, card, t),
                      _features(net, studio, create_transform(card))])


def catalogue_map(bundle: Path, net: SkuModel, card: ModelCard, bank: tuple[torch.Tensor, list[str]],
                  data: str | os.PathLike | None = None, progress: bool = False):
    """A map from a catalogue photo's features to where the same product's shop photos lie, learned on the
    trained products (their catalogue photos, as enrolment sees them, against their reference-bank photos'
    mean), by ridge regression around the mean offset; None without catalogue photos of enough of them.

    One catalogue photo on white is far from the shop photos of its product (other light, piles, bags): on
    grocery, trained on 60 products and enrolling the other 21 from one catalogue photo each, adding these
    mapped views to the positives raised top-1 among all 81 from 20.0 to 30.0 % on val's other stores and
    from 33.2 to 40.6 % on the new products' train photos, with the seen products' top-1 78.2 -> 79.6 (a
    session 30 check; flat for a ridge from 0.01 to 0.3). The catalogue views are cached in the bundle."""
    path = bundle / CATALOGUE_FILE
    source = data or card.dataset.get("path")
    cached = _read_cache(path, data, "catalogue views")
    if cached is not None:
        feats, labels = cached
    else:
        if not source or not Path(source).exists():
            return None
        from ..data.catalogue import load_catalogue

        products = load_catalogue(source).products
        known = set(bank[1])
        rows, labels = [], []
        todo = [c for c in card.classes if c in known and products.get(c) and products[c].image]
        if len(todo) < _MAP_MIN_PRODUCTS:
            return None
        log.info("catalogue views of %d trained products (once per bundle, cached in %s)", len(todo), CATALOGUE_FILE)
        for label in todo:
            try:
                pil = decode_image(products[label].image, reduce_to=card.resize_to)
            except ImageDecodeError:
                continue
            got = _catalogue_rows(net, card, pil)
            if got is not None:
                rows.append(got.mean(0))
                labels.append(label)
        feats = torch.stack(rows) if rows else torch.zeros(0, net.head.in_features)
        _write_cache(path, feats, labels, source)
    if len(labels) < _MAP_MIN_PRODUCTS:
        return None
    bank_feats, bank_labels = bank
    index = {lab: i for i, lab in enumerate(labels)}
    shop = torch.zeros_like(feats)
    count = torch.zeros(len(labels))
    for row, lab in zip(bank_feats, bank_labels, strict=True):
        if lab in index:
            shop[index[lab]] += row
            count[index[lab]] += 1
    keep = count > 0
    return learn_shop_map(feats[keep], shop[keep] / count[keep, None])


def learn_shop_map(catalogue: torch.Tensor, shop: torch.Tensor, ridge: float = _MAP_RIDGE):
    """Pure: x -> x + d + (x - mean) A, with d the mean catalogue-to-shop offset of the pairs (rows of
    `catalogue` and `shop`, one per product) and A the ridge fit of what is left (solved in the dual: n x n)."""
    c_mean = catalogue.mean(0)
    offset = (shop - catalogue).mean(0)
    centred = catalogue - c_mean
    rest = shop - catalogue - offset
    lam = ridge * float((centred * centred).sum(1).mean())
    a = centred.T @ torch.linalg.solve(centred @ centred.T + lam * torch.eye(len(centred)), rest)
    return lambda x: x + offset + (x - c_mean) @ a


def _text_features(bundle: Path, title: str, text: str, positives: torch.Tensor, weight: float,
                   net: Any = None, card: Any = None) -> torch.Tensor:
    """The product text's vector in the image space (the bundle's aligner), as pseudo-features at the photos'
    mean norm, repeated so it holds `weight` of the positives; empty without text, aligner or weight."""
    from .align import load_aligner

    aligner = load_aligner(bundle) if text.strip() and weight > 0 else None
    if aligner is not None and net is not None and card is not None:  # an aligner of another image model
        from ..models.predictor import Model

        aligner = aligner.for_model(Model(net, card, next(net.parameters()).device), "enrolment (photos only)")
    if aligner is None or aligner.dim != positives.shape[1]:
        return positives[:0]
    vector = torch.from_numpy(aligner.encode([f"{title}. {text}".strip()])).float()
    repeats = max(1, round(weight / (1 - weight) * len(positives)))
    return (vector * positives.norm(dim=1).mean()).repeat(repeats, 1)


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "product"


def _keep_photo(pil, folder: Path) -> Path:
    """Store an enrolment photo for retraining: re-encoded (EXIF, GPS included, is not carried over)."""
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=92)
    data = buf.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.jpg"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return out


@rewrites_bundle
def enroll(bundle: str | os.PathLike, label: str, images: Sequence[str | os.PathLike | bytes | Image.Image], *,
           text: str = "", title: str = "", coarse: str | None = None, data: str | os.PathLike | None = None,
           index: object | None = None, keep_photos: bool = True, studio_views: int = _STUDIO_VIEWS,
           text_weight: float = _TEXT_WEIGHT, shop_map: bool = True, progress: bool = False) -> EnrolResult:
    """Add product `label` to the bundle in place (atomically); optionally add its photos to a vector index.

    The new row is imprinted from the photos' features: each photo as it is and in 8 augmented views, and
    a photo taken on white (a catalogue photo) also in `studio_views` views on varied backgrounds, light
    and camera noise (`detect.synth.product_views`), so a shop photo of the product looks like something
    enrolled. When the bundle has a text aligner (`skulens align`) and the product has a text, the text's
    place in the image space joins the positives with weight `text_weight` (0 turns it off). With `shop_map`
    (and catalogue photos of at least 10 trained products in the data), a catalogue photo's views join once
    more, carried by `catalogue_map` to where the trained products' shop photos lie against their own.
    Under the bundle's lock (:func:`models.bundle.rewrites_bundle`): enrolments into one bundle take turns.

    images: a list of paths, bytes or PIL images (one on its own is a TypeError, as for `Model.predict`)."""
    from ..models.predictor import check_images

    check_images(images)  # a lone path was read letter by letter ("a: file not found; .: is a directory")
    images = list(images)
    if not isinstance(label, str):
        raise TypeError(f"label: the product's name as a str, not {type(label).__name__}")
    if isinstance(index, (str, os.PathLike)):
        raise TypeError(f"index: an open index (skulens.search.open_index({str(index)!r})), not a path")
    if not images:
        raise EnrolmentError(f"no photos given for {label!r}")
    net, card = load_bundle(bundle)
    label = label.strip()
    if not label:
        raise EnrolmentError("the product needs a name")
    # a path segment of /v1/products/{id} and a folder name: "." and ".." are neither (the service refused them,
    # the CLI enrolled a product no route could reach, its photos kept in enrolled/product/)
    if unprintable(label) or any(ch in "/\\" for ch in label) or label in (".", ".."):
        raise EnrolmentError(f"product {label[:40]!r}: no '/', '\\', control or invisible characters in a "
                             "product's name, and not '.' or '..'")
    if coarse is not None and not coarse.strip():
        raise EnrolmentError("the coarse class is empty: give its name, or leave it out to have it inferred")
    if coarse is not None and (coarse != coarse.strip() or unprintable(coarse)):
        raise EnrolmentError(f"coarse class {coarse[:40]!r}: no control or invisible characters, or surrounding "
                             "spaces")
    if label in card.coarse_classes:  # a prediction's label would name the product or the product group
        raise EnrolmentError(f"{label!r} is a coarse class of this model (a group of products): give the product "
                             "a name of its own")
    if coarse is not None and not card.coarse_classes:  # it was recorded, then broke `retrain` (no hierarchy)
        raise EnrolmentError(f"this model has no coarse classes: leave the coarse class ({coarse!r}) out")
    coarse_twin = None if coarse is None else next(
        (c for c in card.coarse_classes if c != coarse and label_key(c) == label_key(coarse)), None)
    if coarse_twin is not None:  # "milk" beside "Milk" was a second coarse class that split the first's products
        raise EnrolmentError(f"coarse class {coarse!r} differs from the model's {coarse_twin!r} only in case, spaces "
                             f"or Unicode form: give it as {coarse_twin!r}, or a name of its own")
    twin = next((c for c in card.classes if c != label and label_key(c) == label_key(label)), None)
    if twin is not None:  # a catalogue refuses the pair: two classes that split one product's photos
        raise EnrolmentError(f"{label!r} differs from the model's class {twin!r} only in case, spaces or Unicode "
                             "form: give the product a name of its own")
    if label in card.classes:
        enrolled = any(e.get("label") == label for e in card.enrolled)
        raise EnrolmentError(f"{label!r} is already a class of this model" + (
            " (enrolled earlier: `skulens unenroll` or DELETE /v1/products/ID undoes that, to enrol it again)"
            if enrolled else ": to add photos of a known product, label them and run `skulens retrain`"))
    if studio_views < 0:
        raise EnrolmentError(f"studio_views must be 0 or more, got {studio_views}")
    if not 0 <= text_weight < 1:
        raise EnrolmentError(f"text_weight must be in [0, 1), got {text_weight}")
    if index is not None:  # an index of another model would take the product's vectors in another space, silently
        from ..models.predictor import Model
        from .engine import check_index_model

        try:
            check_index_model(Model(net, card, torch.device("cpu"), "off"), index)  # type: ignore[arg-type]
        except ValueError as exc:
            raise EnrolmentError(f"the index: {exc}") from None
    pils, skipped, seen = [], [], set()
    for im in images:
        try:
            pil = decode_any(im, reduce_to=card.resize_to)
        except ImageDecodeError as e:
            skipped.append(("<bytes>" if isinstance(im, (bytes, bytearray, memoryview)) else "<PIL image>"
                            if isinstance(im, Image.Image) else str(im), e.reason))
            continue
        digest = hashlib.sha256(f"{pil.mode} {pil.size}".encode() + pil.tobytes()).digest()
        if digest not in seen:  # a photo given twice is one photo (it was counted, kept and trained on twice)
            seen.add(digest)
            pils.append(pil)
    if not pils:
        raise EnrolmentError(f"no usable photo for {label!r}: " + "; ".join(f"{p}: {r}" for p, r in skipped[:3]))
    tensors = [to_uint8_tensor(p) for p in pils]
    title = title or label.replace("-", " ")
    plain = _features(net, tensors, create_transform(card))  # the photos as they are: self-check and index
    augmented = _augmented(net, card, tensors)  # view-major rows
    photos = torch.cat([plain, augmented])
    studio, white = _studio_views(pils, card, studio_views)
    studio_feats = _features(net, studio, create_transform(card))
    positives = torch.cat([photos, studio_feats])
    bank = reference_bank(bundle, net, card, data, progress)
    mapped = positives[:0]
    if white and bank is not None and shop_map:  # a catalogue photo: its views also as the map puts its shop photos
        to_shop = catalogue_map(bundle, net, card, bank, data, progress)
        if to_shop is not None:
            n = len(pils)
            rows = [torch.cat([plain[i:i + 1], augmented[i::n], studio_feats[k * studio_views:(k + 1) * studio_views]])
                    for k, i in enumerate(white)]
            mapped = to_shop(torch.cat(rows))
    positives = torch.cat([positives, mapped])
    described = _text_features(bundle, title, text, positives, text_weight, net, card)
    positives = torch.cat([positives, described])
    ref = ref_t = None
    earlier = _enrolled_views(bundle, card, net)
    if bank is not None:
        idx = {c: i for i, c in enumerate(card.classes)}
        # the products enrolled before are negatives too: without them a new row took their photos. On grocery
        # (21 products enrolled one after another into a model of the other 60; a session 31 check at the feature
        # level, 3 draws): from 3 shop photos each, the new products' val top-1 72.5 -> 74.6 % and their
        # in-store photos 83.8 -> 86.1 %; from 5, 75.4 -> 76.7 and 88.0 -> 90.5; the seen products as before
        feats = torch.cat([bank[0], earlier[0]]) if earlier else bank[0]
        labels = list(bank[1]) + (earlier[1] if earlier else [])
        keep = [i for i, lab in enumerate(labels) if lab in idx]
        ref = feats[keep]
        ref_t = torch.tensor([idx[labels[i]] for i in keep])

    coarse_classes, f2c = list(card.coarse_classes), list(card.fine_to_coarse)
    inferred = False
    if coarse_classes:
        if coarse is None:
            coarse, inferred = _infer_coarse(net, card, photos), True  # the real photos vote
        if coarse not in coarse_classes:
            coarse_classes.append(coarse)
            if net.coarse_head is not None:
                ref_c = None if ref_t is None else torch.tensor([f2c[int(t)] for t in ref_t])
                net.coarse_head = imprint_class(net.coarse_head, positives, ref, ref_c)
        f2c.append(coarse_classes.index(coarse))
    net.head = imprint_class(net.head, positives, ref, ref_t)

    kept: list[str] = []
    written: list[Path] = []  # files this call created: taken away again if the enrolment fails
    if keep_photos:
        folder = bundle / ENROLLED_DIR / _safe_name(label)
        before = set(folder.iterdir()) if folder.is_dir() else set()
        kept = [str(_keep_photo(p, folder).relative_to(bundle)) for p in pils]
        written = [f for f in folder.iterdir() if f not in before]
    entry = {"label": label, "coarse_label": coarse, "title": title, "text": text,
             "photos": kept, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    new_card = card.with_(classes=(*card.classes, label), coarse_classes=tuple(coarse_classes),
                          fine_to_coarse=tuple(f2c), enrolled=(*card.enrolled, entry))
    with torch.no_grad():
        fine = net.forward_head(plain)["fine"]
    self_check = float((fine.argmax(1) == len(card.classes)).float().mean())
    # The index first: if it refuses (another model's index, a server error), the bundle is untouched and the
    # enrolment can be retried; if the bundle then cannot be saved, the new entries are taken out again.
    records: list[Any] = []
    try:
        if index is not None:
            # The ids are known before the index is written: an upsert or save that fails half-way is undone too.
            records = _index_records(label, coarse, entry, len(plain), kept, bundle)
            _add_to_index(index, records, plain)
        # carried into the new bundle by the save; its rows count only for products the card lists as enrolled
        # (the description's rows among them, in their share: with them, one catalogue photo + description was
        # 31.2 % in the section of RESULTS.md on this change, without them 30.0, one draw)
        _write_enrolled(bundle, earlier, label, _kept_rows(positives, len(plain)))
        save_bundle(net, new_card, bundle, carry_over=True)
    except BaseException:
        if _saved(bundle, label):  # interrupted after the swap (in its clean-up): the enrolment stands, photos too
            raise
        if records:  # only the entries this call added: the product may have had others before
            with contextlib.suppress(Exception):
                index.remove(ids=[r.id for r in records])  # type: ignore[union-attr]
                if hasattr(index, "save"):
                    index.save()
        for f in written:  # no card entry will ever point at them
            f.unlink(missing_ok=True)
        if written:
            with contextlib.suppress(OSError):
                written[0].parent.rmdir()
        raise
    added = len(records)
    return EnrolResult(label, coarse, inferred, len(pils), tuple(skipped), bundle,
                       0 if ref is None else len(ref), self_check, added, tuple(kept),
                       len(white), len(described), len(mapped))


def _kept_rows(positives: torch.Tensor, photos: int, n: int = _ENROLLED_ROWS) -> torch.Tensor:
    """At most `n` of a product's positives: the first `photos` rows (its photos as they are), then the others
    evenly spaced."""
    if len(positives) <= n:
        return positives
    first = min(photos, n)
    rest = torch.linspace(first, len(positives) - 1, n - first).round().long()  # none when the photos fill n
    return torch.cat([positives[:first], positives[rest]])


def _enrolled_views(bundle: Path, card: ModelCard, net: SkuModel | None = None
                    ) -> tuple[torch.Tensor, list[str]] | None:
    """The kept views of the products the card lists as enrolled (None: none). Given `net`, a product missing from
    the cache (a bundle enrolled into before session 31, a cache unreadable or of another size) gets its views
    again from its kept photos, as they are and in augmented views."""
    cached = _read_cache(bundle / ENROLLED_FILE, None, "enrolled products' views")
    if cached is not None and net is not None and cached[0].shape[1] != net.head.in_features:
        log.info("enrolled products' views: %d features, not this model's %d; made again", cached[0].shape[1],
                 net.head.in_features)
        cached = None
    enrolled = {e.get("label") for e in card.enrolled}
    parts, labels = [], []
    if cached is not None:
        keep = [i for i, lab in enumerate(cached[1]) if lab in enrolled]
        if keep:
            parts.append(cached[0][keep])
            labels += [cached[1][i] for i in keep]
    if net is not None:
        have = set(labels)
        for entry in card.enrolled:
            if entry.get("label") in have or not entry.get("photos"):
                continue
            rows = _photo_rows(bundle, net, card, entry["photos"])
            if rows is not None:
                parts.append(rows)
                labels += [entry["label"]] * len(rows)
    return (torch.cat(parts), labels) if labels else None


def _photo_rows(bundle: Path, net: SkuModel, card: ModelCard, photos: Sequence[str]) -> torch.Tensor | None:
    """An enrolled product's kept views, made from its kept photos (None: none of them is readable)."""
    tensors = []
    for rel in photos:
        try:
            tensors.append(to_uint8_tensor(decode_image(bundle / rel, reduce_to=card.resize_to)))
        except (ImageDecodeError, OSError):
            continue
    if not tensors:
        return None
    plain = _features(net, tensors, create_transform(card))
    return _kept_rows(torch.cat([plain, _augmented(net, card, tensors)]), len(plain))


def _write_enrolled(bundle: Path, earlier: tuple[torch.Tensor, list[str]] | None, label: str,
                    rows: torch.Tensor | None) -> None:
    """The cache of enrolled products' views: `earlier` (`_enrolled_views`), `label`'s rows replaced by `rows`
    (None: taken out)."""
    feats, labels = earlier or (None, [])
    keep = [i for i, lab in enumerate(labels) if lab != label]
    parts = [feats[keep]] if keep and feats is not None else []
    labels = [labels[i] for i in keep]
    if rows is not None and len(rows):
        parts.append(rows)
        labels += [label] * len(rows)
    if labels:
        _write_cache(bundle / ENROLLED_FILE, torch.cat(parts).float(), labels, bundle)
    else:
        (bundle / ENROLLED_FILE).unlink(missing_ok=True)


def _saved(bundle: Path, label: str) -> bool:
    """Whether the bundle on disk already holds `label` (its card lists it)."""
    try:
        return label in read_card(bundle).classes
    except (BundleError, OSError):  # no readable card: nothing was saved
        return False


def _infer_coarse(net: SkuModel, card: ModelCard, feats: torch.Tensor) -> str:
    """The coarse class the model already sees in the photos (majority vote)."""
    from ..models.inference import combine_coarse

    with torch.no_grad():
        out = net.forward_head(feats)
    fine = out["fine"].softmax(-1).numpy()
    head = out["coarse"].softmax(-1).numpy() if "coarse" in out else None
    probs = combine_coarse(fine, head, card.fine_to_coarse, len(card.coarse_classes), card.coarse_rule)
    assert probs is not None
    votes = np.bincount(probs.argmax(1), minlength=len(card.coarse_classes))
    return card.coarse_classes[int(votes.argmax())]


def _index_records(label: str, coarse: str | None, entry: dict, n: int, kept: list[str], bundle: Path) -> list[Any]:
    """The index entries of an enrolment's `n` photos: ids enrolled/LABEL/0.., each with its kept photo."""
    from .index import IndexRecord

    images = [str((bundle / k).resolve()) for k in kept]  # as index build does: from any working folder
    return [IndexRecord(id=f"enrolled/{label}/{i}", product_id=label, label=label, coarse_label=coarse,
                        title=entry["title"], text=entry["text"], image=images[i] if i < len(images) else None)
            for i in range(n)]


def _add_to_index(index: Any, records: list[Any], feats: torch.Tensor, attempts: int = 3) -> None:
    """Upsert and save. Another process's save since `index` was opened (two `skulens enroll --index` at once,
    taking turns at the bundle's lock) refuses the save and leaves `index` holding that save: the entries are
    added to it and saved again, instead of the second enrolment failing."""
    from .index import IndexChangedError

    vectors = F.normalize(feats, dim=-1).numpy().astype(np.float32)
    for attempt in range(attempts):
        index.upsert(records, vectors)
        if not hasattr(index, "save"):
            return
        try:
            index.save()
            return
        except IndexChangedError:
            if attempt == attempts - 1:
                raise
            log.info("the index was saved by another process meanwhile; adding %d entries to its save", len(records))


@dataclass(frozen=True)
class UnenrolResult:
    label: str
    coarse_removed: str | None  # the coarse class that went with it (no other product had it), else None
    photos_removed: int  # kept enrolment photos deleted from the bundle
    index_entries: int  # entries of the product taken out of the index


def drop_class(head: torch.nn.Linear, row: int) -> torch.nn.Linear:
    """A copy of `head` without output `row` (the other rows, and their order, unchanged)."""
    keep = [i for i in range(head.out_features) if i != row]
    out = torch.nn.Linear(head.in_features, len(keep))
    with torch.no_grad():
        out.weight.copy_(head.weight.detach()[keep])
        out.bias.copy_(head.bias.detach()[keep])
    return out.to(head.weight.dtype)


def is_enrolled(bundle: str | os.PathLike, label: str) -> bool:
    """Whether `label` was added to the bundle on disk by `enroll` (False where there is no bundle card, as for a
    plain pretrained backbone)."""
    card = Path(bundle) / "card.json"
    return card.is_file() and any(e.get("label") == label for e in read_card(bundle).enrolled)


@rewrites_bundle
def unenroll(bundle: str | os.PathLike, label: str, *, index: object | None = None,
             all_entries: bool = False) -> UnenrolResult:
    """Undo `enroll`: the product's head row, its coarse class where it was the only product in it, its card
    entry, its kept photos and (given `index`) the index entries the enrolment added go; every other class
    keeps its weights, so the bundle predicts as it did before the enrolment. `all_entries`: every index
    entry of the product instead (photos added later too: removing the product, as DELETE does). Only
    enrolled products: a trained class leaves the model when it is retrained without its photos. The index
    goes first, then the bundle (atomically), so a failure half-way can be retried. Under the bundle's lock."""
    net, card = load_bundle(bundle)
    entry = next((e for e in card.enrolled if e.get("label") == label), None)
    if entry is None:
        if label in card.classes:
            raise EnrolmentError(f"{label!r} is a trained class of this model, not an enrolled one: it leaves the "
                                 "model when you retrain without its photos")
        raise EnrolmentError(f"{label!r} is not a product of this model")
    removed = 0
    if index is not None:
        if all_entries:
            removed = int(index.remove(product_ids=[label]))  # type: ignore[attr-defined]
        else:
            ours = [r.id for r in index.records(label) if r.id.startswith(f"enrolled/{label}/")]  # type: ignore[attr-defined]
            removed = int(index.remove(ids=ours)) if ours else 0  # type: ignore[attr-defined]
        if hasattr(index, "save"):
            index.save()
    row = card.classes.index(label)
    net.head = drop_class(net.head, row)
    f2c = list(card.fine_to_coarse)
    coarse_classes = list(card.coarse_classes)
    coarse_removed = None
    if f2c:
        c = f2c.pop(row)
        if c not in f2c:  # no other product in that coarse class: it goes too
            coarse_removed = coarse_classes.pop(c)
            if net.coarse_head is not None and net.coarse_head.out_features > len(coarse_classes):
                net.coarse_head = drop_class(net.coarse_head, c)
            f2c = [i - 1 if i > c else i for i in f2c]
    new_card = card.with_(classes=tuple(x for x in card.classes if x != label), coarse_classes=tuple(coarse_classes),
                          fine_to_coarse=tuple(f2c), enrolled=tuple(e for e in card.enrolled if e is not entry))
    save_bundle(net, new_card, bundle, carry_over=True)
    with contextlib.suppress(OSError):  # after the save: a failed one leaves the product's views with it
        _write_enrolled(bundle, _enrolled_views(bundle, new_card), label, None)  # (rows of a gone one are unread)
    photos = 0
    # Only its own files, and none another enrolled product still lists: two labels with the same safe folder
    # name ("Milk!", "Milk?") enrolled with the same photo share one content-named file.
    shared = {rel for e in new_card.enrolled for rel in e.get("photos", ())}
    for rel in entry.get("photos", ()):
        if rel in shared:
            continue
        path = bundle / rel
        if path.resolve().is_relative_to((bundle / ENROLLED_DIR).resolve()) and path.is_file():
            path.unlink()
            photos += 1
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # when it was the last one
    return UnenrolResult(label, coarse_removed, photos, removed)
