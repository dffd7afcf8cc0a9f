"""`skulens count` and `skulens detect train | evaluate | export | preview`: products in shelf, fridge and
basket photos (thin handlers over skulens.detect). Importing this module imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..detect.options import DETECTOR_BACKENDS, TILE_MODES
from ._common import (
    EXIT_FAILED,
    UsageError,
    add_data,
    add_engine,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    check_detector,
    check_engine,
    check_model,
    check_out_path,
    check_precision_flag,
    data_path,
    device_arg,
    engine_options,
    engine_out,
    expand_inputs,
    fraction,
    non_negative_int,
    positive_int,
    refuse_out_among_inputs,
    say,
)

__all__ = ["add_commands"]


def _add_detector(p: argparse.ArgumentParser, *, positional: bool = False, onnx: bool = False) -> None:
    """`onnx`: the command has --backend, so an exported detector.onnx can be given too."""
    if positional:
        p.add_argument("detector_pos", nargs="?", metavar="DET", help="detector folder (or --detector)")
    p.add_argument("--detector", help="detector folder written by `skulens detect train`"
                                      + (", or its exported .onnx with --backend onnx" if onnx else ""))


def _detector_arg(ns: argparse.Namespace) -> str:
    pos = getattr(ns, "detector_pos", None)
    if pos and ns.detector and pos != ns.detector:
        raise UsageError(f"two detectors given: {pos} and --detector {ns.detector}")
    return check_detector(ns.detector or pos, backend=getattr(ns, "backend", None))


def _add_box_settings(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("detection settings")
    g.add_argument("--min-score", type=float, default=None,
                   help="detector score a box needs to count as a product (default: the detector's own, chosen on "
                        "held-out composites when it was trained; see `detector.json`)")
    g.add_argument("--min-confidence", type=float, default=None,
                   help="with -m/--model: classifier confidence a box needs to be named; below it the box is "
                        "'unknown' (default: 0.5)")
    g.add_argument("--tiles", choices=TILE_MODES, default="auto",
                   help="tile large photos (auto: long side over 2x the detector's max size and the products found "
                        "whole look small, as on a dense shelf; default: auto)")
    g.add_argument("--max-boxes", type=positive_int, default=None,
                   help="box cap per photo (default: the detector's, 1000); a photo with more is "
                        "flagged 'capped', never silently truncated")
    g.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--backend", choices=DETECTOR_BACKENDS, default="torch",
                   help="run the detector in PyTorch, or under ONNX Runtime on the CPU (DET/detector.onnx, written "
                        "by `skulens detect export DET`) (default: torch)")


def add_commands(sub: Any) -> None:
    c = sub.add_parser("count", help="find, recognise and count every product in shelf/fridge photos")
    c.add_argument("inputs", nargs="*", help="photos, folders, globs or Parquet/CSV lists with a 'path' column "
                                             "('-' or none: paths from stdin); "
                                             "a bundle folder first is taken as the model")
    add_model(c, "classification bundle that names each box", required=False, positional_legacy=False)
    _add_detector(c, onnx=True)
    add_out(c, "write results here: .jsonl (one photo per line, with boxes) or .csv (one row per photo and "
               "product; a photo's total and unknown repeated on each of its rows); default: JSON lines on stdout")
    c.add_argument("--annotated", metavar="DIR", help="write each photo with its boxes drawn as DIR/NNNN-<name>.png "
                                                      "(NNNN: its place in the run)")
    c.add_argument("--index", metavar="PATH", help="name boxes by the nearest product in this search index (built "
                                                  "with --model: `skulens index build`) instead of the classifier")
    c.add_argument("--min-similarity", type=fraction, default=None,
                   help="with --index: cosine similarity a box needs to be named (default: 0.5)")
    _add_box_settings(c)
    add_precision(c, "of the classifier (-m; the detector runs in fp32 or under --backend onnx)")
    c.add_argument("--batch-size", type=positive_int, help="--engine ray: photos per batch (default: 8)")
    add_engine(c, "a catalogue-wide count, written as Parquet to -o (a .parquet file or a folder; one row per "
                  "photo: counts, boxes, error)")
    add_quiet(c)
    c.set_defaults(func=cmd_count)

    d = sub.add_parser("detect", help="the product detector: train, evaluate, export, preview composites")
    dsub = d.add_subparsers(dest="detect_command", required=True, metavar="{train,evaluate,export,preview}")

    t = dsub.add_parser("train", help="train a class-agnostic product detector on catalogue composites")
    add_data(t, "catalogue whose product photos become composites (default: the grocery dataset)")
    add_out(t, "detector folder to write (a folder that already holds a detector: only with --force)", required=True)
    t.add_argument("--force", action="store_true", help="replace the detector already in -o (never the --init one)")
    t.add_argument("--boxes", action="append", default=[], metavar="PATH",
                   help="real box annotations to train on too: a VOC folder, COCO JSON or YOLO folder (repeatable)")
    t.add_argument("--no-composites", action="store_true", help="train on --boxes only")
    t.add_argument("--init", metavar="DET", help="fine-tune this detector instead of starting from ImageNet")
    g = t.add_argument_group("recipe")
    g.add_argument("--steps", type=positive_int, help="optimizer steps (default: 1800; the --max-minutes budget ends a "
                   "2-core CPU run first)")
    g.add_argument("--batch-size", type=positive_int, help="canvases per step (default: 8)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default: 1e-3)")
    g.add_argument("--max-minutes", type=float, help="wall-time budget of the training steps and their held-out "
                                                     "checks: the schedule ends by then even if the steps are not "
                                                     "done; the last check and the count threshold's calibration "
                                                     "come after it (default: 55)")
    g.add_argument("--eval-every", type=positive_int, help="steps between held-out checks (default: 150)")
    g.add_argument("--seed", type=non_negative_int, help="seed of the composites and the run (default: 0)")
    g.add_argument("--several-items", metavar="LABELS|FILE",
                   help="products whose catalogue photo shows several items (three tomatoes, a papaya and its half): "
                        "comma-separated labels, or a file of one label a line (# comments); their catalogue photos "
                        "go into no composite, which would box the group as one product (grocery: "
                        "benchmarks/data/grocery_several_items.txt)")
    g.add_argument("--workers", type=non_negative_int,
                   help="processes drawing composites beside training (default: 1; 0: in the training process; "
                        "more where cores are free; the composites are the same for any count)")
    t.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto); under torchrun "
                                                   "each process takes its own GPU (LOCAL_RANK)")
    add_quiet(t)
    t.set_defaults(func=cmd_detect_train)

    e = dsub.add_parser("evaluate", help="AP, recall and count error on photos with real boxes")
    _add_detector(e, positional=True, onnx=True)
    e.add_argument("--data", required=True, help="annotated photos: a VOC folder, COCO JSON or YOLO folder")
    add_model(e, "classification bundle: adds per-product count accuracy", required=False,
              positional_legacy=False)
    add_out(e, "report folder: report.json, report.md, grid.png (default: DET/eval-<the data folder or file name, "
               "without .json>; beside DET "
               "when it is an exported file)")
    e.add_argument("--label-map", metavar="CSV", help="CSV 'annotation,model_label' when the names differ")
    _add_box_settings(e)
    add_quiet(e)
    e.set_defaults(func=cmd_detect_evaluate)

    x = dsub.add_parser("export", help="export the detector to ONNX (runs under ONNX Runtime)")
    _add_detector(x, positional=True)
    add_out(x, "ONNX file (default: DET/detector.onnx)")
    x.set_defaults(func=cmd_detect_export)

    pv = dsub.add_parser("preview", help="save a grid of synthetic training composites with their boxes")
    add_data(pv, "catalogue whose product photos become composites (default: the grocery dataset)")
    add_out(pv, "PNG to write (default: composites.png)", default="composites.png")
    pv.add_argument("-n", type=positive_int, default=8, help="composites in the grid (default: %(default)s)")
    pv.add_argument("--seed", type=non_negative_int, default=0, help="seed (default: %(default)s)")
    pv.set_defaults(func=cmd_detect_preview)


def _check_settings(ns: argparse.Namespace) -> None:
    for name in ("min_score", "min_confidence"):
        if getattr(ns, name) is not None and not 0 <= getattr(ns, name) <= 1:
            raise UsageError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if ns.max_boxes is not None and ns.max_boxes < 1:
        raise UsageError("--max-boxes must be >= 1")
    if ns.min_confidence is not None and (not ns.model or getattr(ns, "index", None)):
        raise UsageError("--min-confidence is the classifier's bar: it needs -m/--model" + (
            ", and with --index the index names the boxes (--min-similarity)" if getattr(ns, "index", None) else ""))


def _count_job(ns: argparse.Namespace, detector: str) -> Any:
    """The count as a job (skulens.deploy.batch_jobs.CountJob): what both engines load and run."""
    from ..deploy.batch_jobs import CountJob

    try:  # the job checks its settings (an ONNX detector on a GPU); a missing detector.onnx fails as it loads
        return CountJob(detector, model=ns.model, index=getattr(ns, "index", None), min_score=ns.min_score,
                        min_confidence=CountJob.min_confidence if ns.min_confidence is None else ns.min_confidence,
                        min_similarity=getattr(ns, "min_similarity", None),
                        tiles=ns.tiles, max_boxes=ns.max_boxes, batch_size=getattr(ns, "batch_size", None) or 8,
                        device=ns.device, backend=getattr(ns, "backend", "torch"),
                        precision=getattr(ns, "precision", "auto"))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _names_a_model(p: Path) -> bool:
    """Whether the first input of `count MODEL photos/` is the model: a bundle, its card.json, or a training run's
    folder (which -m refuses, naming RUN/bundle). The last two were counted as photos (a run's report plots, the
    card as an unreadable photo), with no classifier."""
    return ((p / "card.json").is_file() or (p / "bundle" / "card.json").is_file()
            or (p.name == "card.json" and p.is_file()))


def cmd_count(ns: argparse.Namespace) -> int:
    inputs = list(ns.inputs)
    if ns.model is None and inputs and _names_a_model(Path(inputs[0])):
        ns.model = inputs.pop(0)  # `skulens count MODEL photos/ --detector DET`
        if not inputs:  # the model alone: not a folder of photos (a run's plots, a bundle's kept photos)
            raise UsageError(f"no input photos after the model {ns.model}: skulens count MODEL photos/ --detector DET")
    if ns.model:
        check_model(ns.model)
    check_precision_flag(ns, backend="torch")  # --backend is the detector's; the classifier runs in PyTorch
    detector = check_detector(ns.detector, backend=ns.backend)
    _check_settings(ns)
    on_ray = check_engine(ns)
    if not on_ray and ns.batch_size is not None:  # one photo at a time in this process
        raise UsageError("--batch-size: a setting of --engine ray (the detector looks at one photo at a time)")
    if on_ray and ns.annotated:
        raise UsageError("--annotated: not with --engine ray (its photos stay on the workers)")
    parquet = engine_out(ns) if on_ray else None
    files = expand_inputs(inputs)
    if not files:
        raise UsageError("no input photos")
    refuse_out_among_inputs(ns.out, inputs, files)  # a photo list (CSV, Parquet) replaced by the counts
    if not on_ray and ns.out and Path(ns.out).suffix.lower() not in (".jsonl", ".csv"):
        # No .json: the file is JSON lines (one photo a line), which a JSON reader refuses.
        raise UsageError(f"--out {ns.out}: use a .jsonl (JSON lines) or .csv file name (Parquet: --engine ray)")
    if ns.index and not ns.model:
        raise UsageError("--index needs the model it was built with (-m/--model)")
    if ns.index and not Path(ns.index).exists():
        raise UsageError(f"--index {ns.index}: no such index")
    if not ns.index and ns.min_similarity is not None:
        raise UsageError("--min-similarity is a setting of --index (without one the classifier names the boxes: "
                         "--min-confidence)")
    if not on_ray:  # before the models load and the photos are counted
        check_out_path(ns.out, "--out")
        check_out_path(ns.annotated, "--annotated", folder=True)
    job = _count_job(ns, detector)
    if parquet is not None:
        return _count_on_ray(ns, job, files, parquet)
    det, clf, index = job.load()
    from tqdm.auto import tqdm

    from ..detect.count import CountsWriter, count_products

    try:  # its settings are checked at the call (an index of another model), before any photo is counted
        stream = count_products(det, files, model=clf, min_score=job.min_score, min_confidence=job.min_confidence,
                                tiles=job.tiles, index=index, min_similarity=job.min_similarity)  # the job's
    except ValueError as e:
        raise UsageError(f"--index {ns.index}: {e}" if index is not None else str(e)) from None
    annotated = Path(ns.annotated) if ns.annotated else None
    if annotated:
        annotated.mkdir(parents=True, exist_ok=True)
    results = []
    with CountsWriter(ns.out) if ns.out else contextlib.nullcontext() as writer:  # each photo as it is counted
        for i, (res, photo) in enumerate(tqdm(stream, total=len(files), desc="count", unit="photo",
                                              disable=ns.quiet or len(files) < 2)):
            results.append(res)
            if annotated and photo is not None:
                res.annotated(photo).save(annotated / f"{i:04d}-{Path(res.source).stem}.png")
            if res.capped:
                say(f"skulens count: {res.source}: reached the box cap ({det.config.max_detections}); "
                    "there may be more products: raise --max-boxes")
            if writer is None:
                print(json.dumps(res.to_dict()), flush=True)
            else:
                writer.write(res)
    errors = sum(r.error is not None for r in results)
    for r in results:
        if r.error:
            say(f"skulens count: {r.source}: {r.error}")
    total = sum(r.total for r in results)
    say(f"skulens count: {len(results) - errors} photo(s), {total} product(s) found, "
        f"{sum(r.unknown for r in results)} unknown" + (f", {errors} unreadable" if errors else ""))
    return EXIT_FAILED if errors == len(results) else 0


def _count_on_ray(ns: argparse.Namespace, job: Any, files: list[str], out: Path) -> int:
    from ..deploy.ray_jobs import run_job

    res = run_job(job, files, out, **engine_options(ns))
    say(f"skulens count: {res.rows - res.errors} photo(s) on Ray, {res.actors} actor(s), in {res.seconds:.1f} s "
        f"({res.images_per_s:.2f} photos/s) -> {res.out}" + (f", {res.errors} unreadable" if res.errors else ""))
    if res.errors:  # named, as the local engine names them
        say(f"skulens count: unreadable: {res.errors_line()}")
    import pyarrow.parquet as pq

    capped = sum(bool(c) for c in pq.read_table(res.out, columns=["capped"]).column("capped").to_pylist())
    if capped:  # as the local engine warns photo by photo
        cap = ns.max_boxes or "the detector's own"
        say(f"skulens count: {capped} photo(s) reached the box cap ({cap}): there may be more products (the "
            "'capped' column): raise --max-boxes")
    return EXIT_FAILED if res.errors == res.rows else 0


def _recipe(ns: argparse.Namespace) -> Any:
    from ..detect.train import DetectorRecipe

    keys = ("steps", "batch_size", "lr", "max_minutes", "eval_every", "seed", "workers")
    chosen = {k: getattr(ns, k) for k in keys if getattr(ns, k) is not None}
    if ns.several_items is not None:
        chosen["several_items"] = several_items(ns.several_items)
    try:
        return DetectorRecipe(**chosen)
    except ValueError as e:
        raise UsageError(str(e)) from None


def several_items(value: str) -> tuple[str, ...]:
    """--several-items: a file of labels (one a line, # comments) when one of that name exists, else a comma list."""
    path = Path(value)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--several-items {value}: cannot read it as UTF-8 text ({e})") from None
        labels = [line.split("#", 1)[0].strip() for line in lines]
    else:
        if os.sep in value or value.lower().endswith(".txt"):
            raise UsageError(f"--several-items {value}: no such file (or give comma-separated labels)")
        labels = [x.strip() for x in value.split(",")]
    labels = [x for x in labels if x]
    if not labels:
        raise UsageError(f"--several-items {value}: no product label in it")
    return tuple(dict.fromkeys(labels))


def cmd_detect_train(ns: argparse.Namespace) -> int:
    for b in ns.boxes:
        if not Path(b).exists():
            raise UsageError(f"--boxes {b}: no such file or folder")
    if ns.no_composites and not ns.boxes:
        raise UsageError("--no-composites needs --boxes")
    if ns.no_composites:  # settings of the composites (and of their held-out checks): ignored, unsaid
        given = [flag for flag, value in (("--data", ns.data), ("--workers", ns.workers)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: setting(s) of the composites, which --no-composites leaves out")
    if ns.init:
        check_detector(ns.init, "--init")
    check_out_path(ns.out, "--out", folder=True)  # before the composites: not after the first held-out check
    data = None if ns.no_composites else data_path(ns)
    recipe = _recipe(ns)
    if recipe.several_items:
        if data is None:
            raise UsageError("--several-items names catalogue photos to leave out of composites: not with "
                             "--no-composites")
        from ..data.catalogue import load_catalogue
        from ..detect.synth import check_several_items

        try:
            check_several_items(load_catalogue(data), recipe.several_items)
        except ValueError as e:
            raise UsageError(f"--several-items: {e}") from None
    from ..detect.annotations import load_annotations
    from ..detect.train import check_out, real_photos_per_batch, train_detector

    check_out(ns.out, init=ns.init, overwrite=ns.force)  # before the boxes load and the composites are made

    if ns.boxes and not ns.no_composites:
        try:
            real_photos_per_batch(recipe)
        except ValueError as e:
            raise UsageError(str(e)) from None

    sources = [str(Path(b).resolve()) for b in ns.boxes]
    twice = next((b for b, s in zip(ns.boxes, sources, strict=True) if sources.count(s) > 1), None)
    if twice is not None:  # its photos were trained on twice, unsaid
        raise UsageError(f"--boxes {twice}: given twice")
    boxes = [im for b in ns.boxes for im in load_annotations(b)]
    result = train_detector(data, ns.out, recipe=recipe, annotations=boxes, init=ns.init, progress=not ns.quiet,
                            device=ns.device, overwrite=ns.force)
    h = result.holdout
    say(f"skulens detect train: {result.path} (best step {result.best_step} of {result.steps}, "
        f"{result.minutes:.1f} min" + (", stopped at --max-minutes" if result.stopped == "time" else "") + ")")
    if h:
        say(f"  held-out products: AP@0.5 {h.get('ap50', 0):.3f}, AP@[.5:.95] {h.get('ap', 0):.3f}, "
            f"count exact {h.get('count_exact', 0):.1%}")
    else:
        why = "trained on real boxes alone" if ns.no_composites else "no product was held out"
        say(f"  no held-out composites ({why}): nothing was measured, and the count threshold stays at its default; "
            "score it with skulens detect evaluate on photos it did not train on")
    return 0


def _label_map(path: str | None) -> dict[str, str] | None:
    """--label-map's rows, annotation name -> model label."""
    if not path:
        return None
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's CSV starts with a BOM
            reader = csv.reader(f)  # each row with its line in the file (comments and blank lines skipped)
            rows = [(reader.line_num, r) for r in reader if r and not r[0].startswith("#")]
    except OSError as e:
        raise UsageError(f"--label-map {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        from ..data.encoding import not_utf8

        raise UsageError(f"--label-map {path}: {not_utf8(path)}") from None
    except csv.Error as e:
        raise UsageError(f"--label-map {path}: not a CSV file ({e})") from None
    if rows and [c.strip().lower() for c in rows[0][1]] == ["annotation", "model_label"]:
        rows = rows[1:]  # the help's own header, written as a first row: no mapping of a name "annotation"
    mapping: dict[str, str] = {}
    where: dict[str, int] = {}
    for line, r in rows:
        if len(r) != 2:
            raise UsageError(f"--label-map {path}: line {line}: expected 'annotation,model_label'")
        name = r[0].strip()
        if name in mapping and mapping[name] != r[1].strip():  # the last row won, unsaid
            raise UsageError(f"--label-map {path}: line {line}: {name!r} is mapped on line {where[name]} already")
        mapping[name], where[name] = r[1].strip(), line
    return mapping


def _warn_unmatched(path: str, mapping: dict[str, str], names: set[str], classes: Sequence[str]) -> None:
    """A label-map row whose annotation name is in no photo, or whose label no model class: a typo, said."""
    known = set(classes)
    for ann, label in mapping.items():
        if ann not in names:
            say(f"skulens detect evaluate: --label-map {path}: {ann!r} names no box of --data (a typo?)")
        if label not in known:
            say(f"skulens detect evaluate: --label-map {path}: {label!r} is not a product of the model (a typo?); "
                "its boxes count as another product")


def cmd_detect_evaluate(ns: argparse.Namespace) -> int:
    detector = _detector_arg(ns)
    if ns.model:
        check_model(ns.model)
    _check_settings(ns)
    if not Path(ns.data).exists():
        raise UsageError(f"--data {ns.data}: no such file or folder")
    if ns.label_map and not ns.model:
        raise UsageError("--label-map maps annotation names to a model's labels: it needs -m/--model")
    mapping = _label_map(ns.label_map)
    # the report folder (by default in the detector's folder, or beside an exported detector file), checked
    # before the photos are detected and scored
    home = Path(detector) if Path(detector).is_dir() else Path(detector).parent
    data = Path(ns.data).resolve()  # a folder by its name; an annotation file by its stem (not a folder "x.json")
    out = Path(ns.out) if ns.out else home / f"eval-{data.stem if data.is_file() else data.name}"
    check_out_path(out, "--out", folder=True)
    from ..detect.annotations import load_annotations

    images = load_annotations(ns.data)
    if not images:
        raise UsageError(f"--data {ns.data}: no annotated photos")
    job = _count_job(ns, detector)
    det, clf, _ = job.load()
    if mapping is not None and clf is not None:
        _warn_unmatched(ns.label_map, mapping, {n for im in images for n in im.labels}, clf.card.classes)
    from ..data.decode import ImageDecodeError
    from ..detect.evaluate import evaluate_counting

    try:
        report = evaluate_counting(det, images, model=clf, min_score=ns.min_score, min_confidence=job.min_confidence,
                                   tiles=ns.tiles, label_map=None if mapping is None else lambda n: mapping.get(n, n),
                                   out_dir=out, progress=not ns.quiet)
    except ImageDecodeError as exc:  # only when no photo could be read (one that cannot is left out and listed):
        say(f"skulens detect evaluate: {exc}")  # a run that failed, exit 1, as `count` with no readable photo
        return EXIT_FAILED
    sink = contextlib.nullcontext(sys.stdout)
    with sink as f:
        f.write(json.dumps({k: v for k, v in report.to_dict().items() if k != "per_image"}) + "\n")
    for s in report.skipped:
        say(f"skulens detect evaluate: {s['file']}: {s['error']} (left out of the scores; listed in the report)")
    if report.capped:
        say(f"skulens detect evaluate: {report.capped} of {report.images} photo(s) reached the box cap ("
            f"--max-boxes or the detector's own): their counts may be short (marked 'capped' in the report)")
    def num(v: float) -> str:  # no true box anywhere: no AP or recall (n/a in report.md, null in report.json)
        return "n/a" if math.isnan(v) else f"{v:.3f}"

    say(f"skulens detect evaluate: {report.images} photo(s), AP@0.5 {num(report.ap50)}, AP@[.5:.95] {num(report.ap)}, "
        f"recall {num(report.recall50)}, false boxes/photo {report.false_per_image:.2f}, count MAE {report.count_mae:.2f}, "
        f"exact {report.count_exact:.1%}; report in {out}")
    return 0


def cmd_detect_export(ns: argparse.Namespace) -> int:
    detector = _detector_arg(ns)
    check_out_path(ns.out, "--out")
    from ..detect.onnx import export_detector

    path = export_detector(detector, ns.out)
    say(f"skulens detect export: {path}")
    return 0


def cmd_detect_preview(ns: argparse.Namespace) -> int:
    if ns.n < 1:
        raise UsageError("-n must be >= 1")
    check_out_path(ns.out, "--out")
    if Path(ns.out).suffix.lower() != ".png":
        raise UsageError(f"--out {ns.out}: the grid is a PNG; name a .png file")
    data = data_path(ns)
    from ..detect.train import preview_composites

    path = preview_composites(data, ns.out, n=ns.n, seed=ns.seed)
    say(f"skulens detect preview: {path}")
    return 0
