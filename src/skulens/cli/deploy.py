"""`skulens export | bench`: a model made fast and small, and measured (thin handlers over the core)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.locate import card_json
from ._common import (
    UsageError,
    add_data,
    add_model,
    add_out,
    add_quiet,
    check_bundle,
    check_detector,
    check_out_path,
    csv_list,
    data_path,
    device_arg,
    model_path,
    positive_int,
    say,
)

if TYPE_CHECKING:
    from ..models.card import ModelCard

__all__ = ["add_commands"]

# Kept here (not imported from deploy.bench) so that `--help` imports no torch; a test checks they agree.
DEFAULT_RUNTIMES = ("baseline", "torch-fp32", "torch-bf16", "torch-dynamic-int8", "onnx-fp32", "onnx-int8")
OPTIONAL_RUNTIMES = ("torch-compile", "tflite-fp32", "tflite-int8")  # on request (compiling takes a minute or
# two; LiteRT needs skulens[tflite-export])


def cmd_export(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    if ns.qat and not (ns.int8 and ns.format == "tflite" and ns.preset is None):
        raise UsageError("--qat tunes the weights for an int8 file: it needs --format tflite --int8 (and no --preset)")
    calibration_given = [flag for flag, value in (("--calibration-split", ns.calibration_split),
                                                  ("--calibration-images", ns.calibration_images)) if value is not None]
    ns.calibration_split = ns.calibration_split or "train"
    ns.calibration_images = ns.calibration_images or 256
    if ns.preset == "fast":
        return _export_fast(ns, bundle)
    check_out_path(ns.out, "--out")  # a file (--preset fast takes a folder): told before the export, not after
    _refuse_export_input(bundle, "export")
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "tflite": ".tflite"}[ns.format]
    if ns.out and Path(ns.out).suffix.lower() != suffix:
        # `predict` and `info` read a file by its suffix: a TorchScript file named .onnx was "corrupt, export it
        # again"; and any file at --out was replaced, the bundle's own model.safetensors too
        raise UsageError(f"--out {ns.out}: {ns.format} files are named *{suffix}")
    for flag, value in (("--student", ns.student), ("--epochs", ns.epochs), ("--check-split", ns.check_split),
                        ("--max-drop", ns.max_drop)):
        if value is not None:
            raise UsageError(f"{flag} belongs to --preset fast")
    if ns.int8 and ns.format == "torchscript":
        raise UsageError("--int8 needs --format onnx or tflite")
    if calibration_given and not ns.int8:
        raise UsageError(f"{calibration_given[0]} calibrates int8: it needs --int8 (or --preset fast)")
    if ns.parity_images is not None and ns.format != "tflite":
        raise UsageError("--parity-images checks a LiteRT file: it needs --format tflite")
    if ns.data and not (ns.int8 or ns.format == "tflite"):  # read for calibration and LiteRT parity only
        raise UsageError("--data gives the photos int8 calibrates on (--int8) or a LiteRT file is checked on "
                         "(--format tflite): this export reads none")
    # checked before the export starts; tflite fp32 takes its parity photos from the data when it is there
    data = data_path(ns, model=bundle, required=ns.int8) if ns.int8 or ns.format == "tflite" else None
    from ..models.bundle import bundle_folder, read_card  # torch: after the usage checks

    bundle = str(bundle_folder(bundle))  # --model may name the bundle's card.json
    if ns.out:
        # another bundle's folder (its weights beside its card): its own export would be replaced. An export
        # folder of card and files only is this command's to update (a retrained model exported again).
        beside = Path(ns.out).parent / "card.json"
        if (beside.parent / "model.safetensors").is_file() and beside.is_file() and \
                beside.resolve() != (Path(bundle) / "card.json").resolve() and \
                beside.read_bytes() != (Path(bundle) / "card.json").read_bytes():
            raise UsageError(f"--out {ns.out}: that folder holds another model's bundle ({beside}); its export "
                             "would be replaced by this model's: give another folder")
    if ns.format == "tflite":  # the --out checks above first: they came after the minute-long conversion
        return _export_tflite(ns, bundle, data)
    from ..deploy.onnx import export_onnx, export_torchscript

    if ns.int8:  # the calibration photos first: a bad split or catalogue was refused after model.onnx was replaced
        from ..deploy.quantize import calibration_sample, check_sample, quantize_onnx_with_photos

        assert data is not None
        card = read_card(bundle)
        photos = calibration_sample(data, split=ns.calibration_split, images=ns.calibration_images, card=card)
        check = check_sample(data, photos, card=card)
        if not check:  # the file would be written unchecked: a broken graph or a collapsed range would pass
            raise UsageError(f"--int8: every photo of {data} calibrates it ({len(photos)}), none is left to check "
                             "it against fp32 on: lower --calibration-images")
    if ns.out:  # after every check: a refused export leaves no folder behind
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    path = export_onnx(bundle, ns.out) if ns.format == "onnx" else export_torchscript(bundle, ns.out)
    say(f"exported {ns.format}: {path} ({path.stat().st_size / 1e6:.1f} MB); preprocessing and labels are "
        "in its metadata")
    if ns.int8:
        q = quantize_onnx_with_photos(path, photos, check_photos=check, progress=not ns.quiet)
        say(f"int8 (ONNX Runtime static, per-channel): {q} ({q.stat().st_size / 1e6:.1f} MB), checked against "
            f"fp32 on {len(check)} photos outside the calibration sample")
    return 0


def _export_fast(ns: argparse.Namespace, bundle: str) -> int:
    if ns.format != "onnx":
        raise UsageError("--preset fast makes ONNX Runtime int8 files: drop --format")
    if ns.max_drop is not None and ns.max_drop < 0:
        raise UsageError(f"--max-drop must be >= 0, got {ns.max_drop}")
    if ns.int8 or ns.parity_images is not None:
        raise UsageError("--preset fast always writes int8 and checks it itself: drop --int8 / --parity-images")
    from ..models.bundle import BundleError, bundle_folder

    try:
        folder = bundle_folder(bundle)
    except BundleError:
        folder = Path(bundle)  # an exported file: refused just below
    if not (folder / "model.safetensors").is_file():
        if (folder / "card.json").is_file():
            raise UsageError(f"--model {bundle}: the bundle has no model.safetensors (copied part-way?)")
        raise UsageError(f"--model {bundle}: --preset fast needs a bundle folder (RUN/bundle), not an exported file")
    bundle = str(folder)
    out = Path(ns.out or f"runs/fast-{Path(bundle).resolve().parent.name}")
    check_out_path(out, "--out", folder=True)
    from ..deploy.distill import DEFAULT_STUDENT
    from ..deploy.fast import earlier_run

    student = ns.student or DEFAULT_STUDENT
    if ns.epochs and (card_json(bundle) or {}).get("backbone") == student:
        raise UsageError(f"--epochs sets the distillation, and {bundle} already is a {student}: nothing is "
                         "distilled (it is exported and quantized as it is); drop --epochs")
    overrides = {"epochs": ns.epochs} if ns.epochs else {}
    try:  # before the long distillation: an --out holding something else (or another run's student) is refused
        teacher = (card_json(bundle) or {}).get("backbone")
        earlier_run(out, bundle, student, distilled=teacher != student)
        data = data_path(ns, model=bundle)
        from ..deploy.fast import make_fast

        res = make_fast(bundle, out=out, data=data, student=ns.student, check_split=ns.check_split or "val",
                        calibration_images=ns.calibration_images, calibration_split=ns.calibration_split,
                        max_drop=1.0 if ns.max_drop is None else ns.max_drop, progress=not ns.quiet, say=say,
                        **overrides)
    except FileExistsError as e:
        if not str(e).startswith(str(out)):  # not what --out holds: an error of its own, shown as it is
            raise
        raise UsageError(f"--out {e}") from None
    say(f"fast model: {res.int8_path} ({res.int8_path.stat().st_size / 1e6:.1f} MB); run it with "
        f"`skulens predict --model {res.out} --backend onnx-int8 ...`; measurements: {res.out / 'fast.md'}")
    if not res.passed:
        say(f"skulens: the int8 student is {res.drop:.1f} points below the teacher on {res.check_split}, more than "
            f"--max-drop {res.max_drop:g}: the files are written, but do not deploy them as they are")
        return 1
    return 0


def _export_tflite(ns: argparse.Namespace, bundle: str, data: str | None) -> int:
    from ..deploy.quantize import calibration_sample
    from ..deploy.tflite import export_tflite_checked, require_tflite_export
    from ..models.bundle import read_card

    require_tflite_export()  # before any photo is read
    card = read_card(bundle)  # a generated val split is the one its training run held out
    parity = calibration_sample(data, split="val", images=ns.parity_images or 64, card=card) if data else []
    calibration = (calibration_sample(data, split=ns.calibration_split, images=ns.calibration_images, card=card)
                   if ns.int8 and data else None)
    qat = _split_samples(data, ns.calibration_split, card) if ns.qat and data else None
    if ns.out:  # after the converter and the photos are found: a refused export leaves no folder behind
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    say(f"converting {bundle} with litert-torch{' and quantizing it' if ns.int8 else ''} (a minute or two)")
    res = export_tflite_checked(bundle, ns.out, parity_photos=parity, calibration_photos=calibration,
                                qat_samples=qat, progress=not ns.quiet, say=say)
    where = "val photos" if parity else "noise images (no dataset found: give --data for real photos)"
    say(f"exported tflite: {res.path} ({res.path.stat().st_size / 1e6:.1f} MB); preprocessing and labels are "
        f"in its metadata. Parity with PyTorch on {where}: {res.parity}")
    if res.int8_path is not None:
        kind = ", quantization-aware fine-tuned" if res.qat is not None else ""
        say(f"int8 (LiteRT static, per-channel{kind}): {res.int8_path} ({res.int8_path.stat().st_size / 1e6:.1f} "
            f"MB). Parity with PyTorch: {res.int8_parity}; run it with `skulens predict -m {res.int8_path} "
            "--backend tflite-int8 ...`")
    return 0


def _split_samples(data: str, split: str, card: ModelCard) -> list[Any]:
    """`split` of the catalogue as the model's training run split it (a generated val holds no training photo)."""
    from ..evaluate.heldout import card_catalogue

    return list(card_catalogue(data, card).split(split))


def _same_products(theirs: dict[str, Any] | None, ours: dict[str, Any] | None, other: str, bundle: str,
                   flag: str) -> None:
    """A row compared with the bundle's must be a model of the same products (their cards, read without torch;
    no card to compare: the benchmark's own loading says what is wrong)."""
    if theirs is None or ours is None:
        return
    if theirs.get("classes") != ours.get("classes"):
        raise UsageError(f"{flag} {other}: a model of other products than --model {bundle} "
                         f"({len(theirs.get('classes') or ())} classes against {len(ours.get('classes') or ())}): "
                         "its rows would not be comparable")


def _refuse_export_input(bundle: str, command: str) -> None:
    """An exported file given as --model to a command that reads a bundle (the loader's hint names a --backend flag
    these commands do not have)."""
    if Path(bundle).suffix.lower() in (".onnx", ".tflite"):
        raise UsageError(f"--model {bundle}: {command} reads a bundle (RUN/bundle, or its card.json), not an "
                         "exported file")


def cmd_bench(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    _refuse_export_input(bundle, "bench")  # it measures the exports it makes from the bundle
    if ns.detector:
        check_detector(ns.detector)
    if ns.fast and not (Path(ns.fast) / "model.int8.onnx").is_file():
        raise UsageError(f"--fast {ns.fast}: no model.int8.onnx there (make it with `skulens export --model BUNDLE "
                         f"--preset fast --out {ns.fast}`)")
    ours = card_json(bundle)
    if ns.fast:
        _same_products(card_json(Path(ns.fast) / "card.json"), ours, ns.fast, bundle, "--fast")
    extra = {k: v for k, v in (("distilled", ns.distilled), ("pruned", ns.pruned)) if v}
    for item in ns.extra or []:
        name, _, path = item.partition("=")
        if not path:
            raise UsageError(f"--extra {item!r}: expected NAME=BUNDLE")
        if name in extra or name in ("default", "fast"):  # each row's export goes to models/NAME: one per name
            raise UsageError(f"--extra {item!r}: the name {name!r} is taken (default, fast, --distilled, --pruned "
                             "and each --extra need names of their own)")
        extra[name] = path
    for name, path in extra.items():  # before the default rows are measured, not after
        flag = f"--{name}" if name in ("distilled", "pruned") else f"--extra {name}"
        _same_products(check_bundle(path, flag), ours, path, bundle, flag)
    known = DEFAULT_RUNTIMES + OPTIONAL_RUNTIMES
    runtimes = csv_list(ns.variants, flag="--variants", allowed=known)
    extra_runtimes = csv_list(ns.extra_runtimes or "torch-bf16,onnx-fp32", flag="--extra-runtimes", allowed=known)
    # settings of rows this run does not measure did nothing, unsaid
    int8 = any("int8" in r for r in (*runtimes, *(extra_runtimes if extra else ())))
    for flag, given, measured, why in (
            ("--detection-photos", ns.detection_photos, ns.detector, "give --detector"),
            ("--extra-runtimes", ns.extra_runtimes, extra, "give --extra, --distilled or --pruned"),
            ("--calibration-images", ns.calibration_images, int8, "no int8 variant is asked for")):
        if given is not None and not measured:
            raise UsageError(f"{flag}: a setting of rows this run does not measure ({why})")
    ns.detection_photos = ns.detection_photos or 10
    ns.calibration_images = ns.calibration_images or 256
    if "baseline" not in runtimes:  # checked here, not after minutes of exports
        raise UsageError("--variants must include baseline (the reference every other row is compared with)")
    if any(r.startswith("tflite") for r in (*runtimes, *(extra_runtimes if extra else ()))):
        from ..deploy.tflite import require_tflite_export

        require_tflite_export()  # the converter: before the ONNX exports, not after
    data = data_path(ns, model=bundle)
    from ..deploy.bench import bench_bundle, to_markdown
    from ..models.inference import resolve_device

    out = ns.out or f"runs/bench-deploy-{Path(bundle).resolve().parent.name}"
    check_out_path(out, "--out", folder=True)  # before the exports and measurements, not after them
    result = bench_bundle(bundle, data, out=out, split=ns.split, runtimes=runtimes, extra=extra,
                          extra_runtimes=extra_runtimes, fast=ns.fast, limit=ns.limit,
                          calibration_images=ns.calibration_images, threads=ns.threads, workers=ns.workers,
                          batch_size=ns.batch_size, latency_images=ns.latency_images, repeats=ns.repeats,
                          isolate=ns.isolate, progress=not ns.quiet, device=str(resolve_device(ns.device)))
    print(to_markdown(result))
    if ns.detector:
        from ..deploy.bench import bench_detection, one_megapixel_jpegs, write_detection_rows
        from ..models.bundle import read_card
        from ..models.predictor import load_model

        samples = _split_samples(data, ns.split, read_card(bundle))
        photos = one_megapixel_jpegs([str(s.path) for s in samples], ns.detection_photos)
        rows = bench_detection(ns.detector, photos, model=load_model(bundle, device="cpu"), repeats=ns.repeats,
                               threads=ns.threads)
        print(write_detection_rows(out, rows))
    say(f"results: {Path(out) / 'bench.json'}, {Path(out) / 'bench.md'}")
    return 0


def add_commands(sub: Any) -> None:
    x = sub.add_parser("export", help="export a bundle to ONNX, TorchScript or TFLite (card embedded); "
                                      "--preset fast: distil, export, quantize and check in one command")
    add_model(x)
    x.add_argument("--preset", choices=("fast",),
                   help="fast: distil the bundle into an EfficientNet-Lite0 student, export it to ONNX, quantize it "
                        "to int8 (which convs stay float chosen by measured accuracy and speed) and check it "
                        "against the bundle; --out is then a folder (default runs/fast-RUN), a bundle holding "
                        "model.int8.onnx for --backend onnx-int8. Distillation takes 20-30 min on 2 CPU cores; "
                        "the same --out again reuses a finished distillation or resumes a stopped one")
    x.add_argument("--student", help="--preset fast: the student backbone (default: efficientnet_lite0)")
    x.add_argument("--epochs", type=positive_int, help="--preset fast: distillation epochs (default: the training default)")
    x.add_argument("--check-split", help="--preset fast: split the int8 candidates and the check are scored on "
                                         "(default: val)")
    x.add_argument("--max-drop", type=float,
                   help="--preset fast: points of top-1 the int8 student may lose against the bundle (default: 1); "
                        "beyond it the command exits 1")
    x.add_argument("--format", choices=("onnx", "torchscript", "tflite"), default="onnx",
                   help="file format (default: onnx); tflite: LiteRT via litert-torch, checked against PyTorch")
    add_out(x, "file to write (default: inside the bundle)", legacy_output=True)
    x.add_argument("--int8", action="store_true", help="also write an int8-quantized NAME.int8.onnx / .int8.tflite")
    x.add_argument("--qat", action="store_true",
                   help="with --format tflite --int8: fine-tune the weights through int8 rounding first "
                        "(quantization-aware, the fp32 model as teacher, on the calibration split's photos; about "
                        "1 min per 1000 photos); the fp32 file is unchanged")
    add_data(x, "catalogue whose photos calibrate int8 and (tflite) check parity (default: the bundle's recorded "
                "dataset)", legacy=("--calibration-data",))
    x.add_argument("--calibration-split", help="--int8 / --preset fast: split the calibration photos come from "
                                               "(default: train)")
    x.add_argument("--calibration-images", type=positive_int,
                   help="--int8 / --preset fast: photos that calibrate int8 (default: 256)")
    x.add_argument("--parity-images", type=positive_int,
                   help="tflite: val photos each exported file must agree with PyTorch on (default: 64)")
    add_quiet(x)
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="deployment benchmark: accuracy, size, latency, throughput, memory")
    add_model(b)
    add_data(b, "catalogue (default: the one the bundle was trained on)")
    b.add_argument("--split", default="val", help="split measured (default: val)")
    b.add_argument("--variants", default=",".join(DEFAULT_RUNTIMES),
                   help="runtimes for the model (baseline is required; default: " + ", ".join(DEFAULT_RUNTIMES) +
                        ")" +
                        "; also " + ", ".join(OPTIONAL_RUNTIMES) + " (torch-compile: a minute or two to compile; "
                        "LiteRT: needs skulens[tflite-export])")
    b.add_argument("--distilled", help="a distilled bundle to measure too")
    b.add_argument("--pruned", help="a pruned bundle to measure too")
    b.add_argument("--fast", help="a folder made by `skulens export --preset fast`: its model.int8.onnx measured as "
                                  "it is, row 'fast (onnx-int8)', and its model.int8.tflite when there is one "
                                  "(`skulens export -m FAST --format tflite --int8 --qat`), row 'fast (tflite-int8)'")
    b.add_argument("--detector", help="add detection rows: shelf photos/s end to end at 1 megapixel (decode, detect, "
                                      "classify every box), PyTorch and, if exported, ONNX Runtime")
    b.add_argument("--detection-photos", type=positive_int, help="photos of the detection rows (default: 10)")
    b.add_argument("--extra", action="append", metavar="NAME=BUNDLE", help="more bundles (repeatable)")
    b.add_argument("--extra-runtimes", help="runtimes for the extra bundles (default: torch-bf16,onnx-fp32)")
    b.add_argument("--limit", type=positive_int, help="only N images of the split (seeded sample)")
    add_out(b, "folder for bench.json, bench.md and exported models (default: runs/bench-deploy-RUN)")
    b.add_argument("--threads", type=positive_int, help="inference threads (default: all cores)")
    b.add_argument("--workers", type=positive_int, help="decode threads (default: as --threads)")
    b.add_argument("--batch-size", type=positive_int, default=32,
                   help="batch of the fast variants (default: %(default)s; baseline: 64)")
    b.add_argument("--latency-images", type=positive_int, default=50,
                   help="single-image requests for p50/p99 (default: %(default)s)")
    b.add_argument("--repeats", type=positive_int, default=3,
                   help="timed passes; throughput is their median (default: %(default)s)")
    b.add_argument("--calibration-images", type=positive_int, help="train photos calibrating int8 (default: 256)")
    b.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="one fresh process per variant (honest peak memory; default: on)")
    b.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default), cuda[:N] or auto: where the PyTorch variants (and ONNX, with "
                        "onnxruntime-gpu) run; decoding and preprocessing stay on the CPU, and so do the "
                        "--detector rows (a laptop's shelf photos)")
    add_quiet(b)
    b.set_defaults(func=cmd_bench)

