"""Evaluate a model on any catalogue split, optionally beside the linear-probe baseline; write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.catalogue import CatalogueError, load_catalogue
from ..data.locate import resolve_data
from ..data.splits import Split, prepare_split
from ..models.card import ModelCard
from ..models.inference import HeadOutputs, card_coarse
from .metrics import EvalReport, evaluate_predictions
from .report import write_report

if TYPE_CHECKING:
    from ..models.predictor import Model

__all__ = ["baseline_report", "evaluate_model", "evaluate_outputs"]


def evaluate_outputs(out: HeadOutputs, split: Split, card: ModelCard,
                     thresholds: np.ndarray | None = None) -> EvalReport:
    has_coarse = bool(card.coarse_classes) and bool((split.coarse >= 0).any())
    coarse = card_coarse(out, card)
    has_attrs = out.attributes is not None and split.attributes.shape[1] > 0
    return evaluate_predictions(
        out.fine, split.fine.numpy(), card.classes, paths=split.paths,
        coarse_probs=coarse if has_coarse else None,
        coarse_targets=split.coarse.numpy() if has_coarse else None,
        coarse_names=card.coarse_classes if has_coarse else None,
        fine_to_coarse=np.asarray(card.fine_to_coarse) if card.fine_to_coarse else None,
        attr_probs=out.attributes if has_attrs else None,
        attr_targets=split.attributes.numpy() if has_attrs else None,
        attr_names=card.attributes if has_attrs else None,
        attr_thresholds=thresholds if has_attrs else None,
        attr_exclusive=card.attribute_exclusive if has_attrs else (),
    )


def baseline_report(card: ModelCard, train: Split, val: Split, *, weights: str | None = None,
                    precision: str = "auto", seed: int = 0, progress: bool = True,
                    backbone=None) -> EvalReport:
    """Linear probe on the untouched pretrained backbone: the 'before fine-tuning' point."""
    from ..data.transforms import create_transform
    from ..models.backbones import create_backbone
    from .baseline import extract_features, linear_probe

    if backbone is None:
        backbone = create_backbone(card.backbone, weights, image_size=card.input_size)
    tf = create_transform(card)
    xtr = extract_features(backbone, train.images, tf, precision=precision, progress=progress)
    xva = extract_features(backbone, val.images, tf, precision=precision, progress=progress)
    probs = linear_probe(xtr, train.fine.numpy(), xva, card.num_classes, seed=seed)
    return evaluate_outputs(HeadOutputs(probs, None, None, None), val, card.with_(attributes=()), None)


def evaluate_model(model: Model, data: str | os.PathLike | None = None, *, split: str = "val",
                   out: str | os.PathLike | None = None, baseline: bool = False,
                   progress: bool = True) -> EvalReport:
    """Evaluate `model` on a catalogue split; without `data`, on the dataset recorded in its card."""
    card = model.card
    data = resolve_data(data, recorded=card.dataset.get("path"))
    cat = load_catalogue(data)
    target = prepare_split(list(cat.split(split)), card, desc=split, progress=progress)
    if not target.images:
        raise CatalogueError(f"{split}: no decodable images")
    outputs = model.run(target.images, progress=progress)
    thr = np.asarray(card.attribute_thresholds) if card.attribute_thresholds else None
    report = evaluate_outputs(outputs, target, card, thr)
    base = None
    if baseline:
        train = prepare_split(list(cat.split("train")), card, desc="train (baseline)", progress=progress)
        weights = card.train_config.get("weights")
        base = baseline_report(card, train, target, weights=weights, precision=model.precision,
                               progress=progress)
    if out is not None:
        write_report(report, Path(out), title=f"skulens: {card.backbone} on {Path(data).name} ({split})",
                     baseline=base, extra={"split": split, "data": str(data), "skipped": target.skipped})
    return report
