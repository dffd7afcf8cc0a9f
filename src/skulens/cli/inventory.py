"""`skulens inventory scan | counts | review | audit | erase-user | purge`: stock counts from photos, and the
personal data kept with them (thin handlers over serve/).

Importing this module imports neither torch nor fastapi.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from ..data.image_list import non_utf8_names
from ..detect.options import DETECTOR_BACKENDS, TILE_MODES
from ..serve.settings import ServeSettings
from ._common import (
    EXIT_FAILED,
    UsageError,
    add_key_file,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    check_detector,
    check_out_path,
    check_precision_flag,
    device_arg,
    model_path,
    positive_int,
    pseudonymizer,
    say,
    user_id_arg,
)

__all__ = ["add_commands"]

# A URL's review photos and labelled data go under the current folder (./<database>-photos, -labelled).
_DB_HELP = "inventory: SQLite file or postgresql:// URL (one that exists: scan and serve create it)"


def _add_folders(p: argparse.ArgumentParser) -> None:
    """The store's two folders: where the service keeps them (serve --labelled-dir), so the CLI acts on the same."""
    p.add_argument("--photo-dir", help="kept photos and review crops (default: <db stem>-photos/ beside a SQLite "
                                       "file; ./<database>-photos/ for a URL)")
    p.add_argument("--labelled-dir", help="reviewed photos for retraining: the service's --labelled-dir (default: "
                                          "<db stem>-labelled/ beside a SQLite file; ./<database>-labelled/ for a URL)")


def _store(ns: argparse.Namespace, *, create: bool = False) -> Any:
    """The inventory `--db` names, with the folders given (an InventoryError is the user's: one line, exit 2)."""
    from ..serve.inventory import InventoryError, InventoryStore

    try:
        return InventoryStore(ns.db, photo_dir=getattr(ns, "photo_dir", None),
                              labelled_dir=getattr(ns, "labelled_dir", None), create=create)
    except InventoryError as exc:
        raise UsageError(str(exc)) from None


def add_commands(sub: Any) -> None:
    inv = sub.add_parser("inventory", help="count stock from photos; review queue; CSV export")
    isub = inv.add_subparsers(dest="inventory_command", required=True, metavar="{scan,counts,review,audit,erase-user,purge}")

    sc = isub.add_parser("scan", help="recognise every photo under DIR and count it (idempotent, resumable); "
                                      "with --detector, count every product in each shelf photo")
    sc.add_argument("dir", help="folder of photos (or one photo)")
    add_model(sc, "model bundle that recognises the photos", positional_legacy=False)
    sc.add_argument("--db", required=True, help="inventory: SQLite file (created if missing) or postgresql:// URL")
    sc.add_argument("--threshold", type=float, default=ServeSettings.review_threshold,
                    help="fine confidence below this goes to the review queue (default: %(default)s)")
    sc.add_argument("--keep-photos", action="store_true", help="keep every photo (EXIF stripped), not only review ones")
    sc.add_argument("--batch-size", type=positive_int, default=32, help="photos per transaction (default: %(default)s)")
    sc.add_argument("--detector", help="detector folder (skulens detect train): shelf photos, every product counts; "
                                       "boxes below --threshold go to the review queue as crops")
    sc.add_argument("--min-score", type=float, default=ServeSettings.detector_min_score,
                    help="with --detector: detector score a box needs to be a product (default: the detector's own)")
    sc.add_argument("--max-boxes", type=positive_int, default=ServeSettings.detector_max_boxes,
                    help="with --detector: box cap per photo (default: the detector's, 1000); a photo with more "
                         "boxes is logged and audited as 'box_cap_reached'")
    sc.add_argument("--tiles", choices=TILE_MODES, default=ServeSettings.detector_tiles,
                    help="with --detector: tile large photos (auto: long side over 2x the detector's size and "
                         "the products found whole look small; default: %(default)s)")
    sc.add_argument("--detector-backend", choices=DETECTOR_BACKENDS, default=ServeSettings.detector_backend,
                    help="with --detector: run it in PyTorch, or under ONNX Runtime on the CPU (DET/detector.onnx, "
                         "written by `skulens detect export DET`) (default: %(default)s)")
    sc.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_precision(sc, "of the classifier (the detector runs in fp32 or under --detector-backend onnx)")
    _add_folders(sc)
    add_quiet(sc, "no per-photo JSON lines")
    sc.set_defaults(func=cmd_inventory_scan)

    c = isub.add_parser("counts", help="print the counts as CSV (label,count,updated_at)")
    c.add_argument("--db", required=True, help=_DB_HELP)
    add_out(c, "write the CSV here instead of stdout", legacy_output=True)
    c.set_defaults(func=cmd_inventory_counts)

    r = isub.add_parser("review", help="list the review queue, or resolve one photo or shelf box")
    r.add_argument("--db", required=True, help=_DB_HELP)
    r.add_argument("sha256", nargs="?", help="photo (SHA256) or shelf box (SHA256:INDEX) to resolve: the id in the list")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--label", help="confirm / correct: the right product, one that exists (a new product is "
                                   "enrolled first: skulens enroll)")
    g.add_argument("--reject", action="store_true", help="not a product: never counted")
    add_model(r, "model bundle whose products --label must name (default: the products this inventory already "
                 "knows: counted, or guessed by the model at intake)", required=False, positional_legacy=False)
    _add_folders(r)
    r.set_defaults(func=cmd_inventory_review)

    a = isub.add_parser("audit", help="print the audit log, newest first (JSON lines)")
    a.add_argument("--db", required=True, help=_DB_HELP)
    a.add_argument("--limit", type=positive_int, default=100, help="newest entries to print (default: 100)")
    a.set_defaults(func=cmd_inventory_audit)

    e = isub.add_parser("erase-user", help="erase a user: their behaviour events and the photos they sent "
                                           "(audited; counts stay)")
    e.add_argument("user_id", type=user_id_arg, help="the user as the shop knows them (looked up by pseudonym)")
    e.add_argument("--db", help=_DB_HELP + "; without it (a service run with --events only), the user leaves the "
                                           "--events log alone, unaudited")
    e.add_argument("--events", help="behaviour-log CSV the service reads (--events): the user's rows go too")
    add_key_file(e)
    _add_folders(e)
    e.add_argument("--missing-ok", action="store_true", help="erase the rows even when some of the user's files are "
                   "in neither folder (deleted by hand); they are reported, named in the audit entry")
    e.set_defaults(func=cmd_inventory_erase_user)

    pu = isub.add_parser("purge", help="delete kept uploads (not yet labelled) older than a retention period, "
                                         "and files no row names")
    pu.add_argument("--db", required=True, help=_DB_HELP)
    pu.add_argument("--older-than-days", type=float, required=True, help="retention period in days")
    _add_folders(pu)
    pu.set_defaults(func=cmd_inventory_purge)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_inventory_scan(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    check_precision_flag(ns, backend="torch")
    detector_dir = check_detector(ns.detector, backend=ns.detector_backend) if ns.detector is not None else None
    if ns.min_score is not None and not 0 <= ns.min_score <= 1:
        raise UsageError("--min-score must be between 0 and 1")
    if not 0 <= ns.threshold <= 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {ns.threshold}")
    if ns.max_boxes is not None and ns.max_boxes < 1:
        raise UsageError("--max-boxes must be >= 1")
    if detector_dir is None and (ns.max_boxes is not None or ns.tiles != "auto" or ns.min_score is not None
                                 or ns.detector_backend != "torch"):
        raise UsageError("--min-score, --max-boxes, --tiles and --detector-backend are settings of --detector: "
                         "give a detector")
    if detector_dir is not None:
        from ..detect.options import check_backend

        try:
            check_backend(ns.detector_backend, ns.device)
        except ValueError as exc:
            raise UsageError(f"--detector-backend: {exc}") from None
    from ..serve.intake import ScanSummary, find_images, outside_store, scan, scan_shelves

    if not Path(ns.dir).exists():  # one line in the command's words (it was "skulens: FileNotFoundError: ...")
        raise UsageError(f"{ns.dir}: no such file or folder")
    paths = find_images(ns.dir)
    if not paths:
        raise UsageError(f"no images under {ns.dir}")
    bad = non_utf8_names(paths)  # before anything is stored: a name the database cannot hold
    if bad:
        raise UsageError(bad)
    from ..models.inference import resolve_device
    from ..models.predictor import load_model

    resolve_device(ns.device)  # a GPU this machine lacks is told before the database is made
    summary = ScanSummary(shelf=detector_dir is not None)
    common: dict[str, Any] = {"threshold": ns.threshold, "actor": _actor(), "keep_photos": ns.keep_photos,
                              "chunk": max(1, ns.batch_size)}
    with _store(ns, create=True) as store:  # a bad --db is told before the model loads
        paths, own = outside_store(paths, store)
        if own:  # a scanned folder that holds the database: its kept and reviewed photos are counted already
            say(f"skulens inventory scan: left out {own} file(s) of the inventory's own folders "
                f"({store.photo_dir}, {store.labelled_dir})")
        if not paths:
            raise UsageError(f"no images under {ns.dir} but the inventory's own")
        model = load_model(bundle, device=ns.device, precision=ns.precision)
        if detector_dir is None:
            results = scan(model, store, paths, **common)
        else:
            from ..detect.backends import open_detector
            from ..detect.detector import MAX_PIXELS

            detector = open_detector(detector_dir, device=ns.device, backend=ns.detector_backend).with_settings(
                max_detections=ns.max_boxes)
            # local shelf photos: the detector's own limit (`count`'s: 48-64 MP phone photos), not an upload's
            results = scan_shelves(detector, model, store, paths, min_score=ns.min_score, tiles=ns.tiles,
                                   max_pixels=MAX_PIXELS, **common)
        for path, result in results:
            if isinstance(result, str):
                summary.errors.append((str(path), result))
                line: dict[str, Any] = {"path": str(path), "status": "error", "error": result}
            else:
                summary.add(result)
                line = {"path": str(path), **result.to_dict(summary=True)}
            if not ns.quiet:
                print(json.dumps(line), flush=True)
    say(f"skulens inventory scan: {summary.line()}; db {store.url}")
    return EXIT_FAILED if len(summary.errors) == len(paths) else 0  # as `count`: not one photo could be read


def cmd_inventory_counts(ns: argparse.Namespace) -> int:
    check_out_path(ns.out, "--out")
    with _store(ns) as store:
        if ns.out:
            Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
            with open(ns.out, "w", encoding="utf-8", newline="") as out:
                n = store.export_csv(out)
            say(f"{n} products -> {ns.out}")
        else:
            store.export_csv(sys.stdout)
    return 0


def _model_products(bundle: str) -> set[str]:
    """The classes in a bundle's card (JSON: no torch)."""
    from ..models.card import ModelCard

    path = Path(bundle)
    card = path / "card.json" if path.is_dir() else path.with_name("card.json") if path.suffix == ".onnx" else path
    if card.suffix != ".json" or not card.is_file():
        raise UsageError(f"--model {bundle}: review needs the bundle's card.json to know its products")
    try:
        return set(ModelCard.from_dict(json.loads(card.read_text(encoding="utf-8"))).classes)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--model {bundle}: unreadable card ({exc})") from None


def cmd_inventory_review(ns: argparse.Namespace) -> int:
    from ..serve.inventory import InventoryError, UnknownLabelError

    bundle = model_path(ns)
    if ns.sha256 is None and (ns.label or ns.reject):
        raise UsageError("--label and --reject resolve one item: give its id (SHA256, or SHA256:INDEX for a box; "
                         "without them, review lists the queue)")
    if bundle and not ns.label:  # it checks a correction's product name, and only that
        raise UsageError("--model: the products a correction (--label) may name; listing the queue or --reject "
                         "reads no model")
    with _store(ns) as store:
        if ns.sha256 is None:  # the whole queue, a page at a time (it stopped at 1000 items, unsaid)
            offset = 0
            while page := store.review_queue(limit=1000, offset=offset):
                for item in page:
                    print(json.dumps(item.to_dict()))
                offset += len(page)
            return 0
        if not ns.label and not ns.reject:
            raise UsageError("give --label LABEL or --reject with the item's id (SHA256, or SHA256:INDEX for a box)")
        queued = store.photo(ns.sha256)
        if ns.label and queued is not None and queued.status == "review" and queued.has_photo and \
                store.photo_file(ns.sha256) is None:
            # the correction would count, but its photo could not land in the labelled data for retraining
            raise UsageError(f"the photo of {ns.sha256} is in neither {store.photo_dir} nor {store.labelled_dir}: "
                             "give the folders the service uses (--photo-dir, --labelled-dir); nothing was changed")
        # A correction names an existing product: a typo must not invent one (a count row, a training class).
        known = _model_products(bundle) if bundle else store.labels()
        try:
            item = store.resolve(ns.sha256, None if ns.reject else ns.label, actor=_actor(), known=known)
        except UnknownLabelError as exc:
            if bundle:
                raise UsageError(str(exc)) from None
            # without the model, only the products this inventory has seen are known: the model may know it
            raise UsageError(f"{exc}; without -m, a correction may name only a product this inventory has counted, "
                             "guessed or been given: pass -m MODEL to name any product of the model") from None
        except InventoryError as exc:
            raise UsageError(str(exc)) from None
        print(json.dumps(item.to_dict()))
    return 0


def cmd_inventory_audit(ns: argparse.Namespace) -> int:
    with _store(ns) as store:
        for entry in store.audit(limit=ns.limit):
            print(json.dumps(entry.to_dict()))
    return 0


def cmd_inventory_erase_user(ns: argparse.Namespace) -> int:
    from ..serve.people import ErasureRefused, People

    if ns.events and not Path(ns.events).is_file():  # before anything is erased, not after the inventory's part
        raise UsageError(f"--events {ns.events}: no such behaviour log; nothing was erased")
    from ..serve.inventory import InventoryError

    if ns.db is None:  # a service run with --events only keeps nothing else about the user
        if not ns.events:
            raise UsageError("give --db (the inventory), --events (the behaviour log), or both")
        unread = [flag for flag, given in (("--photo-dir", ns.photo_dir), ("--labelled-dir", ns.labelled_dir),
                                           ("--missing-ok", ns.missing_ok)) if given]
        if unread:  # the user's files are the inventory's: without it they were accepted and never looked at
            raise UsageError(f"{', '.join(unread)}: the inventory's files (give its --db); without --db only the "
                             "behaviour log is erased; nothing was erased")
        return _erase_from_log_only(ns)
    # an inventory that exists: a mistyped --db made an empty one (with --events), erased nothing and exited 0
    with _store(ns) as store:
        key = pseudonymizer(ns, required=True, data_dirs=(store.photo_dir, store.labelled_dir),
                            data_files=(store.path, ns.events))
        try:
            done = People(store=store, pseudonym=key, events_csv=ns.events, fit=None).erase(
                ns.user_id, actor=_actor(), missing_ok=ns.missing_ok)
        except InventoryError as exc:  # files in neither folder: nothing was erased
            raise UsageError(f"{exc}: --photo-dir, --labelled-dir, or --missing-ok") from None
        except ErasureRefused as exc:
            raise UsageError(str(exc)) from None
    print(json.dumps(vars(done)))
    if done.missing:
        say(f"skulens inventory erase-user: {done.missing} of the user's files were not found and are not deleted "
            "(the audit entry names them): delete them by hand where they are")
        return EXIT_FAILED
    return 0


def _erase_from_log_only(ns: argparse.Namespace) -> int:
    from ..serve.people import ErasureRefused, People

    key = pseudonymizer(ns, required=True, data_files=(ns.events,))
    try:
        done = People(store=None, pseudonym=key, events_csv=ns.events, fit=None).erase(ns.user_id, actor=_actor())
    except ErasureRefused as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(vars(done)))
    say(f"skulens inventory erase-user: {done.log_events} event(s) left {ns.events}; no --db, so nothing else was "
        "erased and no audit entry was written (the audit log lives in the inventory)")
    return 0


def cmd_inventory_purge(ns: argparse.Namespace) -> int:
    from ..serve.inventory import InventoryError

    with _store(ns) as store:
        try:
            n = store.purge_uploads(ns.older_than_days, actor=_actor())
        except InventoryError as exc:
            raise UsageError(str(exc)) from None
    say(f"{store.url}: deleted {n} file(s): kept uploads older than {ns.older_than_days:g} days, and any that no "
        "row names (left by a crash)")
    return 0
