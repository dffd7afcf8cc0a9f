"""Response and request bodies of the REST API (pydantic, so /docs shows them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .inventory import MAX_COUNT

__all__ = [
    "STORAGE_RESPONSES",
    "STORAGE_RETRY_AFTER_S",
    "AdjustRequest",
    "AuditOut",
    "CandidateOut",
    "IntakeOut",
    "InventoryOut",
    "LabelScore",
    "PredictResponse",
    "PredictionOut",
    "ProductOut",
    "RequestBody",
    "ReviewDecision",
    "ReviewItemOut",
    "SupportOut",
    "TagResponse",
    "TagsOut",
    "error_responses",
]


class RequestBody(BaseModel):
    """A JSON request body: values of the declared types only (no "yes" for true, no "5" or true for 5), and no
    field it does not declare (a misspelt "tittle" was ignored and answered 200): a 422 that names it."""
    model_config = ConfigDict(strict=True, extra="forbid")


class LabelScore(BaseModel):
    label: str
    p: float


class CandidateOut(LabelScore):
    title: str | None = Field(None, description="the product's name, for people (the label is its key)")


class PredictionOut(BaseModel):
    source: str
    label: str | None = Field(description="the decision: fine label, coarse label (level coarse), or null")
    title: str | None = Field(None, description="the decided label's name, for people; null with no label")
    level: str = Field(description="fine | coarse | unknown | error")
    confidence: float
    fine_label: str | None = None
    fine_confidence: float = 0.0
    coarse_label: str | None = None
    coarse_confidence: float | None = None
    top_k: list[CandidateOut] = []
    attributes: dict[str, float] = {}
    error: str | None = None


class ProductOut(BaseModel):
    id: str
    title: str
    coarse_label: str | None = None
    description: str = ""
    info: str = ""
    has_image: bool = False
    stock: int | None = None


class PredictResponse(BaseModel):
    prediction: PredictionOut
    product: ProductOut | None = Field(None, description="the product the prediction names (level fine); null when "
                                                       "it names none (coarse or unknown: see top_k for the guesses)")
    timing_ms: float


class CategoryStepOut(BaseModel):
    level: str = Field(description="coarse | fine")
    label: str
    title: str = Field(description="the catalogue's name for people")
    confidence: float


class PhraseScore(BaseModel):
    phrase: str
    score: float


class TagsOut(BaseModel):
    source: str
    category_path: str = Field(description="titles, coarse first: 'Apple > Granny Smith'")
    category: list[CategoryStepOut] = []
    attributes: dict[str, float] = Field({}, description="attribute heads above threshold, conflicts resolved")
    colours: dict[str, float] = Field({}, description="basic colour name -> share of the product region's pixels")
    tags: list[PhraseScore] = Field([], description="vocabulary phrases that fit the photo, best first")
    error: str | None = None


class TagResponse(BaseModel):
    tags: TagsOut
    vocabulary: str = Field(description="request | server | none: where the phrases came from")
    timing_ms: float


class SupportOut(BaseModel):
    product: str | None
    title: str | None
    confidence: float
    question: str | None
    answer: str | None
    field: str | None = Field(description="name | category | description | info | stock | attribute | identity | "
                              "origin | brand | ingredient | size")
    score: float = Field(description="cosine between the question and the matched text (1.0 for a structured answer)")
    handoff: bool = Field(description="a person should take over")
    reason: str | None
    candidates: list[LabelScore] = []
    verdict: str | None = Field(None, description="yes | no: a yes/no question answered from structured facts")
    source: str | None = Field(None, description="catalogue | photo (predicted attributes) | text (matched fact)")


class IntakeItemOut(BaseModel):
    sha256: str | None = None
    source: str
    status: str = Field(description="counted | review | duplicate | error")
    label: str | None = None
    confidence: float = 0.0
    count: int | None = None
    previous_status: str | None = None
    error: str | None = None


class IntakeOut(BaseModel):
    results: list[IntakeItemOut]
    counted: int
    review: int
    duplicate: int
    errors: int


class InventoryOut(BaseModel):
    counts: dict[str, int]
    titles: dict[str, str] = Field(description="each counted product's name (its title)")
    updated_at: dict[str, str] = Field({}, description="each counted product's last change (ISO 8601, UTC)")
    review_queue: int
    photos: dict[str, int]


class ReviewItemOut(BaseModel):
    sha256: str
    source: str
    status: str
    predicted_label: str | None
    confidence: float
    top_k: list[LabelScore]
    label: str | None
    created_at: str
    reviewed_at: str | None = None
    reviewed_by: str | None = None
    has_photo: bool = False


class ReviewDecision(RequestBody):
    label: str | None = Field(None, max_length=200, description="the right product (confirm or correct)")
    reject: bool = Field(False, description="not a product / unusable: never counted")


class AdjustRequest(RequestBody):
    delta: int | None = Field(None, ge=-MAX_COUNT, le=MAX_COUNT,
                              description="add (or, negative, remove) this many: received, sold, broken")
    count: int | None = Field(None, ge=0, le=MAX_COUNT,
                              description="set the count (a stock take); the audit line says so")
    reason: str = Field("", max_length=500, description="why, for the audit log (e.g. 'sold', 'recounted')")


class AuditOut(BaseModel):
    id: int
    ts: str
    actor: str
    action: str
    label: str | None
    delta: int
    count_after: int | None
    photo: str | None
    detail: dict[str, Any]


# A user id as the service takes it wherever one is recorded or erased: `DELETE /v1/users/{user_id:path}` takes ids
# with '/' (shop/42), and one ending in '/' would be a trailing slash there, so such an id is never recorded.
USER_ID_PATTERN = r"[^/]$"
# Where one is recorded (events, an intake's user), nor one with what `str.strip()` takes away around it (the
# behaviour log's reader strips ids: " carol" was another user than the log's "carol", and `DELETE
# /v1/users/carol` left its events); an id recorded so before stays reachable, as USER_ID_PATTERN allows it.
NEW_USER_ID_PATTERN = r"^(?:[^\s\x1c-\x1f/]|[^\s\x1c-\x1f].*[^\s\x1c-\x1f/])$"

# How long a client waits before it sends a write again that the storage refused for now (a read-only or failing
# database or disk: 503): an operator's remount or a database's failover takes that long, not a moment.
STORAGE_RETRY_AFTER_S = 30
# The answers of a write the server's storage refused (a read-only database or disk: 503; a full disk: 507),
# for the OpenAPI description of the routes that write (`deps.storage_refused` gives them).
_RETRY = {"Retry-After": {"description": "seconds to wait before sending the request again",
                          "schema": {"type": "integer"}}}
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "a malformed upload: too many parts or fields, or a form field over 1 MB"},
    401: {"description": "no API key, or a wrong one (X-API-Key or Authorization: Bearer); reads need one only "
                         "with --auth-reads"},
    403: {"description": "writes are disabled: the server was started without API keys"},
    404: {"description": "no such product, photo, review item or user data"},
    409: {"description": "a conflict: already decided, already a class, or no pseudonym key for data about people"},
    413: {"description": "too large: the upload's bytes or pixels, photos per request, or a JSON body over 1 MiB"},
    415: {"description": "not an image (the type is read from the bytes)"},
    501: {"description": "not with this backend (e.g. Grad-CAM or enrolment need the PyTorch model)"},
    503: {"description": "busy (the request queue is full) or still warming up: send it again after Retry-After",
          "headers": _RETRY},
    504: {"description": "the request timed out in the queue or the model (--request-timeout-s)"},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error statuses a router's routes answer, for /docs (each a JSON body with a "detail" line)."""
    return {code: _ERRORS[code] for code in codes}


STORAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "the database or the disk takes no writes now (read-only, failing); the detail says what "
                         "was not done",
          "headers": {"Retry-After": {"description": "seconds to wait before sending the request again",
                                      "schema": {"type": "integer", "example": STORAGE_RETRY_AFTER_S}}}},
    507: {"description": "the disk is full; the detail says what was not done"},
}
