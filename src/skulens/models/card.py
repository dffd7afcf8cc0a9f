"""The model card: everything needed to use a set of weights, saved beside them as card.json.

Serving and evaluation build their preprocessing from the card, so they can never drift from
training. The card is plain JSON (no pickle) and frozen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._version import __version__

if TYPE_CHECKING:
    import numpy as np

    from ..data._types import Product

__all__ = ["CARD_KEY", "CARD_SCHEMA", "SELF_TRAINING_CONFIG", "ModelCard", "enrolled_products",
           "exclusive_attribute_pairs", "exported_card_json", "model_products", "resolve_exclusive", "scores_cell",
           "val_top1", "without_conflicts"]

CARD_SCHEMA = 1
CARD_KEY = "skulens_card"  # the card's entry in an exported file's metadata (ONNX metadata_props, LiteRT's)
log = logging.getLogger(__name__)


class BackboneSpecLike(Protocol):
    """What a card needs of a backbone's spec (models.backbones.BackboneSpec): input size and normalisation."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float


# What every command reads of a card, checked when it is read (a hand edit's "input_size": null was a TypeError
# deep in preprocessing): name, accepted JSON types, in words.
_CORE_FIELDS = (("backbone", str, "a text"), ("input_size", int, "a whole number of pixels"),
                ("mean", (list, tuple), "a list of 3 numbers"), ("std", (list, tuple), "a list of 3 numbers"),
                ("crop_pct", (int, float), "a number"), ("classes", (list, tuple), "a list of names"),
                ("embedding_dim", int, "a whole number"), ("coarse_classes", (list, tuple), "a list of names"),
                ("fine_to_coarse", (list, tuple), "a list of indices"), ("enrolled", (list, tuple), "a list"),
                ("train_config", dict, "an object"), ("dataset", dict, "an object"), ("metrics", dict, "an object"))


@dataclass(frozen=True)
class ModelCard:
    backbone: str  # registry name or "timm:<arch>" / "torchvision:<arch>"
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    classes: tuple[str, ...]
    embedding_dim: int
    coarse_classes: tuple[str, ...] = ()
    fine_to_coarse: tuple[int, ...] = ()  # coarse index of each fine class
    coarse_head: bool = True  # a trained coarse head exists (else coarse comes from summed fine probs)
    coarse_rule: str = "combined"  # how coarse is predicted: combined | fine | head (chosen on val)
    attributes: tuple[str, ...] = ()
    attribute_thresholds: tuple[float, ...] = ()  # chosen on val, per attribute
    # Pairs of values of one group ("flavour=plain", "flavour=vanilla") that no training product carries
    # together: of two both above threshold, a prediction keeps the likelier (see exclusive_attribute_pairs).
    attribute_exclusive: tuple[tuple[str, str], ...] = ()
    coarse_fallback: float = 0.5  # below this fine confidence, predict the coarse class
    dropout: float = 0.0
    # Products added after training (skulens enroll): label, coarse, images kept in the bundle, text, date.
    enrolled: tuple[dict[str, Any], ...] = ()
    # Structured/unstructured pruning (skulens prune): kind, amount, sparsity and, for structured pruning, the
    # changed widths {module: {"in_channels", "out_channels", "groups"} or {"num_features"}} to rebuild it.
    pruning: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)  # where the weights came from: teacher, pruned_from
    train_config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)  # path, layout, fingerprint, sizes
    metrics: dict[str, Any] = field(default_factory=dict)  # val metrics of these weights
    skulens_version: str = ""
    created: str = ""
    schema: int = CARD_SCHEMA

    @classmethod
    def for_backbone(cls, backbone: str, spec: BackboneSpecLike, *, embedding_dim: int,
                     classes: tuple[str, ...] = (), **values: Any) -> ModelCard:
        """The one constructor from a backbone spec: its preprocessing, this skulens version, the time now.

        `values` are the other card fields (heads, dataset, train config); a plain pretrained backbone has none.
        """
        values.setdefault("skulens_version", __version__)
        values.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return cls(backbone=backbone, input_size=spec.input_size, mean=tuple(spec.mean), std=tuple(spec.std),
                   crop_pct=spec.crop_pct, classes=tuple(classes), embedding_dim=embedding_dim, **values)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def resize_to(self) -> int:
        """Eval resize of the short side before the centre crop."""
        return round(self.input_size / self.crop_pct)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """The card of a card.json's content; TypeError or ValueError (`read_card`: a BundleError) for one that is
        not a card: not a JSON object, a field missing, a field every command reads of the wrong type."""
        if not isinstance(data, dict):
            raise TypeError(f"a card is a JSON object, not {type(data).__name__}")
        schema = data.get("schema", CARD_SCHEMA)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise TypeError(f"schema must be a whole number, got {schema!r}")
        if schema > CARD_SCHEMA:
            raise ValueError(f"card schema {data['schema']} is newer than this skulens understands")
        for name, kinds, what in _CORE_FIELDS:
            value = data.get(name)
            if name in data and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise TypeError(f"{name} must be {what}, got {value!r}"[:200])
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if unknown := sorted(set(data) - known):  # a hand edit's typo, or a newer skulens of the same schema
            log.warning("model card: ignoring unknown field(s) %s (this skulens %s does not use them)",
                        ", ".join(map(repr, unknown)), __version__)
        for k in ("mean", "std", "classes", "coarse_classes", "fine_to_coarse", "attributes",
                  "attribute_thresholds", "enrolled"):
            if k in values:
                values[k] = tuple(values[k])
        if "attribute_exclusive" in values:  # JSON lists of [a, b]
            values["attribute_exclusive"] = tuple((str(a), str(b)) for a, b in values["attribute_exclusive"])
        return cls(**values)

    def with_(self, **changes: Any) -> ModelCard:
        return replace(self, **changes)


def exclusive_attribute_pairs(attribute_sets: Iterable[Iterable[str]],
                              attributes: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The pairs of `attributes` that are values of one group (`group=value`, same `group`) and never occur
    together in any of `attribute_sets` (one set per product: what the training labels carry).

    Flags (attributes without "=") are never exclusive. Each pair is sorted, and the pairs are sorted.
    """
    together: set[tuple[str, str]] = set()
    for carried in attribute_sets:
        values = sorted({a for a in carried if "=" in a})
        together.update((a, b) for i, a in enumerate(values) for b in values[i + 1:])
    groups: dict[str, list[str]] = {}
    for a in sorted(set(attributes)):
        group, sep, _ = a.partition("=")
        if sep:
            groups.setdefault(group, []).append(a)
    pairs = ((a, b) for values in groups.values() for i, a in enumerate(values) for b in values[i + 1:])
    return tuple(sorted(pair for pair in pairs if pair not in together))


def resolve_exclusive(probs: np.ndarray, positive: np.ndarray, names: Sequence[str],
                      exclusive: Sequence[tuple[str, str]]) -> np.ndarray:
    """`positive` (N x A booleans above threshold) with `without_conflicts` applied to every row: what
    predictions show, for the evaluation to score."""
    import numpy as np  # here: `skulens --help` and `info` import the card, and need no numpy

    out = np.zeros_like(positive, dtype=bool)
    index = {a: j for j, a in enumerate(names)}
    pairs = tuple(exclusive)
    for i in range(len(positive)):
        kept = without_conflicts(tuple((names[j], float(probs[i, j])) for j in np.flatnonzero(positive[i])), pairs)
        out[i, [index[a] for a, _ in kept]] = True
    return out


def without_conflicts(attributes: tuple[tuple[str, float], ...],
                       exclusive: tuple[tuple[str, str], ...]) -> tuple[tuple[str, float], ...]:
    """Of exclusive attributes (values of one group no product carries together), keep the likelier: from the
    most probable down, an attribute is kept unless it conflicts with one already kept (a value dropped for
    a likelier one suppresses nothing). Ties keep the card's order; the result keeps it too."""
    conflicts = {frozenset(pair) for pair in exclusive}
    kept: list[str] = []
    for a, _ in sorted(attributes, key=lambda ap: -ap[1]):  # stable: ties keep the card's order
        if not any(frozenset((a, k)) in conflicts for k in kept):
            kept.append(a)
    return tuple((a, p) for a, p in attributes if a in kept)


def _escape_name(name: str) -> str:
    return name.replace("\\", "\\\\").replace(";", "\\;")


def scores_cell(pairs: Iterable[tuple[str, float]], digits: int) -> str:
    """Labels (or attributes) with their scores as one CSV cell, "name:0.7040;name:0.2911".

    A ';' or '\\' inside a name is written '\\;' or '\\\\', so the cell splits back unambiguously: left to right,
    the character after a '\\' is taken as it is, any other ';' ends an item, and each item splits at its last ':'
    (a name may hold ':'; a score never does)."""
    return ";".join(f"{_escape_name(name)}:{score:.{digits}f}" for name, score in pairs)


def enrolled_products(card: ModelCard) -> dict[str, Product]:
    """The products enrolled after training (`skulens enroll`, POST /v1/products), as the card records them: the
    title (else the label, dashes as spaces) and text given at enrolment, and the coarse class. Such a product has
    no catalogue sheet, so without these a restarted service or `skulens tag` named it by its label."""
    from ..data._types import Product

    return {e["label"]: Product(label=e["label"], coarse_label=e.get("coarse_label"),
                                title=e.get("title") or e["label"].replace("-", " "), description=e.get("text") or "")
            for e in card.enrolled if isinstance(e, dict) and e.get("label") in card.classes}


def model_products(card: ModelCard, catalogue: Mapping[str, Product] | None = None) -> dict[str, Product]:
    """Every product a model can answer with: the catalogue's (its sheets), the enrolled ones as their enrolment
    recorded them, and each other class by its name and coarse class. What a service recommends, answers and
    lists, and what `skulens recommend` builds the same recommender over."""
    from ..data._types import Product

    products = dict(catalogue or {})
    for label, product in enrolled_products(card).items():  # their enrolment's title and text, not the label's
        products.setdefault(label, product)
    coarse = {c: card.coarse_classes[card.fine_to_coarse[i]] for i, c in enumerate(card.classes)
              if card.coarse_classes and card.fine_to_coarse}
    for c in card.classes:  # every label the model can answer has at least a name and its coarse class
        if c not in products:
            products[c] = Product(label=c, coarse_label=coarse.get(c), title=c.replace("-", " "))
    return products


def unfinished_run_note(card: ModelCard, folder: str | os.PathLike[str]) -> str | None:
    """What to say of RUN/bundle while its run has not finished: training writes it at each best epoch, before
    the run calibrates it (temperatures, attribute thresholds, coarse rule) and records its best epoch. A run that
    was killed leaves it there, and it loaded as a finished model without a word; killed (or out of disk) before its
    first checkpoint, it has only the run's config.yaml beside it. None for any other bundle."""
    folder = Path(folder)
    run = folder.parent
    if folder.name != "bundle" or "best_epoch" in card.metrics or not any(
            (run / name).exists() for name in ("checkpoint", "checkpoint.tmp", "config.yaml")):
        return None
    # A stage of self-training (OUT, OUT/round-K, OUT/teacher) resumes as the whole run, from the run's own config
    # (its stage's config.yaml alone is refused)
    whole = next((f / SELF_TRAINING_CONFIG for f in (run, run.parent) if (f / SELF_TRAINING_CONFIG).is_file()), None)
    config = whole if whole is not None and (whole.parent == run or run.name == "teacher"
                                             or run.name.startswith("round-")) else run / "config.yaml"
    return (f"{folder} is the snapshot of a run that has not finished (the best epoch so far, "
            f"{card.metrics.get('epoch', '?')}): not calibrated, its confidences and thresholds are not the final "
            f"model's. Wait for the run to end, or resume it if it was stopped: skulens train --config "
            f"{config} --resume")


def exported_card_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The card an exported .onnx file carries, as plain JSON, read without torch (ONNX's protobuf only): what a
    command that takes `-m FILE.onnx` with no card.json beside it knows of the model before it loads (its dataset).
    None for another file, or one without a readable card: loading the model says what is wrong."""
    p = Path(path)
    if p.suffix.lower() != ".onnx" or not p.is_file():
        return None
    try:
        import onnx

        meta = {m.key: m.value for m in onnx.load(str(p), load_external_data=False).metadata_props}
        data = json.loads(meta[CARD_KEY])
    except Exception:  # noqa: BLE001 - not ONNX, no card, a corrupt file: the model's loading says which
        return None
    return data if isinstance(data, dict) else None


SELF_TRAINING_CONFIG = "self-training.yaml"  # a self-training run's whole config, written by train.semi into OUT


def val_top1(card: ModelCard) -> float | None:
    """The bundle's fine top-1 on val: its card's `top1`, or, for a run that selected on a hold-out of train
    (whose `top1` is the hold-out's), the untouched val's (`metrics.val.top1`; None when it had no val)."""
    m = card.metrics
    if m.get("split", "val") == "val":
        return m.get("top1")
    val = m.get("val")
    return val.get("top1") if isinstance(val, dict) else None
