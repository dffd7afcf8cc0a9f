"""Request limits and API keys: body-size and timeout middleware, key checks, safe upload reading.

Nothing here trusts the client: upload sizes are counted as the bytes arrive (not taken from
Content-Length alone), the image type is sniffed from the bytes (the file name and the part's
Content-Type are ignored), and keys are compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable, Sequence

from fastapi import HTTPException, UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.catalogue import is_unprintable
from ..data.decode import ImageDecodeError, sniff_format
from .settings import ApiKey

__all__ = ["BodyLimitMiddleware", "SecurityHeadersMiddleware", "TimeoutMiddleware", "check_api_key",
           "decode_error_status", "read_image_upload", "upload_name"]

_READ_CHUNK = 1 << 16
# The pages load only their own script and style files (no inline code), so injected markup cannot run.
_CSP = (b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'")


async def _send_json(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes` (`max_other_bytes` for one that is not a multipart upload: JSON
    and forms are parsed whole, on the event loop, before any route or key check runs): refused from
    Content-Length before reading, and counted while streaming (chunked uploads, lying headers)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_other_bytes: int = 1 << 20,
                 takes_uploads: Callable[[Scope], bool] | None = None):
        self.app, self.max_bytes, self.max_other_bytes = app, max_bytes, max_other_bytes
        self.takes_uploads = takes_uploads  # whether the request's route takes files; None: every route does

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        # The upload limit for a multipart body to a route that takes files: a Content-Type alone would lift a JSON
        # route's limit too (a JSON route reads its whole body before the key check)
        multipart = (headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
                     and (self.takes_uploads is None or self.takes_uploads(scope)))
        limit = self.max_bytes if multipart else min(self.max_bytes, self.max_other_bytes)
        message = f"request body larger than {limit} bytes" + ("" if multipart else " (not a photo upload)")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _send_json(send, 413, message, [(b"connection", b"close")])
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    # FastAPI re-raises an HTTPException met while reading the body; it becomes the 413.
                    raise HTTPException(413, message, headers={"connection": "close"})
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # raised outside a route's body parsing
            if exc.status_code != 413 or started:
                raise
            await _send_json(send, 413, message, [(b"connection", b"close")])


# POSTs that only compute an answer: the timeout applies to them and to reads. Every other POST, PATCH, PUT
# and DELETE changes something (enrols a product, counts stock, erases a user): its work runs in a thread that
# cannot be cancelled, so a 504 would tell the client "not done" about a change that was made (and a retry
# would then fail as a conflict). Those are finished and answered, however long they take.
COMPUTE_ONLY_POSTS = frozenset({"/v1/predict", "/v1/explain", "/v1/search", "/v1/support/ask", "/v1/tag"})


class TimeoutMiddleware:
    """504 when a request takes longer than `seconds` to start its response (the work is cancelled). A request that
    changes something (not in `COMPUTE_ONLY_POSTS`) is timed only until its body has arrived: a client trickling
    an upload is still cut off, the change itself is finished and answered."""

    def __init__(self, app: ASGIApp, seconds: float, on_timeout: object = None):
        self.app, self.seconds, self.on_timeout = app, seconds, on_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # behind a proxy's prefix (uvicorn --root-path)
            path = path[len(root):]
        writes = method not in ("GET", "HEAD") and (method != "POST" or path.rstrip("/") not in COMPUTE_ONLY_POSTS)
        started, received = asyncio.Event(), asyncio.Event()
        headers = dict(scope.get("headers") or ())
        if headers.get(b"content-length", b"0").strip() in (b"", b"0") and b"transfer-encoding" not in headers:
            received.set()  # no body to wait for (a DELETE): the change starts at once

        async def tracking_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                started.set()
            await send(msg)

        async def tracking_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.disconnect" or (msg["type"] == "http.request" and not msg.get("more_body")):
                received.set()
            return msg

        task = asyncio.ensure_future(self.app(scope, tracking_receive if writes else receive, tracking_send))
        try:
            await asyncio.wait({task}, timeout=self.seconds)
            if not task.done() and (started.is_set() or (writes and received.is_set())):
                await asyncio.wait({task})  # streaming already, or a change under way: to its end
        except asyncio.CancelledError:
            # This request's own task is cancelled: the server's shutdown ran out of time (`shutdown_timeout_s`).
            # The work goes too, and a request whose answer has not begun is answered in a line (the server's
            # own answer was a bare 500), saying what may have happened.
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if started.is_set():
                raise
            await _send_json(send, 503, "the service is shutting down" + (
                ": this change may or may not have been made; check before sending it again" if writes else
                ": send the request again"), headers=[(b"retry-after", b"5"), (b"connection", b"close")])
            return
        if task.done():
            task.result()  # the app's own outcome, its exceptions as they are
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        if callable(self.on_timeout):
            self.on_timeout()
        await _send_json(send, 504, f"request took longer than {self.seconds:g} s")


class SecurityHeadersMiddleware:
    """nosniff / no-referrer / no framing on every response; a strict CSP on the web pages."""

    def __init__(self, app: ASGIApp, pages: Sequence[str] = ("/", "/inventory", "/docs"),
                 static_prefix: str = "/static/"):
        self.app, self.pages, self.static_prefix = app, frozenset(pages), static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_page = path in self.pages or path.startswith(self.static_prefix)

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY")]
                if is_page:
                    headers.append((b"content-security-policy", _CSP))
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, with_headers)


def check_api_key(presented: str | None, keys: Sequence[ApiKey], *, required: bool) -> str:
    """The key's name (the audit log's actor), "anonymous" when not required and not given; else HTTP 401/403."""
    if not presented:
        if not required:
            return "anonymous"
        if not keys:
            raise HTTPException(403, "writes are disabled: the server has no API keys (start it with "
                                     "--api-keys-file FILE or $SKULENS_API_KEYS)")
        raise HTTPException(401, "missing API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                            headers={"WWW-Authenticate": "Bearer"})
    match = None
    for key in keys:  # every key is compared, in constant time, so timing says nothing about which failed
        if hmac.compare_digest(presented.encode(), key.secret.encode()):
            match = key.name
    if match is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return match


def decode_error_status(err: ImageDecodeError) -> int:
    """415 not an image, 413 too many pixels, 422 corrupt / truncated / empty."""
    if err.reason.startswith("not an image"):
        return 415
    if err.reason.startswith("too many pixels"):
        return 413
    return 422


MAX_NAME = 255  # characters of a client's file name kept (a file system's own limit)


def upload_name(upload: UploadFile) -> str:
    """The client's name of an uploaded file as answers say it and the inventory stores it: control and invisible
    formatting characters (a NUL, which PostgreSQL refuses in text: the whole intake was a 500; a bidi override,
    which shows the name reversed) as "?", at most MAX_NAME characters; "upload" when it has none."""
    name = "".join("?" if is_unprintable(c) else c for c in upload.filename or "")  # the names' own rule
    return name[:MAX_NAME] or "upload"


async def read_image_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, checked: not over `max_bytes` (413), not empty (422), a supported image by its
    magic bytes (415). The name and declared type are ignored."""
    name = upload_name(upload)
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(_READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"{name}: file larger than {max_bytes} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(422, f"{name}: empty file")
    if sniff_format(data) is None:
        raise HTTPException(415, f"{name}: not an image (accepted: JPEG, PNG, WebP, GIF, BMP, TIFF; "
                                 "the type is read from the file's bytes, not its name)")
    return data
