"""Layer widths that differ from a backbone's standard architecture (structured pruning), as plain JSON.

A structurally pruned network is the standard architecture with narrower convolutions and norms. The card
stores only the modules whose widths changed, `{name: {"in_channels", "out_channels", "groups"}}` for a
convolution, `{"num_features"}` for a norm, `{"in_features", "out_features"}` for a linear layer, and
`apply_widths` narrows a freshly built standard model to match; the weights are then loaded strictly as
for any bundle. No pickled modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["apply_widths", "layer_widths", "width_changes"]


def layer_widths(module: nn.Module) -> dict[str, int] | None:
    """The widths of a convolution, norm or linear layer; None for anything else."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "groups": module.groups}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return {"num_features": module.num_features}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features}
    return None


def width_changes(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    """Modules of `model` whose widths differ from the same-named modules of `reference`."""
    ref = dict(reference.named_modules())
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        w = layer_widths(m)
        if w is not None and name in ref and w != layer_widths(ref[name]):
            out[name] = w
    return out


def _param(like: torch.Tensor | None, shape: tuple[int, ...]) -> nn.Parameter | None:
    if like is None:
        return None
    return nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device),
                        requires_grad=like.requires_grad)


def _narrow(m: nn.Module, w: dict[str, Any], name: str) -> None:
    if isinstance(m, nn.modules.conv._ConvNd):
        cin, cout, groups = int(w["in_channels"]), int(w["out_channels"]), int(w["groups"])
        if cin % groups or cout % groups:
            raise ValueError(f"{name}: {cin} -> {cout} channels do not split into {groups} groups")
        m.in_channels, m.out_channels, m.groups = cin, cout, groups
        m.weight = _param(m.weight, (cout, cin // groups, *m.kernel_size))
        if m.bias is not None:
            m.bias = _param(m.bias, (cout,))
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        n = int(w["num_features"])
        m.num_features = n
        if m.weight is not None:
            m.weight, m.bias = _param(m.weight, (n,)), _param(m.bias, (n,))
        if m.running_mean is not None:
            m.running_mean = torch.zeros(n, device=m.running_mean.device)
            m.running_var = torch.ones(n, device=m.running_var.device)
    elif isinstance(m, nn.Linear):
        m.in_features, m.out_features = int(w["in_features"]), int(w["out_features"])
        m.weight = _param(m.weight, (m.out_features, m.in_features))
        if m.bias is not None:
            m.bias = _param(m.bias, (m.out_features,))
    else:
        raise TypeError(f"{name}: a {type(m).__name__} has no widths to change")


def apply_widths(model: nn.Module, changes: dict[str, dict[str, Any]]) -> nn.Module:
    """Narrow (or widen) the named layers of `model` in place; their values are placeholders to load over."""
    modules = dict(model.named_modules())
    for name, w in changes.items():
        if name not in modules:
            raise ValueError(f"the architecture has no module {name!r} to resize")
        _narrow(modules[name], w, name)
    return model
