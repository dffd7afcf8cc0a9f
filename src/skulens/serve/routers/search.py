"""Search, similar products, and product changes backed by the vector index.

Mounted only when configured: `--index` for search, similar products, product CRUD and enrolment;
`--events` for similar products from the behaviour log when there is no index (recommendations: `users`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from ...data.catalogue import unprintable
from ...search.engine import TEXT_MODES
from ...search.index import IndexChangedError, IndexRecord, IndexStoreError, IndexUnavailableError, SearchHit
from ..batching import QueueFullError
from ..deps import ReadKey, State, WriteKey, busy, decode_upload, storage_answer
from ..forms import StrictFormRoute
from ..images import content_hash
from ..schemas import STORAGE_RESPONSES, STORAGE_RETRY_AFTER_S, RequestBody, error_responses
from ..settings import ServeSettings
from ..state import ServiceState

logger = logging.getLogger(__name__)

ProductId = Annotated[str, PathParam(min_length=1, max_length=200)]


class HitOut(BaseModel):
    product_id: str
    score: float
    title: str
    label: str
    coarse_label: str | None = None
    metadata: dict[str, Any] = {}
    has_image: bool = False


class SearchOut(BaseModel):
    query: str = Field(description="'image' or the text searched")
    hits: list[HitOut]


class ProductPatch(RequestBody):
    title: str | None = Field(None, max_length=300)
    text: str | None = Field(None, max_length=5000)
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="merged into the product's index metadata; null deletes a key")


def _hit(state: ServiceState, hit: SearchHit) -> HitOut:
    d = hit.to_dict()
    d.pop("image")  # a path on the server: clients learn only whether /v1/products/{id}/image has one
    return HitOut(**{**d, "title": d["title"] or hit.product_id},
                  has_image=state.product_image(hit.product_id) is not None)


async def _hits(state: ServiceState, hits: list[SearchHit]) -> list[HitOut]:
    """has_image says what GET /v1/products/{id}/image answers (it looks in the index, under its lock, and on
    disk): off the event loop."""
    return await anyio.to_thread.run_sync(lambda: [_hit(state, h) for h in hits])


def _filter(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"filter: not JSON ({exc.msg}); e.g. {{\"coarse_label\": \"Milk\"}}") from None
    except RecursionError:  # "[[[[...": nested past the parser's depth (a 500 before)
        raise HTTPException(422, "filter: nested too deeply; a JSON object of field -> value or [values]") from None
    if not isinstance(value, dict):
        raise HTTPException(422, "filter: a JSON object of field -> value or [values]")
    return value


def _index_down(exc: IndexUnavailableError, outcome: str = "nothing was changed") -> HTTPException:
    """503 with Retry-After for an index server that cannot be reached (it was a 422, as if the request were
    wrong); the detail says what was not done."""
    logger.warning("search index unavailable: %s", exc)
    return HTTPException(503, f"the search index cannot be reached now; {outcome}",
                         headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)})


async def _index_call(state: ServiceState, fn: Any) -> Any:
    try:
        return await anyio.to_thread.run_sync(state.with_index, fn)
    except IndexUnavailableError as exc:  # the server is down: the same request may succeed later
        raise _index_down(exc) from None
    except IndexChangedError as exc:  # another process saved the index meanwhile: this change was not made
        raise HTTPException(409, str(exc)) from None
    except IndexStoreError as exc:
        status = 404 if "no entries for product" in str(exc) else 422
        raise HTTPException(status, str(exc)) from None
    except ValueError as exc:  # e.g. text search mode "aligned" without an aligner
        raise HTTPException(422, str(exc)) from None
    except OSError as exc:  # the index's disk refused the save (`_save`): 507 when full, else 503
        answer = storage_answer(exc, "the search index cannot be saved", "the change was not made")
        if answer is None:
            raise
        raise answer from None


def _save(state: ServiceState) -> None:
    """Save the index after a change; when the save fails, the change is dropped from memory too (`revert`), so
    the error answered and the index agree: it does not come back with the next write's save, nor show in
    searches until a restart takes it away. Call under the index lock."""
    index = state.search.index
    try:
        index.save()
    except BaseException:
        try:
            reverted = index.revert()
        except (IndexStoreError, OSError):  # the files on disk cannot be read back either: memory keeps the change
            reverted = False
        logger.error("the search index was not saved; %s", "its unsaved change was dropped" if reverted
                     else "its unsaved change stays in memory")
        raise


search_router = APIRouter(route_class=StrictFormRoute, prefix="/v1", tags=["search"], responses=error_responses(400, 401, 413, 415, 503, 504))


@search_router.post("/search", response_model=SearchOut, summary="Find products by photo or by text")
async def search(state: State, _: ReadKey, request: Request,
                 image: Annotated[UploadFile | None, File(description="a photo to search by")] = None,
                 text: Annotated[str | None, Form(max_length=500, description="words to search by")] = None,
                 k: Annotated[int, Form(ge=1, le=100)] = 10,
                 filter: Annotated[str | None, Form(max_length=2000, description="JSON, e.g. {\"in_stock\": true}")]
                 = None,
                 mode: Annotated[str | None, Form(description="text search: " + " | ".join(TEXT_MODES)
                                                  + " (default: hybrid)")] = None,
                 ) -> SearchOut:
    engine = state.search
    has_text = bool((text or "").strip())  # a blank text is no text, with or without an image
    if image is not None and has_text:
        raise HTTPException(422, "send either an image (multipart file field 'image') or a text, not both")
    if image is None and not has_text:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise HTTPException(422, f"send form fields (multipart/form-data: 'image' or 'text'), not {kind}")
        raise HTTPException(422, "send an image (multipart file field 'image') or a text (form field 'text') to "
                                 "search by; nothing was sent")
    if mode is not None and image is not None:
        raise HTTPException(422, "mode is a setting of text search: a photo search has none")
    mode = mode or "hybrid"
    if mode not in TEXT_MODES:
        raise HTTPException(422, f"mode must be one of {', '.join(TEXT_MODES)}")
    flt = _filter(filter)
    if image is not None:
        _, pil = await decode_upload(state, image)
        try:
            vector, coarse = await state.recognizer.embed_with_coarse(pil)
        except (QueueFullError, asyncio.TimeoutError) as exc:
            raise busy(state, exc) from None
        probs = None if coarse is None else coarse[None, :]
        hits = await _index_call(state, lambda: engine.by_vector(vector[None, :], k=k, filter=flt, coarse=probs)[0])
        return SearchOut(query="image", hits=await _hits(state, hits))
    assert text is not None
    hits = await _index_call(state, lambda: engine.by_text([text], k=k, filter=flt, mode=mode)[0])
    return SearchOut(query=text, hits=await _hits(state, hits))


similar_router = APIRouter(route_class=StrictFormRoute, prefix="/v1/products", tags=["search"],
                           responses=error_responses(401, 404))


@similar_router.get("/{product_id}/similar", response_model=list[HitOut],
                    summary="Products like this one (the index's more-like-this, else the recommender)")
async def similar(state: State, _: ReadKey, product_id: ProductId, k: Annotated[int, Query(ge=1, le=100)] = 10,
                  filter: Annotated[str | None, Query(max_length=2000)] = None) -> list[HitOut]:
    flt = _filter(filter)
    if state.search is not None:
        def run() -> Any:  # the lookup too: off the event loop, under the index lock like every index call
            if not state.search.index.records(product_id):
                return None
            return state.search.more_like_this(product_id, k=k, filter=flt)

        hits = await _index_call(state, run)
        if hits is not None:
            return await _hits(state, hits)
    if state.recommender is not None:
        from ...recommend.recommenders import UnknownProductError

        try:
            recs = await anyio.to_thread.run_sync(lambda: state.recommender.similar(product_id, k))
        except UnknownProductError as exc:
            raise HTTPException(404, str(exc)) from None
        if flt:  # the recommender knows no metadata: answering without the filter would ignore it silently
            raise HTTPException(422, f"product {product_id!r} is not in the search index, and only the index's "
                                     "more-like-this can filter: drop the filter or add the product to the index")
        return await anyio.to_thread.run_sync(lambda: [
            HitOut(product_id=r.product_id, score=round(r.score, 6), title=state.product(r.product_id).title,
                   label=r.product_id, coarse_label=state.product(r.product_id).coarse_label,
                   has_image=state.product_image(r.product_id) is not None) for r in recs])
    raise HTTPException(404, f"unknown product {product_id!r}")


crud_router = APIRouter(route_class=StrictFormRoute, prefix="/v1/products", tags=["products"], responses=error_responses(400, 401, 403, 404, 409, 413, 415, 501, 503, 504))


@crud_router.post("", summary="Enrol a new product from a few photos (the model learns it; search finds it)",
                  status_code=201)
async def create_product(state: State, actor: WriteKey,
                         product_id: Annotated[str, Form(min_length=1, max_length=200)],
                         images: Annotated[list[UploadFile], File(description="1-32 photos of the product")],
                         title: Annotated[str, Form(max_length=300)] = "",
                         text: Annotated[str, Form(max_length=5000)] = "",
                         coarse_label: Annotated[str | None, Form(max_length=200)] = None) -> dict[str, Any]:
    from ...data.catalogue import Product
    from ...search.enroll import EnrolmentError, enroll

    if state.model.net is None:
        raise HTTPException(501, "enrolment teaches the PyTorch bundle a new class: run the service with "
                                 "--backend torch (and re-export for ONNX afterwards)")
    if len(images) > state.settings.max_files:
        raise HTTPException(413, f"at most {state.settings.max_files} photos per request")
    if (product_id != product_id.strip() or unprintable(product_id) or any(ch in "/\\" for ch in product_id)
            or product_id in (".", "..")):
        # the id is a path segment of every other route (GET, PATCH, DELETE /v1/products/{id}; "." and ".." are
        # resolved away by clients before they are sent) and a log field; an invisible character made a second
        # product that shows as the first
        raise HTTPException(422, f"product_id {product_id[:40]!r}: no '/', '\\', control or invisible characters, "
                                 "surrounding spaces, '.' or '..'")
    datas = [(await decode_upload(state, f))[0] for f in images]  # checked like every upload

    def run() -> Any:
        result = enroll(state.settings.model, product_id, datas, text=text, title=title, coarse=coarse_label,
                        index=state.search.index, keep_photos=state.settings.keep_uploads)
        # in the same locked step: a request timing out, or a DELETE of the product, cannot come in between
        state.products[result.label] = Product(label=result.label, coarse_label=result.coarse_label,
                                               title=title or result.label.replace("-", " "), description=text)
        state.reload_model()
        return result

    from ...models.bundle import BundleBusyError

    try:
        result = await anyio.to_thread.run_sync(state.with_index, run)
    except BundleBusyError as exc:  # another process (a CLI enrol) held the bundle's lock all the while: a 500 before
        raise _bundle_busy(exc) from None
    except EnrolmentError as exc:
        taken = "already a class" in str(exc) or "differs from the model" in str(exc)  # the name is a class's
        raise HTTPException(409 if taken else 422, str(exc)) from None
    except IndexUnavailableError as exc:
        raise _index_down(exc, "the product was not enrolled") from None
    except IndexChangedError as exc:  # another process saved the index meanwhile
        raise HTTPException(409, f"the product was not enrolled: {exc}") from None
    except (IndexStoreError, ValueError) as exc:  # the index refused the photos, a stale text aligner, ...
        raise HTTPException(422, f"the product was not enrolled: {exc}") from None
    logger.info("product %r enrolled by %s from %d photo(s)", result.label, actor, result.images)
    await anyio.to_thread.run_sync(lambda: state.products_changed(recommender=True))
    return {"product_id": result.label, "coarse_label": result.coarse_label, "photos": result.images,
            "self_check": result.self_check, "index_entries": result.index_entries, "by": actor}


@crud_router.post("/{product_id}/images", responses=STORAGE_RESPONSES,
                  summary="Add photos of a known product to the search index")
async def add_images(state: State, actor: WriteKey, product_id: ProductId,
                     images: Annotated[list[UploadFile], File(description="photos of the product")]
                     ) -> dict[str, Any]:
    if len(images) > state.settings.max_files:
        raise HTTPException(413, f"at most {state.settings.max_files} photos per request")
    if product_id not in state.products:
        raise HTTPException(404, f"unknown product {product_id!r}: enrol it first (POST /v1/products)")
    decoded: dict[str, Any] = {}  # by content: a photo sent twice in one request is one entry (it was a 422)
    for f in images:
        data, pil = await decode_upload(state, f)
        decoded.setdefault(content_hash(data)[:32], pil)
    try:
        vectors = await asyncio.gather(*(state.recognizer.embed(pil) for pil in decoded.values()))
    except (QueueFullError, asyncio.TimeoutError) as exc:
        raise busy(state, exc) from None

    def run() -> int:
        import numpy as np

        if product_id not in state.products:  # un-enrolled (under this lock) while the photos were embedded
            raise HTTPException(404, f"unknown product {product_id!r}: it was removed while its photos were added")
        # The new entries carry the product's metadata (a PATCHed price, in_stock), so a filtered search finds
        # them too. Photos are not stored (privacy); the entry id is the content hash, so a re-sent photo is no
        # new entry.
        metadata = _shared_metadata(state.search.index.records(product_id))
        product = state.product(product_id)  # as it is now: a PATCH may have come while the photos were embedded
        records = [IndexRecord(id=f"api/{product_id}/{digest}", product_id=product_id,
                               label=product_id, coarse_label=product.coarse_label, title=product.title,
                               text=product.description, metadata=metadata) for digest in decoded]
        state.search.index.upsert(records, np.stack(vectors))
        _save(state)
        return len(records)

    entries = await _index_call(state, run)
    logger.info("%d photo(s) of product %r added to the index by %s", entries, product_id, actor)
    return {"product_id": product_id, "entries": entries}


def _shared_metadata(records: list[IndexRecord]) -> dict[str, Any]:
    """The metadata fields every one of a product's entries has with the same value: the product's own."""
    if not records:
        return {}
    return {k: v for k, v in records[0].metadata.items()
            if k != "added_by" and all(r.metadata.get(k, None) == v for r in records)}  # a key's name, once stored


@crud_router.patch("/{product_id}", responses=STORAGE_RESPONSES,
                   summary="Change a product's title, text or metadata (price, in_stock, ...) in the search index;"
                   " predict and support show a new title until a restart, when the catalogue's "
                   "own texts are read again (an enrolled product's are read from the index: they stay)")
async def update_product(state: State, actor: WriteKey, product_id: ProductId, patch: ProductPatch
                         ) -> dict[str, Any]:
    import dataclasses

    def run() -> int:
        index = state.search.index
        current = index.records(product_id)
        if not current:
            raise HTTPException(404, f"product {product_id!r} is not in the index")
        if patch.title is not None or patch.text is not None:
            # Every changed record is built (and its metadata checked) before anything is written: one upsert
            # carries title, text and metadata, so a refused key leaves the product as it was.
            changed = [IndexRecord(r.id, r.product_id, r.label, r.coarse_label,
                                   r.title if patch.title is None else patch.title,
                                   r.text if patch.text is None else patch.text, r.image,
                                   r.metadata).with_metadata(patch.metadata or {})
                       for r in current]
            index.upsert(changed, index.vectors([r.id for r in current]))
        elif patch.metadata:
            index.update_metadata(product_id, patch.metadata)
        _save(state)
        return len(current)

    entries = await _index_call(state, run)
    logger.info("product %r updated by %s: %s", product_id, actor, patch.model_dump(exclude_none=True))
    if patch.title is not None or patch.text is not None:
        old = state.product(product_id)
        state.products[product_id] = dataclasses.replace(
            old, title=old.title if patch.title is None else patch.title,
            description=old.description if patch.text is None else patch.text)
        await anyio.to_thread.run_sync(state.products_changed)  # the lexicon is rebuilt: off the event loop
    return {"product_id": product_id, "entries": entries, "by": actor}


@crud_router.delete("/{product_id}", responses=STORAGE_RESPONSES,
                    summary="Remove a product from search; an enrolled product also leaves the "
                    "model (a trained class stays in the model until it is retrained without its photos)")
async def delete_product(state: State, actor: WriteKey, product_id: ProductId) -> dict[str, Any]:
    from ...models.bundle import BundleBusyError
    from ...search.enroll import is_enrolled, unenroll

    def run() -> tuple[int, bool]:
        # Decided here, under the index lock (enrolment writes under it too), from the bundle on disk: a
        # concurrent enrolment may have saved it before the served model was reloaded.
        folder = state.model.path if state.model.net is not None else None  # an exported model enrols nothing
        if folder is not None and is_enrolled(folder, product_id):
            # undo the enrolment: every index entry of the product, its row, kept photos, card entry; then the
            # served model and product list, in the same locked step
            try:
                n = unenroll(folder, product_id, index=state.search.index, all_entries=True).index_entries
            except BundleBusyError as exc:
                raise _bundle_busy(exc) from None
            state.products.pop(product_id, None)
            state.reload_model()
            return n, True
        n = state.search.index.remove(product_ids=[product_id])
        if n == 0:
            raise HTTPException(404, f"product {product_id!r} is not in the index")
        _save(state)
        return n, False

    removed, enrolled = await _index_call(state, run)
    logger.info("product %r removed %sby %s (%d index entries)", product_id,
                "from the model and the index " if enrolled else "from the index ", actor, removed)
    if enrolled:  # it leaves support answers and recommendations when this call returns
        await anyio.to_thread.run_sync(lambda: state.products_changed(recommender=True))
    return {"product_id": product_id, "removed_entries": removed, "unenrolled": enrolled, "by": actor}


def _bundle_busy(exc: Exception) -> HTTPException:
    """A 503 for a bundle another process kept rewriting (its lock not free in time): try again later."""
    return HTTPException(503, f"the model is being changed by another process; try again: {exc}",
                         headers={"Retry-After": "60"})


def routers(settings: ServeSettings) -> list[APIRouter]:
    out: list[APIRouter] = []
    if settings.index:
        out += [search_router, crud_router]
    if settings.index or settings.events:
        out.append(similar_router)
    return out


__all__ = ["routers"]
