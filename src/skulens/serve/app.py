"""`create_app(settings)`: the skulens REST service (FastAPI "bigger applications" layout).

Routers live in `serve/routers/`, shared dependencies in `serve/deps.py`; the model and every other
back-end are loaded once, in the lifespan, into a `ServiceState`. Routers whose back-end is not
configured are not mounted (no --db: no inventory; no --index: no search; neither --events nor --db:
no recommendations), so /docs shows exactly what this server can do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .routers import health, inventory, predict, products, support, tag, users, web
from .security import BodyLimitMiddleware, SecurityHeadersMiddleware, TimeoutMiddleware
from .settings import ServeSettings
from .state import ServiceState

if TYPE_CHECKING:
    from ..models.predictor import Model

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

# Multipart framing around the files: a request may carry max_files uploads of max_upload_bytes each,
# but never more than this in total (a 20-photo intake of 5 MB phone photos fits).
_MAX_REQUEST_BYTES = 128_000_000
_UPLOAD_FIELDS = {"image", "images"}
_PEOPLE_TICK_S = 5.0


async def _warm(st: ServiceState) -> None:
    """The warm-up in a worker thread while the server already answers /healthz and /readyz (503)."""
    from .warmup import warm_service

    try:
        report = await anyio.to_thread.run_sync(warm_service, st)
        st.startup = {"loading_s": st.loading_s, "warmup": report,
                      "ready_after_s": round(time.time() - st.started_at + (st.loading_s or 0.0), 3)}
    except Exception as exc:  # a failed warm-up costs speed, never service
        logger.exception("skulens serve: warm-up failed; serving cold")
        st.startup = {"loading_s": st.loading_s, "warmup_error": str(exc)}
    finally:
        st.warming = False


async def _people_loop(st: ServiceState) -> None:
    """Retention and recommender refits (serve.people), checked every few seconds, off the event loop."""
    while True:
        await asyncio.sleep(_PEOPLE_TICK_S)
        await anyio.to_thread.run_sync(st.people.tick)


def _database_errors() -> list[type[BaseException]]:
    """The errors a database and its drivers raise to a route (the store's reads run outside the routes' own
    storage handling: a lost PostgreSQL was a bare 500 and a traceback per request)."""
    import sqlite3

    import sqlalchemy as sa

    found: list[type[BaseException]] = [sa.exc.DBAPIError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:
        return found
    return [*found, psycopg.Error]


async def _database_error(request: Request, exc: Exception) -> Any:
    """A database that cannot be used now (unreachable, read-only, full): 503 with Retry-After (507 when full) and
    one log line; any other database error stays a 500, its traceback logged."""
    from starlette.responses import PlainTextResponse

    from .deps import storage_refused
    from .inventory import storage_error

    error = storage_error(exc, "the inventory cannot answer now", "nothing was changed by this request")
    if error is None:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return PlainTextResponse("Internal Server Error", status_code=500)
    logger.warning("%s %s: %s", request.method, request.url.path, error)
    answer = storage_refused(error)
    return JSONResponse({"detail": answer.detail}, status_code=answer.status_code, headers=answer.headers)


def create_app(settings: ServeSettings, *, model: Model | None = None, state: ServiceState | None = None) -> FastAPI:
    """The service. `model` (an already loaded skulens.Model) or a whole `state` may be injected (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = state if state is not None else await anyio.to_thread.run_sync(ServiceState.load, settings, model)
        app.state.skulens = st
        await st.start()
        logger.info("skulens serve: model %s loaded (%s); features %s", settings.model, st.model.card.backbone,
                    st.features())
        st.warming = settings.warmup  # before the first request can reach /readyz
        warming = asyncio.create_task(_warm(st)) if settings.warmup else None
        background = asyncio.create_task(_people_loop(st))
        try:
            yield
        finally:
            background.cancel()
            if warming is not None:
                await warming  # a worker thread cannot be cancelled: let it finish before the model goes
            await st.stop()

    from .._version import __version__
    from .privacy import UserIdsOutOfAccessLog

    access = logging.getLogger("uvicorn.access")  # the server's request lines: no user id in them
    if not any(isinstance(f, UserIdsOutOfAccessLog) for f in access.filters):
        access.addFilter(UserIdsOutOfAccessLog())

    # /docs is the web router's page over the Swagger UI shipped in static/swagger-ui/ (FastAPI's own loads
    # Swagger UI and ReDoc from a CDN: blank offline, and refused by the pages' CSP).
    app = FastAPI(title="skulens", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Product image recognition: predict, search, inventory intake and support replies. "
                              "Write endpoints need an API key (X-API-Key or Authorization: Bearer).")
    routers = [health.router, predict.router, tag.router, support.router, products.router,
               *([inventory.router] if settings.db else []), *([users.router] if settings.db or settings.events else []),
               *_search_routers(settings), web.router]
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("skulens.serve", "static")]), name="static")
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    if settings.db:
        for cls in _database_errors():
            app.add_exception_handler(cls, _database_error)

    # Added innermost first: requests pass metrics -> headers -> CORS -> body limit -> timeout -> routes.
    def count_timeout() -> None:
        st = _state(app)
        if st is not None:
            st.metrics.timeouts.inc()

    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout_s, on_timeout=count_timeout)
    app.add_middleware(BodyLimitMiddleware, max_bytes=min(_MAX_REQUEST_BYTES,
                                                          settings.max_upload_bytes * settings.max_files + 65536),
                       takes_uploads=_upload_routes(routers))
    if settings.cors_origins:  # off by default: only listed origins, never "*"
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"])
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(_MetricsMiddleware)
    return app


def _search_routers(settings: ServeSettings) -> list[Any]:
    if not (settings.index or settings.events):
        return []
    from .routers import search  # imports the search back-ends only when configured

    return search.routers(settings)


def _upload_routes(routers: Sequence[APIRouter]) -> Callable[[Scope], bool]:
    """Whether a request goes to a route that takes files (a `File` parameter): only those get the upload limit."""
    from fastapi import params
    from fastapi.routing import APIRoute
    from starlette.routing import Match

    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)
              and any(isinstance(f.field_info, params.File) for f in r.dependant.body_params)]

    def takes_uploads(scope: Scope) -> bool:
        # `/v1/predict/` too: the router redirects it to `/v1/predict` (307), and the client sends the photo again
        path = scope.get("path", "")
        other = {**scope, "path": path[:-1] if path.endswith("/") else path + "/"}
        return any(r.matches(s)[0] is Match.FULL for s in (scope, other) for r in routes)

    return takes_uploads


def _state(app: FastAPI) -> ServiceState | None:
    return getattr(app.state, "skulens", None)


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _MetricsMiddleware:
    """Requests and latency per route template (never per raw path: ids would explode the label set)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def tracking_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            st = _state(scope["app"])
            path = scope.get("path", "")
            # the page's own files: a Mount sets no route, so they were counted as "unmatched" (scanners, typos)
            static = scope.get("route") is None and path.startswith("/static/")
            route = getattr(scope.get("route"), "path", None)
            if route is None:  # a plain Starlette route (/openapi.json) sets its endpoint, not FastAPI's route:
                fixed = scope.get("endpoint") is not None and not scope.get("path_params")  # its path is its name
                route = path if fixed and not static else "unmatched"
            if st is not None and not static:
                # a client picks the method string: any outside HTTP's own would be a new series each
                method = scope["method"] if scope["method"] in _HTTP_METHODS else "OTHER"
                st.metrics.requests.labels(method, route, str(status)).inc()
                st.metrics.latency.labels(method, route).observe(time.perf_counter() - t0)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line (`image: field required ...`) plus the structured errors."""
    parts, errors = [], []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":  # its loc is a character offset, not a field: "9: JSON decode error"
            loc, msg = "", f"the body is not valid JSON (at character {loc}: {e.get('ctx', {}).get('error', msg)})"
        if loc in _UPLOAD_FIELDS:
            msg += (f" (send the photo as multipart/form-data in a file field named {loc!r}; the server never "
                    "reads a path or fetches a URL)")
        parts.append(f"{loc}: {msg}" if loc else msg)
        errors.append({"loc": [str(x) for x in e.get("loc", ())], "msg": msg, "type": str(e.get("type", ""))})
    return JSONResponse({"detail": "; ".join(parts), "errors": errors}, status_code=422)
