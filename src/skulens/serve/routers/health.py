"""Liveness, readiness, Prometheus metrics and what this server offers."""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ..deps import ReadKey, State
from ..metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _answers(ping: Any) -> bool:
    """Whether `ping` (the inventory database's or the index server's round trip, each bounded at 2 s itself)
    returns without an error: a load balancer kept sending intakes to a worker whose PostgreSQL was gone, each a
    failure, while /readyz said ready."""
    try:
        with anyio.fail_after(2.5):
            await anyio.to_thread.run_sync(ping, abandon_on_cancel=True)
    except Exception:  # noqa: BLE001 - any driver error, or the timeout: not ready
        return False
    return True


@router.get("/readyz", summary="Readiness: the model is loaded and the batcher runs",
            responses={503: {"description": "not ready yet (warming up) or not any more: the body's `problems` say "
                                            "why; a load balancer sends no traffic here until it answers 200"}})
async def readyz(state: State) -> JSONResponse:
    problems = []
    if not state.recognizer.batcher.running:
        problems.append("model batcher is not running")
    if state.writer is not None and not state.writer.running:
        problems.append("inventory writer is not running")
    if state.warming:
        problems.append("warming up: running the model once per batch size and paging the index in")
    if state.store is not None and not await _answers(state.store.ping):
        problems.append("the inventory database cannot be reached")
    if state.search is not None and not await _answers(lambda: state.search.index.ping()):
        problems.append("the search index's server cannot be reached")
    body = {"status": "not ready" if problems else "ready", "problems": problems,
            "queue_depth": state.recognizer.batcher.depth, "startup": state.startup}
    return JSONResponse(body, status_code=503 if problems else 200)


# HEAD, as load balancers and uptime monitors probe: the same status, no body; left out of the OpenAPI schema
# (a route with GET and HEAD gets one operationId for both, drawn from a set: it changed between runs)
@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    return Response()


@router.head("/readyz", include_in_schema=False)
async def readyz_head(state: State) -> Response:
    return Response(status_code=(await readyz(state)).status_code)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info", summary="The model card summary and the features this server has")
async def info(state: State, _: ReadKey) -> dict[str, Any]:
    card = state.model.card
    return {
        "model": {"backbone": card.backbone, "input_size": card.input_size, "classes": list(card.classes),
                  "coarse_classes": list(card.coarse_classes), "attributes": list(card.attributes),
                  "metrics": {k: v for k, v in card.metrics.items() if isinstance(v, (int, float))}},
        "features": state.features(),
        # What the pages decide with. min_confidence: below it a recognition is "not sure" (the support answer
        # hands off to a person at the same point); review: intake below it waits for a reviewer.
        "thresholds": {"min_confidence": state.settings.support_min_confidence,
                       "review": state.settings.review_threshold},
        "limits": {"max_upload_bytes": state.settings.max_upload_bytes, "max_pixels": state.settings.max_pixels,
                   "max_files": state.settings.max_files},
        "auth": {"writes": "api key", "reads": "api key" if state.settings.auth_reads else "open"},
        "uptime_s": round(time.time() - state.started_at, 1),
    }
