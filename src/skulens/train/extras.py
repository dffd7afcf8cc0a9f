"""The engine's optional per-run hooks: a distillation teacher, adversarial batches, pruning masks.

Each is off unless its config (or the `init_from` bundle) asks for it; the engine calls them at two
points of its loop (before the forward pass, after the fine-head loss) and otherwise runs unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import TrainConfig
from ..models.card import ModelCard
from ..models.classifier import SkuModel

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from .adversarial import AdversarialBatch
    from .corrupt import CorruptBatch
    from .teacher import Teacher

__all__ = ["keep_zeros", "training_extras"]

log = logging.getLogger(__name__)


def training_extras(cfg: TrainConfig, card: ModelCard, model: SkuModel, opt: torch.optim.Optimizer,
                    device: torch.device
                    ) -> tuple[ModelCard, Teacher | None, AdversarialBatch | None, CorruptBatch | None]:
    """The card to train under (with lineage), the teacher, the adversary and the in-step corruption;
    registers pruning masks."""
    if card.pruning.get("kind") == "unstructured":
        keep_zeros(model, opt, card.pruning["parameters"])
        log.info("unstructured pruning: %d pruned tensors held at zero", len(card.pruning["parameters"]))
    teacher = adversary = None
    if cfg.teacher:
        from .teacher import load_teacher

        teacher = load_teacher(cfg.teacher, card, device, temperature=cfg.distill_temperature,
                               alpha=cfg.distill_alpha, precision=cfg.mixed_precision)
        card = card.with_(lineage={**card.lineage, "teacher": teacher.summary})
        log.info("distilling from %s (%s), T=%g, alpha=%g", cfg.teacher, teacher.summary["backbone"],
                 cfg.distill_temperature, cfg.distill_alpha)
    if cfg.adversarial != "none":
        from .adversarial import AdversarialBatch

        adversary = AdversarialBatch.from_config(cfg, card, device)
        log.info("adversarial training: %s, eps %g/255, %.0f%% of each batch", cfg.adversarial,
                 cfg.adversarial_eps, 100 * cfg.adversarial_fraction)
    corrupter = None
    if cfg.corrupt_fraction > 0:
        from .corrupt import CorruptBatch

        corrupter = CorruptBatch(cfg.corrupt_fraction, card.mean, card.std, seed=cfg.seed)
        log.info("corruption in the step: %.0f%% of each batch degraded%s", 100 * cfg.corrupt_fraction,
                 ", the teacher on the clean photos" if teacher is not None else "")
    return card, teacher, adversary, corrupter


def keep_zeros(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> RemovableHandle:
    """Hold the currently-zero entries of the named weights at zero after every optimizer step
    (a recovery fine-tune must not grow back what unstructured pruning removed). Returns the hook handle."""
    params = dict(model.named_parameters())
    masks = {n: (params[n] != 0) for n in names if n in params}

    def hook(*_: Any) -> None:
        with torch.no_grad():
            for n, mask in masks.items():
                params[n].mul_(mask)

    hook()
    return optimizer.register_step_post_hook(hook)
