"""Batch jobs over many image files (predict, embed, count), each a small picklable description.

A job says what to load once (`load`: the bundle, the detector) and what a batch of paths becomes (`rows`: one
dict per path, in order; an unreadable image is a row with its `error`, never a failed batch). `rows` calls
the functions the local commands call (`Model.predict`, `embed_paths`, `count_products`), so an engine that
runs a job elsewhere gives the local answers: `skulens.deploy.ray_jobs` runs one on a Ray cluster, one
`load` per actor. `schema()` is the rows' Parquet (Arrow) schema, so every batch's table agrees.

Imports are lazy: describing a job (on a Ray driver) loads no torch; `load` does, where the work runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from ..detect.count import PhotoCount
    from ..models.predictor import Model, Prediction

__all__ = ["BatchJob", "CountJob", "EmbedJob", "PredictJob", "count_row", "prediction_row"]


class BatchJob(Protocol):
    kind: ClassVar[str]
    batch_size: int

    def load(self) -> Any: ...

    def rows(self, state: Any, paths: Sequence[str]) -> list[dict[str, Any]]: ...

    def schema(self) -> pa.Schema: ...


def _scored(name: str) -> Any:
    import pyarrow as pa

    return pa.list_(pa.struct([(name, pa.string()), ("p", pa.float64())]))


# --------------------------------------------------------------------------- predict

def prediction_row(p: Prediction) -> dict[str, Any]:
    """A Prediction as a flat row: top_k and attributes as lists of (label|name, p), probabilities unrounded."""
    row = asdict(p)
    row["top_k"] = [{"label": lab, "p": pr} for lab, pr in p.top_k]
    row["attributes"] = [{"name": a, "p": pr} for a, pr in p.attributes]
    return row


@dataclass(frozen=True)
class PredictJob:
    """`skulens predict`: classify each image (the bundle's decision rule, abstentions included)."""

    model: str  # bundle folder, card.json or .onnx file
    top_k: int = 5
    min_confidence: float = 0.0
    batch_size: int = 32  # images per forward pass (and per batch of the engine)
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    kind: ClassVar[str] = "predict"

    def load(self) -> Model:
        from ..models.predictor import load_model

        return load_model(self.model, device=self.device, precision=self.precision, backend=self.backend)

    def rows(self, state: Model, paths: Sequence[str]) -> list[dict[str, Any]]:
        preds = state.predict(list(paths), top_k=self.top_k, min_confidence=self.min_confidence,
                              batch_size=self.batch_size)
        return [prediction_row(p) for p in preds]

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        s, f = pa.string(), pa.float64()
        return pa.schema([("source", s), ("label", s), ("level", s), ("confidence", f), ("fine_label", s),
                          ("fine_confidence", f), ("coarse_label", s), ("coarse_confidence", f),
                          ("top_k", _scored("label")), ("attributes", _scored("name")), ("error", s)])


# --------------------------------------------------------------------------- embed

@dataclass(frozen=True)
class EmbedJob:
    """`skulens index build`: each image's L2-normalised embedding (null, with the reason, when unreadable)."""

    model: str  # bundle, or pretrained:NAME
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"
    kind: ClassVar[str] = "embed"

    def load(self) -> Model:
        from ..models.predictor import load_model

        return load_model(self.model, device=self.device, precision=self.precision)

    def rows(self, state: Model, paths: Sequence[str]) -> list[dict[str, Any]]:
        from ..search.embeddings import embed_paths

        emb = embed_paths(state, [Path(p) for p in paths], batch_size=self.batch_size)
        rows: list[dict[str, Any]] = [{"source": str(p), "embedding": None, "error": None} for p in paths]
        for i, vec in zip(emb.kept, emb.vectors, strict=True):
            rows[i]["embedding"] = vec.tolist()
        kept = set(emb.kept)
        # embed_paths lists the failures in input order: they are the rows it did not keep
        for i, (_, reason) in zip([i for i in range(len(paths)) if i not in kept], emb.failed, strict=True):
            rows[i]["error"] = reason
        return rows

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([("source", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())])


# --------------------------------------------------------------------------- count

def count_row(r: PhotoCount) -> dict[str, Any]:
    """A PhotoCount as a flat row: counts as (product, count) pairs, boxes with a null label when unknown."""
    return {"source": r.source, "width": r.width, "height": r.height, "total": r.total, "unknown": r.unknown,
            "capped": r.capped, "error": r.error,
            "counts": [{"product": k, "count": v} for k, v in sorted(r.counts.items())],
            "boxes": [{"box": list(b.box), "score": b.score, "label": b.label, "confidence": b.confidence,
                       "guess": b.guess} for b in r.boxes]}


@dataclass(frozen=True)
class CountJob:
    """`skulens count`: the products in each photo, named by the classifier (or an index) when one is given."""

    detector: str  # detector folder
    model: str | None = None  # classification bundle that names the boxes
    index: str | None = None  # name boxes by the nearest product in this index (built with `model`)
    min_score: float | None = None
    min_confidence: float = 0.5
    min_similarity: float | None = None  # with index: the cosine a match needs (None: 0.5, detect.count's default)
    tiles: str = "auto"
    max_boxes: int | None = None
    batch_size: int = 8  # photos per batch of the engine (the detector runs one photo at a time)
    device: str = "auto"
    backend: str = "torch"  # or "onnx": DET/detector.onnx under ONNX Runtime (`skulens detect export`)
    precision: str = "auto"  # the classifier's PyTorch numerics (the detector's backend is `backend`)
    kind: ClassVar[str] = "count"

    def __post_init__(self) -> None:
        from ..detect.options import check_backend

        check_backend(self.backend, self.device)
        from ..detect.count import check_naming

        check_naming(self.model, self.index, self.min_similarity)
        if self.precision != "auto" and not self.model:  # the detector runs in fp32 (or its ONNX export)
            raise ValueError(f"--precision {self.precision} sets the classifier's numerics: it needs -m/--model")

    def load(self) -> tuple[Any, Model | None, Any]:
        from ..detect.backends import open_detector

        det = open_detector(self.detector, device=self.device, backend=self.backend).with_settings(
            max_detections=self.max_boxes)
        clf = index = None
        if self.model:
            from ..models.predictor import load_model

            clf = load_model(self.model, device=self.device, precision=self.precision)
        if self.index:
            from ..search.index import open_index

            index = open_index(self.index)
        return det, clf, index

    def rows(self, state: tuple[Any, Model | None, Any], paths: Sequence[str]) -> list[dict[str, Any]]:
        from ..detect.count import count_products

        det, clf, index = state
        results = count_products(det, list(paths), model=clf, min_score=self.min_score,
                                 min_confidence=self.min_confidence, tiles=self.tiles, index=index,
                                 min_similarity=self.min_similarity)
        return [count_row(r) for r, _ in results]

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        s, f, i = pa.string(), pa.float64(), pa.int64()
        box = pa.struct([("box", pa.list_(f)), ("score", f), ("label", s), ("confidence", f), ("guess", s)])
        return pa.schema([("source", s), ("width", i), ("height", i), ("total", i), ("unknown", i),
                          ("capped", pa.bool_()), ("error", s),
                          ("counts", pa.list_(pa.struct([("product", s), ("count", i)]))),
                          ("boxes", pa.list_(box))])
