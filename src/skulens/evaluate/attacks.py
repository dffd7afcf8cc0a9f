"""Adversarial attacks in pixel space: FGSM and PGD on the fine head's cross-entropy.

Attacks work on the model's view of the photo in [0, 1] (before the card's mean/std normalisation), and the
normalisation is part of the attacked function (`fine_logits_fn`), so `eps` is a budget on real pixel values
(eps 8/255 = 0.031) and attacked images stay valid images in [0, 1].

- `fgsm`: one signed-gradient step.
- `pgd`: random start, step 2.5 eps / steps, projected onto the eps-ball and [0, 1] after every step
  (Madry et al. 2018).

Measuring robustness with them is `robustness.py` here; the training engine's `--adversarial` batches
(train/adversarial.py) use them too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Forward", "eval_mode", "fgsm", "fine_logits_fn", "normalisation", "pgd"]

Forward = Callable[[torch.Tensor], torch.Tensor]  # pixel-space batch in [0, 1] -> fine logits


def _input_grad(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # attacks work under an outer no_grad too
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(forward(x).float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size `eps` (pixel units, 8/255 = 0.031), clipped to [0, 1]."""
    if eps <= 0:
        return x.detach().clone()
    return (x.detach() + eps * _input_grad(forward, x, y).sign()).clamp_(0, 1)


def pgd(forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent in the L-inf ball of radius `eps` around `x`, intersected with [0, 1].
    start: the random start's noise in [-1, 1] (x's shape), where the caller draws it (per photo); else it is
    drawn from `generator`."""
    x0 = x.detach()
    if eps <= 0:
        return x0.clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    adv = x0.clone()
    if random_start:
        noise = (start.to(x0) if start is not None
                 else torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) * 2 - 1)
        adv = torch.max(torch.min(adv + eps * noise, hi), lo)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(forward, adv, y).sign()
        adv = torch.max(torch.min(adv, hi), lo).detach()
    return adv


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside, each submodule's own train/eval flag restored after (frozen stages stay frozen)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def normalisation(mean: Sequence[float], std: Sequence[float], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A card's mean and std as 1 x 3 x 1 x 1 tensors: normalised = (pixels - mean) / std."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1),
            torch.tensor(std, device=device).view(1, 3, 1, 1))


def fine_logits_fn(model: nn.Module, mean: Sequence[float], std: Sequence[float], device: torch.device,
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> Forward:
    """Pixel-space batch -> the model's fine logits, with the card's normalisation inside."""
    m, s = normalisation(mean, std, device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast() if autocast else contextlib.nullcontext():
            return model((x - m) / s)["fine"].float()

    return forward
