"""`skulens serve` and `skulens inventory`: argument parsers and thin handlers over serve/ and the Python API.

Importing this module imports neither torch nor fastapi (`skulens --help` stays fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
from dataclasses import fields
from typing import Any

from .settings import ServeSettings, load_api_keys, resolve_settings

__all__ = ["add_inventory_parser", "add_serve_parser"]

logger = logging.getLogger(__name__)

_SERVE_HELP = {
    "model": "model bundle folder (required)",
    "index": "vector index: enables /v1/search, similar products, product CRUD and enrolment",
    "events": "behaviour-log CSV: enables /v1/users/{id}/recommendations",
    "catalogue": "catalogue for support replies (default: the data the bundle was trained on)",
    "db": "inventory SQLite file: enables /v1/inventory/*",
    "backend": "torch, or onnx: the bundle's model.onnx (skulens export) under ONNX Runtime; no explain/enrolment",
    "auth_reads": "require an API key on read endpoints too",
    "cors_origins": "comma-separated origins allowed by CORS (default: CORS off)",
    "keep_uploads": "keep every intake photo (EXIF stripped); default: only photos waiting for review",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_serve_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the REST API and web page (pip install 'skulens[serve]')",
                       description="Every setting is also a key of --config (TOML/YAML/JSON). API keys come from "
                                   "--api-keys-file or $SKULENS_API_KEYS, never from a flag.")
    s.add_argument("--config", help="TOML/YAML/JSON file of serve settings (flags override it)")
    s.add_argument("--api-keys-file", help="file with one API key per line (name:secret or secret)")
    for f in fields(ServeSettings):
        if f.name == "api_keys":
            continue
        help_text = _SERVE_HELP.get(f.name, "")
        default = "" if f.default is dataclasses.MISSING else f"(default: {f.default})"
        if isinstance(f.default, bool):
            s.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help_text} {default}".strip())
        else:
            s.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                           help=f"{help_text} {default}".strip())
    s.set_defaults(func=cmd_serve)


def serve_settings(ns: argparse.Namespace) -> ServeSettings:
    values = {f.name: getattr(ns, f.name, None) for f in fields(ServeSettings) if f.name != "api_keys"}
    values["api_keys"] = load_api_keys(ns.api_keys_file)
    return resolve_settings(values, ns.config)


def cmd_serve(ns: argparse.Namespace) -> int:
    settings = serve_settings(ns)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ImportError(f"skulens serve needs the serve extra: pip install 'skulens[serve]' ({exc})") from exc
    if not settings.api_keys:
        logger.warning("no API keys configured: write endpoints (inventory intake, review, product changes) "
                       "answer 403; set $SKULENS_API_KEYS or --api-keys-file")
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: reachable from other machines", settings.host)
    logger.info("serve settings: %s", json.dumps(settings.public()))
    # One worker process: the model and the micro-batcher live in it; more processes would each load a model.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", workers=1,
                timeout_graceful_shutdown=10)
    return 0


def add_inventory_parser(sub: Any) -> None:
    inv = sub.add_parser("inventory", help="count stock from photos; review queue; CSV export")
    isub = inv.add_subparsers(dest="inventory_command", required=True)

    sc = isub.add_parser("scan", help="recognise every photo under DIR and count it (idempotent, resumable)")
    sc.add_argument("dir", help="folder of photos (or one photo)")
    sc.add_argument("--model", required=True, help="model bundle")
    sc.add_argument("--db", required=True, help="inventory SQLite file (created if missing)")
    sc.add_argument("--threshold", type=float, default=ServeSettings.review_threshold,
                    help="fine confidence below this goes to the review queue (default: %(default)s)")
    sc.add_argument("--keep-photos", action="store_true", help="keep every photo (EXIF stripped), not only review ones")
    sc.add_argument("--batch-size", type=int, default=32, help="photos per transaction (default: %(default)s)")
    sc.add_argument("--device", default="auto")
    sc.add_argument("-q", "--quiet", action="store_true", help="no per-photo JSON lines")
    sc.set_defaults(func=cmd_inventory_scan)

    c = isub.add_parser("counts", help="print the counts as CSV (label,count,updated_at)")
    c.add_argument("--db", required=True)
    c.add_argument("-o", "--output", help="write the CSV here instead of stdout")
    c.set_defaults(func=cmd_inventory_counts)

    r = isub.add_parser("review", help="list the review queue, or resolve one photo")
    r.add_argument("--db", required=True)
    r.add_argument("sha256", nargs="?", help="photo to resolve (from the list)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--label", help="confirm / correct: the right product")
    g.add_argument("--reject", action="store_true", help="not a product: never counted")
    r.set_defaults(func=cmd_inventory_review)

    a = isub.add_parser("audit", help="print the audit log, newest first (JSON lines)")
    a.add_argument("--db", required=True)
    a.add_argument("--limit", type=int, default=100)
    a.set_defaults(func=cmd_inventory_audit)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_inventory_scan(ns: argparse.Namespace) -> int:
    from ..api import load
    from .intake import ScanSummary, find_images, scan
    from .inventory import InventoryStore

    paths = find_images(ns.dir)
    if not paths:
        raise SystemExit(f"skulens inventory scan: no images under {ns.dir}")
    model = load(ns.model, device=ns.device)
    summary = ScanSummary()
    with InventoryStore(ns.db) as store:
        for path, result in scan(model, store, paths, threshold=ns.threshold, actor=_actor(),
                                 keep_photos=ns.keep_photos, chunk=max(1, ns.batch_size)):
            if isinstance(result, str):
                summary.errors.append((str(path), result))
                line: dict[str, Any] = {"path": str(path), "status": "error", "error": result}
            else:
                summary.add(result)
                line = {"path": str(path), **result.to_dict()}
            if not ns.quiet:
                print(json.dumps(line), flush=True)
    print(f"skulens inventory scan: {summary.line()}; db {ns.db}", file=sys.stderr)
    return 0


def cmd_inventory_counts(ns: argparse.Namespace) -> int:
    from .inventory import InventoryStore

    with InventoryStore(ns.db) as store:
        if ns.output:
            with open(ns.output, "w", encoding="utf-8", newline="") as out:
                n = store.export_csv(out)
            print(f"{n} products -> {ns.output}", file=sys.stderr)
        else:
            store.export_csv(sys.stdout)
    return 0


def cmd_inventory_review(ns: argparse.Namespace) -> int:
    from .inventory import InventoryError, InventoryStore

    with InventoryStore(ns.db) as store:
        if ns.sha256 is None:
            for item in store.review_queue(limit=1000):
                print(json.dumps(item.to_dict()))
            return 0
        if not ns.label and not ns.reject:
            raise SystemExit("skulens inventory review SHA256: give --label LABEL or --reject")
        try:
            item = store.resolve(ns.sha256, None if ns.reject else ns.label, actor=_actor())
        except InventoryError as exc:
            raise SystemExit(f"skulens inventory review: {exc}") from None
        print(json.dumps(item.to_dict()))
    return 0


def cmd_inventory_audit(ns: argparse.Namespace) -> int:
    from .inventory import InventoryStore

    with InventoryStore(ns.db) as store:
        for entry in store.audit(limit=ns.limit):
            print(json.dumps(entry.to_dict()))
    return 0
