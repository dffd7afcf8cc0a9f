"""POST /v1/tag: one photo in, listing tags out (category path, attributes, colours, vocabulary tags)."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from ...search.tags import DEFAULT_TOP_TAGS, MAX_PHRASE_CHARS, TaggingError
from ..batching import QueueFullError
from ..deps import ReadKey, State, busy, decode_upload
from ..forms import StrictFormRoute
from ..schemas import TagResponse, error_responses
from ..security import upload_name

router = APIRouter(route_class=StrictFormRoute, prefix="/v1", tags=["listings"], responses=error_responses(400, 401, 413, 415, 503, 504))

# Phrases one request may send: encoding them (MiniLM) runs per new vocabulary, so it is bounded; a longer
# list belongs in the server's --tag-vocabulary file (encoded once, at startup).
REQUEST_MAX_PHRASES = 200


@router.post("/tag", response_model=TagResponse, summary="Listing tags for a product photo")
async def tag(state: State, _: ReadKey,
              image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
              vocabulary: Annotated[list[str] | None, Form(
                  description=f"phrases to tag with, one per field (at most {REQUEST_MAX_PHRASES}, "
                              f"{MAX_PHRASE_CHARS} characters each); default: the server's --tag-vocabulary")] = None,
              top_k: Annotated[int | None, Form(
                  ge=0, le=50, description=f"vocabulary tags per photo (default {DEFAULT_TOP_TAGS})")] = None,
              min_score: Annotated[float | None, Form(ge=-1.0, le=1.0, allow_inf_nan=False)] = None) -> TagResponse:
    t0 = time.perf_counter()
    tagger = state.recognizer.tagger
    assert tagger is not None
    phrases, source = (vocabulary, "request") if vocabulary is not None else (state.tag_vocabulary, "server")
    if phrases is None and (top_k is not None or min_score is not None):  # accepted and ignored before
        raise HTTPException(422, "top_k, min_score: settings of the vocabulary tags; send a vocabulary (this "
                                 "server has no --tag-vocabulary)")
    top_k = DEFAULT_TOP_TAGS if top_k is None else top_k
    if source == "request" and phrases is not None and len(phrases) > REQUEST_MAX_PHRASES:  # before any work
        raise HTTPException(422, f"vocabulary: {len(phrases)} phrases, at most {REQUEST_MAX_PHRASES} per request "
                                 "(a longer list belongs in the server's --tag-vocabulary)")
    _, img = await decode_upload(state, image)
    encoded = None
    if phrases is not None:
        try:  # MiniLM (first use of a vocabulary): off the event loop
            encoded = await anyio.to_thread.run_sync(functools.partial(tagger.vocabulary, phrases))
        except TaggingError as exc:
            raise HTTPException(422, f"vocabulary: {exc}") from None
    try:
        result = await state.recognizer.tag(img, vocabulary=encoded, top_k=top_k, min_score=min_score)
    except (QueueFullError, asyncio.TimeoutError) as exc:
        raise busy(state, exc) from None
    d = result.to_dict()
    d["source"] = upload_name(image)
    return TagResponse(tags=d, vocabulary=source if encoded is not None else "none",
                       timing_ms=round((time.perf_counter() - t0) * 1000, 2))
