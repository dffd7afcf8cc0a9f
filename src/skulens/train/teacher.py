"""Distillation in the training engine: a frozen teacher bundle's soft targets blended into the fine loss.

When `TrainConfig.teacher` is set, the engine runs the teacher (eval mode, no gradients, frozen) on the same
augmented batch as the student and blends the fine-head loss as

    loss_fine = alpha * KL(softmax(t / T) || softmax(s / T)) * T^2 + (1 - alpha) * CE(s, labels)

(Hinton et al. 2015; T^2 keeps the soft-target gradients on the scale of the hard ones). The coarse and
attribute heads keep their label losses; the card records the teacher under `lineage`. The recipe that
trains a small student this way is `skulens.deploy.distill.distill`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..models.bundle import load_bundle
from ..models.card import ModelCard, val_top1
from ..models.inference import autocast_context

__all__ = ["Teacher", "distillation_loss", "load_teacher"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
                      ) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, averaged over the batch."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


class Teacher:
    """A frozen bundle whose fine logits, in the student's class order, are the soft targets."""

    def __init__(self, net: torch.nn.Module, card: ModelCard, student: ModelCard, device: torch.device, *,
                 temperature: float, alpha: float, precision: str = "auto", source: str = ""):
        missing = sorted(set(student.classes) - set(card.classes))
        if missing:
            raise ConfigError(f"teacher {source or card.backbone} does not know the student's class(es) "
                              f"{', '.join(missing[:5])}: distil from a teacher of the same catalogue")
        self.net = net.to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        where = {c: i for i, c in enumerate(card.classes)}
        self.index = torch.tensor([where[c] for c in student.classes], device=device)
        # Batches arrive normalised for the student; re-normalise when the teacher was trained otherwise.
        shape = (1, 3, 1, 1)
        s_mean, s_std = torch.tensor(student.mean).view(shape), torch.tensor(student.std).view(shape)
        t_mean, t_std = torch.tensor(card.mean).view(shape), torch.tensor(card.std).view(shape)
        self._scale = (s_std / t_std).to(device)
        self._shift = ((s_mean - t_mean) / t_std).to(device)
        self._same_norm = card.mean == student.mean and card.std == student.std
        self.device, self.precision = device, precision
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.summary: dict[str, Any] = {
            "bundle": source, "backbone": card.backbone, "input_size": card.input_size,
            "val_top1": val_top1(card), "dataset_fingerprint": card.dataset.get("fingerprint"),
            "temperature": self.temperature, "alpha": self.alpha,
        }

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher fine logits for a student-normalised batch, columns in the student's class order."""
        if self.net.training:  # nothing may switch the teacher to training mode (BatchNorm, dropout)
            self.net.eval()
        if not self._same_norm:
            x = x * self._scale + self._shift
        with autocast_context(self.device, self.precision):
            out = self.net(x)["fine"]
        return out.float().index_select(1, self.index)

    def blend(self, ce: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The distilled fine loss from the label loss `ce` and the student's logits on batch `x`."""
        kd = distillation_loss(student_logits, self.logits(x), self.temperature)
        return self.alpha * kd + (1.0 - self.alpha) * ce


def load_teacher(bundle: str, student: ModelCard, device: torch.device, *, temperature: float, alpha: float,
                 precision: str = "auto") -> Teacher:
    net, card = load_bundle(bundle, device)
    net.to(memory_format=torch.channels_last)  # as skulens.load does: the engine's batches are channels-last
    return Teacher(net, card, student, device, temperature=temperature, alpha=alpha, precision=precision,
                   source=str(Path(bundle).resolve()))
