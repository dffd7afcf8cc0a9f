"""Pruning: unstructured L1 sparsity, or structured channel pruning that really removes channels.

- unstructured: `torch.nn.utils.prune.l1_unstructured` on every convolution of the backbone, layer by
  layer (each layer loses `amount` of its smallest weights), made permanent. The tensors keep their
  shapes: dense CPU kernels do the same work on zeros, so this buys no CPU speed (the deployment
  benchmark measures it); it only helps sparse runtimes or compression.
- structured: torch-pruning's dependency graph (`pip install 'skulens[prune]'`) with L1-magnitude
  channel importance removes `amount` of the channels of every prunable group (expanded channels, the
  residual streams of each stage with all their consumers, the stem), so every layer is really narrower.
  The heads and the final 1x1 conv are kept whole: the embedding width and the classes do not change.

The pruned bundle is the standard architecture narrowed as its card's `pruning.widths` says (plain JSON,
see `skulens.models.pruned`), so `skulens.load` rebuilds it without pickled modules. A recovery
fine-tune goes through the training engine (`init_from` the pruned bundle): the narrower layers carry
over, and for unstructured pruning the pruned weights are held at zero after every optimizer step.
`prune_and_recover` (the CLI's `skulens prune`) does both: OUT/pruned, then the recovered OUT/bundle.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import PRUNE_RECOVERY, ConfigError, TrainConfig, resolve_config, warn_unused
from ..data.locate import bundle_named, recorded_dataset, resolve_data
from ..evaluate.heldout import split_settings
from ..models.bundle import BundleError, load_bundle, read_card, save_bundle
from ..models.card import ModelCard, val_top1
from ..models.channels import width_changes
from ..models.classifier import SkuModel

if TYPE_CHECKING:
    from ..train.engine import TrainResult

__all__ = ["KINDS", "RECOVERY_DEFAULTS", "PruneResult", "PruneRun", "prune_and_recover", "prune_bundle",
           "prune_model", "sparsity"]

KINDS = ("structured", "unstructured")
# A recovery fine-tune after pruning: short, and every stage trains (pruning changed the early stages
# too, and their BatchNorm statistics must be re-estimated).
RECOVERY_DEFAULTS: dict[str, Any] = PRUNE_RECOVERY


@dataclass(frozen=True)
class PruneResult:
    bundle: Path  # the pruned bundle, before any recovery fine-tune
    kind: str
    amount: float
    params_before: int
    params_after: int
    # unstructured: zeros among the pruned layers' weights; structured: 1 - params_after / params_before
    sparsity: float
    card: ModelCard


def _conv_weights(model: SkuModel) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and n.startswith("backbone.")]


def sparsity(model: nn.Module, names: list[str]) -> float:
    """Share of exactly-zero values among the named parameters."""
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    total = sum(params[n].numel() for n in names)
    return zeros / max(1, total)


def _unstructured(model: SkuModel, amount: float) -> dict[str, Any]:
    from torch.nn.utils import prune

    names = []
    for name, m in _conv_weights(model):
        prune.l1_unstructured(m, "weight", amount=amount)
        prune.remove(m, "weight")  # permanent: plain `weight` tensors with zeros, no masks to save
        names.append(f"{name}.weight")
    return {"kind": "unstructured", "method": "L1 magnitude, per layer (torch.nn.utils.prune)",
            "parameters": names, "sparsity": round(sparsity(model, names), 6)}


def _structured(model: SkuModel, amount: float, input_size: int, round_to: int | None) -> dict[str, Any]:
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise ImportError("structured pruning needs torch-pruning: pip install 'skulens[prune]'") from e

    reference = build_model_like(model)
    # The heads and the backbone's last conv stay whole: the classes and the embedding width do not change.
    last_conv = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)][-1:]
    keep = [*model.heads(), *last_conv]
    example = torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device)
    model.eval()
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=amount,
        ignored_layers=keep, round_to=round_to,
        output_transform=lambda out: sum(v.float().sum() for v in out.values()),
    )
    pruner.step()
    if model.head.in_features != reference.head.in_features:
        raise RuntimeError("structured pruning changed the embedding width; this backbone is not supported")
    return {"kind": "structured", "method": "L1 channel magnitude per dependency group (torch-pruning "
            f"{getattr(tp, '__version__', '?')})", "round_to": round_to,
            "widths": width_changes(model, reference)}


def build_model_like(model: SkuModel) -> SkuModel:
    """The standard (unpruned) architecture of `model`, untrained: the reference widths are read from it."""
    spec = model.backbone.spec
    from ..models.backbones import create_architecture

    heads = (model.head.out_features, model.coarse_head.out_features if model.coarse_head else 0,
             model.attribute_head.out_features if model.attribute_head else 0)
    return SkuModel(create_architecture(spec.name, image_size=spec.input_size), *heads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_model(model: SkuModel, *, kind: str, amount: float, input_size: int = 224,
                round_to: int | None = None) -> dict[str, Any]:
    """Prune `model` in place; returns the card's `pruning` entry (with the widths for structured)."""
    if kind not in KINDS:
        raise ValueError(f"unknown pruning kind {kind!r}: {', '.join(KINDS)}")
    if not 0 < amount < 1:
        raise ValueError(f"amount must be in (0, 1), got {amount}")
    before = n_params(model)
    if kind == "unstructured":
        info = _unstructured(model, amount)
    else:
        with torch.enable_grad():  # torch-pruning traces the graph with autograd
            info = _structured(model, amount, input_size, round_to)
    after = n_params(model)
    if kind == "structured":
        info["sparsity"] = round(1 - after / before, 6)
    return {**info, "amount": amount, "params_before": before, "params_after": after}


def prune_bundle(bundle: str | os.PathLike, out: str | os.PathLike, *, kind: str, amount: float,
                 round_to: int | None = None) -> PruneResult:
    """Prune a bundle's backbone and write the pruned bundle (its val metrics are dropped: not measured)."""
    net, card = load_bundle(bundle, "cpu")
    if card.pruning:
        raise BundleError(f"{bundle} is already pruned ({card.pruning.get('kind')}); prune the original")
    info = prune_model(net, kind=kind, amount=amount, input_size=card.input_size, round_to=round_to)
    lineage = {**card.lineage, "pruned_from": {"bundle": str(Path(bundle).resolve()),
                                               "val_top1": val_top1(card),
                                               "params": info["params_before"]}}
    new = card.with_(pruning=info, lineage=lineage, metrics={})
    path = save_bundle(net, new, out)
    return PruneResult(path, kind, amount, info["params_before"], info["params_after"], info["sparsity"], new)


@dataclass(frozen=True)
class PruneRun:
    pruned: PruneResult  # OUT/pruned, before recovery
    recovered: TrainResult | None  # the recovery fine-tune into OUT (OUT/bundle); None without recovery


def prune_and_recover(bundle: str | os.PathLike[str], out: str | os.PathLike[str], *,
                      kind: str = "structured", amount: float = 0.3, round_to: int | None = None,
                      recover: bool = True, data: str | os.PathLike[str] | None = None, progress: bool = True,
                      **overrides: Any) -> PruneRun:
    """Prune `bundle` into OUT/pruned, then fine-tune it in the engine to recover (run dir OUT).

    The recovery trains with RECOVERY_DEFAULTS under `overrides` (TrainConfig fields), from the pruned
    weights, on `data` (default: the catalogue `bundle` was trained on if still there, else the default).
    Its config and data are checked before anything is written.
    """
    import shutil

    from ..data.catalogue import inside_folder_catalogue
    from ..train.checkpoint import run_started
    from ..train.engine import fit

    run_dir = Path(out)
    resume = bool(overrides.get("resume"))
    if resume and not recover:
        raise ConfigError("resume continues a pruned bundle's recovery fine-tune, which recover=False skips")
    cfg = _recovery_config(bundle, run_dir, data, overrides) if recover else None
    catalogue = cfg.data if cfg is not None else recorded_dataset(bundle)
    if catalogue and inside_folder_catalogue(run_dir, catalogue):  # its files became a class of the next run
        raise ConfigError(f"--out {out} is inside the catalogue folder {catalogue}: the next run would read the "
                          "run's own files as photos; choose an --out outside it")
    if resume:
        pruned = _pruned_before(bundle, run_dir, kind, amount)
    elif (run_dir / "pruned").exists() or (run_dir / "bundle").exists():
        # a run killed before its first checkpoint has OUT/pruned alone, and --resume goes on from it too
        resumable = recover and ((run_dir / "checkpoint").exists() or (
            (run_dir / "pruned" / "card.json").is_file() and not (run_dir / "bundle").exists()))
        raise ConfigError(f"{run_dir} already holds a run; choose another --out"
                          + (", or --resume to go on with its recovery" if resumable else ""))
    else:
        pruned = prune_bundle(bundle, run_dir / "pruned", kind=kind, amount=amount, round_to=round_to)
    if cfg is None:
        return PruneRun(pruned, None)
    try:
        again = ["skulens prune --model", shlex.quote(os.fspath(bundle)), "--out", shlex.quote(os.fspath(out)),
                 "--kind", kind, "--amount", repr(amount), *(["--round-to", str(round_to)] if round_to else []),
                 *(["--data", shlex.quote(os.fspath(data))] if data else [])]
        return PruneRun(pruned, fit(cfg, progress=progress, resume_advice=" ".join(
            [*again, "--resume (with the options it was started with)"])))
    except BaseException:
        # refused or stopped before its first checkpoint (a setting the catalogue lacks, a Ctrl-C): nothing of
        # the recovery exists, so the pruned bundle goes too and the corrected command can run into this --out
        if not resume and not run_started(run_dir):
            shutil.rmtree(run_dir / "pruned", ignore_errors=True)
        raise


def _pruned_before(bundle: str | os.PathLike[str], run_dir: Path, kind: str, amount: float) -> PruneResult:
    """The pruned bundle an interrupted run wrote, to resume its recovery from (of `bundle`, the same kind and
    amount)."""
    path = run_dir / "pruned"
    if not (path / "card.json").is_file():
        raise ConfigError(f"{run_dir}: no pruned bundle to resume from (OUT/pruned); run without --resume")
    card = read_card(path)
    source = card.lineage.get("pruned_from", {}).get("bundle")
    if source is not None and bundle_named(source) != bundle_named(bundle):
        raise ConfigError(f"{run_dir} holds a pruned {source}, not {bundle}: resume it with that --model, or choose "
                          "another --out")
    info = card.pruning
    if info.get("kind") != kind or info.get("amount") != amount:
        raise ConfigError(f"{run_dir} was pruned {info.get('kind')} with amount {info.get('amount')}, not {kind} "
                          f"with {amount}: resume it with those, or choose another --out")
    return PruneResult(path, kind, amount, info["params_before"], info["params_after"], info["sparsity"], card)


def _recovery_config(bundle: str | os.PathLike[str], run_dir: Path, data: str | os.PathLike[str] | None,
                     overrides: dict[str, Any]) -> TrainConfig:
    card = read_card(bundle)  # the pruned bundle keeps its backbone and input size
    for key, kept in (("backbone", card.backbone), ("image_size", card.input_size)):
        given = overrides.get(key)  # a CLI value is still text here
        if given is not None and str(given) != str(kept):  # it was dropped without a word
            raise ConfigError(f"{key.replace('_', '-')} {given}: a pruned bundle keeps the "
                              f"{key.replace('_', ' ')} of {bundle} ({kept})")
    if overrides.get("init_from") is not None:  # it was overwritten by OUT/pruned without a word
        raise ConfigError("init_from: the recovery starts from the pruned bundle (OUT/pruned); prune the bundle "
                          "you want to start from (--model)")
    # The bundle's split unless told otherwise, as distill and retrain keep it: the default (10 %, seed 0) carved
    # another val out of train, with photos the bundle trained on, and "before vs after pruning" compared two vals.
    values = {**RECOVERY_DEFAULTS, **split_settings(card), **overrides}
    values.update(init_from=str(run_dir / "pruned"), backbone=card.backbone, image_size=card.input_size,
                  out=str(run_dir), data=str(resolve_data(data, recorded=recorded_dataset(bundle))))
    cfg = resolve_config(values)
    warn_unused(cfg)  # as train and retrain say it (--weights: the recovery starts from the pruned bundle)
    return cfg
