"""`skulens tag`: listing tags for photos (a thin handler over `skulens.api.tag`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_FAILED,
    UsageError,
    add_data,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    add_top_k,
    check_format_matches_out,
    check_out_path,
    check_precision_flag,
    device_arg,
    expand_inputs,
    model_path,
    output_format,
    positive_int,
    refuse_json_out,
    say,
)

__all__ = ["add_commands"]


def _vocabulary(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    from ..search.tags import TaggingError, parse_vocabulary

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        from ..data.encoding import not_utf8

        raise UsageError(f"--vocabulary {path}: {not_utf8(path)}") from None
    except OSError as e:
        raise UsageError(f"--vocabulary {path}: cannot read it ({e.strerror or e})") from None
    try:
        return parse_vocabulary(text)
    except TaggingError as e:
        raise UsageError(f"--vocabulary {path}: {e}") from None


def cmd_tag(ns: argparse.Namespace) -> int:
    refuse_json_out(ns.out)
    check_precision_flag(ns)
    check_out_path(ns.out, "--out")  # before every photo is tagged
    check_format_matches_out(ns)
    if ns.min_score is not None and not -1 <= ns.min_score <= 1:  # a cosine; `not <=`: NaN too
        raise UsageError(f"--min-score is a cosine similarity between -1 and 1, got {ns.min_score}")
    if not ns.vocabulary:  # they choose and rank vocabulary tags: without one they did nothing, unsaid
        from ..search.tags import unused_vocabulary_settings

        flags = {"mode": "--mode", "top_k": "-k/--top-k", "min_score": "--min-score"}
        given = [flags[name] for name in unused_vocabulary_settings(ns.mode, ns.top_k, ns.min_score)]
        if given:  # said with the flags' names, before any photo is read (the API says it too)
            raise UsageError(f"{', '.join(given)}: setting(s) of the vocabulary tags: give --vocabulary FILE")
    bundle = model_path(ns)
    if ns.data is not None and not Path(ns.data).exists():
        raise UsageError(f"--data {ns.data}: no such file or folder")
    vocabulary = _vocabulary(ns.vocabulary)
    files = expand_inputs(list(ns.inputs))
    if not files:
        raise UsageError("no input images")
    from ..api import tag
    from ..search.tags import TaggingError

    try:
        results = tag(files, bundle, vocabulary=vocabulary, data=ns.data, mode=ns.mode, top_k=ns.top_k,
                      min_score=ns.min_score, batch_size=ns.batch_size, device=ns.device,
                      precision=ns.precision, progress=not ns.quiet and len(files) > ns.batch_size)
    except TaggingError as e:  # a vocabulary this model cannot score (no aligner, no product texts)
        raise UsageError(str(e)) from None
    # One context manager for a file or stdout (stdout must not be closed).
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    sink = open(ns.out, "w", encoding="utf-8", newline="") if ns.out else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
    with sink as out:
        if output_format(ns) == "csv":
            import csv

            from ..search.tags import CSV_COLUMNS

            w = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
            w.writeheader()
            w.writerows(r.to_row() for r in results)
        else:
            for r in results:
                out.write(json.dumps(r.to_dict()) + "\n")
    errors = sum(r.error is not None for r in results)
    if errors:
        say(f"skulens tag: {errors} of {len(results)} image(s) could not be read (see their 'error')")
    return EXIT_FAILED if errors == len(results) else 0


def add_commands(sub: Any) -> None:
    t = sub.add_parser("tag", help="listing tags for photos: category path, attributes, colours, vocabulary tags",
                       description="Tags for ads and marketplace listings, one row per photo (JSON lines or CSV).")
    add_model(t, "model bundle folder", positional_legacy=False)
    t.add_argument("inputs", nargs="*", help="images, folders or globs ('-' or nothing: read paths from stdin)")
    t.add_argument("--vocabulary", metavar="FILE",
                   help="phrases to tag with, one per line ('#' comments); without it, no vocabulary tags")
    add_data(t, "catalogue for product titles and texts (default: the data the bundle was trained on, if there)")
    t.add_argument("--mode", choices=("auto", "text", "aligned"), default="auto",
                   help="how phrases are scored: text (the recognised product's texts), aligned (the bundle's text "
                        "aligner, `skulens align`), auto: text when the catalogue has texts (default: auto)")
    # 0 is a valid count of tags (category, attributes and colours only), as `skulens.tag` and POST /v1/tag take
    add_top_k(t, 5, "vocabulary tags per photo, 0 for none", allow_zero=True)
    t.set_defaults(top_k=None)  # not given: the API's DEFAULT_TOP_TAGS (5; search.tags is not imported for --help)
    t.add_argument("--min-score", type=float, default=None,
                   help="score a vocabulary tag needs (default: per mode, chosen on grocery; see README)")
    t.add_argument("--format", choices=("jsonl", "csv"), default=None,
                   help="output format (default: csv when --out ends in .csv, else jsonl)")
    add_out(t, "write the tags here instead of stdout")
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    t.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_precision(t)
    add_quiet(t)
    t.set_defaults(func=cmd_tag)
