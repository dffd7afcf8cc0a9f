"""The fine-tuning engine: catalogue in, model bundle + evaluation report out."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig, config_to_dict, recorded_config, with_absolute_paths
from ..data.catalogue import Catalogue, CatalogueError, Sample, inside_folder_catalogue, load_catalogue
from ..data.dataset import TensorImageDataset
from ..data.splits import Split, prepare_split
from ..data.transforms import create_transform
from ..evaluate.calibration import apply_temperature, fit_temperature
from ..evaluate.evaluator import baseline_report, evaluate_outputs, pretrained_features
from ..evaluate.metrics import EvalReport, choose_thresholds
from ..evaluate.report import IN_SAMPLE_NOTE, write_report
from ..models.backbones import Backbone, BackboneSpec, create_backbone
from ..models.bundle import WEIGHTS, atomic_write_text, read_card, recover_bundle, save_bundle
from ..models.card import ModelCard, exclusive_attribute_pairs
from ..models.classifier import SkuModel
from ..models.inference import (
    COARSE_RULES,
    HeadOutputs,
    autocast_context,
    combine_coarse,
    resolve_device,
    run_heads,
)
from ..models.pruned import adopt_pruning
from . import distributed
from .checkpoint import (
    check_same_run,
    load_checkpoint,
    refuse_resuming_a_finished_run,
    resume_command,
    run_started,
    save_checkpoint,
)
from .extras import training_extras
from .freeze import apply_freeze, train_mode
from .loggers import RunLogger
from .optim import make_grad_scaler, make_optimizer
from .warm import ProbeRows, probe_start, warm_start

if TYPE_CHECKING:
    from .adversarial import AdversarialBatch
    from .corrupt import CorruptBatch
    from .teacher import Teacher

__all__ = ["TrainResult", "TrainingDiverged", "fit"]

log = logging.getLogger(__name__)

# Below this many optimizer steps a fine-tune is usually undertrained: grocery with 264 labelled photos (9 steps
# an epoch) reached 20.6 % top-1 in 5 epochs and 47.6 % with up to 40 and early stopping (benchmarks/RESULTS.md).
FEW_STEPS = 300


class TrainingDiverged(RuntimeError):
    """The training loss stopped being a number (a learning rate far too high): the run stops at that step."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    bundle: Path
    card: ModelCard
    report: EvalReport  # the selected model on val
    baseline: EvalReport | None  # linear probe on the pretrained backbone, same val
    best_epoch: int
    epochs_run: int
    wall_time_s: float
    history: tuple[dict[str, Any], ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of images that did not decode


@dataclass(eq=False)
class _Run:
    """One run's working parts, shared by the loop's helpers instead of long argument lists."""

    cfg: TrainConfig
    catalogue: Catalogue
    run_dir: Path
    device: torch.device
    progress: bool
    t0: float  # when fit() started (perf_counter)
    model: SkuModel
    card: ModelCard  # grows lineage/pruning in _prepare_training, val-chosen settings in _finish
    train: Split
    val: Split  # the selection split: val, or (select_on holdout) the hold-out of train
    skipped: list[tuple[str, str]]
    resumed: bool
    dist: distributed.Dist  # rank, world size; Dist.single(device) in one process
    untouched: Split | None = None  # select_on holdout: val, scored once at the end and chosen nothing
    extra_metrics: dict[str, Any] = field(default_factory=dict)  # recorded in the card (self-training's)
    val_degraded: list[torch.Tensor] | None = None  # monitor robust_top1: the selection photos degraded once each
    # The module the training forward runs through: `model`, or a DistributedDataParallel over it (built in
    # _train_loop, once the freeze is known). Everything else (EMA, attacks, eval, checkpoints) uses `model`.
    net: torch.nn.Module = field(init=False)
    # Set by _prepare_training, once the model's shape is final:
    opt: torch.optim.Optimizer = field(init=False)
    sched: torch.optim.lr_scheduler.LRScheduler = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    ema: Any = field(init=False)  # timm ModelEmaV3, or None
    class_weights: torch.Tensor | None = field(init=False)
    teacher: Teacher | None = field(init=False)
    adversary: AdversarialBatch | None = field(init=False)
    corrupter: CorruptBatch | None = field(init=False)
    logger: RunLogger | _QuietLogger = field(init=False)
    # The loop state, checkpointed each epoch: epoch, step, best, best_epoch, bad_epochs, history.
    state: dict[str, Any] = field(init=False)
    # The learning rate (the heads' group) of the last step taken: what the epoch's record logs. The scheduler's
    # own last LR is the next step's, and past a one-cycle's end a rate that never ran.
    lr_used: float = field(default=math.nan, init=False)
    # The epoch the checkpoint on disk holds (0: none yet): `state["epoch"]` is counted on before it is written.
    saved_epoch: int = field(default=0, init=False)

    def out_of_steps(self) -> bool:
        return bool(self.cfg.max_steps) and self.state["step"] >= self.cfg.max_steps


class _QuietLogger:
    """The logger of ranks other than 0: they write nothing."""

    def log(self, step: int, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _quick_metrics(out: HeadOutputs, split: Split, card: ModelCard) -> dict[str, float]:
    """The few numbers watched every epoch (the full report is computed once, at the end)."""
    from sklearn.metrics import f1_score

    y = split.fine.numpy()
    pred = out.fine.argmax(1)
    m = {"top1": float((pred == y).mean()), "macro_f1": float(f1_score(y, pred, average="macro"))}
    coarse = combine_coarse(out.fine, out.coarse_head, card.fine_to_coarse, len(card.coarse_classes))
    yc = split.coarse.numpy()
    if coarse is not None and (yc >= 0).any():
        ok = yc >= 0
        m["coarse_top1"] = float((coarse.argmax(1)[ok] == yc[ok]).mean())
    return m


def _selection_key(m: dict[str, float], monitor: str) -> tuple[float, ...]:
    """The monitored val metric; ties (common on a few hundred photos) go to coarse top-1, then macro-F1."""
    return (m.get(monitor, m["top1"]), m.get("coarse_top1", 0.0), m["macro_f1"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _class_weights(cfg: TrainConfig, fine: torch.Tensor, n: int) -> torch.Tensor | None:
    if cfg.class_weights == "none":
        return None
    counts = torch.bincount(fine, minlength=n).float().clamp(min=1)
    return counts.sum() / (n * counts)


def _catalogue_samples(cat: Catalogue, train: list[Sample]) -> list[Sample]:
    """The products' catalogue photos as extra training samples, with their class's attributes."""
    attrs = {s.label: s.attributes for s in train}
    return [Sample(p.image, label, p.coarse_label, attrs.get(label, ()), None)
            for label, p in cat.products.items() if p.image is not None and Path(p.image).is_file()]


def _base_card(cfg: TrainConfig, cat: Catalogue, spec: BackboneSpec, embedding_dim: int) -> ModelCard:
    if cfg.monitor == "coarse_top1" and not cat.hierarchy:  # else it would quietly select on fine top-1
        raise ConfigError("monitor coarse_top1: this catalogue has no coarse classes")
    coarse_index = {c: i for i, c in enumerate(cat.coarse_classes)}
    f2c = tuple(coarse_index[cat.hierarchy[c]] for c in cat.classes) if cat.hierarchy else ()
    coarse = tuple(cat.coarse_classes) if cfg.coarse_loss_weight > 0 or f2c else ()
    attributes = tuple(cat.attributes) if cfg.attribute_loss_weight > 0 else ()
    return ModelCard.for_backbone(
        cfg.backbone, spec, embedding_dim=embedding_dim, classes=tuple(cat.classes), coarse_classes=coarse,
        fine_to_coarse=f2c, coarse_head=bool(coarse) and cfg.coarse_loss_weight > 0,
        attributes=attributes, attribute_exclusive=_exclusive_attributes(cat, attributes),
        coarse_fallback=cfg.coarse_fallback, dropout=cfg.dropout, train_config=recorded_config(cfg),
        # a manifest file keeps its name: its folder may hold another manifest (or the default one) or none
        dataset={"path": os.path.abspath(cfg.data) if cfg.data and Path(cfg.data).is_file() else str(cat.root),
                 "layout": cat.layout, "fingerprint": cat.fingerprint(),
                 "sizes": {k: len(v) for k, v in cat.splits.items()}, "val_generated": cat.val_was_generated,
                 # a val carved out of train: which photos, so that evaluate can tell when it is carved otherwise
                 **({"val_fingerprint": cat.fingerprint("val")} if cat.val_was_generated else {})},
    )


def _exclusive_attributes(cat: Catalogue, attributes: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Same-group values no training product carries together (a product: its train samples' attributes)."""
    carried: dict[str, set[str]] = {}
    for s in cat.split("train"):
        carried.setdefault(s.label, set()).update(s.attributes)
    return exclusive_attribute_pairs(carried.values(), attributes)


def _prepare_run_dir(cfg: TrainConfig, *, main: bool = True) -> Path:
    run_dir = Path(cfg.out)
    if cfg.resume and main:
        recover_bundle(run_dir / "bundle")  # killed while the best epoch's bundle was being swapped in
    if not cfg.resume and run_started(run_dir):
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, "
                          "or choose another --out")
    if cfg.resume:
        refuse_resuming_a_finished_run(run_dir)
    if main:  # the other ranks of a distributed run write nothing
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _load_data(cfg: TrainConfig) -> Catalogue:
    if not cfg.data:
        raise ConfigError("no data: pass --data PATH (a catalogue folder or manifest)")
    return load_catalogue(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)


def fit(cfg: TrainConfig, *, catalogue: Catalogue | None = None, progress: bool = True,
        sync_bn: bool = True, extra_metrics: dict[str, Any] | None = None,
        resume_advice: str | None = None) -> TrainResult:
    """Fine-tune `cfg.backbone` on the catalogue, select on val, write bundle + report into `cfg.out`.

    Under torchrun (WORLD_SIZE > 1) every process calls this: DistributedDataParallel, the training set
    sharded, `cfg.batch_size` the global batch; rank 0 alone validates and writes the run directory, and
    every rank returns rank 0's result. `sync_bn`: BatchNorm statistics of the global batch (as one process
    would compute them) or, False, of each process's shard (see distributed.sync_batchnorm).
    resume_advice: the command that resumes the run as it was, named when --resume comes with another config
    (default: `skulens train --config OUT/config.yaml --resume`; a self-training stage names the whole run's).
    """
    t0 = time.perf_counter()
    cfg = with_absolute_paths(cfg)
    if cfg.out and Path(cfg.out).exists() and not Path(cfg.out).is_dir():  # before the catalogue is read
        raise ConfigError(f"out {cfg.out}: a file is there; name a folder for the run")  # (mkdir's FileExistsError)
    cat = catalogue if catalogue is not None else _load_data(cfg)
    _check_catalogue(cfg, cat)
    if cfg.unlabeled:  # self-training: a teacher, pseudo-labels, then a student (each a run of this function)
        from .semi import self_train

        # every stage with this call's BatchNorm rule (a stage's own default would sync under torchrun)
        return self_train(cfg, cat, progress=progress, fit_run=functools.partial(fit, sync_bn=sync_bn))
    d = distributed.setup(resolve_device(cfg.device))
    try:
        with _run_lock(cfg, main=d.is_main):
            return _fit(cfg, cat, d, progress=progress and d.is_main, sync_bn=sync_bn, t0=t0,
                        extra_metrics=extra_metrics or {}, resume_advice=resume_advice)
    finally:
        d.close()


@contextlib.contextmanager
def _run_lock(cfg: TrainConfig, *, main: bool) -> Iterator[None]:
    """The run folder's lock (`.OUT.lock` beside it) for the whole run, taken by the process that writes it: a
    second run into the same --out while one goes on is refused at once. Before, both ran, and until the first
    epoch's checkpoint neither saw the other: the folder ended with one run's bundle, the other's config.yaml and
    both runs' epochs in metrics.jsonl."""
    if not main or not cfg.out:
        yield
        return
    from filelock import Timeout

    from ..models.swap import lock_of

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_of(out)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{out}: another process is writing a run there now (it holds {lock.lock_file}); wait "
                          "for it to end (then --resume or another --out), or choose another --out") from None
    try:
        yield
    finally:
        lock.release()


def _fit(cfg: TrainConfig, cat: Catalogue, d: distributed.Dist, *, progress: bool, sync_bn: bool,
         t0: float, extra_metrics: dict[str, Any], resume_advice: str | None) -> TrainResult:
    if d.enabled:
        distributed.local_batch_size(cfg.batch_size, d.world_size)  # fail early, on every rank alike
    run_dir = _prepare_run_dir(cfg, main=d.is_main)
    device = d.device
    _check_setup(cfg, device, cat)
    _seed_everything(cfg.seed)
    log.info("catalogue: %s", cat.summary())

    backbone = create_backbone(cfg.backbone, cfg.weights, image_size=cfg.image_size)
    card = _base_card(cfg, cat, backbone.spec, backbone.num_features)
    # Every rank reads the checkpoint (onto the CPU: load_state_dict copies into each rank's own device), and a
    # resume with another config or catalogue is refused before the photos are decoded (minutes on a real one).
    ckpt = load_checkpoint(run_dir / "checkpoint", device="cpu") if cfg.resume else None
    if ckpt is not None:
        now, was = config_to_dict(cfg), dict(ckpt["config"])
        if (ckpt.get("data") or {}).get("taught"):  # the photos and what they teach are compared below: a moved
            was["data"] = now["data"]  # catalogue resumes (its recorded path is gone)
        check_same_run(run_dir, was, now, resume_advice or resume_command(run_dir / "config.yaml"))
        _check_same_photos(run_dir, ckpt.get("data"), _photos_digest(cat))
    d.same_everywhere("the checkpoint to resume from", ckpt and ckpt.get("state", {}).get("epoch"))
    train, val, untouched, skipped = _load_splits(cfg, cat, card, run_dir, progress, main=d.is_main)
    backbone.to(device)
    if cfg.channels_last:
        backbone.to(memory_format=torch.channels_last)
    baseline, probe = None, None
    if d.is_main:  # the linear probe is a report for rank 0 to write; the other ranks wait
        baseline, probe = _baseline(cfg, card, train, val, backbone, run_dir, fresh=ckpt is None,
                                    progress=progress)
    model, card = _build_model(cfg, backbone, card, device, fresh=ckpt is None)
    if cfg.head_init == "probe" and ckpt is None:  # LP-FT: every rank starts from rank 0's probe
        probe_start(model, d.broadcast(probe))
    model = distributed.sync_batchnorm(model, d, enabled=sync_bn)  # type: ignore[assignment]

    run = _Run(cfg=cfg, catalogue=cat, run_dir=run_dir, device=device, progress=progress, t0=t0, model=model,
               card=card, train=train, val=val, skipped=skipped, resumed=ckpt is not None, dist=d,
               untouched=untouched, extra_metrics=extra_metrics)
    _prepare_training(run, ckpt)
    try:
        epochs_run = _train_loop(run)
    except KeyboardInterrupt:  # Ctrl-C: the run can go on from its last checkpoint; say how
        if d.is_main and run.saved_epoch and (run_dir / "checkpoint").exists():
            log.warning("interrupted in epoch %d; the checkpoint of epoch %d is kept: to go on from it, run %s",
                        run.saved_epoch + 1, run.saved_epoch, resume_advice or resume_command(run_dir / "config.yaml"))
        raise
    finally:
        run.logger.close()
    if not d.enabled:
        return _finish(run, baseline, epochs_run)
    # Rank 0 calibrates and writes the bundle and report; every rank returns its result.
    return d.broadcast(_finish(run, baseline, epochs_run) if d.is_main else None)


def _check_catalogue(cfg: TrainConfig, cat: Catalogue) -> None:
    """A catalogue a run can learn from, and a run folder that stays out of it."""
    if len(cat.classes) < 2:  # a scikit-learn traceback from the baseline, or a model that can answer one thing
        raise CatalogueError(f"{cat.root}: {len(cat.classes)} class ({', '.join(cat.classes) or 'none'}); "
                             "a classifier needs at least 2")
    data = Path(cfg.data or cat.root)
    if cat.layout == "folders" and inside_folder_catalogue(cfg.out, cat.root):  # a manifest lists its photos
        # a folder of class folders: the run's report plots became a class of the next run (or of evaluate)
        raise ConfigError(f"--out {cfg.out} is inside the catalogue folder {data}: the next run would read the "
                          "run's own files as photos; choose an --out outside it")
    default = TrainConfig()
    for name, has, what in (("coarse_loss_weight", cat.coarse_classes, "coarse classes"),
                            ("attribute_loss_weight", cat.attributes, "attribute labels")):
        if getattr(cfg, name) != getattr(default, name) and not has:  # recorded as if it weighed something
            log.warning("%s %g is not used: %s has no %s", name, getattr(cfg, name), data, what)


def _check_setup(cfg: TrainConfig, device: torch.device, cat: Catalogue) -> None:
    """What the settings need of this machine and the teacher, checked before the photos are decoded and the
    baseline fitted (a missing logger package, fp16 on a CPU: both failed minutes into the run, as tracebacks; a
    teacher of another catalogue was refused only after the baseline)."""
    import importlib.util

    if cfg.teacher:
        missing = sorted(set(cat.classes) - set(read_card(cfg.teacher).classes))
        if missing:  # as Teacher refuses it, once loaded
            raise ConfigError(f"teacher {cfg.teacher} does not know the student's class(es) "
                              f"{', '.join(missing[:5])}: distil from a teacher of the same catalogue")

    for name in ("mlflow", "wandb"):
        if name in cfg.loggers and importlib.util.find_spec(name) is None:
            raise ImportError(f"logger {name!r} needs: pip install 'skulens[{name}]'")
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"mixed_precision fp16 is for CUDA GPUs; use bf16 or off on the {device.type}")


def _load_splits(cfg: TrainConfig, cat: Catalogue, card: ModelCard, run_dir: Path, progress: bool, *,
                 main: bool = True) -> tuple[Split, Split, Split | None, list[tuple[str, str]]]:
    """Decode train (+ catalogue photos), the selection split and (select_on holdout) val once: (train,
    selection, untouched val or None, what could not be decoded). The hold-out is seeded and stratified
    (`holdout_fraction` of each class's train photos), so a resumed run holds out the same photos."""
    from ..data.catalogue import selection_split

    train_samples, selection, held_back = selection_split(cat, cfg.select_on, cfg.holdout_fraction, cfg.seed)
    untouched = None if held_back is None else prepare_split(held_back, card, desc="val", progress=progress)
    if cfg.catalogue_images:
        train_samples += _catalogue_samples(cat, train_samples)
    train = prepare_split(train_samples, card, desc="train", progress=progress)
    val = prepare_split(selection, card, desc=cfg.select_on, progress=progress)
    skipped = train.skipped + val.skipped + (untouched.skipped if untouched is not None else [])
    if skipped and main:
        atomic_write_text(run_dir / "skipped_images.tsv", "".join(f"{p}\t{r}\n" for p, r in skipped))
    for name, given, split in (("train", train_samples, train), (cfg.select_on, selection, val),
                               ("val", held_back or [], untouched)):
        if split is not None and not split.images:
            why = (f"{len(given)} photo(s), none decodable (see skipped_images.tsv)" if given else
                   "no photos (a split made here takes photos only from classes with 2 or more); give more "
                   "photos per class, or a val split of your own")
            raise CatalogueError(f"the {name} split is empty: {why}")
    counts = torch.bincount(train.fine, minlength=card.num_classes)
    empty = [card.classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:  # a head row no photo teaches: it would only ever be pushed down
        raise CatalogueError(f"{len(empty)} class(es) with no (decodable) training photo: "
                             f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; add train photos or "
                             "take them out of the catalogue")
    return train, val, untouched, skipped


def _baseline(cfg: TrainConfig, card: ModelCard, train: Split, val: Split, backbone: Backbone, run_dir: Path,
              *, fresh: bool, progress: bool) -> tuple[EvalReport | None, dict[str, ProbeRows] | None]:
    """The linear probe on the pretrained backbone: fitted on a fresh run, read back on a resumed one; and, for
    `head_init: probe` on a fresh run, the probe's rows for the fine and coarse heads (one pass over train's
    photos serves both)."""
    if not fresh:
        found = cfg.baseline and (run_dir / "baseline.json").is_file()
        return (_load_report(run_dir / "baseline.json") if found else None), None
    probe = None
    if cfg.head_init == "probe":
        from ..evaluate.baseline import probe_head

        features = pretrained_features(card, train, backbone, precision=cfg.mixed_precision, progress=progress)
        probe = {"fine": probe_head(features, train.fine.numpy(), card.num_classes, seed=cfg.seed)}
        known = train.coarse >= 0
        if card.coarse_head and len(set(train.coarse[known].tolist())) > 1:
            probe["coarse"] = probe_head(features[known.numpy()], train.coarse[known].numpy(),
                                         len(card.coarse_classes), seed=cfg.seed)
    if not cfg.baseline:
        return None, probe
    baseline = baseline_report(card, train, val, precision=cfg.mixed_precision, seed=cfg.seed,
                               progress=progress, backbone=backbone, probe=probe["fine"] if probe else None)
    atomic_write_text(run_dir / "baseline.json", json.dumps(baseline.to_dict()))
    return baseline, probe


def _build_model(cfg: TrainConfig, backbone: Backbone, card: ModelCard, device: torch.device, *,
                 fresh: bool) -> tuple[SkuModel, ModelCard]:
    """The backbone with its heads; from `init_from`: the bundle's widths (always), weights (fresh runs)."""
    model = SkuModel(backbone, card.num_classes, len(card.coarse_classes) if card.coarse_head else 0,
                     len(card.attributes), cfg.dropout).to(device)
    if cfg.init_from:  # a pruned bundle's narrower layers carry over (on resume too)
        card = adopt_pruning(model, card, read_card(cfg.init_from))
        if fresh:
            warm_start(model, card, cfg.init_from)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, card


def _prepare_training(run: _Run, ckpt: dict[str, Any] | None) -> None:
    """Optimizer, schedule, loss scaling, EMA, the loop state (fresh or restored), hooks and logger."""
    cfg = run.cfg
    per_epoch = max(1, len(run.train.images) // cfg.batch_size)
    total_steps = cfg.epochs * per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    elif total_steps < FEW_STEPS and run.dist.is_main and not cfg.init_from:  # a trained bundle's fine-tune is short
        log.warning("only %d optimizer steps planned (%d photos, batch %d, %d epochs): a catalogue this small is "
                    "undertrained at this length; try --epochs %d (early stopping ends it when val stops improving)",
                    total_steps, len(run.train.images), cfg.batch_size, cfg.epochs, -(-FEW_STEPS // per_epoch))
    run.opt, run.sched = make_optimizer(cfg, run.model, total_steps)
    run.scaler = make_grad_scaler(run.device, cfg.mixed_precision)
    run.ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        run.ema = ModelEmaV3(run.model, decay=cfg.ema_decay, use_warmup=True)
    weights = _class_weights(cfg, run.train.fine, run.card.num_classes)
    run.class_weights = weights.to(run.device) if weights is not None else None
    run.state = _restore(run, ckpt)
    run.saved_epoch = run.state["epoch"] if ckpt is not None else 0
    run.card, run.teacher, run.adversary, run.corrupter = training_extras(cfg, run.card, run.model, run.opt,
                                                                          run.device)
    if not run.dist.is_main:
        run.logger = _QuietLogger()
        return
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(recorded_config(cfg), sort_keys=False), encoding="utf-8")
    run.logger = RunLogger(run.run_dir, cfg.loggers, config_to_dict(cfg))


def _restore(run: _Run, ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """The loop state: fresh, or the interrupted run's (after checking it is the same run)."""
    cfg, run_dir = run.cfg, run.run_dir
    if ckpt is None:
        if cfg.resume:
            log.warning("%s: no checkpoint to resume from; starting a new run", run_dir)
        return {"epoch": 0, "step": 0, "best": [-1.0], "best_epoch": -1, "bad_epochs": 0, "history": []}
    run.model.load_state_dict(ckpt["model"])  # its config and catalogue were checked as the run started
    if run.ema is not None and "ema" in ckpt:
        run.ema.module.load_state_dict(ckpt["ema"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    if run.scaler.is_enabled() and "scaler" in ckpt:
        run.scaler.load_state_dict(ckpt["scaler"])
    log.info("resumed %s at epoch %d, step %d", run_dir, ckpt["state"]["epoch"], ckpt["state"]["step"])
    # The checkpoint is the truth: epochs logged after it (killed before the next save) are dropped, and one
    # saved but not yet logged is restored.
    history = ckpt["state"]["history"]
    if run.dist.is_main:
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    return ckpt["state"]


# ------------------------------------------------------------------------------------------------ the loop


def _train_loop(run: _Run) -> int:
    """Epochs until the last, early stopping or max_steps; returns how many ran in this process."""
    cfg, train = run.cfg, run.train
    train_tf = create_transform(run.card, train=True, augment=cfg.augment, train_size=cfg.train_image_size)
    ds = TensorImageDataset(train.images, train.fine, train.coarse, train.attributes, train_tf)
    eval_tf = create_transform(run.card)
    frozen = apply_freeze(run.model, cfg.freeze, cfg.trainable_stages,
                          head_only=run.state["epoch"] < cfg.gradual_head_epochs)
    run.net = distributed.wrap(run.model, run.dist)  # after the freeze: DDP syncs what trains now
    epochs_run = 0
    for epoch in range(run.state["epoch"], cfg.epochs):
        # checked before the epoch too: a run resumed from the checkpoint of its stopping epoch stops here
        if run.state["bad_epochs"] >= cfg.patience or run.out_of_steps():
            break
        if cfg.freeze == "gradual" and epoch == cfg.gradual_head_epochs:
            frozen = apply_freeze(run.model, "full")
            # Rebuilt: a DDP syncs only what required grad when it was built, so the old one would leave the
            # backbone's gradients unsynced (find_unused_parameters would not help; check_in_step catches it).
            run.net = distributed.wrap(run.model, run.dist)
        t_epoch = time.perf_counter()
        losses = _train_epoch(run, ds, frozen, epoch)
        epochs_run += 1
        # Under DDP: the mean of the ranks' means, i.e. the global batches' mean loss (equal shard sizes).
        train_loss = run.dist.mean(float(np.mean(losses)) if losses else float("nan"))
        if run.dist.is_main:
            _end_of_epoch(run, eval_tf, epoch, train_loss, time.perf_counter() - t_epoch)
        # Rank 0's validation decides for all: the same selection, early stopping and history everywhere.
        run.state = run.dist.broadcast(run.state)
        run.dist.check_in_step(run.model, f"epoch {epoch + 1}")
        if run.state["bad_epochs"] >= cfg.patience:
            log.info("early stopping: no val improvement for %d epochs", cfg.patience)
            break
        if run.out_of_steps():
            break
    return epochs_run


def _train_epoch(run: _Run, ds: TensorImageDataset, frozen: list[torch.nn.Module], epoch: int) -> list[float]:
    """One pass over the shuffled training set (seeded per epoch, so a resumed run sees the same batches)."""
    cfg = run.cfg
    # Under DDP random augmentation and dropout differ between ranks (rank 0 draws as one process would).
    rank_seed = cfg.seed * 1000 + epoch + 1_000_003 * run.dist.rank
    _seed_everything(rank_seed)
    if run.dist.enabled:
        # Each rank a B/W share of the one-process run's batches (see ShardedSampler): same global batches.
        sampler = distributed.ShardedSampler(ds, run.dist.world_size, run.dist.rank, seed=cfg.seed * 1000)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=distributed.local_batch_size(cfg.batch_size, run.dist.world_size), sampler=sampler,
            drop_last=len(ds) > cfg.batch_size, num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(rank_seed), persistent_workers=False)
    else:  # (distributed.single_process_order mirrors this loader and the tqdm below: keep them in step)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
            persistent_workers=False,
        )
    train_mode(run.model, frozen, batch_norm=cfg.batch_norm)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not run.progress, leave=False)
    losses: list[float] = []
    for batch in bar:
        losses.append(_train_step(run, batch))
        # The weights are lost: no epoch of this must become the bundle. Decided on every rank alike (a rank
        # stopping alone would leave the others waiting in the next all-reduce); under fp16 the loss scaler
        # skips a step whose loss overflowed, so there only the answers at the epoch's end decide.
        bad = not math.isfinite(losses[-1]) and not run.scaler.is_enabled()
        if run.dist.enabled:
            bad = run.dist.mean(float(bad)) > 0
        if bad:
            _diverged(run, epoch, f"the training loss became {losses[-1]}")
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{run.lr_used:.2e}")
        if run.out_of_steps():
            break
    return losses


def _diverged(run: _Run, epoch: int, what: str) -> None:
    raise TrainingDiverged(
        f"{what} at step {run.state['step']} (epoch {epoch + 1}): the run diverged; lower the learning rate (lr "
        f"{run.cfg.lr:g}). Nothing of it was kept as the bundle"
        + (" (an earlier epoch's is)" if (run.run_dir / "bundle").is_dir() else ""))


def _train_step(run: _Run, batch: list[torch.Tensor]) -> float:
    """Forward, loss, backward and one optimizer step (loss-scaled under fp16 autocast); returns the loss."""
    cfg, device = run.cfg, run.device
    x, yf, yc, ya = batch
    x = x.to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    yf, yc, ya = yf.to(device), yc.to(device), ya.to(device)
    if run.adversary is not None:
        x = run.adversary(run.model, x, yf)
    seen_by_teacher = x  # the batch before corruption (adversarial rows stay): corruption is for the student alone
    if run.corrupter is not None:
        x = run.corrupter(x)
    with autocast_context(device, cfg.mixed_precision, training=True):
        out = run.net(x)
    loss = _loss(run, out, seen_by_teacher, yf, yc, ya)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # a no-op scaling unless training runs under fp16 autocast
    run.scaler.step(run.opt)  # (no gradient clipping here: clipping would need scaler.unscale_ first)
    run.scaler.update()
    run.lr_used = float(run.opt.param_groups[-1]["lr"])
    run.sched.step()
    run.state["step"] += 1
    if run.ema is not None:
        run.ema.update(run.model, step=run.state["step"])
    return loss.item()


def _loss(run: _Run, out: dict[str, torch.Tensor], x: torch.Tensor, yf: torch.Tensor, yc: torch.Tensor,
          ya: torch.Tensor) -> torch.Tensor:
    """Fine cross-entropy (blended with the teacher's soft targets on `x` when distilling) + coarse +
    attributes."""
    cfg = run.cfg
    loss = F.cross_entropy(out["fine"].float(), yf, weight=run.class_weights,
                           label_smoothing=cfg.label_smoothing)
    if run.teacher is not None:
        loss = run.teacher.blend(loss, out["fine"], x)
    if "coarse" in out and (yc >= 0).any():
        loss = loss + cfg.coarse_loss_weight * F.cross_entropy(
            out["coarse"].float(), yc, ignore_index=-100, label_smoothing=cfg.label_smoothing)
    elif "coarse" in out and run.dist.enabled:
        # A shard without coarse labels: the coarse head still joins this rank's graph (zero gradient), as
        # DDP without find_unused_parameters waits for a gradient of every parameter it syncs.
        loss = loss + 0.0 * out["coarse"].float().sum()
    if "attributes" in out:
        loss = loss + cfg.attribute_loss_weight * F.binary_cross_entropy_with_logits(
            out["attributes"].float(), ya)
    return loss


def _end_of_epoch(run: _Run, eval_tf: Any, epoch: int, train_loss: float, epoch_time: float) -> None:
    """Validate model (and EMA), keep the better one as the bundle if it improved, checkpoint, log."""
    cfg, state = run.cfg, run.state
    candidates = {"model": run.model, **({"ema": run.ema.module} if run.ema is not None else {})}
    heads = {name: run_heads(m, run.val.images, eval_tf, device=run.device, precision=cfg.mixed_precision)
             for name, m in candidates.items()}
    if not all(np.isfinite(h).all() for h in (heads["model"].fine, heads["model"].coarse_head,
                                               heads["model"].attributes) if h is not None):
        _diverged(run, epoch, "the model's answers became NaN")  # weights too large, or NaN, after the last steps
    results = {name: _quick_metrics(h, run.val, run.card) for name, h in heads.items()}
    if cfg.monitor == "robust_top1":
        for name, m in candidates.items():
            degraded = run_heads(m, _degraded_selection(run), eval_tf, device=run.device,
                                 precision=cfg.mixed_precision)
            results[name]["corrupt_top1"] = float((degraded.fine.argmax(1) == run.val.fine.numpy()).mean())
            results[name]["robust_top1"] = (results[name]["top1"] + results[name]["corrupt_top1"]) / 2
    name, best_now = max(results.items(), key=lambda kv: _selection_key(kv[1], cfg.monitor))
    score = _selection_key(best_now, cfg.monitor)
    split = cfg.select_on  # "val" or "holdout"
    record = {"step": state["step"], "epoch": epoch + 1, "train_loss": train_loss,
              "epoch_time_s": round(epoch_time, 1),
              "lr": run.lr_used if math.isfinite(run.lr_used) else run.sched.get_last_lr()[-1],
              # named after the split they were measured on: a --select-on holdout run's history showed its
              # hold-out's numbers as val_*, in its untouched val report too
              **{f"{split}_{k}": v for k, v in results["model"].items()},
              **({f"{split}_ema_{k}": v for k, v in results["ema"].items()} if "ema" in results else {})}
    improved = score > tuple(state["best"])
    if improved:
        state.update(best=list(score), best_epoch=epoch + 1, bad_epochs=0)
        metrics = {"split": cfg.select_on, "epoch": epoch + 1, "weights": name, **best_now}
        save_bundle(candidates[name], run.card.with_(metrics=metrics), run.run_dir / "bundle")
    else:
        state["bad_epochs"] += 1
    record["selected"] = name if improved else None
    state["history"].append(record)
    state["epoch"] = epoch + 1
    if run.progress:
        _print_epoch(epoch, train_loss, results, epoch_time, improved)
    _save_checkpoint(run)
    # Logged after the checkpoint: a kill in between loses this line until a resume rewrites the log from the
    # checkpoint's history (see _restore), so metrics.jsonl never holds an epoch twice or one the run lost.
    run.logger.log(state["step"], record)


def _degraded_selection(run: _Run) -> list[torch.Tensor]:
    """The selection photos degraded once each by the training corruptions (made at the first epoch's end)."""
    if run.val_degraded is None:
        from .corrupt import degraded_twins

        run.val_degraded = degraded_twins(run.val.images, seed=run.cfg.seed + 1)
    return run.val_degraded


def _print_epoch(epoch: int, train_loss: float, results: dict[str, dict[str, float]], epoch_time: float,
                 improved: bool) -> None:
    msg = " ".join(f"{k}={v:.4f}" for k, v in results["model"].items())
    ema_msg = ""
    if "ema" in results:
        ema_msg = " | ema " + " ".join(f"{k}={v:.4f}" for k, v in results["ema"].items())
    tqdm.write(f"epoch {epoch + 1}: loss={train_loss:.3f} {msg}{ema_msg} ({epoch_time:.0f}s)"
               + (" *" if improved else ""))


def _photos_digest(cat: Catalogue) -> dict[str, Any]:
    """What a resumed run must find again: the classes in their order (the head's rows), the coarse classes and
    attributes (the other heads' rows, and what each photo is taught), and the fingerprint of each split (every
    photo's path, label and size). Self-training's pseudo-labelled photos are left out: they are labelled again at
    a resume, where a label near the threshold may flip (another device), which no one could "put back"; whether
    the run has that split at all is kept (a stage resumed through its own config.yaml had none)."""
    import hashlib

    from ..data.catalogue import EXTRA_TRAIN

    photos = "|".join(f"{name}:{cat.fingerprint(name)}" for name in sorted(cat.splits) if name != EXTRA_TRAIN)
    taught = hashlib.sha256(json.dumps(
        [sorted(cat.hierarchy.items()), list(cat.coarse_classes), list(cat.attributes),
         [[s.label, s.coarse_label, list(s.attributes)] for name in sorted(cat.splits) if name != EXTRA_TRAIN
          for s in cat.splits[name]]]).encode()).hexdigest()[:16]
    return {"classes": list(cat.classes), "photos": photos, "taught": taught,
            "pseudo_labelled": EXTRA_TRAIN in cat.splits}


def _check_same_photos(run_dir: Path, was: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """ConfigError when the catalogue changed since the checkpoint: new or renamed classes gave a traceback (the
    head's size) or another class's head row, and new photos a run that was neither the old one nor a new one.
    A checkpoint of an older skulens is compared on the keys it has."""
    if was is None:  # a checkpoint from before this check: nothing to compare
        return
    now = {k: v for k, v in now.items() if k in was}
    if was == now:
        return
    if was.get("pseudo_labelled") != now.get("pseudo_labelled"):
        from .semi import SELF_TRAINING_CONFIG

        whole = run_dir if (run_dir / SELF_TRAINING_CONFIG).is_file() else run_dir.parent  # OUT, or OUT/round-K
        had = "trained on pseudo-labelled photos, and this one has none" if was.get("pseudo_labelled") else \
            "had no pseudo-labelled photos, and this one has"
        raise ConfigError(f"{run_dir}: the interrupted run {had}: resume the whole self-training run as it was, "
                          f"skulens train --config {whole / SELF_TRAINING_CONFIG} --resume")
    if was["classes"] != now["classes"]:
        added = sorted(set(now["classes"]) - set(was["classes"]))
        gone = sorted(set(was["classes"]) - set(now["classes"]))
        what = "; ".join(x for x in (f"new: {', '.join(added[:3])}" if added else "",
                                     f"gone: {', '.join(gone[:3])}" if gone else "") if x) or "in another order"
        change = f"its classes changed ({what})"
    elif was.get("photos") != now.get("photos"):
        change = "photos were added, removed, moved or relabelled"
    else:
        change = "its coarse classes or attributes changed"
    raise ConfigError(f"{run_dir}: the catalogue changed since the interrupted run: {change}; a resumed run "
                      "trains on the photos it started with: put them back, or train anew with another --out")


def _save_checkpoint(run: _Run) -> None:
    ckpt = {"config": recorded_config(run.cfg), "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "state": run.state,
            "data": _photos_digest(run.catalogue)}
    if run.ema is not None:
        ckpt["ema"] = run.ema.module.state_dict()
    if run.scaler.is_enabled():  # five numbers: the loss scale and its growth tracker
        ckpt["scaler"] = run.scaler.state_dict()
    save_checkpoint(run.run_dir / "checkpoint", ckpt)
    run.saved_epoch = run.state["epoch"]


# ---------------------------------------------------------------------------------------------- the end


def _finish(run: _Run, baseline: EvalReport | None, epochs_run: int) -> TrainResult:
    """Reload the selected weights, calibrate and pick val-chosen settings, write bundle and report."""
    cfg, model, val, state = run.cfg, run.model, run.val, run.state
    eval_tf = create_transform(run.card)
    # The selected weights are the bundle written at the best epoch; finish its card with val results.
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run.run_dir / "bundle" / WEIGHTS)))
    # A run resumed after a kill inside this function finds its bundle already calibrated: fit from T = 1,
    # or the new temperatures would be fitted on already tempered outputs and replace the first ones.
    model.temperature.fill_(1.0)
    out = _calibrate(model, run_heads(model, val.images, eval_tf, device=run.device,
                                      precision=cfg.mixed_precision), val)
    thresholds = None
    if out.attributes is not None and run.card.attributes:
        # Thresholds are chosen on val, so val attribute F1 is optimistic; mAP is threshold-free.
        thresholds = choose_thresholds(out.attributes, val.attributes.numpy())
    card = run.card.with_(coarse_rule=_choose_coarse_rule(out, val, run.card))
    report = evaluate_outputs(out, val, card, thresholds)
    untouched = None
    if run.untouched is not None:  # scored once, with every choice already made on the hold-out
        raw = run_heads(model, run.untouched.images, eval_tf, device=run.device, precision=cfg.mixed_precision)
        untouched = evaluate_outputs(raw, run.untouched, card, thresholds)  # run_heads applies the temperatures
    wall = time.perf_counter() - run.t0  # this process only: a resumed run reports the time since resuming
    selection = {"selected_on": cfg.select_on, "holdout_fraction": cfg.holdout_fraction} \
        if cfg.select_on == "holdout" else {}
    card = card.with_(
        attribute_thresholds=tuple(float(t) for t in thresholds) if thresholds is not None else (),
        metrics={"split": cfg.select_on, "best_epoch": state["best_epoch"], "train_wall_time_s": round(wall, 1),
                 "resumed": run.resumed, "temperature": [round(float(t), 4) for t in model.temperature],
                 **_summary(report), "baseline": _summary(baseline) if baseline else None, **selection,
                 **({"val": _summary(untouched)} if untouched is not None else {}), **run.extra_metrics},
    )
    bundle = save_bundle(model, card, run.run_dir / "bundle")
    split_name = "val" if cfg.select_on == "val" else "hold-out of train: every selection made here"
    extra = {"train_wall_time_s": round(wall, 1), "best_epoch": state["best_epoch"], "selected_on": cfg.select_on,
             "history": state["history"]}
    if cfg.select_on == "val":  # the README's promise, as `skulens evaluate` says it on the same split
        extra["calibration"] = IN_SAMPLE_NOTE.format(split="val split")
    else:
        extra["calibration"] = IN_SAMPLE_NOTE.format(split="hold-out") + "; report-val/ has the untouched val's"
    write_report(report, run.run_dir / "report",
                 title=f"skulens: {cfg.backbone} on {run.catalogue.root.name} ({split_name})", baseline=baseline,
                 extra=extra)
    if untouched is not None:  # the selection history is the hold-out's: in report/, not beside val's numbers
        untouched_extra = {k: v for k, v in extra.items() if k not in ("history", "calibration")}
        write_report(untouched, run.run_dir / "report-val",
                     title=f"skulens: {cfg.backbone} on {run.catalogue.root.name} (val, untouched: selected on "
                           f"a {cfg.holdout_fraction:.0%} hold-out of train)", extra=untouched_extra)
    shutil.rmtree(run.run_dir / "checkpoint", ignore_errors=True)
    return TrainResult(run.run_dir, bundle, card, report, baseline, state["best_epoch"], epochs_run, wall,
                       tuple(state["history"]), tuple(run.skipped))


def _calibrate(model: SkuModel, out: HeadOutputs, val: Split) -> HeadOutputs:
    """Fit the fine and coarse temperatures on the selection split (val, or the hold-out of train), store them
    in the model, return rescaled outputs."""
    t_fine = fit_temperature(out.fine, val.fine.numpy())
    t_coarse = 1.0 if out.coarse_head is None else fit_temperature(out.coarse_head, val.coarse.numpy())
    model.temperature.copy_(torch.tensor([t_fine, t_coarse]))
    log.info("temperature scaling on the selection split: fine T=%.3f, coarse T=%.3f", t_fine, t_coarse)
    return _tempered(model, out)


def _tempered(model: SkuModel, out: HeadOutputs) -> HeadOutputs:
    """`out` rescaled by the temperatures `_calibrate` stored in the model (fitted on the selection split)."""
    t_fine, t_coarse = (float(t) for t in model.temperature)
    coarse = None if out.coarse_head is None else apply_temperature(out.coarse_head, t_coarse)
    return HeadOutputs(apply_temperature(out.fine, t_fine), coarse, out.attributes, out.embeddings)


def _choose_coarse_rule(out: HeadOutputs, val: Split, card: ModelCard) -> str:
    """Pick how coarse is predicted (like attribute thresholds, on the selection split); ties keep the earlier
    rule."""
    y = val.coarse.numpy()
    ok = y >= 0
    if not card.coarse_classes or out.coarse_head is None or not ok.any():
        return "combined"
    acc = {}
    for rule in COARSE_RULES:
        p = combine_coarse(out.fine, out.coarse_head, card.fine_to_coarse, len(card.coarse_classes), rule)
        acc[rule] = float((p.argmax(1)[ok] == y[ok]).mean())
    best = max(COARSE_RULES, key=lambda r: (acc[r], -COARSE_RULES.index(r)))
    log.info("coarse rule on the selection split: %s (%s)", best, ", ".join(f"{r}={a:.4f}" for r, a in acc.items()))
    return best


def _summary(r: EvalReport) -> dict[str, float | None]:
    cis = {f"{k}_ci": list(v) if v is not None else None  # as JSON reads them back; the card holds all three
           for k, v in (("top1", r.top1_ci), ("macro_f1", r.macro_f1_ci), ("coarse_top1", r.coarse_top1_ci))}
    return {"top1": r.top1, "top5": r.top5, "coarse_top1": r.coarse_top1, "coarse_top1_derived":
            r.coarse_top1_derived, "macro_f1": r.macro_f1, "ece": r.ece, "attribute_map": r.attribute_map, **cis}


def _load_report(path: Path) -> EvalReport | None:
    from ..evaluate.metrics import report_from_dict

    try:
        return report_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None
