"""The public front: `skulens.train(...)`, `skulens.load(bundle)`, `skulens.pretrained(...)`,
`skulens.evaluate(model, data)`, and for shelf photos `skulens.load_detector(det)` and
`skulens.count(photos, det, model=...)`, and for listings `skulens.tag(photos, model, vocabulary=...)`.

The CLI and the REST service are thin adapters over these functions and the core they call. No stage of the
core imports this module: the model object lives in `skulens.models.predictor`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import TrainConfig, apply_preset, config_to_dict, load_config, resolve_config, warn_unused
from .models.predictor import ImageInput, Model, Prediction, load_model, pretrained_model

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .data.catalogue import Product
    from .detect.count import PhotoCount
    from .detect.detector import Detector
    from .evaluate.metrics import EvalReport
    from .search.tags import ListingTags
    from .train.engine import TrainResult

__all__ = ["ImageInput", "Model", "Prediction", "count", "evaluate", "load", "load_detector", "pretrained", "tag",
           "train"]


def pretrained(backbone: str = "efficientnet_lite2", *, weights: str | None = None, image_size: int | None = None,
               device: str = "auto", precision: str = "auto") -> Model:
    """A plain pretrained backbone as a Model with no classifier: `embed()` works, `predict()` does not.

    For search over a catalogue no model has been trained on, and for zero-shot experiments where a
    fine-tuned model would have seen the products already.
    """
    return pretrained_model(backbone, weights=weights, image_size=image_size, device=device, precision=precision)


def load(bundle: str | os.PathLike, *, device: str = "auto", precision: str = "auto",
         backend: str = "torch") -> Model:
    """Load a model bundle (model.safetensors + card.json; never unpickles).

    backend "onnx" runs the bundle's exported `model.onnx` (see `skulens export`) with ONNX Runtime, "onnx-int8"
    its `model.int8.onnx` (`skulens export --int8` or `--preset fast`), "tflite" its `model.tflite` with LiteRT,
    "tflite-int8" its `model.int8.tflite` (`skulens export --format tflite --int8`). "pretrained:NAME" (e.g.
    "pretrained:efficientnet_lite2") is a plain pretrained backbone for embeddings only (see `pretrained`).
    """
    return load_model(bundle, device=device, precision=precision, backend=backend)


def evaluate(model: Model | str | os.PathLike, data: str | os.PathLike | None = None, *, split: str = "val",
             out: str | os.PathLike | None = None, baseline: bool = False, progress: bool = True,
             device: str = "auto", backend: str = "torch") -> EvalReport:
    """Evaluate a model (or a bundle path) on a catalogue split; `data` defaults to the card's dataset.

    With `out`, writes report.json, report.md and the plots there; `baseline` (with `out`) adds the linear
    probe on the untouched pretrained backbone (the "before fine-tuning" point) to them; for both reports
    as objects, `skulens.evaluate.evaluator.evaluate_with_baseline`. `device` and `backend` load a bundle
    path; a loaded Model runs where it was loaded.
    """
    from .evaluate.evaluator import evaluate_model

    if out is not None and Path(out).exists() and not Path(out).is_dir():  # before the photos are scored: it was
        raise FileExistsError(f"out={str(out)!r}: a file; out is the folder the report is written into")  # mkdir's
    return evaluate_model(_as_model(model, device, backend), data, split=split, out=out, baseline=baseline,
                          progress=progress)


def _as_model(model: Model | str | os.PathLike, device: str = "auto", backend: str = "torch",
              precision: str = "auto") -> Model:
    """A loaded Model as it is, or a bundle path loaded on `device` with `backend` and `precision`; those settings
    beside a loaded Model would be ignored, so they are refused."""
    if not isinstance(model, Model):
        return load_model(model, device=device, backend=backend, precision=precision)
    if device != "auto" or backend != "torch" or precision != "auto":
        raise ValueError("device, backend and precision load a bundle path; this model is loaded already (on "
                         f"{model.device}): load it with them, or pass its path")
    return model


def train(data: str | os.PathLike | TrainConfig | None = None, *, config_file: str | os.PathLike | None = None,
          preset: str | None = None, progress: bool = True, **overrides: Any) -> TrainResult:
    """Fine-tune a backbone on a catalogue. Keyword overrides are TrainConfig fields; `preset` ("best",
    "default") or a config file's `preset` key goes under the file's values and the overrides; returns
    TrainResult. `data` may also be a whole TrainConfig (checked as a config file is)."""
    from .train.engine import fit

    if isinstance(data, TrainConfig) and (config_file is not None or preset is not None):
        # every field of a TrainConfig is set (defaults too): it would cover the file's and the preset's values
        raise TypeError("a TrainConfig is a whole config: pass a data path with config_file/preset, or build the "
                        "TrainConfig from them (skulens.train(TrainConfig(...)) takes no config_file or preset)")
    values = apply_preset(load_config(config_file) if config_file else {}, preset)
    if isinstance(data, TrainConfig):
        values.update(config_to_dict(data))
        data = None
    values.update(overrides)
    if data is not None:
        values["data"] = str(data)
    cfg: TrainConfig = resolve_config(values)
    warn_unused(cfg)
    return fit(cfg, progress=progress)


def load_detector(path: str | os.PathLike, *, device: str = "auto", backend: str = "torch") -> Detector:
    """Load a product detector folder (`skulens detect train` writes one); backend "onnx" runs its exported
    detector.onnx (`skulens detect export`) under ONNX Runtime."""
    from .detect.backends import open_detector

    return open_detector(path, device=device, backend=backend)


def count(photos: Sequence[ImageInput], detector: Detector | str | os.PathLike, *,
          model: Model | str | os.PathLike | None = None, min_score: float | None = None,
          min_confidence: float | None = None,
          tiles: str = "auto", index: str | os.PathLike | None = None,
          min_similarity: float | None = None, max_boxes: int | None = None) -> list[PhotoCount]:
    """Find, recognise and count every product in each photo.

    detector: a Detector or its folder; min_score None uses the detector's own threshold. model: the
    classification bundle that names each box (without one, every box is an unnamed "product"). index: a
    search index built with `model` (`skulens index build`) names each box by its nearest product instead,
    when the cosine similarity is at least `min_similarity` (default 0.5), so products enrolled in the index
    count too. Each PhotoCount has the boxes (label None = unknown: the classifier was below
    `min_confidence`, default 0.5, a setting of the classifier's naming: refused without a model or with an
    index), the count per product, and `annotated(photo)` for a picture (the photo as given to
    `count`: a path, bytes or PIL image). max_boxes: the most boxes kept per photo (None: the detector's own);
    a photo that had more is `capped`, as `skulens count --max-boxes` sets it.
    """
    from .detect.count import count_products
    from .detect.detector import Detector as _Detector

    if max_boxes is not None and (isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1):
        raise ValueError(f"max_boxes must be a whole number >= 1, got {max_boxes!r}")
    if min_confidence is not None and (model is None or index is not None):  # read by nothing (the CLI refused)
        raise ValueError("min_confidence is a setting of the classifier naming the boxes: " + (
            "give the model" if model is None else "with an index the nearest product names them (min_similarity)"))
    min_confidence = 0.5 if min_confidence is None else min_confidence
    det = detector if isinstance(detector, _Detector) else load_detector(detector)
    clf = model if model is None or isinstance(model, Model) else load_model(model)
    vectors = None
    if index is not None:
        from .search.index import open_index

        vectors = open_index(index)
    kept = (det.card, det.net.detections_per_img, det.net.topk_candidates)
    if max_boxes is not None:
        det.with_settings(max_detections=max_boxes)
    try:
        return [r for r, _ in count_products(det, photos, model=clf, min_score=min_score,
                                             min_confidence=min_confidence, tiles=tiles, index=vectors,
                                             min_similarity=min_similarity)]
    finally:  # a caller's loaded detector keeps its own cap for its next call
        det.card, det.net.detections_per_img, det.net.topk_candidates = kept


def tag(photos: Iterable[ImageInput], model: Model | str | os.PathLike, *, vocabulary: Sequence[str] | None = None,
        data: str | os.PathLike | None = None, mode: str = "auto", top_k: int | None = None,
        min_score: float | None = None,
        batch_size: int = 32, progress: bool = False, device: str = "auto",
        precision: str = "auto") -> list[ListingTags]:
    """Listing tags per photo: category path, attributes, colour names and, with a `vocabulary` (phrases),
    the phrases that fit the photo, best first (top_k of them, default 5, scoring at least min_score); mode,
    top_k and min_score are settings of the vocabulary tags, refused without a vocabulary (ValueError).

    data: the catalogue whose product sheets (titles, descriptions, attributes) the tags use; default: the one
    the bundle was trained on, if it is still there. mode: how phrases are scored (see `skulens.search.tags`):
    "text" through the recognised product's texts, "aligned" through the bundle's text aligner, "auto" text
    when the catalogue has texts.
    """
    from .search.align import load_aligner
    from .search.tags import DEFAULT_TOP_TAGS, Tagger, unused_vocabulary_settings

    given = unused_vocabulary_settings(mode, top_k, min_score) if vocabulary is None else []
    if given:  # without a vocabulary they did nothing
        raise ValueError(f"{', '.join(given)}: setting(s) of the vocabulary tags; give a vocabulary")
    top_k = DEFAULT_TOP_TAGS if top_k is None else top_k
    m = _as_model(model, device, precision=precision)
    tagger = Tagger(m, products=_catalogue_products(data, m), mode=mode,
                    aligner=load_aligner(m.path) if m.path is not None else None)
    return tagger.tag(photos, vocabulary=vocabulary, top_k=top_k, min_score=min_score, batch_size=batch_size,
                      progress=progress)


def _catalogue_products(data: str | os.PathLike | None, model: Model) -> dict[str, Product]:
    """The products of `data`, else of the bundle's training data if it is still there (else none): its sheets,
    or for a catalogue without them its photos' listing texts (`class_products`, as the service tags with)."""
    import logging

    from .data.catalogue import CatalogueError, class_products, load_catalogue
    from .models.card import enrolled_products

    enrolled = enrolled_products(model.card)  # their enrolment's title and text (no catalogue sheet names them)
    if data is not None:
        return {**enrolled, **class_products(load_catalogue(data, val_fraction=0))}
    recorded = model.card.dataset.get("path")
    if not recorded or not os.path.exists(recorded):
        return enrolled
    try:
        return {**enrolled, **class_products(load_catalogue(recorded, val_fraction=0))}
    except CatalogueError as exc:  # the training data moved or changed: tag without titles and texts
        logging.getLogger(__name__).warning("catalogue %s: %s; tagging without product sheets", recorded, exc)
        return enrolled
