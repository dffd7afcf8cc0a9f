"""POST /v1/predict: one photo in, top-k products, coarse class and attributes out."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from ..batching import QueueFullError
from ..deps import ReadKey, State, busy, decode_upload, predict_upload
from ..forms import StrictFormRoute
from ..schemas import PredictResponse, error_responses
from ..security import upload_name
from ..state import ServiceState
from .products import product_out

router = APIRouter(route_class=StrictFormRoute, prefix="/v1", tags=["recognition"], responses=error_responses(400, 401, 413, 415, 501, 503, 504))


@router.post("/predict", response_model=PredictResponse, summary="Recognise the product in a photo")
async def predict(state: State, _: ReadKey,
                  image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
                  top_k: Annotated[int | None, Form(ge=1, le=50, description="default: the service's --top-k")] = None,
                  min_confidence: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0) -> PredictResponse:
    t0 = time.perf_counter()
    top_k = top_k or state.settings.top_k
    _, pred = await predict_upload(state, image, top_k=top_k, min_confidence=min_confidence)
    d = pred.to_dict()
    d["source"] = upload_name(image)
    d["title"] = _title(state, pred.label) if pred.label else None
    for row in d["top_k"]:
        row["title"] = _title(state, row["label"])
    # The product the service names (level "fine"): below min_confidence, or a coarse answer, it names none, and a
    # client that shows or counts `product` would act on the guess it declined. product_out reads the stock count
    # from SQLite: off the event loop.
    named = pred.level == "fine" and pred.label is not None
    product = await anyio.to_thread.run_sync(product_out, state, pred.label) if named else None
    return PredictResponse(prediction=d, product=product, timing_ms=round((time.perf_counter() - t0) * 1000, 2))


def _title(state: ServiceState, label: str) -> str:
    """A label's name for people: its catalogue title, else (none, or just the key) dashes as spaces."""
    title = state.product(label).title
    return title if title and title != label else label.replace("-", " ")


@router.post("/explain", summary="Grad-CAM: where in the photo the model looked for its answer")
async def explain(state: State, _: ReadKey,
                  image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
                  target: Annotated[str | None, Form(max_length=200)] = None) -> dict[str, Any]:
    """The explained class, its confidence, and a PNG of the heatmap over the model's view (base64)."""
    t0 = time.perf_counter()
    if state.model.net is None:
        raise HTTPException(501, "Grad-CAM needs the PyTorch model: this service runs with "
                                 f"--backend {state.settings.backend}")
    _, img = await decode_upload(state, image)
    try:
        exp = await state.recognizer.explain(img, target=target or None)
    except (QueueFullError, asyncio.TimeoutError) as exc:
        raise busy(state, exc) from None
    if isinstance(exp, Exception):
        raise HTTPException(422, f"target: {exp}")

    def png() -> str:
        from ...evaluate.explain import overlay

        buf = io.BytesIO()
        overlay(exp).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")

    return {"label": exp.label, "confidence": round(exp.confidence, 6), "overlay_png": await anyio.to_thread.run_sync(png),
            "timing_ms": round((time.perf_counter() - t0) * 1000, 2)}
