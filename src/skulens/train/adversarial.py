"""Adversarial fine-tuning (`--adversarial fgsm|pgd`): part of each training batch replaced by attacks.

Attacks are made on the current weights, in pixel space [0, 1] before normalisation (the attacks are
`skulens.evaluate.attacks`'), with the model in eval mode: BatchNorm uses its running statistics (the
attack then does not depend on the rest of the batch and does not move the running statistics towards
adversarial inputs) and dropout is off; each module's training mode is restored after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import TrainConfig
from ..evaluate.attacks import eval_mode, fgsm, fine_logits_fn, normalisation, pgd
from ..models.card import ModelCard
from ..models.inference import autocast_context

__all__ = ["AdversarialBatch"]


class AdversarialBatch:
    """Engine hook for `--adversarial`: replaces the first `fraction` of each (shuffled) batch by attacks."""

    def __init__(self, kind: str, eps: float, steps: int, fraction: float, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, precision: str = "auto", seed: int = 0):
        if kind not in ("fgsm", "pgd"):
            raise ValueError(f"unknown attack {kind!r}: fgsm or pgd")
        self.kind, self.eps, self.steps, self.fraction = kind, float(eps), int(steps), float(fraction)
        self.mean, self.std, self.device, self.precision = tuple(mean), tuple(std), device, precision
        self._m, self._s = normalisation(mean, std, device)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, cfg: TrainConfig, card: ModelCard, device: torch.device) -> AdversarialBatch:
        return cls(cfg.adversarial, cfg.adversarial_eps / 255, cfg.adversarial_steps,
                   cfg.adversarial_fraction, card.mean, card.std, device, cfg.mixed_precision, cfg.seed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`x` (normalised, as the loader gives it) with its first rows replaced by adversarial versions."""
        n = min(len(x), math.ceil(self.fraction * len(x)))
        if n == 0 or self.eps <= 0:
            return x
        forward = fine_logits_fn(model, self.mean, self.std, self.device,
                                 lambda: autocast_context(self.device, self.precision, training=True))
        pixels = (x[:n].detach() * self._s + self._m).clamp(0, 1)
        with eval_mode(model):
            if self.kind == "fgsm":
                adv = fgsm(forward, pixels, y[:n], self.eps)
            else:
                adv = pgd(forward, pixels, y[:n], self.eps, steps=self.steps, generator=self.generator)
        out = x.detach().clone()
        out[:n] = (adv - self._m) / self._s
        return out
