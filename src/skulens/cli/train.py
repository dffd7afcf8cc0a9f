"""`skulens train | demo | distill | retrain | prune | suggest-labels`: making a model, and choosing what to label
for it (thin handlers over the core)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..config import PRESETS
from ..data.locate import bundle_named, resolve_data
from ._common import (
    UsageError,
    add_data,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    add_train_flags,
    after_resuming,
    check_bundle,
    check_out_path,
    check_precision_flag,
    data_path,
    device_arg,
    expand_inputs,
    is_rank_zero,
    model_path,
    positive_int,
    report_result,
    say,
    train_overrides,
)

__all__ = ["add_commands"]


def cmd_train(ns: argparse.Namespace) -> int:
    values = train_overrides(ns)
    ns.data = ns.data or values.get("data")
    values["data"] = data_path(ns)  # checked before torch is imported
    out = ns.out or _moved_run(ns, values, values.get("out"))
    if out:
        values["out"] = out
    # Under torchrun every process runs this command; rank 0 speaks for the run (skulens.cli.main quiets the
    # others' logs down to errors).
    main_rank = is_rank_zero()
    from ..config import resolve_config, warn_unused

    cfg = resolve_config(values)
    warn_unused(cfg)
    check_out_path(cfg.out, "--out", folder=True)
    _check_bundles(cfg)  # before the catalogue is decoded and the baseline fitted: minutes on a real catalogue
    from ..train.engine import fit

    result = fit(cfg, progress=not ns.quiet and main_rank, sync_bn=ns.sync_bn)
    if main_rank:
        report_result(result)
    return 0


def _check_bundles(cfg: Any) -> None:
    """--teacher and --init-from name bundles (a card.json, read without torch); --init-from's backbone is the run's."""
    for flag, value in (("--teacher", cfg.teacher), ("--init-from", cfg.init_from)):
        if not value:
            continue
        backbone = check_bundle(value, flag).get("backbone")
        if flag == "--init-from" and backbone and backbone != cfg.backbone:
            raise UsageError(f"--init-from {value}: that bundle is a {backbone}, this run trains {cfg.backbone} "
                             f"(pass --backbone {backbone})")


# `skulens demo --quick`: Lite0 at 160 px for 2 epochs. At this length a fine-tune from random head rows with
# BatchNorm on batch statistics ended below its own linear probe (grocery val 64.2 vs 69.9); starting from the
# probe with every BatchNorm statistic kept (LP-FT) scored 96.7 / 79.4 on a train hold-out / val where that
# recipe scored 87.5 / 59.1 (benchmarks/RESULTS.md). The default 10-epoch Lite2 run gained nothing from them.
QUICK_DEMO: dict[str, Any] = {"backbone": "efficientnet_lite0", "epochs": 2, "image_size": 160,
                              "batch_norm": "frozen", "head_init": "probe"}


def cmd_demo(ns: argparse.Namespace) -> int:
    data = data_path(ns)
    out = ns.out or "runs/demo"
    extra: dict[str, Any] = {}
    if ns.quick:  # a minutes-long run of the same pipeline
        extra = dict(QUICK_DEMO)
    if Path(out, "checkpoint").exists() or Path(out, "bundle").exists():
        out = f"{out}-{time.strftime('%Y%m%d-%H%M%S')}"
    say(f"skulens demo: fine-tuning the default model on {data} into {out}")
    from ..config import resolve_config
    from ..train.engine import fit

    report_result(fit(resolve_config({"data": data, "out": out, **extra}), progress=not ns.quiet))
    return 0


def _moved_run(ns: argparse.Namespace, values: dict[str, Any], cfg_out: str | None) -> str | None:
    """The --config file's `out`, or, for `--config RUN/config.yaml --resume` of a run folder moved after its kill
    (its config names where it was; its checkpoint is here), that folder: the advised command started a new run
    in the old folder."""
    config = Path(ns.config) if getattr(ns, "config", None) else None
    # a self-training run (OUT/self-training.yaml) killed in its teacher or a round keeps its checkpoint there
    checkpoints = () if config is None else (config.parent / "checkpoint", config.parent / "teacher" / "checkpoint",
                                              *config.parent.glob("round-*/checkpoint"))
    if (cfg_out and config is not None and (getattr(ns, "resume", None) or values.get("resume"))
            and any(c.is_dir() for c in checkpoints) and Path(cfg_out).resolve() != config.parent.resolve()):
        say(f"skulens: resuming the run in {config.parent} (its config names {cfg_out}, where it was)")
        return str(config.parent)
    return cfg_out


def _data_and_out(ns: argparse.Namespace, values: dict[str, Any], out_required: str = "") -> None:
    """--data and --out, each else the --config file's key; both keys leave `values` (the training options
    passed on). `out_required` names the run directory a command cannot do without."""
    cfg_data, cfg_out = values.pop("data", None), values.pop("out", None)
    ns.data, ns.out = ns.data or cfg_data, ns.out or _moved_run(ns, values, cfg_out)
    if out_required and not ns.out:
        raise UsageError(f"--out is required ({out_required}), or an 'out' key in --config")


def cmd_distill(ns: argparse.Namespace) -> int:
    values = train_overrides(ns)
    # The teacher, data and output: flags first, then the --config file's keys; none stays in `values`.
    cfg_teacher = values.pop("teacher", None)
    if ns.model and cfg_teacher and bundle_named(ns.model) != bundle_named(cfg_teacher):
        raise UsageError(f"--model {ns.model} and --teacher {cfg_teacher}: both name the model to distil; give one")
    ns.model = ns.model or cfg_teacher
    if ns.student and getattr(ns, "backbone", None) is None:  # --student wins over a --config file's backbone
        values.pop("backbone", None)  # (a run's config.yaml always names one); a --backbone flag beside it is
    _data_and_out(ns, values)         # a conflict distill refuses
    if ns.out:
        check_out_path(ns.out, "--out", folder=True)  # a file there was a traceback after the catalogue loaded
    if not ns.model:
        raise UsageError("--model TEACHER_BUNDLE is required (the model to distil; --teacher is the same)")
    teacher = model_path(ns)
    data = data_path(ns, model=teacher)
    from ..deploy.distill import distill
    from ..models.card import val_top1

    main_rank = is_rank_zero()  # under torchrun rank 0 speaks for the run (every rank printed the report)
    result = distill(teacher, student=ns.student, data=data, out=ns.out, progress=not ns.quiet and main_rank,
                     **values)
    if not main_rank:
        return 0
    report_result(result)
    info = result.card.lineage.get("teacher", {})
    student = val_top1(result.card)  # both on val: a --select-on holdout run's report.top1 is its hold-out's
    if info.get("val_top1") is not None and student is not None:
        say(f"teacher {info['backbone']}: val top-1 {100 * info['val_top1']:.1f}; student "
            f"{result.card.backbone}: {100 * student:.1f}")
    return 0


def cmd_retrain(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    overrides = train_overrides(ns)
    _data_and_out(ns, overrides, "a new run directory")
    check_out_path(ns.out, "--out", folder=True)  # a file there was a traceback after the catalogue loaded
    # an earlier run's config.yaml records these (a probe run its head_init): the retrain starts from its bundle
    overrides.pop("init_from", None)
    overrides.pop("head_init", None)
    # --data, else what the bundle was trained on (`retrain_source` says so when it is gone), never the default
    # dataset: a bundle whose data moved was retrained on the grocery catalogue's 81 classes
    data = str(resolve_data(ns.data)) if ns.data else None
    extra = [str(resolve_data(e, flag="--extra")) for e in ns.extra or ()]
    from ..train.retrain import retrain

    main_rank = is_rank_zero()
    result = retrain(bundle, out=ns.out, data=data, extra=extra, progress=not ns.quiet and main_rank, **overrides)
    if main_rank:
        report_result(result)
    return 0


def cmd_prune(ns: argparse.Namespace) -> int:
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # every rank pruned into one OUT/pruned and spoke
        raise UsageError("skulens prune runs in one process: under torchrun every process pruned into the same "
                         "OUT/pruned. Prune with `skulens prune --no-recover -m B --out OUT`, then fine-tune it "
                         "under torchrun with `-m skulens.cli train --init-from OUT/pruned` (its backbone and "
                         "--image-size)")
    bundle = model_path(ns)
    if not 0.0 < ns.amount < 1.0:
        raise UsageError(f"--amount must be in (0, 1), got {ns.amount}")
    overrides = train_overrides(ns)
    _data_and_out(ns, overrides, "a run directory: OUT/pruned, OUT/bundle")
    check_out_path(ns.out, "--out", folder=True)
    overrides.pop("head_init", None)  # a --config file's (a probe run's config.yaml): the recovery keeps the heads
    if ns.round_to is not None and ns.kind != "structured":
        raise UsageError("--round-to: channel counts of structured pruning (--kind structured); unstructured "
                         "pruning keeps every channel")
    if not ns.recover and (ns.data or ns.config or overrides):
        given = "--data" if ns.data else "--config" if ns.config else "--" + next(iter(overrides)).replace("_", "-")
        raise UsageError(f"{given}: only for the recovery fine-tune, which --no-recover skips")
    data = data_path(ns, model=bundle) if ns.recover else None
    from ..deploy.prune import prune_and_recover

    run = prune_and_recover(bundle, ns.out, kind=ns.kind, amount=ns.amount, round_to=ns.round_to,
                            recover=ns.recover, data=data, progress=not ns.quiet, **overrides)
    res = run.pruned
    say(f"{ns.kind} pruning, amount {ns.amount}: parameters {res.params_before:,} -> "
        f"{res.params_after:,}, sparsity {100 * res.sparsity:.1f}% (before recovery: {res.bundle})")
    if run.recovered is None:
        return 0
    result = run.recovered
    report_result(result)
    from ..models.card import val_top1

    before, after = res.card.lineage.get("pruned_from", {}).get("val_top1"), val_top1(result.card)
    if before is not None and after is not None:
        say(f"val top-1: {100 * before:.1f} before pruning, {100 * after:.1f} after pruning "
            f"and {result.epochs_run} recovery epoch(s){after_resuming(result)} ({res.card.pruning['kind']}, "
            f"{100 * res.sparsity:.1f}% sparsity)")
    return 0


def cmd_suggest_labels(ns: argparse.Namespace) -> int:
    import csv

    bundle = model_path(ns)
    check_precision_flag(ns)
    if ns.budget < 1:
        raise UsageError(f"--budget must be >= 1, got {ns.budget}")
    for flag, given in (("", ns.inputs), ("--labelled ", ns.labelled or ())):
        # a --labelled typo only warned, and the photo it named could be suggested again
        missing = [i for i in given if i != "-" and not Path(i).exists() and not any(ch in i for ch in "*?[")]
        if missing:
            raise UsageError(f"{flag}{missing[0]}: no such file or folder")
    photos = expand_inputs(ns.inputs)
    if not photos:
        raise UsageError("no photos given (folders, files, globs or a list)")
    out = Path(ns.out) if ns.out else (Path(ns.inputs[0]) / "to_label.csv" if len(ns.inputs) == 1 and
                                       Path(ns.inputs[0]).is_dir() else None)
    if out is None:
        raise UsageError("give -o FILE.csv (beside or above the photos: a manifest's paths stay inside its folder)")
    if out.is_dir():
        out = out / "to_label.csv"  # a folder: the manifest's usual name in it
    if out.suffix.lower() != ".csv":  # CSV written under any name, which `train --data` then could not read
        raise UsageError(f"-o {out}: the manifest is CSV: name it *.csv (or give a folder)")
    check_out_path(out, "-o")
    if out.exists() and not ns.force:
        raise UsageError(f"{out} exists and may hold labels you filled in: label those first, then pass --force "
                         "to write a new one, or -o another file")
    if bundle.startswith("pretrained:") and ns.strategy.startswith("margin"):
        raise UsageError(f"--strategy {ns.strategy} ranks by how unsure the classifier is, and {bundle} has no "
                         "classes: use --strategy kcenter or random, or a trained bundle")
    # absolute, not resolved: a photo that is a link the catalogue's owner made stays where it is named
    root = Path(os.path.abspath(out)).parent
    outside = [p for p in photos if not Path(os.path.abspath(p)).is_relative_to(root)]
    if outside:
        raise UsageError(f"{outside[0]} is not inside {root}: write the manifest beside or above the photos "
                         "(-o PHOTOS/to_label.csv), so `skulens train --data` can read it")
    labelled = expand_inputs(ns.labelled) if ns.labelled else []
    known = {Path(p).resolve() for p in labelled}
    by_file: dict[Path, str] = {}  # each photo once (twice, the manifest was refused by `train`), first name kept
    unlabelled = 0
    for p in photos:
        if (real := Path(p).resolve()) not in known:  # never suggest a photo already labelled
            unlabelled += 1
            by_file.setdefault(real, p)
    repeats = unlabelled - len(by_file)
    if repeats:
        say(f"skulens suggest-labels: {repeats} photo(s) given more than once are ranked once")
    photos = list(by_file.values())
    if not photos:
        raise UsageError("every photo given is among --labelled: nothing left to suggest")
    from ..models.predictor import load_model
    from ..train.active import suggest_labels

    model = load_model(bundle, device=ns.device, precision=ns.precision)
    picks, failed = suggest_labels(model, photos, ns.budget, strategy=ns.strategy, labelled=labelled,
                                   progress=not ns.quiet)
    for path, reason in failed:
        say(f"skipped {path}: {reason}")
    if not picks:  # no manifest of headers only, which would then stand in the way of a rerun
        say(f"skulens suggest-labels: none of the {len(photos)} photos could be read; nothing written to {out}")
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "split", "rank", "guess", "confidence", "margin"])
        for s in picks:
            rel = Path(os.path.abspath(s.path)).relative_to(root).as_posix()
            scores = [f"{s.confidence:.4f}", f"{s.margin:.4f}"] if s.guess else ["", ""]  # none from a backbone alone
            w.writerow([rel, "", "train", s.rank, s.guess, *scores])
    say(f"{out}: the {len(picks)} of {len(photos)} photos to label first ({ns.strategy}); fill in the label "
        "column (delete rows you skip), then train with --data pointing at it, or `skulens retrain --extra`")
    return 0


def add_commands(sub: Any) -> None:
    t = sub.add_parser("train", help="fine-tune a pretrained backbone on a catalogue")
    add_data(t, "catalogue: class folders, a CSV/JSONL manifest, or the grocery layout (default: the grocery "
                "dataset)")
    add_out(t, "run directory (default runs/skulens)")
    add_train_flags(t)
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named recipe, applied before --config and the flags: best = a full fine-tune at the backbone's "
                        "native resolution (Lite2: 260 px), in about 2.2x the default's time (on grocery: ahead on two "
                        "hold-outs of train, not on val; see the README); default = the defaults")
    t.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="under torchrun: BatchNorm statistics over the global batch, as one process would compute "
                        "them (default: on; --no-sync-bn: each process's own shard, less communication)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("demo", help="fine-tune and evaluate the default model on the grocery dataset")
    add_data(d, "dataset path (default: $SKULENS_DATA or ../shared/datasets/grocery-store)")
    add_out(d, "run directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="a few-minute run: Lite0 at 160px, 2 epochs, "
                   "starting from the linear probe with BatchNorm statistics kept")
    add_quiet(d)
    d.set_defaults(func=cmd_demo)

    ds = sub.add_parser("distill", help="train a small student on a teacher bundle's soft targets (+ labels)")
    add_model(ds, "teacher bundle (same as --teacher)", required=False, positional_legacy=False)
    ds.add_argument("--student", help="student backbone (= --backbone; default efficientnet_lite0)")
    add_data(ds, "catalogue (default: the teacher's recorded dataset, else the grocery dataset)")
    add_out(ds, "run directory (default runs/skulens)")
    # includes --teacher, --distill-temperature, --distill-alpha; the help says what a distillation runs
    add_train_flags(ds, {"backbone": "efficientnet_lite0, the student", "val_fraction": "the teacher's",
                         "seed": "the teacher's"})
    ds.set_defaults(func=cmd_distill)

    rt = sub.add_parser("retrain", help="fine-tune again from a bundle, folding in enrolled and newly labelled photos")
    add_model(rt, "the bundle to start from")
    add_out(rt, "new run directory (or the --config file's 'out')")
    add_data(rt, "the original catalogue (default: the one in the bundle's card)")
    rt.add_argument("--extra", action="append", help="extra labelled catalogue (repeatable), e.g. the review "
                    "queue; recorded in the new bundle, so its next retrain reads it again")
    from ..config import config_fields

    # a retrain runs its bundle's recorded settings (the help showed TrainConfig's: 224 px, Lite2, 10 epochs),
    # less those train/retrain.py drops from them (TrainConfig's defaults apply there); it starts from its bundle
    own = ("init_from", "weights", "head_init")
    add_train_flags(rt, {name: "the bundle's run's" for name, *_ in config_fields()
                         if name not in ("resume", "teacher", "unlabeled", "baseline", "pseudo_rounds",
                                         "pseudo_precision")}
                    | {"baseline": False}, omit=own)
    rt.set_defaults(func=cmd_retrain)

    pr = sub.add_parser("prune", help="prune a bundle (structured channels or unstructured L1), fine-tune")
    add_model(pr, "the bundle to prune")
    add_out(pr, "run directory: OUT/pruned (before recovery), OUT/bundle (or the --config file's 'out')")
    add_data(pr, "catalogue for the recovery fine-tune (default: the bundle's recorded dataset)")
    pr.add_argument("--amount", type=float, default=0.3,
                    help="share of channels (structured) or of weights (unstructured) to remove (default: 0.3)")
    pr.add_argument("--kind", choices=("structured", "unstructured"), default="structured",
                    help="structured: remove channels (faster); unstructured: zero weights (smaller when compressed) "
                         "(default: %(default)s)")
    pr.add_argument("--round-to", type=positive_int, default=None, help="structured: channel counts multiples of N")
    pr.add_argument("--recover", action=argparse.BooleanOptionalAction, default=True,
                    help="recovery fine-tune in the engine (defaults: 3 epochs, freeze full, no baseline)")
    from ..config import PRUNE_RECOVERY

    add_train_flags(pr, {**PRUNE_RECOVERY, "backbone": "the bundle's (kept)", "image_size": "the bundle's (kept)",
                         "val_fraction": "the bundle's run's", "seed": "the bundle's run's"}, omit=own)
    pr.set_defaults(func=cmd_prune)

    sl = sub.add_parser("suggest-labels", help="rank unlabelled photos by how much a label would teach the model "
                                               "(unsure and unlike the labelled ones); write a manifest to fill in")
    sl.add_argument("inputs", nargs="+", help="unlabelled photos: folders, files or globs")
    add_model(sl, "the model whose uncertainty ranks the photos", positional_legacy=False)
    sl.add_argument("--budget", type=positive_int, required=True, help="how many photos to suggest")
    sl.add_argument("--strategy", choices=("margin-kcenter", "margin", "kcenter", "random"), default="margin-kcenter",
                    help="margin-kcenter (default): the least certain, spread over the embedding space; margin: "
                         "least certain only; kcenter: most diverse only; random")
    sl.add_argument("--labelled", nargs="+", action="extend",
                    help="photos already labelled (the diversity step keeps away from them)")
    add_out(sl, "manifest CSV to write (default: PHOTOS/to_label.csv); path,label,split plus the model's guess")
    sl.add_argument("--force", action="store_true", help="replace an existing manifest (it may hold filled-in labels)")
    sl.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_precision(sl)
    add_quiet(sl)
    sl.set_defaults(func=cmd_suggest_labels)
