"""`skulens evaluate | explain | robustness`: how good a model is, and why (thin handlers over the core)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..models.options import MODEL_BACKENDS
from ._common import (
    UsageError,
    add_data,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    check_out_path,
    check_precision_flag,
    csv_list,
    data_path,
    device_arg,
    model_path,
    positive_int,
    refuse_out_in_catalogue,
    say,
)

__all__ = ["add_commands"]

# Kept here (not imported from evaluate.robustness) so that `--help` imports no torch; a test checks they agree.
CORRUPTION_NAMES = ("gaussian_noise", "gaussian_blur", "jpeg", "brightness", "rotation", "occlusion")
ATTACK_NAMES = ("fgsm", "pgd")


def cmd_evaluate(ns: argparse.Namespace) -> int:
    check_precision_flag(ns)
    bundle = model_path(ns, backend=ns.backend)
    data = data_path(ns, model=bundle)  # --data, else the dataset recorded in the card
    check_out_path(ns.out, "--out", folder=True)
    from ..evaluate.evaluator import evaluate_with_baseline  # it refuses an --out inside a folder catalogue
    from ..evaluate.report import format_summary
    from ..models.predictor import load_model

    model = load_model(bundle, device=ns.device, backend=ns.backend, precision=ns.precision)
    report, base = evaluate_with_baseline(model, data, split=ns.split, out=ns.out, baseline=ns.baseline,
                                          progress=not ns.quiet)
    say(format_summary(report, base))  # the baseline beside the model's, as `skulens train` shows it
    say(f"report: {Path(ns.out) / 'report.md'}")
    return 0


def cmd_explain(ns: argparse.Namespace) -> int:
    inputs = list(ns.inputs)
    if ns.model is None and len(inputs) == 2:  # old spelling: `explain BUNDLE photo.jpg`
        ns.legacy_model = inputs.pop(0)
    bundle = model_path(ns)
    if len(inputs) != 1:
        raise UsageError("give one photo to explain")
    image = inputs[0]
    if bundle and Path(bundle).suffix.lower() in (".onnx", ".tflite"):  # its error named a --backend explain lacks
        raise UsageError(f"--model {bundle}: an exported file; explain takes gradients through the PyTorch weights: "
                         "give the bundle folder it was exported from")
    check_precision_flag(ns)
    check_out_path(ns.out, "--out")
    if Path(ns.out).exists() and Path(image).exists() and Path(ns.out).samefile(image):
        raise UsageError(f"--out {ns.out}: that is the photo to explain; name another file for the overlay")
    from PIL import Image

    if Path(ns.out).suffix.lower() not in Image.registered_extensions():  # PIL names the format by the suffix
        raise UsageError(f"--out {ns.out}: name an image file (.png, .jpg, ...)")
    from ..evaluate.explain import explain, overlay
    from ..models.predictor import load_model

    model = load_model(bundle, device=ns.device, precision=ns.precision)
    if ns.target is not None and ns.target not in model.card.classes:
        raise UsageError(f"--target {ns.target!r}: not a class of this model (it knows {len(model.card.classes)}, "
                         f"e.g. {', '.join(model.card.classes[:3])})")
    exp = explain(model, image, target=ns.target)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(exp).save(out)
    print(json.dumps({"image": image, "label": exp.label, "confidence": round(exp.confidence, 6),
                      "overlay": str(out)}))
    return 0


def cmd_robustness(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    data = data_path(ns, model=bundle)
    corruptions = list(CORRUPTION_NAMES) if ns.corruptions == "all" else (
        [] if ns.corruptions == "none" else csv_list(ns.corruptions, flag="--corruptions", allowed=CORRUPTION_NAMES))
    attacks = csv_list(ns.attacks, flag="--attacks", allowed=ATTACK_NAMES)
    eps = csv_list(ns.eps, float, flag="--eps")
    severities = csv_list(ns.severities, int, flag="--severities")
    if any(not 0 < e < math.inf for e in eps):  # also NaN
        raise UsageError(f"--eps: budgets must be finite and > 0 pixel levels, got {ns.eps}")
    if any(not 1 <= s <= 5 for s in severities):
        raise UsageError(f"--severities: each in 1..5, got {ns.severities}")
    if attacks and not eps:
        raise UsageError("--eps: no budget given for the attacks (e.g. --eps 1,2,4), or --attacks '' for none")
    if corruptions and not severities:
        raise UsageError("--severities: none given for the corruptions (e.g. --severities 1,3,5), or --corruptions "
                         "none")
    if ns.pgd_steps is not None and "pgd" not in attacks:  # recorded as if used
        raise UsageError("--pgd-steps: a setting of the PGD attack, which --attacks leaves out")
    ns.pgd_steps = ns.pgd_steps or 10
    if not attacks and not corruptions:  # an empty report (and a plot warning), exit 0
        raise UsageError("nothing to measure beside clean accuracy: give --attacks with --eps, or --corruptions "
                         "(`skulens evaluate` scores clean photos)")
    check_out_path(ns.out, "--out", folder=True)
    refuse_out_in_catalogue(ns.out, data)
    from ..evaluate.robustness import robustness_bundle, to_markdown, write_robustness

    report = robustness_bundle(bundle, data, split=ns.split, limit=ns.limit, device=ns.device,
                               progress=not ns.quiet, eps=eps, attacks=attacks,
                               pgd_steps=ns.pgd_steps, corruptions=corruptions,
                               severities=severities, batch_size=ns.batch_size, seed=ns.seed)
    title = f"Robustness of {bundle} ({ns.split})"
    out = write_robustness(report, ns.out, title=title)
    print(to_markdown(report, title))
    say(f"report: {out / 'robustness.json'}, {out / 'robustness.md'}, {out / 'robustness.png'}")
    return 0


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def add_commands(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="evaluate a bundle on a catalogue split; write report.json/report.md")
    add_model(e)
    add_data(e)
    e.add_argument("--split", default="val", help="catalogue split to evaluate (default: val)")
    add_out(e, "report directory", required=True)
    e.add_argument("--baseline", action="store_true", help="also evaluate the linear probe on the pretrained backbone")
    _device(e)
    add_precision(e)
    e.add_argument("--backend", choices=MODEL_BACKENDS, default="torch",
                   help="onnx: the bundle's model.onnx (ONNX Runtime); onnx-int8: its model.int8.onnx; tflite: its "
                        "model.tflite (LiteRT); tflite-int8: its model.int8.tflite (default: %(default)s)")
    add_quiet(e)
    e.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("explain", help="Grad-CAM heatmap of a prediction, blended over the photo")
    add_model(ex, positional_legacy=False)
    ex.add_argument("inputs", nargs="+", metavar="PHOTO", help="the photo to explain (one)")
    ex.usage = ("skulens explain [-h] -m MODEL [-o OUT] [--target TARGET] [--device DEVICE] "
                "[--precision {auto,bf16,fp16,off}] PHOTO")
    add_out(ex, "overlay PNG to write (default: explanation.png)", default="explanation.png", legacy_output=True)
    ex.add_argument("--target", help="class to explain (default: the predicted one)")
    _device(ex)
    add_precision(ex)
    ex.set_defaults(func=cmd_explain)

    r = sub.add_parser("robustness", help="accuracy under FGSM/PGD attacks and common corruptions")
    add_model(r)
    add_data(r)
    r.add_argument("--split", default="val", help="catalogue split (default: val)")
    add_out(r, "folder for robustness.json/.md/.png", required=True)
    r.add_argument("--limit", type=positive_int, help="only N images of the split (seeded sample)")
    r.add_argument("--eps", default="0.5,1,2,4,8",
                   help="L-inf budgets in pixel levels (x/255) (default: %(default)s)")
    r.add_argument("--attacks", default="fgsm,pgd",
                   help="comma list of " + ", ".join(ATTACK_NAMES) + " (default: %(default)s)")
    r.add_argument("--pgd-steps", type=positive_int, help="PGD iterations (default: 10)")
    r.add_argument("--corruptions", default="all",
                   help="all, none, or a comma list of " + ",".join(CORRUPTION_NAMES) + " (default: %(default)s)")
    r.add_argument("--severities", default="1,2,3,4,5",
                   help="corruption severities, comma list of 1..5 (default: %(default)s)")
    r.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    r.add_argument("--seed", type=int, default=0,
                   help="seed of the sample and the attacks' noise (default: %(default)s)")
    _device(r)
    add_quiet(r)
    r.set_defaults(func=cmd_robustness)
