"""The fine-tuning engine: catalogue in, model bundle + evaluation report out."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig, config_to_dict
from ..data.catalogue import Catalogue, CatalogueError, Sample, load_catalogue
from ..data.dataset import TensorImageDataset
from ..data.splits import Split, prepare_split
from ..data.transforms import create_transform
from ..evaluate.calibration import apply_temperature, fit_temperature
from ..evaluate.evaluator import baseline_report, evaluate_outputs
from ..evaluate.metrics import EvalReport, choose_thresholds
from ..evaluate.report import write_report
from ..models.backbones import create_backbone
from ..models.bundle import WEIGHTS, atomic_write_text, save_bundle
from ..models.card import ModelCard
from ..models.classifier import SkuModel
from ..models.inference import (
    COARSE_RULES,
    HeadOutputs,
    autocast_context,
    combine_coarse,
    resolve_device,
    run_heads,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .freeze import apply_freeze, train_mode
from .loggers import RunLogger

__all__ = ["TrainResult", "fit"]

log = logging.getLogger(__name__)


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
    """The monitored val metric; ties (common on a few hundred photos) go to coarse accuracy, then macro-F1."""
    return (m.get(monitor, m["top1"]), m.get("coarse_top1", 0.0), m["macro_f1"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_lambda(cfg: TrainConfig, total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / max(1, warmup)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _make_optimizer(cfg: TrainConfig, model: SkuModel, total_steps: int):
    head_params = [p for h in model.heads() for p in h.parameters()]
    groups = [
        {"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult},
        {"params": head_params, "lr": cfg.lr},
    ]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=True)
    if cfg.schedule == "onecycle":
        # OneCycleLR needs at least 2 warmup and 2 decay steps (it divides by each phase's length - 1).
        steps = max(4, total_steps)
        pct = min(0.5, max(2.5 / steps, cfg.warmup_epochs / max(1, cfg.epochs)))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=pct)
    else:
        warmup = int(cfg.warmup_epochs / max(1, cfg.epochs) * total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total_steps, warmup))
    return opt, sched


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


def _base_card(cfg: TrainConfig, cat: Catalogue, spec, embedding_dim: int) -> ModelCard:
    from .. import __version__

    coarse_index = {c: i for i, c in enumerate(cat.coarse_classes)}
    f2c = tuple(coarse_index[cat.hierarchy[c]] for c in cat.classes) if cat.hierarchy else ()
    coarse = tuple(cat.coarse_classes) if cfg.coarse_loss_weight > 0 or f2c else ()
    return ModelCard(
        backbone=cfg.backbone, input_size=spec.input_size, mean=spec.mean, std=spec.std, crop_pct=spec.crop_pct,
        classes=tuple(cat.classes), embedding_dim=embedding_dim, coarse_classes=coarse, fine_to_coarse=f2c,
        coarse_head=bool(coarse) and cfg.coarse_loss_weight > 0,
        attributes=tuple(cat.attributes) if cfg.attribute_loss_weight > 0 else (),
        coarse_fallback=cfg.coarse_fallback, dropout=cfg.dropout, train_config=config_to_dict(cfg),
        dataset={"path": str(cat.root), "layout": cat.layout, "fingerprint": cat.fingerprint(),
                 "sizes": {k: len(v) for k, v in cat.splits.items()}, "val_generated": cat.val_was_generated},
        skulens_version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _prepare_run_dir(cfg: TrainConfig) -> Path:
    run_dir = Path(cfg.out)
    ckpt = run_dir / "checkpoint"
    if not cfg.resume and (ckpt.exists() or (run_dir / "bundle").exists()):
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def fit(cfg: TrainConfig, *, catalogue: Catalogue | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune `cfg.backbone` on the catalogue, select on val, write bundle + report into `cfg.out`."""
    t0 = time.perf_counter()
    if catalogue is None:
        if not cfg.data:
            raise ConfigError("no data: pass --data PATH (a catalogue folder or manifest)")
        catalogue = load_catalogue(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    cat = catalogue
    run_dir = _prepare_run_dir(cfg)
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    log.info("catalogue: %s", cat.summary())

    backbone = create_backbone(cfg.backbone, cfg.weights, image_size=cfg.image_size)
    card = _base_card(cfg, cat, backbone.spec, backbone.num_features)
    train, val, skipped = _load_splits(cfg, cat, card, run_dir, progress)

    backbone.to(device)
    if cfg.channels_last:
        backbone.to(memory_format=torch.channels_last)
    baseline = None
    ckpt = load_checkpoint(run_dir / "checkpoint") if cfg.resume else None
    if cfg.baseline and ckpt is None:
        baseline = baseline_report(card, train, val, precision=cfg.mixed_precision, seed=cfg.seed,
                                   progress=progress, backbone=backbone)
        atomic_write_text(run_dir / "baseline.json", json.dumps(baseline.to_dict()))
    elif cfg.baseline and (run_dir / "baseline.json").is_file():
        baseline = _load_report(run_dir / "baseline.json")

    model = SkuModel(backbone, card.num_classes, len(card.coarse_classes) if card.coarse_head else 0,
                     len(card.attributes), cfg.dropout).to(device)
    if cfg.init_from:  # a pruned bundle's narrower layers carry over (on resume too)
        from ..deploy.prune import adopt_pruning

        card = adopt_pruning(model, card, cfg.init_from)
    if cfg.init_from and ckpt is None:
        from .warm import warm_start

        warm_start(model, card, cfg.init_from)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(train.images) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    opt, sched = _make_optimizer(cfg, model, total_steps)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    weights = _class_weights(cfg, train.fine, card.num_classes)
    if weights is not None:
        weights = weights.to(device)

    state = _restore(cfg, ckpt, model, ema, opt, sched, run_dir)
    from .extras import training_extras

    card, teacher, adversary = training_extras(cfg, card, model, opt, device)

    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    logger = RunLogger(run_dir, cfg.loggers, config_to_dict(cfg))
    train_tf = create_transform(card, train=True, augment=cfg.augment, train_size=cfg.train_image_size)
    ds = TensorImageDataset(train.images, train.fine, train.coarse, train.attributes, train_tf)
    try:
        epochs_run = _train_loop(cfg, model, ema, opt, sched, ds, val, card, device, weights, state, run_dir,
                                 logger, steps_per_epoch, total_steps, progress, teacher=teacher,
                                 adversary=adversary)
    finally:
        logger.close()

    return _finish(cfg, model, card, val, baseline, state, resumed=ckpt is not None, run_dir=run_dir,
                   device=device, t0=t0, cat=cat, skipped=skipped, epochs_run=epochs_run)


def _load_splits(cfg: TrainConfig, cat: Catalogue, card: ModelCard, run_dir: Path,
                 progress: bool) -> tuple[Split, Split, list[tuple[str, str]]]:
    """Decode train (+ catalogue photos) and val once; list what could not be decoded."""
    train_samples = list(cat.split("train"))
    if cfg.catalogue_images:
        train_samples += _catalogue_samples(cat, train_samples)
    train = prepare_split(train_samples, card, desc="train", progress=progress)
    val = prepare_split(list(cat.split("val")), card, desc="val", progress=progress)
    skipped = train.skipped + val.skipped
    if skipped:
        atomic_write_text(run_dir / "skipped_images.tsv", "".join(f"{p}\t{r}\n" for p, r in skipped))
    if not train.images or not val.images:
        raise CatalogueError("no decodable images in the train or val split")
    return train, val, skipped


def _restore(cfg: TrainConfig, ckpt: dict[str, Any] | None, model: SkuModel, ema, opt, sched,
             run_dir: Path) -> dict[str, Any]:
    """The loop state: fresh, or the interrupted run's (after checking it is the same run)."""
    if ckpt is None:
        if cfg.resume:
            log.warning("%s: no checkpoint to resume from; starting a new run", run_dir)
        return {"epoch": 0, "step": 0, "best": [-1.0], "best_epoch": -1, "bad_epochs": 0, "history": []}
    if ckpt["config"] != {**config_to_dict(cfg), "resume": False}:
        raise ConfigError(f"{run_dir}: --resume with a different config than the interrupted run")
    model.load_state_dict(ckpt["model"])
    if ema is not None and "ema" in ckpt:
        ema.module.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    log.info("resumed %s at epoch %d, step %d", run_dir, ckpt["state"]["epoch"], ckpt["state"]["step"])
    # The checkpoint is the truth: epochs logged after it (killed before the next save) are dropped, and one
    # saved but not yet logged is restored.
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in ckpt["state"]["history"]))
    return ckpt["state"]


def _finish(cfg: TrainConfig, model: SkuModel, card: ModelCard, val: Split, baseline: EvalReport | None,
            state: dict[str, Any], *, resumed: bool, run_dir: Path, device: torch.device, t0: float,
            cat: Catalogue, skipped: list[tuple[str, str]], epochs_run: int) -> TrainResult:
    """Reload the selected weights, calibrate and pick val-chosen settings, write bundle and report."""
    eval_tf = create_transform(card)
    # The selected weights are the bundle written at the best epoch; finish its card with val results.
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run_dir / "bundle" / WEIGHTS)))
    out = _calibrate(model, run_heads(model, val.images, eval_tf, device=device, precision=cfg.mixed_precision),
                     val)
    thresholds = None
    if out.attributes is not None and card.attributes:
        # Thresholds are chosen on val, so val attribute F1 is optimistic; mAP is threshold-free.
        thresholds = choose_thresholds(out.attributes, val.attributes.numpy())
    card = card.with_(coarse_rule=_choose_coarse_rule(out, val, card))
    report = evaluate_outputs(out, val, card, thresholds)
    wall = time.perf_counter() - t0  # this process only: a resumed run reports the time since resuming
    card = card.with_(
        attribute_thresholds=tuple(float(t) for t in thresholds) if thresholds is not None else (),
        metrics={"split": "val", "best_epoch": state["best_epoch"], "train_wall_time_s": round(wall, 1),
                 "resumed": resumed, "temperature": [round(float(t), 4) for t in model.temperature],
                 **_summary(report), "baseline": _summary(baseline) if baseline else None},
    )
    bundle = save_bundle(model, card, run_dir / "bundle")
    write_report(report, run_dir / "report", title=f"skulens: {cfg.backbone} on {cat.root.name} (val)",
                 baseline=baseline, extra={"train_wall_time_s": round(wall, 1), "best_epoch": state["best_epoch"],
                                           "history": state["history"]})
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return TrainResult(run_dir, bundle, card, report, baseline, state["best_epoch"], epochs_run, wall,
                       tuple(state["history"]), tuple(skipped))


def _calibrate(model: SkuModel, out: HeadOutputs, val: Split) -> HeadOutputs:
    """Fit the fine and coarse temperatures on val, store them in the model, return rescaled outputs."""
    t_fine = fit_temperature(out.fine, val.fine.numpy())
    coarse = out.coarse_head
    t_coarse = 1.0
    if coarse is not None:
        t_coarse = fit_temperature(coarse, val.coarse.numpy())
        coarse = apply_temperature(coarse, t_coarse)
    model.temperature.copy_(torch.tensor([t_fine, t_coarse]))
    log.info("temperature scaling on val: fine T=%.3f, coarse T=%.3f", t_fine, t_coarse)
    return HeadOutputs(apply_temperature(out.fine, t_fine), coarse, out.attributes, out.embeddings)


def _choose_coarse_rule(out: HeadOutputs, val: Split, card: ModelCard) -> str:
    """Pick how coarse is predicted (like attribute thresholds, on val); ties keep the earlier rule."""
    y = val.coarse.numpy()
    ok = y >= 0
    if not card.coarse_classes or out.coarse_head is None or not ok.any():
        return "combined"
    acc = {}
    for rule in COARSE_RULES:
        p = combine_coarse(out.fine, out.coarse_head, card.fine_to_coarse, len(card.coarse_classes), rule)
        acc[rule] = float((p.argmax(1)[ok] == y[ok]).mean())
    best = max(COARSE_RULES, key=lambda r: (acc[r], -COARSE_RULES.index(r)))
    log.info("coarse rule on val: %s (%s)", best, ", ".join(f"{r}={a:.4f}" for r, a in acc.items()))
    return best


def _summary(r: EvalReport) -> dict[str, float | None]:
    return {"top1": r.top1, "top5": r.top5, "coarse_top1": r.coarse_top1, "coarse_top1_derived":
            r.coarse_top1_derived, "macro_f1": r.macro_f1, "ece": r.ece, "attribute_map": r.attribute_map}


def _load_report(path: Path) -> EvalReport | None:
    from ..evaluate.metrics import report_from_dict

    try:
        return report_from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None


def _train_loop(cfg, model, ema, opt, sched, ds, val, card, device, weights, state, run_dir, logger,
                steps_per_epoch, total_steps, progress, *, teacher=None, adversary=None) -> int:
    eval_tf = create_transform(card)
    frozen = apply_freeze(model, cfg.freeze, cfg.trainable_stages,
                          head_only=state["epoch"] < cfg.gradual_head_epochs)
    epochs_run = 0
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.freeze == "gradual" and epoch == cfg.gradual_head_epochs:
            frozen = apply_freeze(model, "full")
        t_epoch = time.perf_counter()
        _seed_everything(cfg.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size,
            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
            persistent_workers=False,
        )
        train_mode(model, frozen)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        losses = []
        for x, yf, yc, ya in bar:
            x = x.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yf, yc, ya = yf.to(device), yc.to(device), ya.to(device)
            if adversary is not None:
                x = adversary(model, x, yf)
            with autocast_context(device, cfg.mixed_precision, training=True):
                out = model(x)
            loss = F.cross_entropy(out["fine"].float(), yf, weight=weights, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                loss = teacher.blend(loss, out["fine"], x)
            if "coarse" in out and (yc >= 0).any():
                loss = loss + cfg.coarse_loss_weight * F.cross_entropy(
                    out["coarse"].float(), yc, ignore_index=-100, label_smoothing=cfg.label_smoothing)
            if "attributes" in out:
                loss = loss + cfg.attribute_loss_weight * F.binary_cross_entropy_with_logits(
                    out["attributes"].float(), ya)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state["step"] += 1
            if ema is not None:
                ema.update(model, step=state["step"])
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{sched.get_last_lr()[-1]:.2e}")
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        epochs_run += 1
        _end_of_epoch(cfg, model, ema, opt, sched, val, card, device, eval_tf, state, run_dir, logger, epoch,
                      float(np.mean(losses)) if losses else float("nan"), time.perf_counter() - t_epoch,
                      progress)
        if state["bad_epochs"] >= cfg.patience:
            log.info("early stopping: no val improvement for %d epochs", cfg.patience)
            break
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
    return epochs_run


def _end_of_epoch(cfg, model, ema, opt, sched, val, card, device, eval_tf, state, run_dir, logger, epoch,
                  train_loss, epoch_time, progress) -> None:
    candidates = [("model", model)] + ([("ema", ema.module)] if ema is not None else [])
    results = {}
    for name, m in candidates:
        results[name] = _quick_metrics(run_heads(m, val.images, eval_tf, device=device,
                                                 precision=cfg.mixed_precision), val, card)
    name, best_now = max(results.items(), key=lambda kv: _selection_key(kv[1], cfg.monitor))
    score = _selection_key(best_now, cfg.monitor)
    record = {"step": state["step"], "epoch": epoch + 1, "train_loss": train_loss, "epoch_time_s": round(epoch_time, 1),
              "lr": sched.get_last_lr()[-1], **{f"val_{k}": v for k, v in results["model"].items()},
              **({f"val_ema_{k}": v for k, v in results["ema"].items()} if "ema" in results else {})}
    improved = score > tuple(state["best"])
    if improved:
        state.update(best=list(score), best_epoch=epoch + 1, bad_epochs=0)
        chosen = dict(candidates)[name]
        save_bundle(chosen, card.with_(metrics={"split": "val", "epoch": epoch + 1, "weights": name,
                                                **best_now}), run_dir / "bundle")
    else:
        state["bad_epochs"] += 1
    record["selected"] = name if improved else None
    state["history"].append(record)
    state["epoch"] = epoch + 1
    if progress:
        msg = " ".join(f"{k}={v:.4f}" for k, v in results["model"].items())
        ema_msg = (" | ema " + " ".join(f"{k}={v:.4f}" for k, v in results["ema"].items())) if ema else ""
        tqdm.write(f"epoch {epoch + 1}: loss={train_loss:.3f} {msg}{ema_msg} ({epoch_time:.0f}s)"
                   + (" *" if improved else ""))
    ckpt = {"config": {**config_to_dict(cfg), "resume": False}, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state}
    if ema is not None:
        ckpt["ema"] = ema.module.state_dict()
    save_checkpoint(run_dir / "checkpoint", ckpt)
    # Logged after the checkpoint: a kill in between loses this line until a resume rewrites the log from the
    # checkpoint's history (see _restore), so metrics.jsonl never holds an epoch twice or one the run lost.
    logger.log(state["step"], record)
