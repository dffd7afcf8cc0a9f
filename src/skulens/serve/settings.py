"""Typed service settings: defaults in code, overridable from a TOML/YAML/JSON file and CLI flags.

No fastapi or torch import here, so `skulens serve --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..detect.options import TILE_MODES, check_backend
from ..models.options import PRECISIONS, check_precision_backend

__all__ = ["MAX_RETENTION_DAYS", "ApiKey", "ServeSettings", "load_api_keys", "resolve_settings"]

API_KEYS_ENV = "SKULENS_API_KEYS"
# Old setting name -> new one. An old name keeps working, with a warning, for one release (until 0.2).
_RENAMED = {"catalogue": "data"}

logger = logging.getLogger(__name__)


MAX_RETENTION_DAYS = 36500.0  # 100 years: a retention period longer than that is a typo (or inf)

@dataclass(frozen=True)
class ApiKey:
    """A secret and the name the audit log records for it (never the secret itself)."""

    name: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class ServeSettings:
    model: str  # bundle folder
    index: str | None = None  # vector index (search, similar, product CRUD, enrolment)
    search_route: float | None = None  # photo searches visit only the predicted coarse classes holding this much probability (e.g. 0.9; at most 3): fast on a Milvus collection partitioned by coarse class, slower on FAISS
    events: str | None = None  # behaviour-log CSV (recommendations)
    data: str | None = None  # catalogue: product facts and photos; default: the bundle's training data
    db: str | None = None  # inventory: a SQLite file or a postgresql:// URL; None: no inventory endpoints
    host: str = "127.0.0.1"  # localhost only unless asked: the service has write endpoints
    port: int = 8000
    device: str = "auto"
    backend: str = "torch"  # torch, or onnx / onnx-int8: the bundle's model.onnx / model.int8.onnx under ONNX Runtime (no Grad-CAM, no enrolment)
    precision: str = "auto"  # PyTorch inference numerics: auto (bf16 on CPUs with AVX512-BF16/AMX and on CUDA, else fp32), bf16, fp16 (CUDA) or off (fp32 everywhere, as ONNX Runtime runs)
    # Security.
    api_keys: tuple[ApiKey, ...] = ()  # from --api-keys-file or $SKULENS_API_KEYS; none: writes refused
    auth_reads: bool = False  # also require a key on read endpoints
    cors_origins: tuple[str, ...] = ()  # CORS off unless origins are listed
    # Limits.
    max_upload_bytes: int = 20_000_000  # 20 MB: a 48 MP phone JPEG is ~15 MB
    max_pixels: int = 40_000_000  # as skulens.data.decode: a 36 MP photo passes, a 400 MP bomb does not
    max_files: int = 32  # per intake request
    request_timeout_s: float = 30.0
    # At SIGTERM: how long requests under way may run on; those still running then are answered 503
    shutdown_timeout_s: float = 10.0
    # Micro-batching.
    max_batch: int = 16
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    queue_size: int = 256  # requests waiting for the model; more answer 503
    top_k: int = 5
    # Start-up: run the model once per batch size and page the index in before /readyz says ready.
    warmup: bool = True
    # Inventory.
    review_threshold: float = 0.6  # fine confidence below this goes to the review queue, not the counts
    labelled_dir: str | None = None  # corrected photos for retraining; default <db stem>-labelled/ (a URL: in ./)
    keep_uploads: bool = False  # privacy: intake and enrolment photos are not kept unless asked (EXIF stripped)
    detector: str | None = None  # product detector folder: intake counts every product in a shelf photo
    detector_min_score: float | None = None  # detector score a box needs to count (None: the detector's own)
    detector_max_boxes: int | None = None  # box cap per shelf photo (None: the detector's own); reaching it is logged and audited
    detector_tiles: str = "auto"  # tile large shelf photos: auto (long side over 2x the detector's size, small products), on, off
    detector_backend: str = "torch"  # torch, or onnx: the detector's detector.onnx (skulens detect export) under ONNX Runtime on the CPU
    # People (serve.privacy): user ids are kept as keyed-hash pseudonyms; the key from this file (outside the
    # data) or $SKULENS_PSEUDONYM_KEY. Without one the service records no events and erases no users.
    pseudonym_key_file: str | None = None
    upload_retention_days: float | None = None  # kept uploads not yet labelled are deleted after this (None: kept)
    recommend_refit_s: float = 60.0  # how often the recommender looks for new or erased events in the database
    # Support replies.
    text_model: str = "minilm"
    support_min_confidence: float = 0.5  # recognition below this hands off to a person
    support_min_score: float = 0.4  # best question-to-field cosine below this hands off
    # Listing tags.
    tag_vocabulary: str | None = None  # phrases file (one per line) for /v1/tag requests that send no vocabulary

    def __post_init__(self) -> None:
        positive = ("max_upload_bytes", "max_pixels", "max_files", "max_batch", "queue_size", "top_k")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.top_k > 50:
            raise ConfigError(f"top_k must be <= 50 (a request's own top_k is capped there too), got {self.top_k}")
        if self.request_timeout_s <= 0 or self.max_wait_ms < 0:
            raise ConfigError("request_timeout_s must be > 0 and max_wait_ms >= 0")
        if not 0 <= self.shutdown_timeout_s < math.inf:
            raise ConfigError(f"shutdown_timeout_s must be >= 0 seconds, got {self.shutdown_timeout_s}")
        if self.search_route is not None and not 0.0 < self.search_route <= 1.0:
            raise ConfigError(f"search_route must be in (0, 1], got {self.search_route}")
        if self.search_route is not None and not self.index:
            raise ConfigError("search_route needs an index: it routes photo searches")
        for name in ("review_threshold", "support_min_confidence", "support_min_score", "detector_min_score"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.detector_max_boxes is not None and self.detector_max_boxes < 1:
            raise ConfigError(f"detector_max_boxes must be >= 1, got {self.detector_max_boxes}")
        if self.detector_tiles not in TILE_MODES:
            raise ConfigError(f"detector_tiles must be one of {', '.join(TILE_MODES)}, got {self.detector_tiles!r}")
        try:
            check_backend(self.detector_backend, self.device)
        except ValueError as exc:
            raise ConfigError(f"detector_backend: {exc}") from None
        # a setting of a part the server was not given did nothing, unsaid (inventory scan refused the same)
        of_detector = [n for n in ("detector_min_score", "detector_max_boxes", "detector_tiles", "detector_backend")
                       if getattr(self, n) != _DEFAULTS[n]]
        if of_detector and self.detector is None:
            raise ConfigError(f"{', '.join(of_detector)}: setting(s) of the detector: give a detector")
        of_inventory = [n for n in ("detector", "review_threshold", "labelled_dir") if getattr(self, n) != _DEFAULTS[n]]
        if of_inventory and not self.db:
            raise ConfigError(f"{', '.join(of_inventory)}: setting(s) of the inventory (intake, review queue): "
                              "give a db")
        if self.keep_uploads and not (self.db or self.index):  # it keeps intake photos and enrolment photos
            raise ConfigError("keep_uploads: keeps intake photos (give a db) and the photos of products enrolled "
                              "through POST /v1/products (give an index); this server takes neither")
        if self.pseudonym_key_file is not None and not (self.db or self.events):
            raise ConfigError("pseudonym_key_file: the key of the user ids the inventory (db) and the behaviour log "
                              "(events) keep; this server keeps neither")
        if self.recommend_refit_s != _DEFAULTS["recommend_refit_s"] and not (self.events or self.db):
            raise ConfigError("recommend_refit_s is a setting of recommendations: give events (or a db)")
        if self.upload_retention_days is not None and not 0 <= self.upload_retention_days <= MAX_RETENTION_DAYS:
            raise ConfigError(f"upload_retention_days must be between 0 and {MAX_RETENTION_DAYS:g} (NaN is not a "
                              f"number of days), got {self.upload_retention_days}")
        if self.recommend_refit_s <= 0:
            raise ConfigError(f"recommend_refit_s must be > 0, got {self.recommend_refit_s}")
        if self.upload_retention_days is not None and not self.db:
            raise ConfigError("upload_retention_days needs an inventory (db): only the inventory keeps uploads")
        if not 0 <= self.port <= 65535:  # an OverflowError traceback from bind(), after the model had loaded
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.backend not in ("torch", "onnx", "onnx-int8"):
            raise ConfigError(f"backend must be torch, onnx or onnx-int8, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        try:
            check_precision_backend(self.precision, self.backend)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.db and "://" in self.db and self.db.split("://", 1)[0].lower() not in _DB_SCHEMES:
            raise ConfigError(f"db {hide_password(self.db)}: a SQLite file path or a postgresql:// URL "
                              f"(schemes: {', '.join(sorted(_DB_SCHEMES))})")
        if "*" in self.cors_origins:
            raise ConfigError("cors_origins: list the origins; '*' would let any site call the API")
        if self.tag_vocabulary is not None:
            read_tag_vocabulary(self.tag_vocabulary)
        if self.detector is not None and not (Path(self.detector) / "detector.json").is_file():
            # Checked here, before torch loads: a wrong path fails at startup with this line, not mid-request.
            hint = " (that is a classification bundle: it goes to model)" if (
                Path(self.detector) / "card.json").is_file() else ""
            raise ConfigError(f"detector {self.detector}: not a detector folder, no detector.json{hint} "
                              "(train one with `skulens detect train`)")

    @property
    def labelled_path(self) -> Path | None:
        if self.labelled_dir:
            return Path(self.labelled_dir)
        if self.db and "://" not in self.db:
            db = Path(self.db)
            return db.with_name(f"{db.stem}-labelled")
        return None  # no inventory, or a database URL: the store's default (./<database>-labelled/)

    def public(self) -> dict[str, Any]:
        """The resolved settings without secrets (logged and shown at /v1/info)."""
        d = dataclasses.asdict(self)
        d["api_keys"] = [k.name for k in self.api_keys]
        if self.db:
            d["db"] = hide_password(self.db)
        return d


def load_api_keys(path: str | os.PathLike[str] | None = None, env: str | None = None) -> tuple[ApiKey, ...]:
    """Keys from a file (one `name:secret` or bare secret per line, `#` comments) and/or $SKULENS_API_KEYS
    (comma-separated). Never from a CLI flag: flags show up in `ps`."""
    lines: list[str] = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"api keys file not found: {p}")
        try:
            lines += p.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:  # a traceback before
            from ..data.encoding import not_utf8

            raise ConfigError(f"api keys file {p}: {not_utf8(p)}") from None
    env_value = os.environ.get(API_KEYS_ENV, "") if env is None else env
    lines += env_value.split(",")
    keys: list[ApiKey] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = f"key-{hashlib.sha256(line.encode()).hexdigest()[:8]}", line
        if len(secret.strip()) < 8:
            raise ConfigError(f"API key {name.strip()!r} is shorter than 8 characters")
        if not secret.strip().isascii() or not secret.strip().isprintable():
            # HTTP headers carry ASCII: a UTF-8 client sends "ä" as two bytes, which never matched, and browsers
            # refuse to send anything past Latin-1 at all
            raise ConfigError(f"API key {name.strip()!r} holds characters other than printable ASCII; "
                              "a key travels in an HTTP header, which carries ASCII only")
        keys.append(ApiKey(name.strip(), secret.strip()))
    return tuple(keys)


def resolve_settings(values: dict[str, Any], config_file: str | os.PathLike[str] | None = None) -> ServeSettings:
    """File values, then explicit `values` (None means unset); unknown keys are an error."""
    merged = _renamed(dict(load_config(config_file)) if config_file else {}, str(config_file))
    if "api_keys" in merged:  # the given values always carry the keys (maybe none), which hid the file's
        raise ConfigError(f"{config_file}: api_keys cannot be set in a config file; use --api-keys-file or "
                          "$SKULENS_API_KEYS")
    merged.update(_renamed({k: v for k, v in values.items() if v is not None}, "the given values"))
    known = {f.name: f for f in fields(ServeSettings)}
    unknown = sorted(set(merged) - set(known))
    if unknown:
        settable = sorted(set(known) - {"api_keys"})
        raise ConfigError(f"unknown serve setting(s): {', '.join(unknown)} (known: {', '.join(settable)})")
    if "model" not in merged:
        raise ConfigError("serve needs a model bundle (--model)")
    out: dict[str, Any] = {}
    for name, value in merged.items():
        out[name] = _coerce(name, value, known[name].default)
    return ServeSettings(**out)


def _renamed(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` with deprecated setting names replaced by the current ones (a warning for each)."""
    for old, new in _RENAMED.items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(f"{source}: both {old!r} and {new!r} are set; {old!r} is the old name of {new!r}")
        logger.warning("%s: serve setting %r is deprecated and will be removed in 0.2; call it %r", source, old,
                       new)
        values[new] = values.pop(old)
    return values


# Database URL schemes the inventory store takes (anything without "://" is a SQLite file path).
_DB_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+psycopg", "sqlite", "sqlite+pysqlite"})


_DEFAULTS = {f.name: f.default for f in fields(ServeSettings)}


def hide_password(db: str) -> str:
    """A database URL as it may be logged and shown at /v1/info: scheme://user:***@host/...?password=***. The
    password is what SQLAlchemy reads as one (up to the first @: `#`, `?` and `/` unencoded in it too), and a
    libpq `password` parameter of the query string."""
    db = re.sub(r"^([a-z0-9+.-]+://[^:/@]*:)[^@]*@", r"\1***@", db, flags=re.IGNORECASE)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", db, flags=re.IGNORECASE)


_OPTIONAL_FLOATS = frozenset({"detector_min_score", "upload_retention_days", "search_route"})  # None: unset
_OPTIONAL_INTS = frozenset({"detector_max_boxes"})  # None: unset


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name == "api_keys":
        if isinstance(value, tuple) and all(isinstance(k, ApiKey) for k in value):
            return value
        raise ConfigError("api_keys cannot be set in a config file; use --api-keys-file or $SKULENS_API_KEYS")
    if name == "cors_origins":
        if value is None:
            return ()
        if not isinstance(value, (str, list, tuple)) or not all(isinstance(v, str) for v in
                                                               (value if isinstance(value, (list, tuple)) else [])):
            raise ConfigError(f"cors_origins: a comma-separated text or a list of origins, got {value!r}")
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(v.strip() for v in items if v.strip())
    # Each value as the setting's type, no further (port: yes was 1, top_k: 3.9 was 3, auth_reads: 5 was True,
    # host: null bound every interface, a nested mapping became its Python text).
    if isinstance(value, (dict, list, tuple)):
        raise ConfigError(f"{name}: cannot use {value!r} (expected one value)")
    if value is None and default is not None:  # a setting with a default that is not "off"
        raise ConfigError(f"{name}: cannot be null" + ("" if default is dataclasses.MISSING else
                                                         f" (default: {default!r}; leave the key out for it)"))
    if isinstance(value, bool) and not isinstance(default, bool):
        raise ConfigError(f"{name}: cannot use {value!r} (not a yes/no setting)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: cannot use {value!r} (a finite number)")
    try:
        if name in _OPTIONAL_FLOATS:
            return None if value is None or value == "" else float(value)
        if name in _OPTIONAL_INTS:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return None if value is None or value == "" else int(value)
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise TypeError(value)
            return value
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        return None if value is None else str(value)
    except (TypeError, ValueError):
        expected = "float" if name in _OPTIONAL_FLOATS else "int" if name in _OPTIONAL_INTS else type(default).__name__
        raise ConfigError(f"{name}: cannot use {value!r} (expected {expected})") from None


def read_tag_vocabulary(path: str) -> tuple[str, ...]:
    """The --tag-vocabulary file's phrases, read and checked: the settings do it before any model loads, so a
    missing, unreadable or empty file fails at once with its reason; the state reads them again to encode them."""
    from ..search.tags import TaggingError, parse_vocabulary

    if not Path(path).is_file():
        raise ConfigError(f"tag_vocabulary {path}: no such file (one phrase per line)")
    try:
        return parse_vocabulary(Path(path).read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        from ..data.encoding import not_utf8

        raise ConfigError(f"tag_vocabulary {path}: {not_utf8(path)}") from None
    except (OSError, TaggingError) as exc:
        raise ConfigError(f"tag_vocabulary {path}: {exc}") from None
