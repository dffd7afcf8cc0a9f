"""Evaluate a model on any catalogue split, optionally beside the linear-probe baseline; write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.catalogue import Catalogue, CatalogueError, inside_folder_catalogue
from ..data.locate import resolve_data
from ..data.splits import Split, prepare_split
from ..models.card import ModelCard
from ..models.inference import HeadOutputs, card_coarse
from .heldout import card_catalogue
from .metrics import EvalReport, evaluate_predictions
from .report import IN_SAMPLE_NOTE, write_report

if TYPE_CHECKING:
    from ..models.predictor import Model

__all__ = ["baseline_report", "evaluate_model", "evaluate_outputs", "evaluate_with_baseline", "pretrained_features"]


def evaluate_outputs(out: HeadOutputs, split: Split, card: ModelCard,
                     thresholds: np.ndarray | None = None) -> EvalReport:
    has_coarse = bool(card.coarse_classes) and bool((split.coarse >= 0).any())
    coarse = card_coarse(out, card)
    # A split where no sample carries any of the model's attributes has no attribute labels (a catalogue
    # without attributes): its attribute metrics are unknown, not 0.
    has_attrs = out.attributes is not None and split.attributes.shape[1] > 0 and bool(split.attributes.any())
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


def pretrained_features(card: ModelCard, split: Split, backbone, *, precision: str = "auto",  # type: ignore[no-untyped-def]
                        progress: bool = True) -> np.ndarray:
    """The backbone's pooled features of a split's photos, seen as evaluation sees them (the card's transform)."""
    from ..data.transforms import create_transform
    from .baseline import extract_features

    return extract_features(backbone, split.images, create_transform(card), precision=precision, progress=progress)


def baseline_report(card: ModelCard, train: Split, val: Split, *, weights: str | None = None,
                    precision: str = "auto", seed: int = 0, progress: bool = True,
                    backbone=None, device: str | torch.device | None = None,
                    probe: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> EvalReport:
    """Linear probe on the untouched pretrained backbone: the 'before fine-tuning' point.

    `device`: where the backbone runs (it is moved there); None leaves it where it is (a new one: the CPU).
    `probe`: the probe already fitted on `train`'s features (`baseline.probe_head`'s rows for the fine classes), not
    fitted again.
    """
    from .baseline import linear_probe, probe_probs

    if backbone is None:
        from ..models.backbones import create_backbone

        backbone = create_backbone(card.backbone, weights, image_size=card.input_size)
    if device is not None:
        backbone = backbone.to(device)
    xva = pretrained_features(card, val, backbone, precision=precision, progress=progress)
    if probe is not None:
        probs = probe_probs(probe, xva)
    else:
        xtr = pretrained_features(card, train, backbone, precision=precision, progress=progress)
        probs = linear_probe(xtr, train.fine.numpy(), xva, card.num_classes, seed=seed)
    return evaluate_outputs(HeadOutputs(probs, None, None, None), val, card.with_(attributes=()), None)


def trained_on(card: ModelCard, data: str | os.PathLike, cat: Catalogue) -> bool:
    """Whether `data` is the catalogue the card's run trained and selected on: where it was then, or a copy of it
    (the same photos, labels and splits). Another catalogue's split is not in-sample, whatever its name."""
    recorded = card.dataset or {}
    path = recorded.get("path")
    here = os.path.realpath(data)
    return (bool(path) and os.path.realpath(path) in (here, os.path.realpath(cat.root))) \
        or recorded.get("fingerprint") == cat.fingerprint()


def evaluate_model(model: Model, data: str | os.PathLike | None = None, *, split: str = "val",
                   out: str | os.PathLike | None = None, baseline: bool = False,
                   progress: bool = True) -> EvalReport:
    """Evaluate `model` on a catalogue split; without `data`, on the dataset recorded in its card. `baseline`
    puts the linear probe's results into `out`'s report (evaluate_with_baseline returns both reports)."""
    if baseline and out is None:
        raise ValueError("baseline: the linear probe's results go into out's report: give out, or call "
                         "evaluate_with_baseline for both reports (minutes of work would be thrown away)")
    return evaluate_with_baseline(model, data, split=split, out=out, baseline=baseline, progress=progress)[0]


def evaluate_with_baseline(model: Model, data: str | os.PathLike | None = None, *, split: str = "val",
                           out: str | os.PathLike | None = None, baseline: bool = False,
                           progress: bool = True) -> tuple[EvalReport, EvalReport | None]:
    """`evaluate_model`, and the linear-probe baseline's report beside it (None unless `baseline`)."""
    card = model.card
    if not card.classes:  # it failed on the data instead: "val: label(s) the model does not know: ..."
        from ..models.bundle import BundleError

        raise BundleError("this model has no classifier (a plain pretrained backbone): evaluation needs a "
                          "fine-tuned bundle (`skulens train`)")
    data = resolve_data(data, recorded=card.dataset.get("path"))
    if out is not None and inside_folder_catalogue(out, data):  # the report became a class (or a stray split)
        raise CatalogueError(f"out {out} is inside the catalogue folder {data}: the next command over it would "
                             "read these files as a class; choose a folder outside it")
    cat = card_catalogue(data, card)  # a generated val is the one the training run held out
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
        # The probe runs in PyTorch beside the model: on its device and precision; beside an ONNX or LiteRT
        # model (whose device and precision say nothing about PyTorch) on the CPU in fp32.
        torch_model = model.net is not None
        base = baseline_report(card, train, target, weights=weights,
                               device=model.device if torch_model else torch.device("cpu"),
                               precision=model.precision if torch_model else "off", progress=progress)
    if out is not None:
        extra: dict[str, object] = {"split": split, "data": str(data), "numerics": model.numerics,
                                    "skipped": target.skipped}
        if split == card.metrics.get("split") and card.metrics.get("temperature") and trained_on(card, data, cat):
            extra["calibration"] = IN_SAMPLE_NOTE.format(split=f"{split} split of the training catalogue")
        write_report(report, Path(out), title=f"skulens: {card.backbone} on {Path(data).name} ({split})",
                     baseline=base, extra=extra)
    return report, base
