"""Typed training configuration: defaults in code, overridable from a YAML/TOML file and the CLI.

Unknown keys are an error (a typo must never silently train with a default), and the resolved config
is written beside every run. This module imports no torch so `skulens --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency on 3.10 only)
    import tomli as tomllib

__all__ = [
    "PATH_KEYS",
    "PRESETS",
    "PRUNE_RECOVERY",
    "REMOVED_KEYS",
    "ConfigError",
    "TrainConfig",
    "apply_preset",
    "config_to_dict",
    "load_config",
    "preset_values",
    "recorded_config",
    "resolve_config",
    "with_absolute_paths",
]


class ConfigError(ValueError):
    """A bad configuration key or value."""


Freeze = Literal["full", "head", "partial", "gradual"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["cosine", "onecycle", "constant"]
Augment = Literal["none", "light", "strong", "robust"]
Precision = Literal["auto", "bf16", "fp16", "off"]
ClassWeights = Literal["none", "balanced"]
Adversarial = Literal["none", "fgsm", "pgd"]
SelectOn = Literal["val", "holdout"]
HeadInit = Literal["random", "probe"]
BatchNormMode = Literal["train", "frozen"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a fine-tuning run. Field comments are the CLI help."""

    data: str | None = None  # catalogue: folder, manifest (CSV/JSONL) or grocery layout
    out: str = "runs/skulens"  # run directory (checkpoints, logs, bundle)
    backbone: str = "efficientnet_lite2"  # registry name, "timm:<arch>" or "torchvision:<arch>"
    weights: str | None = None  # local weights file; default: the weights bundled for the backbone
    init_from: str | None = None  # start from this bundle's weights (same backbone); heads matched by class name
    # 224: measured on grocery val, Lite2 fine-tuned at 224 scores the same at 224 as at its native 260,
    # and inference is 1.35x cheaper. None: the size the backbone's weights were trained at.
    image_size: int | None = 224  # eval/serving size
    train_image_size: int | None = None  # training crop size (None: image_size); smaller trains faster
    epochs: int = 10
    batch_size: int = 32
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3  # peak learning rate of the heads
    backbone_lr_mult: float = 0.5  # backbone LR = lr * this (pretrained features move more slowly)
    weight_decay: float = 0.02
    momentum: float = 0.9  # SGD only, in [0, 1); one-cycle keeps it
    schedule: Schedule = "cosine"  # warmup + cosine, one-cycle, or constant
    warmup_epochs: float = 1.0
    freeze: Freeze = "partial"  # head = linear probe; partial = last `trainable_stages`; gradual = head first
    trainable_stages: int = 6  # partial: the last N stages train (EfficientNet: stem, 7 blocks, head = 9)
    gradual_head_epochs: int = 1  # gradual: epochs with only the heads training (fewer than --epochs)
    # probe: the heads start as the linear probe on the pretrained features (logistic regression, as the
    # baseline), then fine-tune (LP-FT): a short run starts where the probe ends instead of from random rows.
    head_init: HeadInit = "random"  # fine and coarse heads: random rows, or the linear probe's (LP-FT)
    # frozen: BatchNorm layers keep their pretrained running statistics while fine-tuning (their scale and shift
    # train); train: those of the trainable stages normalise each batch by its own statistics and update them.
    batch_norm: BatchNormMode = "train"  # BatchNorm statistics while fine-tuning: train (batch statistics) or frozen (pretrained)
    dropout: float = 0.2
    label_smoothing: float = 0.1
    class_weights: ClassWeights = "none"
    coarse_loss_weight: float = 0.5  # weight of the coarse head's loss (0 disables the coarse head)
    attribute_loss_weight: float = 0.5  # weight of the attribute head's loss (0 disables it)
    augment: Augment = "light"
    mixed_precision: Precision = "auto"  # auto: bf16 on CUDA; on CPU bf16 inference, fp32 training
    channels_last: bool = True
    ema: bool = True  # keep an exponential moving average of the weights, select it when it validates better
    ema_decay: float = 0.998  # the most the EMA's decay reaches: it warms up as 1 - (1 + step)^(-2/3) (timm), 0.95 at step 100, 0.98 at 360, so a short run averages its recent steps whatever this is
    patience: int = 5  # early stopping: epochs without val improvement
    monitor: str = "top1"  # val metric for model selection: top1, coarse_top1, macro_f1, or (with corrupt_fraction) robust_top1: the mean of top-1 on the selection photos as they are and degraded once each by the training corruptions (seeded)
    seed: int = 0
    num_workers: int = 0  # DataLoader workers (0: main process; images are decoded once and cached); each count draws the random augmentations in another order, so the weights (not their quality) differ with it
    val_fraction: float = 0.1  # used only when the catalogue has no val split
    # holdout: epoch, EMA, temperature, coarse rule and thresholds are chosen on a seeded stratified hold-out
    # of train (same stores as train), and val is scored once at the end, untouched by any choice.
    select_on: SelectOn = "val"  # the split every selection is made on: val, or holdout (a part of train)
    holdout_fraction: float = 0.15  # select_on holdout: share of each class's train photos held out
    # Self-training (skulens.train.semi): a teacher (--teacher, or trained first) pseudo-labels these photos.
    unlabeled: str | None = None  # folder of unlabelled photos: self-training, teacher first (see train/semi.py)
    pseudo_precision: float = 0.95  # unlabeled: pseudo-labels keep the confidence at which the teacher is this right
    pseudo_rounds: int = 1  # unlabeled: rounds of self-training, each round's student the next one's teacher
    catalogue_images: bool = True  # add the products' catalogue photos to the training set
    coarse_fallback: float = 0.5  # predict the coarse class when fine confidence is below this
    baseline: bool = True  # also fit the linear-probe baseline (before fine-tuning) for comparison
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests); the schedule's warm-up and decay are fitted into them
    device: str = "auto"  # auto, cpu, cuda, cuda:1
    loggers: tuple[str, ...] = ("tensorboard",)  # tensorboard, mlflow, wandb (offline unless $WANDB_MODE)
    resume: bool = False  # continue the run in `out` from its last checkpoint
    # Distillation (skulens distill): the fine head learns the teacher's soft targets on the same batch.
    teacher: str | None = None  # distillation: teacher bundle (same classes); None trains on labels only
    distill_temperature: float = 4.0  # distillation: temperature T of teacher and student softmax
    distill_alpha: float = 0.7  # distillation: fine loss = alpha * KL * T^2 + (1 - alpha) * CE
    # Adversarial fine-tuning: part of each batch is replaced by attacks on the current model, made in pixel
    # space [0, 1] before normalisation, the model in eval mode (BatchNorm running statistics, no dropout).
    adversarial: Adversarial = "none"  # adversarial fine-tuning on fgsm or pgd examples made on the fly
    adversarial_eps: float = 2.0  # adversarial: L-inf budget in pixel levels (eps / 255)
    adversarial_steps: int = 3  # adversarial pgd: steps (step size 2.5 * eps / steps)
    adversarial_fraction: float = 0.5  # adversarial: share of each batch replaced by its adversarial version
    # Corruption in the step (skulens.train.corrupt): the student sees a degraded photo (JPEG, blur, noise,
    # lighting, a tilt or an occluder), a teacher (--teacher) the clean one, so it learns to answer on the first what the teacher does on the second.
    corrupt_fraction: float = 0.0  # share of each batch degraded in the training step (0: none); with --teacher, the teacher sees the clean photo


# Named recipes (`skulens train --preset NAME`): a preset's keys come first, a --config file and flags override
# them. "best": a full fine-tune at the backbone's native resolution (Lite2: 260 px) instead of the default's last
# six stages at 224 px: a plain full fine-tune at 260 px scored 1.7 points above the default on the withheld
# Grocery test split (issue 12). Side by side on two hold-outs of train (benchmarks/holdout_grocery.py) it was
# ahead there (+0.7, +0.8) but not on val (+3.4, -7.1), in 2.2x the time: opt-in, not the default.
# "default" sets every key another preset sets, to its default: it means the defaults also where a run starts from
# another config (retrain from a bundle's recorded one, prune's recovery).
# What `skulens prune` fine-tunes with after pruning, under the flags given (here, torch-free, for its --help).
PRUNE_RECOVERY: dict[str, Any] = {"epochs": 3, "freeze": "full", "baseline": False, "warmup_epochs": 0.5}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {"freeze": "partial", "image_size": 224, "train_image_size": None},
    "best": {"freeze": "full", "image_size": None, "train_image_size": None},
}


def preset_values(name: str) -> dict[str, Any]:
    """The config keys preset `name` sets (a copy); an unknown name is a ConfigError naming the choices."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def apply_preset(values: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
    """Config values with a preset under them: `preset` (or else the values' own `preset` key) first, then the
    values. The `preset` key never reaches resolve_config. The CLI and `skulens.train` share this.

    Values that set a preset's key to something else win, with a warning naming them: a run's saved
    config.yaml sets every key, so `--preset best --config RUN/config.yaml` would otherwise be the saved
    recipe with nothing of the preset left, and say nothing."""
    values = dict(values)
    named = values.pop("preset", None)
    name = preset or named
    if not name:
        return values
    under = preset_values(str(name))
    overridden = {k: values[k] for k in under if k in values and values[k] != under[k]}
    if overridden:
        logging.getLogger(__name__).warning(
            "preset %r: the config sets %s over the preset's %s", name,
            ", ".join(f"{k}={v!r}" for k, v in overridden.items()),
            ", ".join(f"{k}={under[k]!r}" for k in overridden))
    return {**under, **values}


# Keys that once existed, with why they went: a config that still sets one gets this, not "unknown key".
REMOVED_KEYS: dict[str, str] = {
    "compile": "it never did anything (no run ever called torch.compile); delete it from the config",
}


PATH_KEYS = ("data", "out", "teacher", "init_from", "unlabeled")  # files and folders a run reads or writes


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its PATH_KEYS made absolute: what a run records (config.yaml, its checkpoint, the card) then
    names the same files from any folder. A relative `out` in config.yaml made `--resume` from another folder
    start a new run there."""
    return dataclasses.replace(cfg, **{k: os.path.abspath(getattr(cfg, k)) for k in PATH_KEYS if getattr(cfg, k)})


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["loggers"] = list(d["loggers"])
    return d


def recorded_config(cfg: TrainConfig) -> dict[str, Any]:
    """A run's config as its folder, card and checkpoint record it: how it trains, not how it was started (a
    resumed run wrote resume: true, and a new run from that config.yaml then warned there was nothing to resume)."""
    return {**config_to_dict(cfg), "resume": False}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a value (possibly a CLI string) to the field's type, or raise ConfigError."""
    origin_args = get_args(hint)
    if value is None:
        if type(None) in origin_args:
            return None
        raise ConfigError(f"{name}: may not be null")
    if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in origin_args:
        return None
    literal_values = _literal_values(hint)
    if literal_values:
        if value is False and "off" in literal_values:  # YAML 1.1 reads an unquoted `off` as false
            value = "off"
        if value not in literal_values:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, literal_values))}")
        return value
    base = _base_type(hint)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base in (int, float) and isinstance(value, bool):  # YAML `yes`: int(True) would be a silent 1
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        if base is tuple:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
                raise TypeError(value)  # a mapping gave its keys; nested lists their text
            return tuple(str(v) for v in value)
        if isinstance(value, (list, tuple, dict, set)):  # `backbone: [a, b]` became "['a', 'b']"
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {base.__name__}") from None


def _literal_values(hint: Any) -> tuple[Any, ...]:
    if getattr(hint, "__origin__", None) is Literal:
        return get_args(hint)
    return ()


def _base_type(hint: Any) -> type:
    args = [a for a in get_args(hint) if a is not type(None)]
    if getattr(hint, "__origin__", None) is tuple:
        return tuple
    if args and getattr(hint, "__origin__", None) is not Literal:
        return _base_type(args[0])
    return hint if isinstance(hint, type) else str


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = get_type_hints(TrainConfig)
    return _HINTS


def _validate(cfg: TrainConfig) -> TrainConfig:
    for f in fields(cfg):  # inf passes every range check below, NaN fails none ("lr inf" trained to NaN)
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{f.name}: must be a finite number, got {v}")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
    for name, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{name}: must be > 0, got {v}")
    if cfg.batch_size < 2:  # a batch of one photo: BatchNorm has nothing to normalise over (a traceback mid-epoch)
        raise ConfigError("batch_size: must be >= 2 (BatchNorm normalises over the photos of a batch)")
    for name in ("image_size", "train_image_size"):
        v = getattr(cfg, name)
        if v is not None and not 16 <= v <= 2048:
            raise ConfigError(f"{name}: {v} is outside 16..2048")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout: {cfg.dropout} is outside [0, 1)")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"label_smoothing: {cfg.label_smoothing} is outside [0, 1)")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"val_fraction: {cfg.val_fraction} is outside (0, 1)")
    if not 0 <= cfg.seed < 2**32:  # NumPy's generators take none outside it (a larger one was a traceback mid-run)
        raise ConfigError(f"seed: {cfg.seed} is outside 0..{2**32 - 1}")
    if not 0.5 <= cfg.pseudo_precision < 1:
        raise ConfigError(f"pseudo_precision: {cfg.pseudo_precision} is outside [0.5, 1)")
    if not 1 <= cfg.pseudo_rounds <= 10:
        raise ConfigError(f"pseudo_rounds: {cfg.pseudo_rounds} is outside [1, 10]")
    if cfg.pseudo_rounds > 1 and not cfg.unlabeled:
        raise ConfigError("pseudo_rounds: rounds of self-training need unlabelled photos (--unlabeled DIR)")
    if not 0 < cfg.holdout_fraction < 0.5:
        raise ConfigError(f"holdout_fraction: {cfg.holdout_fraction} is outside (0, 0.5)")
    if cfg.distill_temperature <= 0 or not 0 <= cfg.distill_alpha <= 1:
        raise ConfigError("distill_temperature must be > 0 and distill_alpha in [0, 1]")
    adv = (cfg.adversarial_eps, cfg.adversarial_steps, cfg.adversarial_fraction)
    if not (0 <= adv[0] <= 255 and adv[1] >= 1 and 0 < adv[2] <= 1):
        raise ConfigError("adversarial_eps must be in [0, 255], adversarial_steps >= 1, "
                          "adversarial_fraction in (0, 1]")
    if not 0 <= cfg.corrupt_fraction <= 1:
        raise ConfigError(f"corrupt_fraction: {cfg.corrupt_fraction} is outside [0, 1]")
    at_least = {"patience": (cfg.patience, 1), "max_steps": (cfg.max_steps, 1), "num_workers": (cfg.num_workers, 0),
                "trainable_stages": (cfg.trainable_stages, 0), "gradual_head_epochs": (cfg.gradual_head_epochs, 0)}
    for name, (v, low) in at_least.items():
        if v is not None and v < low:
            raise ConfigError(f"{name}: must be >= {low}, got {v}")
    in_range = {"ema_decay": (cfg.ema_decay, 0.0, 1.0), "coarse_fallback": (cfg.coarse_fallback, 0.0, 1.0)}
    for name, (v, low, high) in in_range.items():
        if not low <= v <= high:
            raise ConfigError(f"{name}: {v} is outside [{low:g}, {high:g}]")
    if not 0 <= cfg.momentum < 1:  # 1: a velocity that never decays
        raise ConfigError(f"momentum: {cfg.momentum} is outside [0, 1)")
    if cfg.optimizer == "sgd" and cfg.momentum == 0:
        raise ConfigError("momentum: SGD here uses Nesterov momentum, which needs momentum > 0")
    for name in ("weight_decay", "backbone_lr_mult", "coarse_loss_weight", "attribute_loss_weight", "warmup_epochs"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(cfg, name)}")
    if cfg.monitor not in ("top1", "coarse_top1", "macro_f1", "robust_top1"):
        raise ConfigError(f"monitor: {cfg.monitor!r} is not one of top1, coarse_top1, macro_f1, robust_top1")
    if cfg.monitor == "robust_top1" and cfg.corrupt_fraction <= 0:
        raise ConfigError("monitor robust_top1 scores the selection photos under the training corruptions: it "
                          "needs corrupt_fraction > 0")
    if cfg.head_init == "probe" and cfg.init_from:
        raise ConfigError(f"head_init probe: the heads start from {cfg.init_from}'s (--init-from, or the bundle "
                          "retrained or pruned), not from a linear probe; leave head_init at random")
    unknown = set(cfg.loggers) - {"tensorboard", "mlflow", "wandb"}
    if unknown:
        raise ConfigError(f"loggers: unknown {sorted(unknown)}; choose from tensorboard, mlflow, wandb")
    return cfg


def warn_unused(cfg: TrainConfig) -> None:
    """Settings that only matter with another one: said, not silently ignored (the CLI, the Python API and
    retrain say the same)."""
    default = TrainConfig()
    warn = logging.getLogger("skulens").warning
    if cfg.holdout_fraction != default.holdout_fraction and cfg.select_on != "holdout":
        warn("holdout_fraction %g is not used: it sizes the hold-out of --select-on holdout (this run selects on "
             "%s)", cfg.holdout_fraction, cfg.select_on)
    if cfg.pseudo_precision != default.pseudo_precision and not cfg.unlabeled:
        warn("pseudo_precision %g is not used: it sets the pseudo-label threshold of self-training (--unlabeled "
             "DIR)", cfg.pseudo_precision)
    for name in ("distill_alpha", "distill_temperature"):
        if getattr(cfg, name) != getattr(default, name) and not cfg.teacher and not cfg.unlabeled:
            warn("%s %g is not used: it weighs a teacher's soft targets (--teacher BUNDLE, or self-training's)",
                 name, getattr(cfg, name))
    if cfg.init_from and cfg.weights != default.weights:  # the warm start replaces the whole backbone
        warn("weights %s is not used: the run starts from %s's backbone (--init-from, or the bundle retrained or "
             "pruned)", cfg.weights, cfg.init_from)
    if cfg.batch_norm != default.batch_norm and cfg.freeze == "head":
        warn("batch_norm %s is not used: with --freeze head no BatchNorm statistics change (the backbone is frozen)",
             cfg.batch_norm)
    if cfg.freeze == "gradual" and cfg.gradual_head_epochs >= cfg.epochs:
        warn("gradual_head_epochs %d >= epochs %d: the backbone never unfreezes, so this run is a linear probe "
             "(--freeze head says so)", cfg.gradual_head_epochs, cfg.epochs)
    if cfg.warmup_epochs > cfg.epochs and cfg.schedule != "onecycle":
        warn("warmup_epochs %g > epochs %d: the whole run is warm-up, the learning rate never reaches --lr %g",
             cfg.warmup_epochs, cfg.epochs, cfg.lr)
    if cfg.schedule == "onecycle" and cfg.warmup_epochs > cfg.epochs / 2:
        warn("warmup_epochs %g: one-cycle warms up for at most half the run (%g epochs)", cfg.warmup_epochs,
             cfg.epochs / 2)
    # a setting of one mode, given while another runs
    needs = {"trainable_stages": (cfg.freeze == "partial", "--freeze partial"),
             "gradual_head_epochs": (cfg.freeze == "gradual", "--freeze gradual"),
             "momentum": (cfg.optimizer == "sgd", "--optimizer sgd"),
             "ema_decay": (cfg.ema, "--ema"),
             "backbone_lr_mult": (cfg.freeze != "head", "--freeze full, partial or gradual"),
             "adversarial_steps": (cfg.adversarial == "pgd", "--adversarial pgd (fgsm is one step)"),
             **{name: (cfg.adversarial != "none", "--adversarial fgsm or pgd")
                for name in ("adversarial_eps", "adversarial_fraction")}}
    for name, (used, mode) in needs.items():
        if not used and getattr(cfg, name) != getattr(default, name):
            warn("%s %s is not used: it is a setting of %s", name, getattr(cfg, name), mode)


def resolve_config(overrides: dict[str, Any] | None = None, base: TrainConfig | None = None) -> TrainConfig:
    """Apply `overrides` (from a file or the CLI) on top of `base` (defaults); unknown keys are an error."""
    base = base or TrainConfig()
    overrides = overrides or {}
    _refuse_removed(overrides)
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        # the CLI's spelling (batch-size) is the natural one in a file: the README calls every flag a config key
        hints = [f"{k} -> {k.replace('-', '_')}" for k in unknown if k.replace("-", "_") in names]
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}"
                          + (f" (config keys use underscores: {', '.join(hints)})" if hints else ""))
    hints = _hints()
    values = {k: _coerce(k, v, hints[k]) for k, v in overrides.items()}
    return _validate(dataclasses.replace(base, **values))


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read overrides from a YAML, TOML or JSON file (a flat mapping of TrainConfig keys)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p}: a folder; name the .yaml, .toml or .json file in it")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: a BOM (Windows editors) is no key's first character
    except UnicodeDecodeError:
        from .data.encoding import not_utf8

        raise ConfigError(f"{p}: {not_utf8(p)}") from None
    suffix = p.suffix.lower()  # E.TOML is TOML (it was read as YAML)
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_pairs_once)
        else:
            data = _yaml_without_repeats(text) or {}
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any parser error becomes a config error naming the file
        raise ConfigError(f"{p}: cannot parse config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # YAML's `1: 2`, `null: x`: a TypeError where the keys were sorted or joined
        raise ConfigError(f"{p}: keys are setting names, got {', '.join(repr(k) for k in odd[:3])}")
    _refuse_removed(data, where=f"{p}: ")
    return data


def _yaml_without_repeats(text: str) -> Any:
    """`yaml.safe_load`, but a key given twice in one mapping is a ConfigError naming it and its lines (the last
    one won, silently: `epochs: 2` then `epochs: 3` trained 3), as in a JSON file (`_pairs_once`); TOML's parser
    refuses it itself."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise ConfigError(f"key {key!r} is given twice (lines {seen[key]} and {line}): give it once")
            if isinstance(key, str):
                seen[key] = line
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: safe_load with one check more


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (json's own reading keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"key {key!r} is given twice: give it once")
        out[key] = value
    return out


def _refuse_removed(values: dict[str, Any], where: str = "") -> None:
    removed = sorted(set(values) & set(REMOVED_KEYS))
    if removed:
        raise ConfigError(where + "; ".join(f"{k}: this key was removed: {REMOVED_KEYS[k]}" for k in removed))


def config_fields() -> list[tuple[str, Any, Any, str]]:
    """(name, type hint, default, help) for each field: the CLI builds its flags from this."""
    import inspect

    src = inspect.getsource(TrainConfig)
    helps: dict[str, str] = {}
    for line in src.splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith(("#", '"')):
            name = line.split(":", 1)[0].strip()
            helps[name] = line.split("#", 1)[1].strip()
    return [(f.name, _hints()[f.name], f.default, helps.get(f.name, "")) for f in fields(TrainConfig)]

