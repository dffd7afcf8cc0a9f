"""`skulens serve`: the REST API and web page (a thin adapter over serve/ and the core).

Importing this module imports neither torch nor fastapi (`skulens --help` stays fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
from dataclasses import fields
from typing import Any

from ..serve.settings import ServeSettings, load_api_keys, resolve_settings
from ._common import UsageError, check_model, deprecated_alias, help_with_default

__all__ = ["add_commands", "serve_settings"]

logger = logging.getLogger("skulens.serve")

# Help for the settings whose source line carries no comment, or whose comment is not enough for a flag.
_SERVE_HELP = {
    "model": "model bundle folder (required)",
    "index": "vector index: enables /v1/search, similar products, product CRUD and enrolment",
    "events": "behaviour-log CSV: enables /v1/users/{id}/recommendations (so does --db; events then also come "
              "from POST /v1/events)",
    "pseudonym_key_file": "file with the key user ids are pseudonymised with (default: $SKULENS_PSEUDONYM_KEY), "
                          "outside the data; needed to record events and erase users",
    "data": "catalogue for support replies (default: the data the bundle was trained on)",
    "db": "inventory: SQLite file or postgresql:// URL; enables /v1/inventory/*",
    "port": "TCP port",
    "device": "auto, cpu, cuda or cuda:N",
    "backend": "torch, or onnx / onnx-int8: the bundle's model.onnx / model.int8.onnx (skulens export) under ONNX "
               "Runtime; no explain/enrolment",
    "auth_reads": "require an API key on read endpoints too",
    "cors_origins": "comma-separated origins allowed by CORS (default: CORS off)",
    "top_k": "labels per prediction",
    "max_batch": "most images per micro-batch",
    "text_model": "sentence encoder for support replies: minilm (the bundled MiniLM, default), bundle (the bundle's "
                  "`skulens text-tune` encoder: tuned for search, it answered the grocery questions worse) or a local "
                  "sentence-transformers folder",
    "keep_uploads": "keep every intake photo (with --db) and the photos of products enrolled through POST "
                    "/v1/products (with --index; a retrain folds them in), EXIF stripped; default: only photos "
                    "waiting for review",
}


def _field_comments(cls: type) -> dict[str, str]:
    """`name: type = default  # comment` lines of a dataclass: the comment is the flag's help."""
    helps: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith(("#", '"')):
            helps[line.split(":", 1)[0].strip()] = line.split("#", 1)[1].strip()
    return helps


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_commands(sub: Any) -> None:
    # allow_abbrev off: `--api-keys SECRET` was taken for --api-keys-file, and the secret went to the log and ps
    s = sub.add_parser("serve", help="run the REST API and web page (pip install 'skulens[serve]')",
                       description="Every setting is also a key of --config (TOML/YAML/JSON). API keys come from "
                                   "--api-keys-file or $SKULENS_API_KEYS, never from a flag.", allow_abbrev=False)
    s.add_argument("--config", help="TOML/YAML/JSON file of serve settings (flags override it)")
    s.add_argument("--api-keys-file", help="file with one API key per line (name:secret or secret)")
    comments = _field_comments(ServeSettings)
    names = {f.name for f in fields(ServeSettings)}
    for f in fields(ServeSettings):
        if f.name == "api_keys":
            continue
        help_text = help_with_default(_SERVE_HELP.get(f.name) or comments.get(f.name, ""),
                                      None if f.default is dataclasses.MISSING else f.default)
        if f.name == "model":
            s.add_argument("-m", "--model", dest="model", default=None, metavar="MODEL", help=help_text)
        elif isinstance(f.default, bool):
            s.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
        else:
            short = ["-k"] if f.name == "top_k" else []  # -k/--top-k, as in every command
            s.add_argument(*short, _flag(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                           help=help_text)
    if "data" in names and "catalogue" not in names:
        deprecated_alias(s, "--catalogue", "--data", "data")
    s.set_defaults(func=cmd_serve)


def serve_settings(ns: argparse.Namespace) -> ServeSettings:
    values = {f.name: getattr(ns, f.name, None) for f in fields(ServeSettings) if f.name != "api_keys"}
    values["api_keys"] = load_api_keys(ns.api_keys_file)
    return resolve_settings(values, ns.config)


def _check_port_free(host: str, port: int) -> None:
    """The address can be bound now: a port another process holds was uvicorn's startup failure, exit 3 (which
    skulens keeps for storage refusing writes), after the model had loaded. Port 0 (any free one) always is."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); another process "
                             "holds it, or choose another --port") from None


def cmd_serve(ns: argparse.Namespace) -> int:
    settings = serve_settings(ns)
    check_model(settings.model, backend=settings.backend)  # before torch and fastapi are imported
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise ImportError(f"skulens serve needs the serve extra: pip install 'skulens[serve]' ({exc})") from exc
    if not settings.api_keys:
        logger.warning("no API keys configured: write endpoints (inventory intake, review, product changes) "
                       "answer 403; set $SKULENS_API_KEYS or --api-keys-file")
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: reachable from other machines", settings.host)
    logger.info("serve settings: %s", json.dumps(settings.public()))
    _check_port_free(settings.host, settings.port)  # before the model loads (uvicorn: a log line and exit 3)
    from ..serve.state import ServiceState

    # Loaded here, not in the app's startup: a bad vocabulary, index or detector is then one line and exit 2, as
    # every other command's user error (an error in uvicorn's startup is a traceback and uvicorn's exit code 3,
    # which skulens keeps for storage failures).
    state = ServiceState.load(settings)
    # One worker process: the model and the micro-batcher live in it; more processes would each load a model.
    uvicorn.run(create_app(settings, state=state), host=settings.host, port=settings.port, log_level="info",
                workers=1, timeout_graceful_shutdown=settings.shutdown_timeout_s)
    return 0
