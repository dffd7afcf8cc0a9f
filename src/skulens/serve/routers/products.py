"""Catalogue reads: products, their facts and stock, and their catalogue photo (EXIF-free thumbnail)."""

from __future__ import annotations

import functools
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi import Path as PathParam

from ...data.decode import ImageDecodeError
from ..deps import ReadKey, State
from ..forms import StrictFormRoute
from ..images import stripped_jpeg
from ..schemas import ProductOut, error_responses
from ..state import ServiceState

router = APIRouter(route_class=StrictFormRoute, prefix="/v1/products", tags=["products"],
                   responses=error_responses(401, 404))

ProductId = Annotated[str, PathParam(min_length=1, max_length=200)]
_THUMB_SIDE = 256


def product_out(state: ServiceState, label: str) -> ProductOut:
    p = state.product(label)
    stock = state.store.count(label) if state.store is not None else None
    return ProductOut(id=label, title=p.title or label, coarse_label=p.coarse_label, description=p.description,
                      info=p.info, has_image=state.product_image(label) is not None, stock=stock)


@router.get("", response_model=list[ProductOut], summary="Products the server knows (catalogue and model labels)")
async def list_products(state: State, _: ReadKey, q: Annotated[str | None, Query(max_length=200)] = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                        offset: Annotated[int, Query(ge=0)] = 0) -> list[ProductOut]:
    labels = sorted(state.products)
    if q:
        needle = q.lower()
        labels = [lab for lab in labels if needle in lab.lower() or needle in state.product(lab).title.lower()]
    page = labels[offset:offset + limit]
    return await anyio.to_thread.run_sync(lambda: [product_out(state, lab) for lab in page])


@router.get("/{product_id}", response_model=ProductOut, summary="One product's catalogue facts and stock")
async def get_product(state: State, _: ReadKey, product_id: ProductId) -> ProductOut:
    if product_id not in state.products:
        raise HTTPException(404, f"unknown product {product_id!r}")
    return await anyio.to_thread.run_sync(product_out, state, product_id)


@lru_cache(maxsize=512)
def _thumbnail(path: Path) -> bytes:
    return stripped_jpeg(path.read_bytes(), short_side=_THUMB_SIDE)


@router.get("/{product_id}/image", summary="The product's catalogue photo (a small JPEG without metadata)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def product_image(state: State, _: ReadKey, product_id: ProductId) -> Response:
    if product_id not in state.products:
        raise HTTPException(404, f"unknown product {product_id!r}")
    # The path comes from the server's own catalogue or index, never from the request.
    try:
        path = await anyio.to_thread.run_sync(functools.partial(state.product_image, product_id, strict=True))
    except Exception as exc:  # noqa: BLE001 - the index server down: try again later, not "no photo"
        raise HTTPException(503, f"the index did not answer ({type(exc).__name__}); try again",
                            headers={"Retry-After": "5"}) from None
    if path is None:
        raise HTTPException(404, f"no catalogue photo for {product_id!r}")
    try:
        data = await anyio.to_thread.run_sync(_thumbnail, path)
    except (OSError, ImageDecodeError) as exc:
        raise HTTPException(404, f"catalogue photo for {product_id!r} is unreadable ({exc})") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})
