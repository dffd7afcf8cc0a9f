"""Form bodies and query strings as strict as JSON bodies: a field or parameter the route does not read is a 422.

FastAPI reads the form fields and query parameters a route declares and drops the rest, so `filters=...` for
`filter` answered 200 with unfiltered hits, `min_confidense=0.99` gave the default, a second `image` file was
ignored, and `GET /v1/products/ID/similar?filters=...` or `/v1/products?limt=1` answered as if nothing had been
asked. The JSON bodies already refuse undeclared fields (`extra="forbid"`); `StrictFormRoute` does the same for
forms and query strings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Response
from fastapi._compat import field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.params import Form
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["StrictFormRoute"]

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route reads: its own and its dependencies' (an API key's, a page's)."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


class StrictFormRoute(APIRoute):
    """An APIRoute whose query parameters and form fields are checked before FastAPI reads them: each one
    declared, and a form field that takes a single value sent once."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        fields = {p.alias: p for p in self.dependant.body_params if isinstance(p.field_info, Form)}
        queries = _query_names(self.dependant)
        repeatable = {name for name, p in fields.items() if field_annotation_is_sequence(p.field_info.annotation)}
        declared = ", ".join(sorted(fields))

        async def checked(request: Request) -> Response:
            unknown_query = sorted(set(request.query_params) - queries)
            if unknown_query:
                reads = f"reads {', '.join(sorted(queries))}" if queries else "takes no query parameter"
                raise HTTPException(422, f"unknown query parameter(s) {', '.join(map(repr, unknown_query))}: "
                                         f"{request.url.path} {reads}")
            if not fields:
                return await handler(request)
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind in FORM_TYPES:
                try:
                    form = await request.form()  # cached on the request: FastAPI reads this same form next
                except StarletteHTTPException:  # Starlette's own answer (a part too large, too many fields)
                    raise
                except Exception:  # noqa: BLE001 - a malformed body: FastAPI answers it as it always has
                    return await handler(request)
                keys = [key for key, _ in form.multi_items()]
                unknown = sorted(set(keys) - set(fields))
                if unknown:
                    raise HTTPException(422, f"unknown form field(s) {', '.join(map(repr, unknown))}: "
                                             f"{request.url.path} reads {declared}")
                twice = sorted(k for k in set(keys) if k not in repeatable and keys.count(k) > 1)
                if twice:
                    raise HTTPException(422, f"form field {twice[0]!r} sent {keys.count(twice[0])} times: it takes "
                                             "one value")
            return await handler(request)

        return checked
