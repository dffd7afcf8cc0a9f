"""POST /v1/support/ask: identify the product in a photo and answer a question from its catalogue facts."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from ..deps import ReadKey, State, predict_upload
from ..forms import StrictFormRoute
from ..schemas import SupportOut, error_responses
from ..support import MAX_QUESTION_CHARS

router = APIRouter(route_class=StrictFormRoute, prefix="/v1/support", tags=["support"], responses=error_responses(400, 401, 413, 415, 503, 504))


@router.post("/ask", response_model=SupportOut, summary="Answer a customer's question about a photographed product")
async def ask(state: State, _: ReadKey, image: Annotated[UploadFile, File(description="the product photo")],
              question: Annotated[str | None, Form(max_length=MAX_QUESTION_CHARS)] = None) -> SupportOut:
    if state.responder is None:
        raise HTTPException(503, f"support replies are unavailable: {state.support_error}")
    _, pred = await predict_upload(state, image, top_k=5)
    # Encoding the question (MiniLM) is CPU work: keep it off the event loop.
    reply = await anyio.to_thread.run_sync(state.responder.answer, pred, question)
    state.metrics.handoffs.labels("handoff" if reply.handoff else "answered").inc()
    return SupportOut(**reply.to_dict())
