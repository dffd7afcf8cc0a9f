"""Train the image + text fusion head on a catalogue's listings and compare image-only, text-only and fused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fuse_and_evaluate", "fusion_accuracies"]


def fusion_accuracies(head: Any, image: np.ndarray, text: np.ndarray, has_text: np.ndarray, y: np.ndarray
                      ) -> dict[str, float]:
    """Top-1 of the same head fed the image only, the text only (listings with text), and both."""
    fused = head.probabilities(image, text)
    # A listing without text is classified from its image alone, as a deployed model would.
    fused[~has_text] = head.probabilities(image[~has_text], None) if (~has_text).any() else fused[~has_text]
    out = {"image_only": float((head.probabilities(image, None).argmax(1) == y).mean()),
           "fused": float((fused.argmax(1) == y).mean())}
    if has_text.any():
        t = head.probabilities(None, text[has_text]).argmax(1)
        out["text_only"] = float((t == y[has_text]).mean())
        out["text_only_all"] = float((t == y[has_text]).sum() / len(y))  # no text counts as wrong
    out["with_text_fraction"] = float(has_text.mean())
    return out


def _embed_split(model: Any, samples: list, encoder: Any, classes: dict[str, int], progress: bool):
    from ..data.catalogue import CatalogueError
    from ..data.dataset import decode_all

    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise CatalogueError(f"label(s) the model does not know: {', '.join(unknown[:5])}")
    # Decoded and embedded as the evaluator does a split; undecodable photos are skipped (and logged).
    decoded = decode_all([s.path for s in samples], model.card.resize_to, progress=progress)
    if not decoded.images:
        raise CatalogueError(f"none of {len(samples)} photos could be decoded")
    out = model.run(decoded.images, embeddings=True, progress=progress)
    assert out.embeddings is not None
    kept = [samples[i] for i in decoded.kept]
    texts = [(s.text or "").strip() for s in kept]
    has = np.array([bool(t) for t in texts])
    tv = np.zeros((len(kept), encoder.dim), dtype=np.float32)
    if has.any():
        tv[has] = encoder.encode([t for t in texts if t])
    return out.embeddings.astype(np.float32), tv, has, np.array([classes[s.label] for s in kept])


def fuse_and_evaluate(bundle: str | os.PathLike, data: str | os.PathLike, *, out: str | os.PathLike | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Fit the bundle's fusion head on `data`'s train listings, compare the modalities on val, save the head
    into the bundle folder (`bundle` may name the folder or its card.json) and the report into `out`."""
    from ..data.catalogue import CatalogueError
    from ..models.bundle import bundle_folder
    from ..models.fusion import save_fusion, train_fusion
    from ..models.predictor import load_model as load
    from ..models.text import fitting_text_encoder
    from .heldout import card_catalogue

    folder = bundle_folder(bundle)  # the head is saved in it: never over the card.json it was named by
    model = load(folder)
    cat = card_catalogue(data, model.card)  # a generated val is the one the training run held out
    train, val = cat.split("train"), cat.split("val")
    if not any(s.text for s in train):
        raise CatalogueError(f"{cat.root}: no listing has its own text (a manifest 'title' or 'text' column): "
                             "nothing to fuse")
    classes = {c: i for i, c in enumerate(model.card.classes)}
    enc, text_model, fingerprint = fitting_text_encoder(folder)
    xi, xt, ht, y = _embed_split(model, train, enc, classes, progress)
    vi, vt, vh, vy = _embed_split(model, val, enc, classes, progress)
    head = train_fusion(xi, xt, y, len(classes), text_present=ht)
    report: dict[str, Any] = {"catalogue": str(cat.root), "train": len(y), "val": len(vy),
                              "val_top1": fusion_accuracies(head, vi, vt, vh, vy)}
    preds = model.predict([s.path for s in val], top_k=1)
    # Over the photos the other rows are scored on: an undecodable one is skipped there, so here too.
    scored = [p.fine_label == s.label for p, s in zip(preds, val, strict=True) if p.level != "error"]
    report["val_top1"]["bundle_classifier"] = float(np.mean(scored))
    report["text_encoder"] = "fine-tuned (skulens text-tune)" if fingerprint else text_model
    dest = Path(out) if out else folder / "fusion-report"
    dest.mkdir(parents=True, exist_ok=True)  # first: a report that cannot be written leaves the bundle as it was
    save_fusion(head, folder, tuple(model.card.classes), text_model=text_model, text_fingerprint=fingerprint)
    (dest / "fusion.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
