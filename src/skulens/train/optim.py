"""The optimizer, its learning-rate schedule and fp16 loss scaling of a fine-tuning run."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..config import TrainConfig
from ..models.inference import autocast_context

__all__ = ["fp16_training", "is_decayed", "make_grad_scaler", "make_optimizer", "param_groups"]


def is_decayed(name: str, p: torch.Tensor) -> bool:
    """timm's rule: weight decay on weight matrices and kernels, not on 1-D tensors (norm scales) or biases."""
    return p.ndim > 1 and not name.endswith(".bias")


def param_groups(cfg: TrainConfig, model: Any) -> list[dict[str, Any]]:
    """Backbone at lr * backbone_lr_mult, heads at lr; norm weights and biases without weight decay.

    Groups: backbone (decayed), heads (decayed), then the same two without decay; empty ones are left out.
    `model` has `backbone` and `heads()` (a SkuModel). Every parameter is listed, frozen ones too (`gradual`
    unfreezes the backbone later), which is why this is not timm's `param_groups_weight_decay`: that skips
    parameters without requires_grad. The rule is timm's: 1-D tensors (norm scales, biases) are not decayed.
    """
    heads = ((n, p) for h in model.heads() for n, p in h.named_parameters())
    parts = ((model.backbone.named_parameters(), cfg.lr * cfg.backbone_lr_mult), (heads, cfg.lr))
    decayed, undecayed = [], []
    for params, lr in parts:
        keep, skip = [], []
        for name, p in params:
            (keep if is_decayed(name, p) else skip).append(p)
        decayed.append({"params": keep, "lr": lr, "weight_decay": cfg.weight_decay})
        undecayed.append({"params": skip, "lr": lr, "weight_decay": 0.0})
    return [g for g in decayed + undecayed if g["params"]]


def _lr_lambda(cfg: TrainConfig, total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / max(1, warmup)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_optimizer(cfg: TrainConfig, model: Any, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW or SGD over `param_groups`, and the warmup + cosine / one-cycle / constant schedule."""
    groups = param_groups(cfg, model)
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=True)
    sched: torch.optim.lr_scheduler.LRScheduler
    if cfg.schedule == "onecycle":
        # OneCycleLR needs at least 2 warmup and 2 decay steps (it divides by each phase's length - 1).
        steps = max(4, total_steps)
        pct = min(0.5, max(2.5 / steps, cfg.warmup_epochs / max(1, cfg.epochs)))
        # SGD keeps its --momentum (one-cycle's momentum cycle, 0.95 -> 0.85 -> 0.95, overrode the flag); AdamW's
        # beta1 cycles, as the one-cycle policy has it (no flag sets it)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=pct, cycle_momentum=cfg.optimizer != "sgd")
    else:
        warmup = int(cfg.warmup_epochs / max(1, cfg.epochs) * total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total_steps, warmup))
    return opt, sched


def fp16_training(device: torch.device, precision: str) -> bool:
    """Whether training runs under fp16 autocast (the engine's autocast_context decides), which underflows
    small gradients without loss scaling: CUDA with precision fp16, or auto on a GPU without bf16."""
    ctx = autocast_context(device, precision, training=True)
    return isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.float16


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled exactly when training runs under fp16 autocast (disabled: changes nothing)."""
    return torch.amp.GradScaler("cuda", enabled=fp16_training(device, precision))
