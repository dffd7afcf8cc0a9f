"""`skulens distill | prune | bench | robustness`: the deployment side of the CLI (no torch at import)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_deploy_commands"]

# Kept here (not imported from the modules) so that `--help` imports no torch.
DEFAULT_RUNTIMES = ("baseline", "torch-fp32", "torch-bf16", "torch-dynamic-int8", "onnx-fp32", "onnx-int8")
CORRUPTION_NAMES = ("gaussian_noise", "gaussian_blur", "jpeg", "brightness", "rotation", "occlusion")
# A recovery fine-tune after pruning: short, and every stage trains (pruning changed the early stages
# too, and their BatchNorm statistics must be re-estimated).
RECOVERY_DEFAULTS = {"epochs": 3, "freeze": "full", "baseline": False, "warmup_epochs": 0.5}


def _print(msg: str) -> None:
    print(msg, file=sys.stderr)


def _csv(text: str, kind: type = str) -> list[Any]:
    return [kind(v.strip()) for v in text.split(",") if v.strip()]


def _data_for(bundle: str | None, arg: str | None) -> str:
    """--data, else the catalogue the bundle was trained on (if still there), else the default dataset."""
    from .cli import _resolve_data

    if arg or not bundle:
        return str(_resolve_data(arg))
    card = Path(bundle) / "card.json" if Path(bundle).is_dir() else Path(bundle)
    if card.is_file():
        path = json.loads(card.read_text(encoding="utf-8")).get("dataset", {}).get("path")
        if path and Path(path).exists():
            return str(path)
    return str(_resolve_data(None))


def cmd_distill(ns: argparse.Namespace) -> int:
    from .api import train
    from .cli import _report_result, _train_overrides

    values = _train_overrides(ns)
    values["teacher"] = ns.teacher or values.get("teacher")
    if not values["teacher"]:
        raise SystemExit("skulens distill: --teacher BUNDLE is required")
    if ns.student or "backbone" not in values:
        values["backbone"] = ns.student or "efficientnet_lite0"
    values["data"] = _data_for(values["teacher"], ns.data or values.get("data"))
    if ns.out:
        values["out"] = ns.out
    result = train(progress=not ns.quiet, **values)
    _report_result(result)
    teacher = result.card.lineage.get("teacher", {})
    if teacher.get("val_top1") is not None:
        _print(f"teacher {teacher['backbone']}: val top-1 {100 * teacher['val_top1']:.1f}; student "
               f"{result.card.backbone}: {100 * result.report.top1:.1f}")
    return 0


def cmd_prune(ns: argparse.Namespace) -> int:
    from .cli import _report_result, _train_overrides
    from .deploy.prune import prune_bundle

    out = Path(ns.out)
    if (out / "pruned").exists() or (out / "bundle").exists():
        raise SystemExit(f"skulens prune: {out} already holds a run; choose another --out")
    res = prune_bundle(ns.bundle, out / "pruned", kind=ns.kind, amount=ns.amount, round_to=ns.round_to)
    info = res.card.pruning
    _print(f"{ns.kind} pruning, amount {ns.amount}: parameters {res.params_before:,} -> "
           f"{res.params_after:,}, sparsity {100 * res.sparsity:.1f}% (before recovery: {res.bundle})")
    if not ns.recover:
        return 0
    from .api import train

    values = {**RECOVERY_DEFAULTS, **_train_overrides(ns)}
    values.update(init_from=str(res.bundle), backbone=res.card.backbone, image_size=res.card.input_size,
                  data=_data_for(ns.bundle, ns.data or values.get("data")), out=str(out))
    result = train(progress=not ns.quiet, **values)
    _report_result(result)
    before = res.card.lineage.get("pruned_from", {}).get("val_top1")
    if before is not None:
        _print(f"val top-1: {100 * before:.1f} before pruning, {100 * result.report.top1:.1f} after pruning "
               f"and {result.epochs_run} recovery epoch(s) ({info['kind']}, "
               f"{100 * res.sparsity:.1f}% sparsity)")
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from .deploy.bench import bench_bundle, to_markdown
    from .models.inference import resolve_device

    extra = {k: v for k, v in (("distilled", ns.distilled), ("pruned", ns.pruned)) if v}
    for item in ns.extra or []:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"skulens bench: --extra {item!r}: expected NAME=BUNDLE")
        extra[name] = path
    out = ns.out or f"runs/bench-deploy-{Path(ns.bundle).resolve().parent.name}"
    result = bench_bundle(ns.bundle, _data_for(ns.bundle, ns.data), out=out, split=ns.split,
                          runtimes=_csv(ns.variants), extra=extra, extra_runtimes=_csv(ns.extra_runtimes),
                          limit=ns.limit, calibration_images=ns.calibration_images, threads=ns.threads,
                          workers=ns.workers, batch_size=ns.batch_size, latency_images=ns.latency_images,
                          repeats=ns.repeats, isolate=ns.isolate, progress=not ns.quiet,
                          device=str(resolve_device(ns.device)))
    print(to_markdown(result))
    _print(f"results: {Path(out) / 'bench.json'}, {Path(out) / 'bench.md'}")
    return 0


def cmd_robustness(ns: argparse.Namespace) -> int:
    from .evaluate.robustness import CORRUPTIONS, robustness_bundle, to_markdown, write_robustness

    corruptions = list(CORRUPTIONS) if ns.corruptions == "all" else (
        [] if ns.corruptions == "none" else _csv(ns.corruptions))
    report = robustness_bundle(ns.bundle, _data_for(ns.bundle, ns.data), split=ns.split, limit=ns.limit,
                               device=ns.device, progress=not ns.quiet, eps=_csv(ns.eps, float),
                               attacks=_csv(ns.attacks), pgd_steps=ns.pgd_steps, corruptions=corruptions,
                               severities=_csv(ns.severities, int), batch_size=ns.batch_size, seed=ns.seed)
    title = f"Robustness of {ns.bundle} ({ns.split})"
    out = write_robustness(report, ns.out, title=title)
    print(to_markdown(report, title))
    _print(f"report: {out / 'robustness.json'}, {out / 'robustness.md'}, {out / 'robustness.png'}")
    return 0


def _common_train_args(p: argparse.ArgumentParser) -> None:
    from .cli import _add_config_flags

    p.add_argument("--data", help="catalogue (default: the bundle's own, else the grocery dataset)")
    p.add_argument("--config", help="YAML/TOML/JSON file of config keys (CLI flags override it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_config_flags(p)


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("distill", help="train a small student on a teacher bundle's soft targets (+ labels)")
    ds.add_argument("--student", help="student backbone (= --backbone; default efficientnet_lite0)")
    ds.add_argument("--out", help="run directory (default runs/skulens)")
    _common_train_args(ds)  # includes --teacher, --distill-temperature, --distill-alpha
    ds.set_defaults(func=cmd_distill)

    pr = sub.add_parser("prune", help="prune a bundle (structured channels or unstructured L1), fine-tune")
    pr.add_argument("bundle")
    pr.add_argument("--out", required=True, help="run directory: OUT/pruned (before recovery), OUT/bundle")
    pr.add_argument("--amount", type=float, default=0.3,
                    help="share of channels (structured) or of weights (unstructured) to remove")
    pr.add_argument("--kind", choices=("structured", "unstructured"), default="structured")
    pr.add_argument("--round-to", type=int, default=None, help="structured: channel counts multiples of N")
    pr.add_argument("--recover", action=argparse.BooleanOptionalAction, default=True,
                    help="recovery fine-tune in the engine (defaults: 3 epochs, freeze full, no baseline)")
    _common_train_args(pr)
    pr.set_defaults(func=cmd_prune)

    b = sub.add_parser("bench", help="deployment benchmark: accuracy, size, latency, throughput, memory")
    b.add_argument("bundle")
    b.add_argument("--data", help="catalogue (default: the one the bundle was trained on)")
    b.add_argument("--split", default="val")
    b.add_argument("--variants", default=",".join(DEFAULT_RUNTIMES),
                   help="runtimes for BUNDLE (baseline is required): " + ", ".join(DEFAULT_RUNTIMES))
    b.add_argument("--distilled", help="a distilled bundle to measure too")
    b.add_argument("--pruned", help="a pruned bundle to measure too")
    b.add_argument("--extra", action="append", metavar="NAME=BUNDLE", help="more bundles (repeatable)")
    b.add_argument("--extra-runtimes", default="torch-bf16,onnx-fp32", help="runtimes for the extra bundles")
    b.add_argument("--limit", type=int, help="only N images of the split (seeded sample)")
    b.add_argument("--out", help="folder for bench.json, bench.md and exported models")
    b.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    b.add_argument("--workers", type=int, help="decode threads (default: as --threads)")
    b.add_argument("--batch-size", type=int, default=32, help="batch of the fast variants (baseline: 64)")
    b.add_argument("--latency-images", type=int, default=50, help="single-image requests for p50/p99")
    b.add_argument("--repeats", type=int, default=3, help="timed passes; throughput is their median")
    b.add_argument("--calibration-images", type=int, default=256, help="train photos calibrating int8")
    b.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="one fresh process per variant (honest peak memory)")
    b.add_argument("--device", default="cpu",
                   help="cpu (default), cuda[:N] or auto: where the PyTorch variants (and ONNX, with "
                        "onnxruntime-gpu) run; decoding and preprocessing stay on the CPU")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("robustness", help="accuracy under FGSM/PGD attacks and common corruptions")
    r.add_argument("bundle")
    r.add_argument("--data", help="catalogue (default: the one the bundle was trained on)")
    r.add_argument("--split", default="val")
    r.add_argument("--out", required=True, help="folder for robustness.json/.md/.png")
    r.add_argument("--limit", type=int, help="only N images of the split (seeded sample)")
    r.add_argument("--eps", default="0.5,1,2,4,8", help="L-inf budgets in pixel levels (x/255)")
    r.add_argument("--attacks", default="fgsm,pgd")
    r.add_argument("--pgd-steps", type=int, default=10)
    r.add_argument("--corruptions", default="all",
                   help="all, none, or a comma list of " + ",".join(CORRUPTION_NAMES))
    r.add_argument("--severities", default="1,2,3,4,5")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_robustness)
