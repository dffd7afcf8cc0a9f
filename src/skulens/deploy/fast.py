"""`skulens export --preset fast`: the fastest accurate CPU model from any bundle, in one command.

Four steps, each an existing piece of skulens:

1. **distil** the bundle (the teacher) into an EfficientNet-Lite0 student (`deploy.distill`); a bundle that
   already is a Lite0 is used as it is;
2. **export** the student to ONNX (`deploy.onnx`, the card embedded);
3. **quantize** it to int8 with ONNX Runtime (`deploy.quantize`: static QDQ, per-channel weights, activation
   ranges at the 99.99th percentile of 256 train photos: on grocery it kept val top-1 at the fp32 student's where
   plain min/max lost a point, and it agreed with fp32 more closely on held-back train photos too). Which
   convolutions stay float is chosen by measurement: a few candidate sets (none,
   the stem, the stem and the last 1x1 conv, those and every depthwise conv) are each quantized, scored
   on the check split and timed; the fastest one within `tolerance` points of the student's own fp32
   top-1 wins (else the most accurate);
4. **check** the result against the teacher's fp32 top-1 on the same photos: `FastResult.passed` says
   whether the int8 student is at most `max_drop` points below it.

The same command on the same OUT takes an earlier run up again: a distillation that finished (its run in
OUT/distill-run, from the same teacher into the same student) is reused, one that was stopped is resumed from
its last checkpoint. The int8 candidates are scored on the same photos as the final check, so the check
carries that choice among four (see `--check-split`).

The output folder is a bundle (the student's weights and card) holding `model.onnx` and `model.int8.onnx`
(run it with `--backend onnx-int8`) and `fast.json` / `fast.md` with every measurement.
"""

from __future__ import annotations

import filecmp
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..models.text import TEXT_ENCODER_DIR, bundle_text_model

__all__ = ["FastCandidate", "FastResult", "earlier_run", "float_node_sets", "make_fast", "to_markdown"]

REPORT = "fast.json"


@dataclass(frozen=True)
class FastCandidate:
    """One int8 variant: which convolutions stayed float, its top-1 on the check photos and its speed."""

    name: str
    float_nodes: tuple[str, ...]  # convolutions kept float (the heads and post-processing always are)
    top1: float
    images_per_s: float  # model only (preprocessed batches), ONNX Runtime, this machine's threads
    size_mb: float


@dataclass(frozen=True)
class FastResult:
    out: Path  # the student bundle folder, with model.onnx and model.int8.onnx
    teacher: str
    distilled: bool  # False when the given bundle already was the student backbone
    check_split: str
    n_check: int
    teacher_top1: float  # PyTorch fp32, the given bundle
    student_top1: float  # ONNX Runtime fp32, the student
    int8_top1: float  # the chosen int8 candidate
    chosen: str
    candidates: tuple[FastCandidate, ...]
    max_drop: float  # points the int8 model may lose against the teacher
    wall_s: float

    @property
    def drop(self) -> float:
        """Points of top-1 the int8 student is below the teacher (negative: above)."""
        return 100 * (self.teacher_top1 - self.int8_top1)

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop + 1e-9

    @property
    def int8_path(self) -> Path:
        from ..models.onnx_runtime import ONNX_INT8_NAME

        return self.out / ONNX_INT8_NAME

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return {"schema": 1, **d, "drop_points": round(self.drop, 3), "passed": self.passed}


def float_node_sets(model: Any) -> list[tuple[str, list[str]]]:
    """Candidate sets of Conv nodes to keep float, cheapest first: none; the stem (the first conv, which
    sees raw pixels); the stem and the last conv (the 1x1 expansion feeding the pooling); those and every
    depthwise conv (per-channel int8 is weakest where a filter sees one channel)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs:
        return [("all int8", [])]

    def group(node: Any) -> int:
        return next((a.i for a in node.attribute if a.name == "group"), 1)

    stem, last = convs[0].name, convs[-1].name
    depthwise = [n.name for n in convs if group(n) > 1]
    sets = [("all int8", []), ("stem float", [stem]), ("stem + last conv float", [stem, last]),
            ("stem + last conv + depthwise float", list(dict.fromkeys([stem, last, *depthwise])))]
    return sets


def _top1(probs: np.ndarray, labels: Sequence[int]) -> float:
    return float(np.mean(probs.argmax(1) == np.asarray(labels))) if len(labels) else 0.0


def _throughput(path: Path, batch: np.ndarray, *, repeats: int = 3) -> float:
    from ..models.onnx_runtime import OnnxRunner

    session = OnnxRunner(path).session
    session.run(["fine"], {"image": batch})  # warm-up: thread pool, kernels, allocations
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(["fine"], {"image": batch})
        best = min(best, time.perf_counter() - t)
    return len(batch) / best


def make_fast(bundle: str | os.PathLike[str], *, out: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
              student: str | None = None, distil: bool | None = None, check_split: str = "val", check_images: int | None = None,
              calibration_images: int = 256, calibration_split: str = "train", tolerance: float = 0.5,
              max_drop: float = 1.0,
              progress: bool = True, say: Callable[[str], None] = print, **distill_overrides: Any) -> FastResult:
    """Distil, export, quantize and check; see the module docstring.

    `distil`: None (default) distils unless `bundle` already is a `student` (default Lite0); True always
    (a Lite0 teacher then teaches a Lite0 student); False never (the bundle itself is exported).
    `data`: the catalogue (default: the one the bundle was trained on); `check_split` scores the candidates
    and the check (`check_images`: a seeded sample of it); `calibration_images` train photos calibrate int8.
    `distill_overrides` are TrainConfig fields for the distillation (epochs, distill_alpha, ...).
    """
    import onnx
    import torch

    from ..data.dataset import decode_all
    from ..data.locate import recorded_dataset, resolve_data
    from ..evaluate.heldout import card_catalogue
    from ..models.bundle import load_bundle, read_card
    from ..models.onnx_runtime import ONNX_INT8_NAME, ONNX_NAME, OnnxRunner
    from ..models.predictor import load_model
    from .distill import DEFAULT_STUDENT, distill
    from .onnx import export_onnx
    from .quantize import calibration_inputs, calibration_sample, quantize_onnx

    t0 = time.perf_counter()
    bundle, out_dir = Path(bundle), Path(out)
    student = student or DEFAULT_STUDENT
    data = resolve_data(data, recorded=recorded_dataset(bundle))
    teacher_card = read_card(bundle)
    distilled = teacher_card.backbone != student if distil is None else distil
    earlier = earlier_run(out_dir, bundle, student, distilled=distilled)  # raises if OUT holds something else
    load_bundle(bundle)  # the teacher's weights readable and its card's, before anything is copied or trained
    if earlier == "done":
        from ..config import TrainConfig

        # the epochs a new distillation would run (the default unless given) are compared too: a finished
        # 1-epoch student was reused, unsaid, by a run that asked for none
        changed = _changed_options(out_dir / "distill-run" / "config.yaml",
                                   {"epochs": TrainConfig.epochs, **distill_overrides})
        if changed:
            raise FileExistsError(f"{out_dir} holds a finished student, reused as it is: it was distilled with "
                                  f"other {', '.join(changed)}; give a new folder for those")
    catalogue = card_catalogue(data, teacher_card)  # a generated val: the one the teacher never saw
    samples = list(catalogue.split(check_split))  # checked before the long distillation
    if not samples or not list(catalogue.split(calibration_split)):
        raise ValueError(f"{data}: no photos in split {check_split if not samples else calibration_split!r}")

    # 1. the student
    if distilled and earlier == "done":
        source = out_dir / "distill-run" / "bundle"
        say(f"[1/4] reusing the student distilled from {bundle} earlier: {source}")
    elif distilled:
        (out_dir / "distill-run").mkdir(parents=True, exist_ok=True)
        from ..models.bundle import atomic_write_text

        atomic_write_text(out_dir / "distill-run" / TEACHER_FILE, json.dumps(teacher_fingerprint(bundle)))
        say(f"[1/4] {'resuming the stopped distillation' if earlier == 'stopped' else 'distilling'} of {bundle} "
            f"({teacher_card.backbone}) into {student} (the longest step)")
        again = (f"skulens export --model {shlex.quote(str(bundle))} --preset fast --out {shlex.quote(str(out_dir))} "
                 "(with the options it was started with: it resumes the stopped distillation, then exports)")
        run = distill(bundle, student=student, data=data, out=str(out_dir / "distill-run"), progress=progress,
                      resume_advice=again, **({"resume": True} if earlier == "stopped" else {}), **distill_overrides)
        source = Path(run.bundle)
    else:
        say(f"[1/4] {bundle} ({teacher_card.backbone}) is exported as it is: no distillation")
        source = bundle
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():  # the student bundle (weights, card, side files) becomes the output folder
        if f.is_file() and not f.name.endswith((".onnx", ".tflite")):
            shutil.copy2(f, out_dir / f.name)
    encoder = bundle_text_model(source)  # the fine-tuned text encoder its text heads read (where a cut-short
    if encoder is not None:              # text-tune swap left it, too), as text_encoder/
        shutil.copytree(encoder, out_dir / TEXT_ENCODER_DIR, dirs_exist_ok=True)

    # 2. ONNX fp32
    say("[2/4] exporting the student to ONNX")
    fp32 = export_onnx(out_dir, out_dir / ONNX_NAME)

    # the check photos, decoded at each model's own size; the teacher's fp32 top-1 on them
    if check_images and check_images < len(samples):
        import random

        random.Random(0).shuffle(samples)
        samples = samples[:check_images]
    card = read_card(out_dir)
    index = {c: i for i, c in enumerate(card.classes)}
    samples = [s for s in samples if s.label in index]
    if not samples:
        raise ValueError(f"{data}: no {check_split} photo has a label the model knows")
    decoded = decode_all([s.path for s in samples], card.resize_to, desc=f"decode {check_split}", progress=progress)
    labels = [index[samples[i].label] for i in decoded.kept]
    teacher = load_model(bundle, device="cpu", precision="off")
    t_images = decoded.images if teacher.card.resize_to == card.resize_to else decode_all(
        [samples[i].path for i in decoded.kept], teacher.card.resize_to, desc="decode for the teacher",
        progress=progress).images
    if len(t_images) != len(labels):
        raise ValueError("a check photo decoded at the student's size but not at the teacher's")
    t_probs = teacher.run(t_images).fine
    teacher_top1 = float(np.mean([teacher.classes[int(p)] == card.classes[y]
                                  for p, y in zip(t_probs.argmax(1), labels, strict=True)]))
    del teacher
    student_model = load_model(out_dir, backend="onnx")
    student_top1 = _top1(student_model.run(decoded.images).fine, labels)
    say(f"      {check_split} top-1 on {len(labels)} photos: teacher fp32 {100 * teacher_top1:.1f}, "
        f"student fp32 {100 * student_top1:.1f}")

    # 3. int8 candidates, scored and timed
    say("[3/4] quantizing to int8: which convolutions stay float is measured")
    photos = calibration_sample(data, split=calibration_split, images=calibration_images, card=teacher_card)
    calib, transform = calibration_inputs(photos, card, progress=progress)
    batch = torch.stack([transform(im) for im in decoded.images[:32]]).numpy().astype(np.float32)
    cands: list[FastCandidate] = []
    work = out_dir / "candidates"
    work.mkdir(exist_ok=True)
    try:
        for i, (name, nodes) in enumerate(float_node_sets(onnx.load(str(fp32)))):
            path = quantize_onnx(fp32, work / f"int8-{i}.onnx", calib, transform, keep_float=nodes, method="percentile",
                                 progress=progress)
            probs = OnnxRunner(path)(decoded.images, transform).fine
            cand = FastCandidate(name, tuple(nodes), _top1(probs, labels), _throughput(path, batch),
                                 path.stat().st_size / 1e6)
            cands.append(cand)
            say(f"      {name}: top-1 {100 * cand.top1:.1f}, {cand.images_per_s:.0f} images/s (model only), "
                f"{cand.size_mb:.1f} MB")
        ok = [c for c in cands if 100 * (student_top1 - c.top1) <= tolerance + 1e-9]
        chosen = max(ok, key=lambda c: c.images_per_s) if ok else max(cands, key=lambda c: (c.top1, c.images_per_s))
        shutil.copy2(work / f"int8-{cands.index(chosen)}.onnx", out_dir / ONNX_INT8_NAME)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # 4. the check
    result = FastResult(out=out_dir, teacher=str(bundle), distilled=distilled, check_split=check_split,
                        n_check=len(labels), teacher_top1=teacher_top1, student_top1=student_top1,
                        int8_top1=chosen.top1, chosen=chosen.name, candidates=tuple(cands), max_drop=max_drop,
                        wall_s=time.perf_counter() - t0)
    (out_dir / REPORT).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    (out_dir / "fast.md").write_text(to_markdown(result), encoding="utf-8")
    say(f"[4/4] check: int8 student {100 * result.int8_top1:.1f} vs teacher fp32 {100 * teacher_top1:.1f} "
        f"({result.drop:+.1f} points below; allowed {max_drop:g}): {'passed' if result.passed else 'FAILED'}")
    return result


def _changed_options(config: Path, overrides: dict[str, Any]) -> list[str]:
    """The distillation options in `overrides` that differ from the ones the finished run recorded."""
    import yaml

    from ..config import config_to_dict, resolve_config

    recorded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    before, after = config_to_dict(resolve_config(recorded)), config_to_dict(resolve_config({**recorded, **overrides}))
    return sorted(k for k in overrides if before.get(k) != after.get(k))


TEACHER_FILE = "teacher.json"  # in OUT/distill-run: which teacher, weights and classes, the student came from


def teacher_fingerprint(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """The teacher's weights (SHA-256) and classes: a retrain or an enrolment changes one of them."""
    import hashlib

    from ..models.bundle import read_card

    digest = hashlib.sha256()
    with open(Path(bundle) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"weights_sha256": digest.hexdigest(), "classes": list(read_card(bundle).classes)}


def _copy_of(out_dir: Path, teacher: str | os.PathLike[str]) -> bool:
    """Whether OUT holds this command's copy of `teacher` (same weights, only the files it writes there)."""
    weights = out_dir / "model.safetensors"
    if not weights.is_file() or not (Path(teacher) / "model.safetensors").is_file():
        return False
    ours = {"card.json", "model.safetensors", "model.onnx", "model.int8.onnx", REPORT, "fast.md"}
    if any(p.name not in ours and not p.name.endswith(".tmp") for p in out_dir.iterdir()):
        return False
    return filecmp.cmp(weights, Path(teacher) / "model.safetensors", shallow=False)  # size first, then in blocks


def earlier_run(out_dir: Path, teacher: str | os.PathLike[str], student: str, *, distilled: bool = True
                ) -> str | None:
    """What OUT holds from an earlier run of `make_fast`: None (nothing: OUT is missing or empty), "done" (a
    finished distillation from `teacher` into `student`), "stopped" (one that has a checkpoint to resume).
    Anything else in OUT (a run from another teacher or into another student, or other files) is an error, and
    so is OUT being the teacher's own folder, or holding it, or lying inside it (the student's files would
    replace the teacher's). `distilled`: whether this run distils; if not, OUT may hold its copy of the teacher."""
    out_dir = Path(out_dir)
    here, source = out_dir.resolve(), Path(teacher).resolve()
    if here == source or here.is_relative_to(source) or source.is_relative_to(here):
        raise FileExistsError(f"{out_dir} is {'the teacher bundle' if here == source else 'where the teacher bundle is'}"
                              f" ({teacher}): give a new folder (the fast model's files would replace the "
                              "teacher's)")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    run = out_dir / "distill-run"
    config = run / "config.yaml"
    if not config.is_file():
        if [p.name for p in out_dir.iterdir()] == ["distill-run"] and [p.name for p in run.iterdir()] == [TEACHER_FILE]:
            return None  # stopped before the distillation wrote anything
        if not distilled and not run.exists() and _copy_of(out_dir, teacher):
            return None  # the teacher already was the student (no distillation): its copy is made again
        raise FileExistsError(f"{out_dir} exists and is not empty: give a new folder")
    import yaml

    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    made_by = Path(str(cfg.get("teacher", ""))).resolve()
    if made_by != Path(teacher).resolve() or cfg.get("backbone") != student:
        raise FileExistsError(f"{out_dir} holds a distillation from {cfg.get('teacher')} into {cfg.get('backbone')}, "
                              f"not from {teacher} into {student}: give a new folder")
    recorded = run / TEACHER_FILE
    same = recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8")) == teacher_fingerprint(teacher)
    if not same:  # retrained or enrolled into since: the student would lack its new weights or classes
        raise FileExistsError(f"{out_dir} holds a student of an earlier version of {teacher} (its weights or "
                              "classes changed since): give a new folder")
    from ..train.checkpoint import run_finished

    # a best epoch's bundle is saved before that epoch's checkpoint: a kill between the two left a first-epoch,
    # uncalibrated student that was reused as the finished one
    return "done" if run_finished(run) else "stopped"


def to_markdown(r: FastResult) -> str:
    lines = [(f"`skulens export --preset fast`: {r.teacher} -> {r.out} "
              f"({'distilled' if r.distilled else 'no distillation: already the student backbone'}), "
              f"{r.wall_s / 60:.1f} min."), "",
             (f"Top-1 on {r.n_check} {r.check_split} photos: teacher fp32 (PyTorch) {100 * r.teacher_top1:.1f}, "
              f"student fp32 (ONNX Runtime) {100 * r.student_top1:.1f}, int8 student {100 * r.int8_top1:.1f}."), "",
             "| int8 candidate | convs kept float | top-1 | images/s (model only) | MB | chosen |",
             "|---|---|---|---|---|---|"]
    for c in r.candidates:
        lines.append(f"| {c.name} | {len(c.float_nodes)} | {100 * c.top1:.1f} | {c.images_per_s:.0f} | "
                     f"{c.size_mb:.1f} | {'yes' if c.name == r.chosen else ''} |")
    lines += ["", (f"Check: {r.drop:+.1f} points below the teacher (allowed {r.max_drop:g}): "
                   f"{'passed' if r.passed else 'FAILED'}."), ""]
    return "\n".join(lines)
