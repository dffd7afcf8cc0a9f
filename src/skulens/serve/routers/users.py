"""People: recommendations for a user, behaviour events, and a user's erasure (serve.people).

Mounted with `--events` (a behaviour-log CSV) or `--db` (events kept in the database). Recording events and
erasing users need a pseudonym key (`--pseudonym-key-file` or $SKULENS_PSEUDONYM_KEY): user ids are stored
as keyed-hash pseudonyms only, so without a key nothing about people is kept.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from ...recommend.shopping_log import EVENT_TYPES, MAX_TIMESTAMP, Event
from ..deps import ReadKey, State, WriteKey, storage_answer, storage_refused
from ..forms import StrictFormRoute
from ..inventory import StorageError
from ..people import ErasureRefused
from ..schemas import NEW_USER_ID_PATTERN, STORAGE_RESPONSES, USER_ID_PATTERN, RequestBody, error_responses
from ..state import ServiceState

router = APIRouter(route_class=StrictFormRoute, prefix="/v1", tags=["people"],
                   responses=error_responses(401, 403, 409, 413))

# `{user_id:path}` takes ids with '/' (shop/42); one ending in '/' is a trailing slash, not a user (a 422, never an
# erasure of nobody answered 200), and is refused when recorded too (events, intake).
UserId = Annotated[str, PathParam(min_length=1, max_length=200, pattern=USER_ID_PATTERN)]
_NO_KEY = ("this service keeps no data about people: start it with a pseudonym key (--pseudonym-key-file, or "
           "$SKULENS_PSEUDONYM_KEY) and an inventory database (--db)")


class RecommendationOut(BaseModel):
    product_id: str
    score: float
    reason: str
    title: str


class EventIn(RequestBody):
    user_id: str = Field(min_length=1, max_length=200, pattern=NEW_USER_ID_PATTERN, description="the user as your shop knows "
                         "them (not ending in '/'); stored only as a keyed-hash pseudonym")
    product_id: str = Field(min_length=1, max_length=200)
    event: str = Field(description=f"one of {', '.join(EVENT_TYPES)}")
    # the CSV log's range: a JavaScript Date.now() (milliseconds) would sort after every real event for ever
    timestamp: float | None = Field(None, ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False,
                                    description="unix seconds (UTC), up to the year 9999 (milliseconds are refused); "
                                                "default: now")


class EventsIn(RequestBody):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsOut(BaseModel):
    recorded: int


class ErasureOut(BaseModel):
    user: str = Field(description="the pseudonym the user's data was kept under")
    events: int = Field(description="behaviour events deleted from the database")
    log_events: int = Field(description="behaviour events deleted from the --events CSV log")
    photos: int = Field(description="photos the user sent, now unlinked from them with their source names cleared "
                                    "(their counts stay; their kept files are in `files`)")
    files: int = Field(description="kept photo and crop files deleted")
    missing: int = Field(0, description="files the inventory named that were in neither of its folders (not "
                                        "deleted: the service's log and the audit entry name them)")


def _recording(state: ServiceState) -> None:
    if not state.people.records_events:
        raise HTTPException(409, _NO_KEY)


@router.get("/users/{user_id:path}/recommendations", response_model=list[RecommendationOut],
            summary="Products for a user, from the behaviour events (popular ones for a new user)")
async def recommendations(state: State, _: ReadKey, user_id: UserId, k: Annotated[int, Query(ge=1, le=100)] = 10,
                          seed: Annotated[list[str] | None, Query(max_length=50, description="products on screen")]
                          = None,
                          exclude_seen: bool = True) -> list[RecommendationOut]:
    rec = state.recommender
    if rec is None:  # a database and a key, but no event recorded yet
        return []
    unknown = [p for p in dict.fromkeys(seed or ()) if p not in state.products]
    if unknown:  # a typo would change nothing: the plain list would come back as if it were the seeds'
        raise HTTPException(422, f"seed: unknown product {unknown[0][:80]!r}")
    ref = state.people.user_ref(user_id)
    # a product of the service the recommender was fitted before (enrolled since) has nothing to add yet
    seeds = tuple(p for p in dict.fromkeys(seed or ()) if rec.knows(p))
    recs = await anyio.to_thread.run_sync(
        lambda: rec.recommend(ref, k, exclude_seen=exclude_seen, seed_products=seeds))
    return [RecommendationOut(product_id=r.product_id, score=round(r.score, 6), reason=r.reason,
                              title=state.product(r.product_id).title) for r in recs]


@router.post("/events", response_model=EventsOut, status_code=202, responses=STORAGE_RESPONSES,
             summary="Record behaviour events (views, carts, purchases) under pseudonymous user ids")
async def record_events(state: State, _: WriteKey, body: EventsIn) -> EventsOut:
    """507 when the disk is full, 503 (with Retry-After) when it or the database cannot be written
    (`storage_refused`): no event of the request was recorded (one transaction), and the same request again
    records them."""
    _recording(state)
    bad = sorted({e.event for e in body.events} - set(EVENT_TYPES))
    if bad:
        raise HTTPException(422, f"unknown event type(s) {', '.join(bad)} (known: {', '.join(EVENT_TYPES)})")
    # Only products the shop has: every id becomes a row and a column of the recommender's item matrix, so
    # made-up ids would grow it without bound (and they would be recommended back).
    known = set(state.products) | set(state.model.card.classes)
    unknown = sorted({e.product_id for e in body.events} - known)
    if unknown:
        raise HTTPException(422, f"unknown product id(s) {', '.join(repr(u) for u in unknown[:5])}"
                                 f"{' ...' if len(unknown) > 5 else ''}: events name products of the catalogue "
                                 "or the model")
    now = time.time()
    events = [Event(e.user_id, e.product_id, e.event, now if e.timestamp is None else e.timestamp)
              for e in body.events]
    try:
        n = await anyio.to_thread.run_sync(state.people.record, events)
    except Exception as exc:
        answer = storage_answer(exc, "the events were not recorded", "none of them was kept; send them again")
        if answer is None:
            raise
        raise answer from None
    return EventsOut(recorded=n)


@router.delete("/users/{user_id:path}", response_model=ErasureOut, responses=STORAGE_RESPONSES,
               summary="Erase a user: their events and the photos they sent (audited; counts stay)")
async def erase_user(state: State, actor: WriteKey, user_id: UserId) -> ErasureOut:
    """507 when the disk is full, 503 (with Retry-After) when it or the database cannot be written (`storage_refused`):
    the detail says what was not done (in the database nothing, or, when only the events log could not be
    rewritten, everything but the log), and the same request again finishes the erasure. 409 when the events log
    has a bad row: the detail says what was erased (nothing, unless the log broke during the erasure); the same
    request finishes it once the log is mended."""
    _recording(state)
    try:
        done = await anyio.to_thread.run_sync(lambda: state.people.erase(user_id, actor=actor))
    except StorageError as exc:
        raise storage_refused(exc) from None
    except ErasureRefused as exc:  # the events log has a bad row: it says what was erased
        raise HTTPException(409, str(exc)) from None
    return ErasureOut(**vars(done))


__all__ = ["router"]
