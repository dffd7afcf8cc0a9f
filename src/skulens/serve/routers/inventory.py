"""Inventory: photo intake, counts, the review queue, CSV export and the audit log (needs --db).

With a detector configured (`detector`), intake takes shelf photos: every product in a photo counts, and
the answer carries each box and the counts it added.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass, replace
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...data.decode import ImageDecodeError
from ..batching import QueueFullError
from ..deps import ReadKey, State, WriteKey, busy, storage_answer
from ..forms import StrictFormRoute
from ..images import content_hash
from ..intake import TOP_K, intake_photo, shelf_photo
from ..inventory import (
    IntakePhoto,
    InventoryError,
    InventoryStore,
    PhotoMissingError,
    ShelfPhoto,
    UnknownLabelError,
)
from ..schemas import (
    NEW_USER_ID_PATTERN,
    STORAGE_RESPONSES,
    AdjustRequest,
    AuditOut,
    IntakeItemOut,
    IntakeOut,
    InventoryOut,
    ReviewDecision,
    ReviewItemOut,
    error_responses,
)
from ..security import decode_error_status, read_image_upload, upload_name
from ..state import ServiceState

router = APIRouter(route_class=StrictFormRoute, prefix="/v1/inventory", tags=["inventory"], responses=error_responses(400, 401, 403, 404, 409, 413, 415, 503, 504))

# A photo's sha256, or `sha256:index` for one box of a shelf photo.
ItemId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}(:[0-9]{1,6})?$")]


class BoxOut(BaseModel):
    index: int
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's pixels (EXIF orientation applied)")
    score: float = Field(description="the detector's: is this a product?")
    label: str = Field(description='the product, or "unknown"')
    confidence: float
    guess: str | None = Field(None, description="the classifier's best guess (for unknown boxes too)")
    status: str = Field(description="counted | review")


class ShelfOut(BaseModel):
    counts: dict[str, int] = Field(description="products this photo added to the counts")
    boxes: list[BoxOut]
    width: int
    height: int
    capped: bool = Field(description="the detector hit its box cap: there may be more products than boxes")


class IntakeResultOut(IntakeItemOut):
    shelf: ShelfOut | None = Field(None, description="a shelf photo's boxes and counts (server with a detector)")


class IntakeResponse(IntakeOut):
    results: list[IntakeResultOut]  # type: ignore[assignment]


class QueueItemOut(ReviewItemOut):
    id: str = Field(description="what /review/{id} and /photos/{id} take: the sha256, or sha256:index for a box")
    kind: str = Field("photo", description="photo | box (one product box of a shelf photo)")
    index: int | None = None
    box: list[float] | None = None


def _store(state: ServiceState) -> InventoryStore:
    if state.store is None:
        raise HTTPException(404, "inventory is not configured (start the server with --db FILE)")
    return state.store


def _storage_error(exc: Exception, what: str, outcome: str) -> HTTPException | None:
    """The answer to a store write that failed on the server's storage, not on the request (`storage_failure`):
    `storage_refused`'s 507 or 503; else None. (Its path and the store's log line are the operator's; the client is
    told only what happened, and `outcome`.)"""
    return storage_answer(exc, f"the inventory cannot store {what} now", outcome)


@dataclass(frozen=True)
class _Failed:
    item: IntakeResultOut
    status: int  # the HTTP status if every file of the request fails


async def _recognise(state: ServiceState, upload: UploadFile) -> IntakePhoto | ShelfPhoto | IntakeResultOut | _Failed:
    """An IntakePhoto (ShelfPhoto with a detector) ready for the store, a duplicate's answer, or the file's error."""
    name = upload_name(upload)
    try:
        data = await read_image_upload(upload, state.settings.max_upload_bytes)
    except HTTPException as exc:
        return _Failed(IntakeResultOut(source=name, status="error", error=str(exc.detail)), exc.status_code)
    sha = content_hash(data)
    known = await anyio.to_thread.run_sync(_store(state).known_results, [sha], name)
    if sha in known:  # already in the store: no need to recognise it again (the store re-checks anyway)
        return IntakeResultOut(**known[sha].to_dict())
    settings = state.settings
    shelf = state.recognizer.detector is not None
    # A shelf photo is decoded at its own size (up to max_pixels: ~120 MB at 40 MP): a few at a time over all
    # requests, not every photo of every request at once.
    async with state.shelf_slots if shelf else contextlib.nullcontext():
        try:
            image = await state.recognizer.in_decoder(state.recognizer.decode, data, full=shelf)
        except ImageDecodeError as exc:
            return _Failed(IntakeResultOut(sha256=sha, source=name, status="error", error=f"{name}: {exc.reason}"),
                           decode_error_status(exc))
        if shelf:
            counted = await state.recognizer.count(image)
            return await anyio.to_thread.run_sync(partial(
                shelf_photo, data, sha, name, counted, image, threshold=settings.review_threshold,
                keep_photos=settings.keep_uploads, max_pixels=settings.max_pixels))
    pred = await state.recognizer.predict(image, top_k=TOP_K)
    # a photo kept (for review) is decoded again whole, to be re-encoded: on the decoding threads too
    return await state.recognizer.in_decoder(intake_photo, data, sha, name, pred, threshold=settings.review_threshold,
                                             keep_photos=settings.keep_uploads, max_pixels=settings.max_pixels)


@router.post("/intake", response_model=IntakeResponse, responses=STORAGE_RESPONSES,
             summary="Count products from photos (idempotent per photo; every product of a shelf photo with a detector)")
async def intake(state: State, actor: WriteKey,
                 images: Annotated[list[UploadFile], File(description="one or more photos")],
                 user: Annotated[str | None, Form(
                     min_length=1, max_length=200, pattern=NEW_USER_ID_PATTERN, description=(
                         "who sent the photos (a seller, a shopper), so `DELETE /v1/users/{id}` can erase them; "
                         "kept as a pseudonym only, and only with a pseudonym key"))] = None) -> IntakeResponse:
    _store(state)
    if len(images) > state.settings.max_files:
        raise HTTPException(413, f"{len(images)} files in one request; at most {state.settings.max_files}")
    if user is not None and not state.people.records_events:
        raise HTTPException(409, "a photo's user can be kept only as a pseudonym: start the service with a "
                                 "pseudonym key (--pseudonym-key-file or $SKULENS_PSEUDONYM_KEY)")
    ref = None if user is None else state.people.user_ref(user)
    try:
        prepared = await asyncio.gather(*(_recognise(state, f) for f in images))
    except (QueueFullError, asyncio.TimeoutError) as exc:
        raise busy(state, exc) from None
    photos = [replace(p, user_ref=ref) for p in prepared if isinstance(p, (IntakePhoto, ShelfPhoto))]
    try:
        stored = iter(await state.record_intake(photos, actor) if photos else [])
    except (QueueFullError, asyncio.TimeoutError) as exc:
        raise busy(state, exc) from None
    except InventoryError as exc:  # a count past the largest stored: the request's one transaction rolled back
        raise HTTPException(409, f"{exc}: nothing in this request was counted") from None
    except Exception as exc:  # only the store's: a failing disk while recognising is not "nothing was stored"
        answer = _storage_error(exc, "photos", "nothing was counted")
        if answer is None:
            raise
        raise answer from None
    results = [IntakeResultOut(**next(stored).to_dict()) if isinstance(p, (IntakePhoto, ShelfPhoto))
               else p.item if isinstance(p, _Failed) else p for p in prepared]
    for r in results:
        state.metrics.intake.labels(r.status).inc()
    out = IntakeResponse(results=results, **{s: sum(r.status == s for r in results)
                                             for s in ("counted", "review", "duplicate")},
                         errors=sum(r.status == "error" for r in results))
    failed = [p for p in prepared if isinstance(p, _Failed)]
    if len(failed) == len(prepared):  # nothing usable: answer with the first file's error
        raise HTTPException(failed[0].status, failed[0].item.error)
    return out


def _title(state: ServiceState, label: str) -> str:
    return state.product(label).title or label


@router.get("", response_model=InventoryOut, summary="Counts per product (its name, last change), review queue size")
async def counts(state: State, _: ReadKey) -> InventoryOut:
    store = _store(state)
    stock, review, stats = await anyio.to_thread.run_sync(
        lambda: (store.stock(), store.review_size(), store.stats()))
    return InventoryOut(counts={lab: n for lab, n, _ in stock},
                        titles={lab: _title(state, lab) for lab, _, _ in stock},
                        updated_at={lab: t for lab, _, t in stock}, review_queue=review, photos=stats)


@router.get("/export.csv", summary="Counts as CSV (label,count,updated_at,title)", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}})
async def export_csv(state: State, _: ReadKey) -> Response:
    buf = io.StringIO()
    await anyio.to_thread.run_sync(partial(_store(state).export_csv, buf, titles=partial(_title, state)))
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="inventory.csv"'})


class UnknownLabelOut(BaseModel):
    detail: str
    label: str = Field(description="the label that names no product")
    suggestions: list[str] = Field(description="the closest existing products")


def _known_products(state: Any) -> set[str]:
    """What a label may name: the catalogue's and enrolled products and the model's classes."""
    return set(state.products) | set(state.model.card.classes)


def _unknown_label(exc: UnknownLabelError) -> JSONResponse:
    body = UnknownLabelOut(detail=str(exc), label=exc.label, suggestions=list(exc.suggestions))
    return JSONResponse(body.model_dump(), status_code=422)


class AdjustOut(BaseModel):
    label: str
    count: int = Field(description="the count after the change")


@router.post("/products/{label}/adjust", summary="Change a count by hand (sale, stock take)",
             response_model=AdjustOut, responses={422: {"model": UnknownLabelOut, "description": "the label names no existing product "
                                                                        "(or the request is malformed)"},
                                                  **STORAGE_RESPONSES})
async def adjust(state: State, actor: WriteKey, body: AdjustRequest,
                 label: Annotated[str, PathParam(min_length=1, max_length=200)]) -> Any:
    known = _known_products(state)
    try:
        count = await anyio.to_thread.run_sync(
            lambda: _store(state).adjust(label, delta=body.delta, count=body.count, actor=actor, reason=body.reason,
                                         known=known))
    except UnknownLabelError as exc:
        return _unknown_label(exc)
    except InventoryError as exc:
        raise HTTPException(422, str(exc)) from None
    except Exception as exc:
        answer = _storage_error(exc, "a stock change", "the adjustment was not recorded, the count is unchanged")
        if answer is None:
            raise
        raise answer from None
    return AdjustOut(label=label.strip(), count=count)  # the label the store changed (it strips its labels)


@router.get("/review", response_model=list[QueueItemOut],
            summary="Photos and shelf boxes waiting for a reviewer; needs an API key (their file names are the "
                    "uploaders', erased with them)")
async def review_queue(state: State, _: WriteKey, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                       offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0) -> list[QueueItemOut]:
    items = await anyio.to_thread.run_sync(lambda: _store(state).review_queue(limit=limit, offset=offset))
    return [QueueItemOut(**i.to_dict()) for i in items]


@router.post("/review/{item}", response_model=QueueItemOut,
             responses={422: {"model": UnknownLabelOut, "description": "the label names no existing product "
                                                                        "(or the request is malformed)"},
                        **STORAGE_RESPONSES},
             summary="Confirm or correct a queued photo's or box's label (then it counts), or reject it")
async def resolve(state: State, actor: WriteKey, item: ItemId,
                  decision: ReviewDecision) -> QueueItemOut | JSONResponse:
    """The label must be an existing product (the model's classes, the catalogue, enrolled products): a new
    product is enrolled first (POST /v1/products, on a server with an index), never invented by a review."""
    if decision.reject == (decision.label is not None and decision.label.strip() != ""):
        raise HTTPException(422, "give either a label (confirm or correct) or reject: true")
    label = None if decision.reject else decision.label
    known = _known_products(state)
    try:
        done = await anyio.to_thread.run_sync(lambda: _store(state).resolve(item, label, actor=actor, known=known))
    except UnknownLabelError as exc:
        return _unknown_label(exc)
    except InventoryError as exc:
        status = 404 if "not in the inventory" in str(exc) else \
            409 if "not waiting" in str(exc) or isinstance(exc, PhotoMissingError) else 422
        raise HTTPException(status, str(exc)) from None
    except Exception as exc:
        answer = _storage_error(exc, "a review", "it was not recorded, the item is still waiting for review")
        if answer is None:
            raise
        raise answer from None
    return QueueItemOut(**done.to_dict())


@router.get("/photos/{item}", summary="A kept intake photo or box crop (EXIF-free JPEG); needs an API key",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def photo(state: State, _: WriteKey, item: ItemId) -> Response:
    def read() -> bytes | None:  # in one step off the loop: a review, a rejection or an erasure may move the file
        path = _store(state).photo_file(item)
        try:
            return path.read_bytes() if path is not None else None
        except FileNotFoundError:
            return None

    data = await anyio.to_thread.run_sync(read)
    if data is None:
        raise HTTPException(404, "no stored photo with that hash: counted photos are kept only with --keep-uploads, "
                                 "and kept ones go at their retention period or their user's erasure")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@router.get("/audit", response_model=list[AuditOut], summary="Every change, newest first; needs an API key")
async def audit(state: State, _: WriteKey, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None) -> list[AuditOut]:
    rows = await anyio.to_thread.run_sync(lambda: _store(state).audit(limit=limit, before_id=before_id))
    return [AuditOut(**r.to_dict()) for r in rows]
