"""Form bodies as strict as JSON ones: a multipart or URL-encoded field the route does not read is a 422.

FastAPI reads the form fields a route declares and drops the rest, so `filters=...` for `filter` answered 200
with unfiltered hits, `min_confidense=0.99` gave the default, and a second `image` file was ignored. The JSON
bodies already refuse undeclared fields (`extra="forbid"`); `StrictFormRoute` does the same for forms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Response
from fastapi._compat import field_annotation_is_sequence
from fastapi.params import Form
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["StrictFormRoute"]

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class StrictFormRoute(APIRoute):
    """An APIRoute whose form fields are checked before FastAPI reads them: each one declared, and one that
    takes a single value sent once."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        fields = {p.alias: p for p in self.dependant.body_params if isinstance(p.field_info, Form)}
        if not fields:
            return handler
        repeatable = {name for name, p in fields.items() if field_annotation_is_sequence(p.field_info.annotation)}
        declared = ", ".join(sorted(fields))

        async def checked(request: Request) -> Response:
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
