"""FastAPI dependencies shared by the routers: the service state, API keys, recognising an upload."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request, Security, UploadFile
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ..data.decode import ImageDecodeError
from .batching import QueueFullError
from .inventory import StorageError, storage_error
from .schemas import STORAGE_RETRY_AFTER_S
from .security import check_api_key, decode_error_status, read_image_upload, upload_name
from .state import ServiceState

if TYPE_CHECKING:
    from PIL import Image

    from ..models.predictor import Prediction

__all__ = ["ReadKey", "State", "WriteKey", "busy", "decode_upload", "get_state", "predict_upload",
           "storage_answer", "storage_refused"]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")


def get_state(request: Request) -> ServiceState:
    return request.app.state.skulens


State = Annotated[ServiceState, Depends(get_state)]


def _presented(header: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return header or (bearer.credentials if bearer is not None else None)


def write_actor(state: State, header: Annotated[str | None, Security(_api_key_header)] = None,
                bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> str:
    """Every write needs a valid key; the key's name is the audit log's actor."""
    return check_api_key(_presented(header, bearer), state.settings.api_keys, required=True)


def read_actor(state: State, header: Annotated[str | None, Security(_api_key_header)] = None,
               bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> str:
    """Reads need a key only with `auth_reads`; a key that is sent must still be valid."""
    presented = _presented(header, bearer)
    if presented is None and not state.settings.auth_reads:
        return "anonymous"
    return check_api_key(presented, state.settings.api_keys, required=True)


WriteKey = Annotated[str, Depends(write_actor)]
ReadKey = Annotated[str, Depends(read_actor)]


def busy(state: ServiceState, exc: BaseException) -> HTTPException:
    """503 + Retry-After for a full queue, 504 for a timeout."""
    if isinstance(exc, QueueFullError):
        state.metrics.rejected.inc()
        return HTTPException(503, f"server busy: {exc}; retry shortly", headers={"Retry-After": "1"})
    state.metrics.timeouts.inc()
    return HTTPException(504, f"recognition took longer than {state.settings.request_timeout_s:g} s")


def storage_refused(error: StorageError) -> HTTPException:
    """The answer to a write the server's storage refused (every route's, `STORAGE_RESPONSES`): 507 for a full disk
    (waiting makes no room: someone must), 503 with Retry-After (`STORAGE_RETRY_AFTER_S`) for a read-only or failing
    database or disk. The detail is the error's message: what was not done, and no path."""
    if error.failure == "full":
        return HTTPException(507, str(error))
    return HTTPException(503, str(error), headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)})


def storage_answer(exc: BaseException, doing: str, outcome: str) -> HTTPException | None:
    """`storage_refused`'s answer when `exc` is the storage failing (`storage_error`, with its message "{doing}
    ({why}); {outcome}"), else None: the route raises `exc` itself."""
    error = storage_error(exc, doing, outcome)
    return None if error is None else storage_refused(error)


async def decode_upload(state: ServiceState, upload: UploadFile) -> tuple[bytes, Image.Image]:
    """Read (size-limited, type-sniffed) and decode an upload off the event loop; HTTP errors for bad input."""
    data = await read_image_upload(upload, state.settings.max_upload_bytes)
    try:
        image = await state.recognizer.in_decoder(state.recognizer.decode, data)
    except ImageDecodeError as exc:
        raise HTTPException(decode_error_status(exc), f"{upload_name(upload)}: {exc.reason}") from None
    return data, image


async def predict_upload(state: ServiceState, upload: UploadFile, *, top_k: int = 5,
                         min_confidence: float = 0.0) -> tuple[bytes, Prediction]:
    data, image = await decode_upload(state, upload)
    try:
        pred = await state.recognizer.predict(image, top_k=top_k, min_confidence=min_confidence)
    except (QueueFullError, asyncio.TimeoutError) as exc:
        raise busy(state, exc) from None
    state.metrics.predictions.labels(pred.level).inc()
    return data, pred
