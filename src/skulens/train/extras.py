"""The engine's optional per-run hooks: a distillation teacher, adversarial batches, pruning masks.

Each is off unless its config (or the `init_from` bundle) asks for it; the engine calls them at two
points of its loop (before the forward pass, after the fine-head loss) and otherwise runs unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..config import TrainConfig
from ..models.card import ModelCard
from ..models.classifier import SkuModel

if TYPE_CHECKING:
    from ..deploy.distill import Teacher
    from ..evaluate.robustness import AdversarialBatch

__all__ = ["training_extras"]

log = logging.getLogger(__name__)


def training_extras(cfg: TrainConfig, card: ModelCard, model: SkuModel, opt: torch.optim.Optimizer,
                    device: torch.device) -> tuple[ModelCard, Teacher | None, AdversarialBatch | None]:
    """The card to train under (with lineage), the teacher and the adversary; registers pruning masks."""
    if card.pruning.get("kind") == "unstructured":
        from ..deploy.prune import keep_zeros

        keep_zeros(model, opt, card.pruning["parameters"])
        log.info("unstructured pruning: %d pruned tensors held at zero", len(card.pruning["parameters"]))
    teacher = adversary = None
    if cfg.teacher:
        from ..deploy.distill import load_teacher

        teacher = load_teacher(cfg.teacher, card, device, temperature=cfg.distill_temperature,
                               alpha=cfg.distill_alpha, precision=cfg.mixed_precision)
        card = card.with_(lineage={**card.lineage, "teacher": teacher.summary})
        log.info("distilling from %s (%s), T=%g, alpha=%g", cfg.teacher, teacher.summary["backbone"],
                 cfg.distill_temperature, cfg.distill_alpha)
    if cfg.adversarial != "none":
        from ..evaluate.robustness import AdversarialBatch

        adversary = AdversarialBatch.from_config(cfg, card, device)
        log.info("adversarial training: %s, eps %g/255, %.0f%% of each batch", cfg.adversarial,
                 cfg.adversarial_eps, 100 * cfg.adversarial_fraction)
    return card, teacher, adversary
