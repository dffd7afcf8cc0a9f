"""Semi-supervised fine-tuning by self-training: `skulens train --unlabeled DIR`.

Shops have far more unlabelled photos (intake, the review queue, a new store's shelves) than labelled ones.
Self-training puts them to work through the teacher/student path skulens already has:

1. **Teacher.** A model trained on the labelled catalogue (`--teacher BUNDLE`, or trained first into
   `OUT/teacher`).
2. **Pseudo-labels.** The teacher labels each unlabelled photo twice: as served (the weak view) and under a
   strong augmentation (horizontal flip + TrivialAugment, seeded). A photo is kept when both views name
   the same product and the weak view's calibrated confidence (the bundle's temperature-scaled
   probability) reaches a threshold chosen on the selection split (val, or the hold-out of train with
   `--select-on holdout`): the lowest confidence at which the teacher's own predictions there are right
   at least `pseudo_precision` of the time (default 95 %), so the pseudo-labels are about that clean.
3. **Student.** A fresh model trained on the labelled photos plus the kept pseudo-labelled ones, the fine
   head also learning the teacher's soft targets on every batch (distillation, `distill_alpha`,
   `distill_temperature`), and the photos augmented as usual (the "noise" of Noisy Student).

The pseudo-labels are written to `OUT/pseudo_labels.csv` (path, label, confidence; under torchrun each rank
labels its share of the photos, every rank trains on all the labels (each photo's strong view is the one a single
process would draw; a confidence at the threshold may still round otherwise in another batch), and rank 0
writes them) and the card records
the threshold, its measured precision and how many photos were kept. With `--pseudo-rounds N` the student of
round K (OUT/round-K, its pseudo-labels beside it) is the teacher of round K+1, and the last one goes to OUT
(Noisy Student's iteration); the card lists every round.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config import ConfigError, TrainConfig
from ..data.catalogue import EXTRA_TRAIN, Catalogue, Sample, merge_samples
from ..models.card import SELF_TRAINING_CONFIG

if TYPE_CHECKING:
    from ..models.predictor import Model
    from .distributed import Dist
    from .engine import TrainResult

__all__ = ["PseudoLabels", "choose_pseudo_threshold", "pseudo_label", "self_train"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PseudoLabels:
    """The unlabelled photos the teacher was sure of, and how they were chosen."""

    samples: tuple[Sample, ...]
    confidences: tuple[float, ...]
    threshold: float
    precision: float | None  # of the teacher's predictions at or above the threshold on the selection split
    # (None: none reached it, so there is no precision to state)
    considered: int  # photos read
    inconsistent: int  # confident, but the strong view named another product
    unreadable: tuple[tuple[str, str], ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"threshold": round(self.threshold, 4),
                "precision_at_threshold": None if self.precision is None else round(self.precision, 4),
                "considered": self.considered, "kept": len(self.samples), "inconsistent": self.inconsistent,
                "unreadable": len(self.unreadable)}


def choose_pseudo_threshold(probs: np.ndarray, targets: np.ndarray, precision: float = 0.95,
                            grid: Sequence[float] = tuple(np.round(np.arange(0.3, 0.991, 0.01), 2))
                            ) -> tuple[float, float | None]:
    """(the lowest confidence at which predictions are right >= `precision` of the time, that precision).
    No such confidence on the grid: the grid's top and the precision there (few pseudo-labels, if any; None
    when no prediction reaches it)."""
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(targets)
    last = (float(grid[-1]), float(right[conf >= grid[-1]].mean()) if (conf >= grid[-1]).any() else None)
    for t in grid:
        kept = conf >= t
        if kept.any() and right[kept].mean() >= precision:
            return float(t), float(right[kept].mean())
    return last


def _strong_views(tensors: list[Any], seed: int, indices: Sequence[int]) -> list[Any]:
    """Each photo's strong view, drawn with a seed of its own (from `seed` and its index in the whole list,
    `indices`): the same view whichever process labels the photo and whatever photos come before it."""
    import torch
    from torchvision.transforms import v2

    strong = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.TrivialAugmentWide()])
    views = []
    with torch.random.fork_rng(devices=[]):  # v2 draws from the global generator: the caller's is left as it was
        for t, i in zip(tensors, indices, strict=True):
            torch.manual_seed(int(np.random.SeedSequence((seed % 2**64, i)).generate_state(1)[0]))
            views.append(strong(t))
    return views


def pseudo_label(model: Model, photos: Sequence[str | os.PathLike[str]], threshold: float, *,
                 precision: float | None = 0.0,
                 seed: int = 0, batch_size: int = 32, progress: bool = False, offset: int = 0) -> PseudoLabels:
    """Label `photos` with `model` where it is at least `threshold` sure and a strong view agrees.

    offset: where `photos` starts in a longer list that is labelled in shards (one per process). A photo's strong
    view is seeded by `seed` and its index in that list, so a shard draws the views the whole list would."""
    from ..data.dataset import decode_all

    decoded = decode_all([Path(p) for p in photos], model.card.resize_to, desc="unlabelled", progress=progress)
    tensors, bad = decoded.images, tuple(decoded.failed)
    paths = [Path(photos[i]).resolve() for i in decoded.kept]
    if not tensors:
        return PseudoLabels((), (), threshold, precision, 0, 0, bad)
    weak = model.run(tensors, batch_size=batch_size, progress=progress).fine
    strong = model.run(_strong_views(tensors, seed, [offset + i for i in decoded.kept]), batch_size=batch_size).fine
    guess, conf = weak.argmax(axis=1), weak.max(axis=1)
    confident = conf >= threshold
    agree = strong.argmax(axis=1) == guess
    card = model.card
    coarse = {c: card.coarse_classes[card.fine_to_coarse[i]] for i, c in enumerate(card.classes)} \
        if card.coarse_classes and card.fine_to_coarse else {}
    keep = np.flatnonzero(confident & agree)
    samples = tuple(Sample(paths[i], card.classes[int(guess[i])], coarse.get(card.classes[int(guess[i])]))
                    for i in keep)
    return PseudoLabels(samples, tuple(float(conf[i]) for i in keep), threshold, precision, len(tensors),
                        int((confident & ~agree).sum()), bad)


def _selection_probs(model: Model, cfg: TrainConfig, cat: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's calibrated probabilities on the split this run selects on (decoded as the engine decodes
    it: an unreadable photo is skipped there and here), and the true classes."""
    from ..data.catalogue import selection_split
    from ..data.splits import prepare_split

    _, samples, _ = selection_split(cat, cfg.select_on, cfg.holdout_fraction, cfg.seed)
    split = prepare_split(samples, model.card, desc=cfg.select_on, progress=False)
    return model.run(split.images).fine, split.fine.numpy()


def self_train(cfg: TrainConfig, catalogue: Catalogue, *, progress: bool = True, fit_run: Any = None) -> TrainResult:
    """Teacher (given as `cfg.teacher`, or trained into OUT/teacher), pseudo-labels, student into OUT; with
    `cfg.pseudo_rounds` > 1, each round's student (OUT/round-K) labels the photos again for the next round."""
    from ..models.inference import resolve_device
    from . import distributed
    from .checkpoint import refuse_resuming_a_finished_run

    assert cfg.unlabeled is not None and fit_run is not None
    if cfg.resume:  # before the photos are labelled again (and their CSV rewritten), not in the last round's fit
        refuse_resuming_a_finished_run(cfg.out)
    photos = _without_labelled(cfg, catalogue, _unlabelled_photos(cfg.unlabeled))
    # Under torchrun one process group for every stage (each fit joins it): each rank labels its share of the
    # photos, every rank trains its student on all the pseudo-labels, and rank 0 writes them.
    d = distributed.setup(resolve_device(cfg.device))
    try:
        # Each rank listed the folder itself and labels a slice by position: a photo added while they listed it,
        # or another mount on one node, would misalign the slices and the gathered labels.
        d.same_everywhere(f"the photos in --unlabeled {cfg.unlabeled}", _listing(photos),
                          advice="every node must list the same photos there (shared storage, none added "
                                 "while the run starts)")
        return _self_train(cfg, catalogue, photos, d, progress=progress, fit_run=fit_run)
    finally:
        d.close()


def _self_train(cfg: TrainConfig, catalogue: Catalogue, photos: list[Path], d: Dist, *, progress: bool,
                fit_run: Any) -> TrainResult:
    from ..models.bundle import read_card
    from ..models.card import val_top1
    from .checkpoint import run_finished

    out = Path(cfg.out)
    # Rank 0 writes it and every rank hears how to resume the run (and of a failure to write it, at once).
    advice = _on_every_rank(d, "recording the run's config", lambda: _record_config(cfg, out) if d.is_main else None)
    fit_run = functools.partial(fit_run, resume_advice=advice[0])
    teacher = cfg.teacher
    if teacher is None and cfg.resume and run_finished(out / "teacher"):  # --resume after a kill in a later stage
        log.info("self-training: resuming; the teacher in %s is finished", out / "teacher")
        teacher = str(out / "teacher" / "bundle")
    elif teacher is None:
        log.info("self-training: the teacher first, on the labelled photos only (%s)", out / "teacher")
        result = fit_run(_stage(cfg, out=str(out / "teacher")), catalogue=catalogue, progress=progress)
        teacher = str(result.bundle)
    rounds: list[dict[str, Any]] = []
    for k in range(1, cfg.pseudo_rounds + 1):
        last = k == cfg.pseudo_rounds
        where = out if last else out / f"round-{k}"
        if not last and cfg.resume and run_finished(where):  # a finished round is not trained again
            log.info("self-training: resuming; round %d in %s is finished", k, where)
            done = read_card(where / "bundle").metrics.get("self_training", {})
            rounds.append({**{key: v for key, v in done.items() if key != "rounds"}, "round": k})
            teacher = str(where / "bundle")
            continue
        pseudo = _pseudo_labels(cfg, catalogue, teacher, photos, d, progress=progress)
        if not pseudo.considered:
            raise ConfigError(f"--unlabeled {cfg.unlabeled}: none of its {len(photos)} photos could be read (the log "
                              "names why)")
        if not pseudo.samples:
            log.warning("self-training: round %d kept no pseudo-label (none both confident and consistent): the "
                        "student learns from the labelled photos and the teacher's soft targets only", k)
        # Rank 0 writes; should it fail, every rank stops here, not in the student's first collective.
        _on_every_rank(d, "writing the pseudo-labels",
                       functools.partial(_write_pseudo_labels, where, pseudo) if d.is_main else lambda: None)
        rounds.append({**pseudo.summary(), "round": k, "teacher": teacher,
                       "teacher_val": val_top1(read_card(teacher))})  # val's, also for a hold-out-selected one
        student_cfg = _stage(cfg, teacher=teacher, out=str(where))
        # The pseudo-labelled photos are trained on, never held out: the student selects on the teacher's hold-out.
        result = fit_run(student_cfg, catalogue=merge_samples(catalogue, _with_class_attributes(catalogue, pseudo.samples),
                                                              split=EXTRA_TRAIN),
                         progress=progress,
                         extra_metrics={"self_training": {**rounds[-1], "rounds": list(rounds)}})
        teacher = str(result.bundle)
    return result




def _record_config(cfg: TrainConfig, out: Path) -> str:
    """OUT/self-training.yaml: the config that started this self-training run (`--unlabeled` and all), which
    `skulens train --config ... --resume` resumes as a whole (a stage's own config.yaml resumes that stage alone).
    Written when the run's first stage has not started (no checkpoint or bundle in its folder): a new run, with
    or without --resume; once it has, the file is that run's and stays, --resume with another config is a
    ConfigError naming it, and a run without --resume is refused at once (the first stage would refuse the folder
    only after the photos were pseudo-labelled). How to resume the run as it was: the file's command, when there."""
    import yaml

    from ..config import recorded_config
    from .checkpoint import check_same_run, resume_command, run_started

    first = out / "teacher" if cfg.teacher is None else out / "round-1" if cfg.pseudo_rounds > 1 else out
    path = out / SELF_TRAINING_CONFIG
    now = recorded_config(cfg)
    started = run_started(first)
    if started and not cfg.resume:  # what the first stage would say, before the photos are pseudo-labelled
        raise ConfigError(f"{out} already holds a run ({first}): pass --resume to continue it, or choose another "
                          "--out")
    if not started:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(now, sort_keys=False), encoding="utf-8")
    elif path.is_file():  # resumed: self-training's own keys too (--pseudo-precision), which no stage holds
        was = yaml.safe_load(path.read_text(encoding="utf-8"))
        if was.get("data") and not Path(str(was["data"])).exists():  # a catalogue moved since (--data NEW): the
            was["data"] = now["data"]  # stage that resumes compares the photos and what they teach
        check_same_run(out, was, now, resume_command(path))
    return resume_command(path) if path.is_file() else f"the command that started {out}, with its options and --resume"


def _pseudo_labels(cfg: TrainConfig, catalogue: Catalogue, teacher: str, photos: Sequence[Path], d: Dist, *,
                   progress: bool) -> PseudoLabels:
    """`photos` labelled by the teacher, the same on every rank: each rank labels a slice of them (under
    torchrun: no rank waits out the whole folder in a collective) at rank 0's threshold (one threshold, however
    each GPU rounds), and the slices are gathered in order."""
    from ..models.predictor import load_model

    model: Model | None = None

    def threshold() -> tuple[float, float] | None:
        nonlocal model
        model = load_model(teacher, device=str(d.device))
        if tuple(model.card.classes) != tuple(catalogue.classes):
            raise ConfigError(f"teacher {teacher} knows other products than the catalogue; train it on the same one")
        return choose_pseudo_threshold(*_selection_probs(model, cfg, catalogue), cfg.pseudo_precision) \
            if d.is_main else None

    chosen = _on_every_rank(d, "choosing the pseudo-label threshold", threshold)[0]
    assert model is not None and chosen is not None
    lo, hi = len(photos) * d.rank // d.world_size, len(photos) * (d.rank + 1) // d.world_size
    shards = _on_every_rank(d, "pseudo-labelling", lambda: pseudo_label(
        model, photos[lo:hi], chosen[0], precision=chosen[1], seed=cfg.seed, progress=progress and d.is_main,
        offset=lo))
    pseudo = shards[0] if len(shards) == 1 else _joined(shards)
    if d.is_main:
        for path, reason in pseudo.unreadable:
            log.warning("unlabelled photo skipped: %s: %s", path, reason)
        log.info("self-training: %s", pseudo.summary())
    return pseudo


def _joined(shards: Sequence[PseudoLabels]) -> PseudoLabels:
    """The labels of consecutive slices of one list of photos, as one labelling of the list."""
    return dataclasses.replace(
        shards[0], samples=tuple(s for p in shards for s in p.samples),
        confidences=tuple(c for p in shards for c in p.confidences), considered=sum(p.considered for p in shards),
        inconsistent=sum(p.inconsistent for p in shards), unreadable=tuple(u for p in shards for u in p.unreadable))


def _on_every_rank(d: Dist, what: str, step: Callable[[], T]) -> list[T]:
    """`step()` on every rank, and its results by rank on every rank. In one process its result, or its
    exception as raised. Under torchrun a failure on any rank stops every rank once all have heard of it: the
    failing rank raises its own exception (the CLI's one line and exit code, as in one process), the others one
    RuntimeError that names the rank and the error, so none waits in a collective for one that has failed."""
    if not d.enabled:
        return [step()]
    result: T | None = None
    error: BaseException | None = None
    try:
        result = step()
    except BaseException as exc:  # noqa: BLE001 - raised below, once every rank has heard of it
        error = exc
    outcomes = d.gather((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    failed = [f"rank {rank} ({message})" for rank, (_, message) in enumerate(outcomes) if message is not None]
    if failed:
        raise RuntimeError(f"self-training: {what} failed on {'; '.join(failed)}")
    return [r for r, _ in outcomes]  # type: ignore[misc]


def _write_pseudo_labels(folder: Path, pseudo: PseudoLabels) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "pseudo_labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "confidence"])
        w.writerows([str(s.path), s.label, f"{c:.4f}"] for s, c in zip(pseudo.samples, pseudo.confidences,
                                                                         strict=True))


def _listing(photos: Sequence[Path]) -> str:
    """How many `photos`, and a digest of their paths in order: one short value for the ranks to compare."""
    digest = hashlib.sha256(b"\0".join(os.fsencode(p) for p in photos)).hexdigest()
    return f"{len(photos)} photos, sha256 {digest[:16]}"


def _stage(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """One stage's config: a plain run (no unlabelled photos, so none of self-training's settings). A stage of two
    rounds recorded pseudo_rounds 2 beside no --unlabeled: its bundle could not be retrained, nor its config.yaml
    run ("rounds of self-training need unlabelled photos")."""
    plain = TrainConfig()
    return dataclasses.replace(cfg, unlabeled=None, pseudo_rounds=plain.pseudo_rounds,
                               pseudo_precision=plain.pseudo_precision, **changes)


def _with_class_attributes(catalogue: Catalogue, samples: Sequence[Sample]) -> list[Sample]:
    """Each pseudo-labelled photo with the attributes every photo of its class carries (the product's, else those
    all its training photos share). Without them the attribute head learnt "no colour, not organic" from every
    pseudo-label: a self-trained student scored green apples' colour=green at 0.001 (0.34-0.54 without them)."""
    shared: dict[str, set[str]] = {}
    for s in catalogue.split("train"):
        shared[s.label] = set(s.attributes) if s.label not in shared else shared[s.label] & set(s.attributes)
    out = []
    for s in samples:
        product = catalogue.products.get(s.label)
        known = product.attributes if product is not None and product.attributes else \
            tuple(sorted(shared.get(s.label, ())))
        out.append(dataclasses.replace(s, attributes=tuple(known)))
    return out


def _without_labelled(cfg: TrainConfig, catalogue: Catalogue, photos: list[Path]) -> list[Path]:
    """`photos` less the catalogue's own labelled ones (the same files, however named): its training photos
    (labelled already) and the photos this run makes its choices on (val, or the hold-out with --select-on
    holdout: pseudo-labelled, the student would train on the photos that pick its epoch and threshold; the folder
    `skulens suggest-labels` filled in holds them). A photo of another split (val under --select-on holdout,
    test) is kept, with a warning that the scores there are then transductive (its photos seen, never its
    labels)."""
    from ..data.catalogue import selection_split

    fit, selection, _ = selection_split(catalogue, cfg.select_on, cfg.holdout_fraction, cfg.seed)
    labelled = {s.path.resolve() for s in (*fit, *selection)}
    labelled |= {p.image.resolve() for p in catalogue.products.values() if p.image is not None}
    others = {s.path.resolve(): name for name, samples in catalogue.splits.items() for s in samples}
    resolved = [(p, p.resolve()) for p in photos]
    copies = _copies_of(labelled, [r for _, r in resolved if r not in labelled])
    kept = [(p, r) for p, r in resolved if r not in labelled and r not in copies]
    if len(kept) < len(photos):
        log.warning("self-training: %d of the %d photos in --unlabeled are labelled photos of the catalogue, or "
                    "copies of them (its training photos, or the %s this run selects on): left out", len(photos) - len(kept),
                    len(photos), "val" if cfg.select_on == "val" else "hold-out")
    seen = sorted({others[r] for _, r in kept if r in others})
    if seen:
        log.warning("self-training: --unlabeled holds photos of the catalogue's %s split(s): the student sees "
                    "them (never their labels), so its scores there are transductive", ", ".join(seen))
    if not kept:
        raise ConfigError(f"--unlabeled {cfg.unlabeled}: every photo in it is a labelled photo of the catalogue: "
                          "nothing is left to pseudo-label")
    return [p for p, _ in kept]


def _copies_of(labelled: set[Path], photos: Sequence[Path]) -> set[Path]:
    """The photos that are byte-for-byte copies of a labelled one (a val photo copied into the intake folder
    given as --unlabeled was pseudo-labelled and trained on: the student chose its epoch on a photo it had seen).
    Only files of a size some labelled file has are read."""
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return -1

    def digest(p: Path) -> str | None:
        try:
            return hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            return None

    by_size: dict[int, list[Path]] = {}
    for p in labelled:
        by_size.setdefault(size(p), []).append(p)
    candidates = {p: s for p in photos if (s := size(p)) >= 0 and s in by_size}
    known = {digest(p) for s in set(candidates.values()) for p in by_size[s]} - {None}
    return {p for p in candidates if digest(p) in known}


def _unlabelled_photos(source: str) -> list[Path]:
    from ..data.catalogue import IMAGE_SUFFIXES
    from ..data.image_list import folder_images, non_utf8_names

    root = Path(source)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES:
            raise FileNotFoundError(f"--unlabeled {source}: not a photo (or a folder of photos)")
        photos = [root]
    elif not root.is_dir():
        raise FileNotFoundError(f"--unlabeled {source}: no such folder")
    else:
        photos = sorted(folder_images(root))  # hidden files (macOS's ._x.jpg) left out, as every folder of photos
    if not photos:
        raise FileNotFoundError(f"--unlabeled {source}: no photos in it")
    bad = non_utf8_names(photos)  # the pseudo-label CSV cannot hold them: refused before the teacher trains
    if bad:
        raise ConfigError(f"--unlabeled {source}: {bad}")
    return photos
