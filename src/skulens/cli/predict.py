"""`skulens predict | info`: using a model on photos (here or on Ray), and reading its card (thin handlers)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ..data.catalogue import IMAGE_SUFFIXES
from ..data.sheets import spreadsheet_row
from ..models.card import scores_cell
from ..models.options import MODEL_BACKENDS
from ._common import (
    EXIT_FAILED,
    UsageError,
    add_engine,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    add_top_k,
    check_engine,
    check_format_matches_out,
    check_out_path,
    check_precision_flag,
    device_arg,
    engine_options,
    engine_out,
    expand_inputs,
    fraction,
    model_path,
    output_format,
    positive_int,
    refuse_json_out,
    refuse_out_among_inputs,
    say,
)

__all__ = ["add_commands"]

CSV_COLUMNS = ["source", "label", "level", "confidence", "fine_label", "fine_confidence", "coarse_label",
               "coarse_confidence", "top_k", "attributes", "error"]


# Photos per model call: the rows of each chunk are written before the next is decoded, so memory stays flat on a
# large folder and an interrupted run keeps what it finished.
CHUNK = 128


def _csv_row(p: Any) -> list[str]:
    return spreadsheet_row([p.source, p.label or "", p.level, f"{p.confidence:.4f}", p.fine_label or "", f"{p.fine_confidence:.4f}",
            p.coarse_label or "", "" if p.coarse_confidence is None else f"{p.coarse_confidence:.4f}",
            scores_cell(p.top_k, 4), scores_cell(p.attributes, 3), p.error or ""])


def _check_out(out: str | None) -> None:
    """Before any photo is decoded: an --out named like a photo would be written over with text (`-o *.jpg` in a
    shell does it; one of the inputs is refused by `refuse_out_among_inputs`); a path that cannot be written fails
    here, not after the whole run."""
    if not out:
        return
    check_out_path(out, "--out")
    path = Path(out)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"--out {out}: a photo's name; the predictions go to a .jsonl or .csv file")


def cmd_predict(ns: argparse.Namespace) -> int:
    inputs = list(ns.inputs)
    if ns.model is None and inputs:  # old spelling: `predict BUNDLE photos...`
        ns.legacy_model = inputs.pop(0)
    check_precision_flag(ns)
    bundle = model_path(ns, backend=ns.backend)
    if bundle is not None and bundle.startswith("pretrained:"):  # known before anything loads (Ray's actors too)
        raise UsageError(f"--model {bundle}: a plain pretrained backbone has no classifier to predict with: use it "
                         "for embeddings (`skulens index build`, `skulens search`), or fine-tune it with "
                         "`skulens train`")
    on_ray = check_engine(ns)
    if on_ray and (ns.text is not None or ns.format is not None):
        raise UsageError(f"{'--text' if ns.text is not None else '--format'}: not with --engine ray (it writes "
                         "Parquet, and classifies photos without their texts)")
    if not on_ray and ns.out and Path(ns.out).suffix.lower() == ".parquet":
        raise UsageError(f"--out {ns.out}: Parquet is written by --engine ray; here use .jsonl or .csv")
    if not on_ray:
        refuse_json_out(ns.out)
        check_format_matches_out(ns)  # CSV was written into x.jsonl
    parquet = engine_out(ns) if on_ray else None
    files = expand_inputs(inputs)
    if not files:
        raise UsageError("no input images")
    if parquet is None:
        _check_out(ns.out)
    refuse_out_among_inputs(ns.out, inputs, files)  # a photo list (CSV, Parquet) replaced by the predictions
    if parquet is not None:
        return _predict_on_ray(ns, bundle, files, parquet)
    if ns.text is not None and len(ns.text) != len(files):
        raise UsageError(f"{len(ns.text)} --text for {len(files)} image(s): give one per image")
    from ..models.predictor import load_model

    if ns.text is not None:
        from ..models.fusion import FUSION_FILE

        folder = Path(bundle) if bundle and Path(bundle).is_dir() else Path(bundle or ".").parent
        if not (folder / FUSION_FILE).is_file():
            raise UsageError("--text needs a bundle with a fusion head: train one with `skulens fuse --model BUNDLE "
                             "--data ...`")
    model = load_model(bundle, device=ns.device, backend=ns.backend, precision=ns.precision)
    if ns.out:
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    csv_out = output_format(ns) == "csv"
    errors = 0
    bar = tqdm(total=len(files), desc="predict", unit="photo", disable=ns.quiet or len(files) <= ns.batch_size)
    # One context manager for a file or stdout (stdout must not be closed).
    sink = open(ns.out, "w", encoding="utf-8", newline="") if ns.out else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
    with sink as out, bar:
        if csv_out:
            import csv

            w = csv.writer(out)
            w.writerow(CSV_COLUMNS)
        chunk = max(CHUNK, ns.batch_size)  # rows written as they come; a larger --batch-size is never cut down
        for start in range(0, len(files), chunk):
            texts = ns.text[start:start + chunk] if ns.text is not None else None
            preds = model.predict(files[start:start + chunk], top_k=ns.top_k, min_confidence=ns.min_confidence,
                                  batch_size=ns.batch_size, texts=texts)
            if csv_out:
                w.writerows(_csv_row(p) for p in preds)
            else:
                out.writelines(json.dumps(p.to_dict()) + "\n" for p in preds)
            out.flush()
            errors += sum(p.level == "error" for p in preds)
            bar.update(len(preds))
    if errors:
        say(f"skulens predict: {errors} of {len(files)} image(s) could not be read (see their 'error')")
    return EXIT_FAILED if errors == len(files) else 0


def _predict_on_ray(ns: argparse.Namespace, bundle: str | None, files: list[str], out: Path) -> int:
    from ..deploy.batch_jobs import PredictJob
    from ..deploy.ray_jobs import run_job

    assert bundle is not None
    job = PredictJob(bundle, top_k=ns.top_k, min_confidence=ns.min_confidence, batch_size=ns.batch_size,
                     device=ns.device, precision=ns.precision, backend=ns.backend)
    res = run_job(job, files, out, **engine_options(ns))
    say(f"skulens predict: {res.rows} image(s) on Ray, {res.actors} actor(s), in {res.seconds:.1f} s "
        f"({res.images_per_s:.1f} images/s) -> {res.out}")
    if res.errors:
        say(f"skulens predict: {res.errors} of {res.rows} image(s) could not be read: {res.errors_line()}")
    return EXIT_FAILED if res.errors == res.rows else 0


def _card_lines(path: Path, card: Any, card_path: Path) -> list[str]:
    weights = (path / "model.safetensors" if path.is_dir() else card_path if card_path.suffix in (".onnx", ".tflite")
               else card_path.with_name("model.safetensors"))  # an export holds its own weights
    size = f"{weights.stat().st_size / 1e6:.1f} MB" if weights.is_file() else "missing!"
    lines = [
        f"bundle:      {path}",
        f"backbone:    {card.backbone}  input {card.input_size}px  mean {card.mean} std {card.std}",
        f"weights:     {size}  embedding dim {card.embedding_dim}",
        f"classes:     {card.num_classes} fine" + (f", {len(card.coarse_classes)} coarse" if card.coarse_classes else ""),
        f"attributes:  {len(card.attributes)}" + (f" ({', '.join(card.attributes[:6])}...)" if card.attributes else ""),
        (f"dataset:     {card.dataset.get('path')} ({card.dataset.get('layout')}, fingerprint "
         f"{card.dataset.get('fingerprint')})"),
        f"created:     {card.created}  skulens {card.skulens_version}",
    ]

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    m = card.metrics
    if m:
        # the split they were measured on; an export carries its bundle's card: those are the PyTorch model's
        # numbers, not this file's (an int8 file's own: `skulens evaluate -m FILE --backend onnx-int8`)
        label = f"{m.get('split') or 'val'} metrics"
        if weights.suffix in (".onnx", ".tflite"):
            label += " (of the PyTorch bundle this file was exported from; `skulens evaluate` measures the file)"
        lines.append(f"{label}: " + ", ".join(f"{k}={fmt(v)}" for k, v in m.items()
                                              if k != "baseline" and v is not None))
        if m.get("baseline"):
            lines.append("baseline:    " + ", ".join(f"{k}={fmt(v)}" for k, v in m["baseline"].items() if v is not None))
    return lines


def cmd_info(ns: argparse.Namespace) -> int:
    from ..models.card import ModelCard  # no torch: the card is JSON

    bundle = model_path(ns)
    assert bundle is not None
    path = Path(bundle)
    if path.is_file() and path.suffix.lower() in (".onnx", ".tflite"):  # the card embedded in an export
        if path.suffix.lower() == ".onnx":
            from ..models.onnx_runtime import read_onnx_card as read_embedded
        else:
            from ..models.tflite_runtime import read_tflite_card as read_embedded
        card = read_embedded(path)
        print(card.to_json() if ns.json else "\n".join(_card_lines(path, card, path)))
        return 0
    card_path = path / "card.json" if path.is_dir() else path
    if not card_path.is_file() or card_path.suffix != ".json":
        raise UsageError(f"--model {path}: not a bundle (no card.json)")
    try:  # a damaged card is one line, as every command that loads the bundle says it (`read_card`)
        data = json.loads(card_path.read_text(encoding="utf-8"))
        card = ModelCard.from_dict(data)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{card_path}: invalid card: {e}") from None
    from ..models.card import unfinished_run_note

    note = unfinished_run_note(card, card_path.parent)
    if note:
        say(f"warning: {note}")
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    print("\n".join(_card_lines(path, card, card_path)))
    return 0


def add_commands(sub: Any) -> None:
    pr = sub.add_parser("predict", help="classify images: files, folders, globs, or '-' for a list on stdin")
    add_model(pr, "model bundle folder, or an exported .onnx / .tflite file with --backend onnx / tflite",
              positional_legacy=False)
    pr.add_argument("inputs", nargs="*", help="images, folders, globs or Parquet/CSV lists with a 'path' column "
                                              "('-' or nothing: read paths from stdin)")
    add_top_k(pr, 5, "labels per image")
    pr.add_argument("--min-confidence", type=fraction, default=0.0, help="abstain ('unknown') below this (default: 0)")
    pr.add_argument("--format", choices=("jsonl", "csv"), help="output format (default: csv when --out ends in .csv, else jsonl; --engine ray: Parquet)")
    add_out(pr, "write the predictions here instead of stdout (--engine ray: a .parquet file or a folder)",
            legacy_output=True)
    pr.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    pr.add_argument("--text", action="append",
                    help="an image's listing text (uses the fusion head): once per image, in the images' order "
                         "(--text 'oat milk 1 l' --text 'ripe bananas')")
    pr.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_precision(pr)
    pr.add_argument("--backend", choices=MODEL_BACKENDS, default="torch",
                    help="onnx: run the bundle's model.onnx (or a .onnx file) with ONNX Runtime; onnx-int8: its "
                         "model.int8.onnx (export --int8 or --preset fast); tflite: its model.tflite (or a .tflite "
                         "file) with LiteRT; tflite-int8: its model.int8.tflite (export --format tflite --int8) "
                         "(default: %(default)s)")
    add_engine(pr, "writes Parquet to -o (a .parquet file or a folder)")
    add_quiet(pr)
    pr.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="show a bundle's card (no torch: answers at once)")
    add_model(i, "model bundle folder or its card.json")
    i.add_argument("--json", action="store_true", help="print the raw card.json")
    i.set_defaults(func=cmd_info)
