"""The `skulens` command: a thin adapter over the Python API. Importing this module imports no torch."""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args

from .config import ConfigError, config_fields, load_config

__all__ = ["find_default_data", "main"]

DATASET_HINT = (
    "The Grocery Store dataset was not found. skulens looks at --data, then $SKULENS_DATA, then "
    "../shared/datasets/grocery-store. Get it from its public repository, marcusklasson/GroceryStoreDataset "
    "on GitHub (MIT licence): clone it and pass --data PATH/TO/GroceryStoreDataset/dataset."
)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def find_default_data() -> Path | None:
    """$SKULENS_DATA, else ../shared/datasets/grocery-store from the working dir or from the source checkout."""
    env = os.environ.get("SKULENS_DATA")
    if env:
        return Path(env) if Path(env).exists() and any(Path(env).iterdir()) else None
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        cand = base.parent / "shared" / "datasets" / "grocery-store"
        if (cand / "classes.csv").is_file():
            return cand
    return None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for name, hint, default, help_text in config_fields():
        flag = "--" + name.replace("_", "-")
        if name in ("data", "out"):
            continue
        args = get_args(hint)
        is_bool = hint is bool or (args and bool in args and len(args) == 1)
        if is_bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help_text} (default: {default})")
        else:
            choices = args if getattr(hint, "__origin__", None) is not None and all(
                isinstance(a, str) for a in args) and "Literal" in repr(hint) else None
            p.add_argument(flag, dest=name, default=None, choices=choices, metavar=None if choices else name.upper(),
                           help=f"{help_text} (default: {default})")


def _train_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = load_config(ns.config) if ns.config else {}
    for name, *_ in config_fields():
        v = getattr(ns, name, None)
        if v is not None:
            values[name] = v
    return values


def _resolve_data(arg: str | None, *, required: bool = True) -> str | None:
    if arg:
        if not Path(arg).exists():
            raise SystemExit(f"skulens: --data {arg}: no such file or folder")
        return arg
    found = find_default_data()
    if found is None or not found.exists():
        if required:
            raise SystemExit(f"skulens: {DATASET_HINT}")
        return None
    return str(found)


def _print(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_train(ns: argparse.Namespace) -> int:
    from .api import train

    values = _train_overrides(ns)
    values["data"] = _resolve_data(ns.data or values.get("data"))
    if ns.out:
        values["out"] = ns.out
    result = train(progress=not ns.quiet, **values)
    _report_result(result)
    return 0


def _report_result(result: Any) -> None:
    from .evaluate.report import format_summary

    _print(format_summary(result.report, baseline=result.baseline))
    _print(f"trained {result.epochs_run} epoch(s) in {result.wall_time_s / 60:.1f} min, best epoch {result.best_epoch}")
    if result.skipped:
        _print(f"skipped {len(result.skipped)} undecodable image(s): {result.run_dir / 'skipped_images.tsv'}")
    _print(f"model bundle: {result.bundle}")
    _print(f"report:       {result.run_dir / 'report' / 'report.md'}")


def cmd_demo(ns: argparse.Namespace) -> int:
    from .api import train

    data = _resolve_data(ns.data)
    out = ns.out or "runs/demo"
    extra: dict[str, Any] = {}
    if ns.quick:  # a minutes-long smoke run of the same pipeline
        extra = {"backbone": "efficientnet_lite0", "epochs": 2, "image_size": 160}
    if Path(out, "checkpoint").exists() or Path(out, "bundle").exists():
        out = f"{out}-{time.strftime('%Y%m%d-%H%M%S')}"
    _print(f"skulens demo: fine-tuning the default model on {data} into {out}")
    result = train(data, out=out, progress=not ns.quiet, **extra)
    _report_result(result)
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from .api import load
    from .evaluate.report import format_summary

    model = load(ns.bundle, device=ns.device, backend=ns.backend)
    data = _resolve_data(ns.data)
    report = model.evaluate(data, split=ns.split, out=ns.out, baseline=ns.baseline, progress=not ns.quiet)
    _print(format_summary(report))
    _print(f"report: {Path(ns.out) / 'report.md'}")
    return 0


def _expand_inputs(items: list[str]) -> list[str]:
    if items == ["-"] or not items:
        items = [line.strip() for line in sys.stdin if line.strip()]
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif any(ch in item for ch in "*?["):
            out += sorted(glob.glob(item, recursive=True))
        else:
            out.append(item)  # a missing file becomes a per-file error, not a crash
    return out


def cmd_predict(ns: argparse.Namespace) -> int:
    from .api import load

    files = _expand_inputs(ns.inputs)
    if not files:
        raise SystemExit("skulens predict: no input images")
    model = load(ns.bundle, device=ns.device, backend=ns.backend)
    if ns.text is not None and len(ns.text) != len(files):
        raise SystemExit(f"skulens predict: {len(ns.text)} --text for {len(files)} image(s): give one per image")
    preds = model.predict(files, top_k=ns.top_k, min_confidence=ns.min_confidence, batch_size=ns.batch_size,
                          progress=not ns.quiet and len(files) > ns.batch_size, texts=ns.text)
    # One context manager for a file or stdout (stdout must not be closed).
    sink = open(ns.output, "w", encoding="utf-8", newline="") if ns.output else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
    with sink as out:
        if ns.format == "csv":
            import csv

            w = csv.writer(out)
            w.writerow(["source", "label", "level", "confidence", "fine_label", "fine_confidence", "coarse_label",
                        "coarse_confidence", "top_k", "attributes", "error"])
            for p in preds:
                w.writerow([p.source, p.label or "", p.level, f"{p.confidence:.4f}", p.fine_label or "",
                            f"{p.fine_confidence:.4f}", p.coarse_label or "",
                            "" if p.coarse_confidence is None else f"{p.coarse_confidence:.4f}",
                            ";".join(f"{lab}:{pr:.4f}" for lab, pr in p.top_k),
                            ";".join(f"{a}:{pr:.3f}" for a, pr in p.attributes), p.error or ""])
        else:
            for p in preds:
                out.write(json.dumps(p.to_dict()) + "\n")
    errors = sum(p.level == "error" for p in preds)
    if errors:
        _print(f"skulens predict: {errors} of {len(preds)} image(s) could not be read (see their 'error')")
    return 1 if errors == len(preds) else 0


def cmd_export(ns: argparse.Namespace) -> int:
    from .deploy.onnx import export_onnx, export_torchscript

    path = export_onnx(ns.bundle, ns.output) if ns.format == "onnx" else export_torchscript(ns.bundle, ns.output)
    _print(f"exported {ns.format}: {path} ({path.stat().st_size / 1e6:.1f} MB); preprocessing and labels are "
           "in its metadata")
    if ns.int8:
        if ns.format != "onnx":
            raise SystemExit("skulens export: --int8 needs --format onnx")
        q = _quantize(path, ns)
        _print(f"int8 (ONNX Runtime static, per-channel): {q} ({q.stat().st_size / 1e6:.1f} MB)")
    return 0


def _quantize(path: Path, ns: argparse.Namespace) -> Path:
    import random

    from .data.catalogue import load_catalogue
    from .data.dataset import decode_all
    from .data.transforms import create_transform
    from .deploy.onnx import read_onnx_card
    from .deploy.quantize import quantize_onnx

    card = read_onnx_card(path)
    samples = list(load_catalogue(_resolve_data(ns.calibration_data)).split(ns.calibration_split))
    random.Random(0).shuffle(samples)
    decoded = decode_all([s.path for s in samples[: ns.calibration_images]], card.resize_to, desc="calibration")
    return quantize_onnx(path, path.with_name(path.stem + ".int8.onnx"), decoded.images, create_transform(card))


def cmd_explain(ns: argparse.Namespace) -> int:
    from .api import load
    from .evaluate.explain import explain, overlay

    model = load(ns.bundle, device=ns.device)
    exp = explain(model, ns.image, target=ns.target)
    out = Path(ns.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(exp).save(out)
    print(json.dumps({"image": ns.image, "label": exp.label, "confidence": round(exp.confidence, 6),
                      "overlay": str(out)}))
    return 0


def cmd_info(ns: argparse.Namespace) -> int:
    from .models.card import ModelCard  # no torch: the card is JSON

    path = Path(ns.bundle)
    card_path = path / "card.json" if path.is_dir() else path
    if not card_path.is_file():
        raise SystemExit(f"skulens info: {path} is not a bundle (no card.json)")
    data = json.loads(card_path.read_text(encoding="utf-8"))
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    card = ModelCard.from_dict(data)
    weights = path / "model.safetensors" if path.is_dir() else card_path.with_name("model.safetensors")
    size = f"{weights.stat().st_size / 1e6:.1f} MB" if weights.is_file() else "missing!"
    lines = [
        f"bundle:      {path}",
        f"backbone:    {card.backbone}  input {card.input_size}px  mean {card.mean} std {card.std}",
        f"weights:     {size}  embedding dim {card.embedding_dim}",
        f"classes:     {card.num_classes} fine" + (f", {len(card.coarse_classes)} coarse" if card.coarse_classes else ""),
        f"attributes:  {len(card.attributes)}" + (f" ({', '.join(card.attributes[:6])}...)" if card.attributes else ""),
        f"dataset:     {card.dataset.get('path')} ({card.dataset.get('layout')}, fingerprint {card.dataset.get('fingerprint')})",
        f"created:     {card.created}  skulens {card.skulens_version}",
    ]
    m = card.metrics
    if m:
        def fmt(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append("val metrics: " + ", ".join(f"{k}={fmt(v)}" for k, v in m.items() if k != "baseline" and v is not None))
        if m.get("baseline"):
            lines.append("baseline:    " + ", ".join(f"{k}={fmt(v)}" for k, v in m["baseline"].items() if v is not None))
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skulens", description="Product image recognition with pretrained models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a pretrained backbone on a catalogue")
    t.add_argument("--data", help="catalogue: class folders, a CSV/JSONL manifest, or the grocery layout")
    t.add_argument("--out", help="run directory (default runs/skulens)")
    t.add_argument("--config", help="YAML/TOML/JSON file of config keys (CLI flags override it)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="fine-tune and evaluate the default model on the grocery dataset")
    d.add_argument("--data", help="dataset path (default: $SKULENS_DATA or ../shared/datasets/grocery-store)")
    d.add_argument("--out", help="run directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a few-minute run: Lite0 at 160px, 2 epochs")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("evaluate", help="evaluate a bundle on a catalogue split; write report.json/report.md")
    e.add_argument("bundle")
    e.add_argument("--data", help="catalogue (any layout)")
    e.add_argument("--split", default="val")
    e.add_argument("--out", required=True, help="report directory")
    e.add_argument("--baseline", action="store_true", help="also evaluate the linear probe on the pretrained backbone")
    e.add_argument("--device", default="auto")
    e.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="onnx: the bundle's model.onnx")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="classify images: files, folders, globs, or '-' for a list on stdin")
    pr.add_argument("bundle")
    pr.add_argument("inputs", nargs="*", help="images, folders or globs ('-' or nothing: read paths from stdin)")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--min-confidence", type=float, default=0.0, help="abstain ('unknown') below this")
    pr.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    pr.add_argument("-o", "--output", help="write here instead of stdout")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--text", action="append", help="each image's listing text, in order (uses the fusion head)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                    help="onnx: run the bundle's model.onnx (or a .onnx file) with ONNX Runtime")
    pr.add_argument("-q", "--quiet", action="store_true")
    pr.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="export a bundle to ONNX or TorchScript (card embedded)")
    x.add_argument("bundle")
    x.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    x.add_argument("-o", "--output", help="file to write (default: inside the bundle)")
    x.add_argument("--int8", action="store_true", help="also write an int8-quantized NAME.int8.onnx")
    x.add_argument("--calibration-data", help="catalogue whose images calibrate int8 (default: as --data)")
    x.add_argument("--calibration-split", default="train")
    x.add_argument("--calibration-images", type=int, default=256)
    x.set_defaults(func=cmd_export)

    ex = sub.add_parser("explain", help="Grad-CAM heatmap of a prediction, blended over the photo")
    ex.add_argument("bundle")
    ex.add_argument("image")
    ex.add_argument("-o", "--output", default="explanation.png", help="overlay PNG to write")
    ex.add_argument("--target", help="class to explain (default: the predicted one)")
    ex.add_argument("--device", default="auto")
    ex.set_defaults(func=cmd_explain)

    i = sub.add_parser("info", help="show a bundle's card")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print the raw card.json")
    i.set_defaults(func=cmd_info)

    from ._cli_search import add_search_commands

    add_search_commands(sub)

    from ._cli_deploy import add_deploy_commands

    add_deploy_commands(sub)

    from .serve.commands import add_inventory_parser, add_serve_parser

    add_serve_parser(sub)
    add_inventory_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(ns.func(ns) or 0)
    except ConfigError as e:
        _print(f"skulens: config error: {e}")
        return 2
    except KeyboardInterrupt:
        _print("skulens: interrupted")
        return 130
    except Exception as e:
        from .errors import USER_ERRORS

        if isinstance(e, USER_ERRORS) and not ns.verbose:
            _print(f"skulens: {type(e).__name__}: {e}")
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())


