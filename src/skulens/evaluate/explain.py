"""Grad-CAM explanations (captum's LayerGradCam) for any bundle: where in the photo the prediction came from."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..models.inference import autocast_context, head_probabilities

__all__ = ["Explanation", "explain", "overlay", "target_layer"]


@dataclass(frozen=True)
class Explanation:
    label: str
    class_index: int
    confidence: float
    heatmap: np.ndarray  # H x W in [0, 1], aligned with `image`
    image: Image.Image  # the model's view: the card's resize + centre crop


def target_layer(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last backbone module that outputs a spatial map (EfficientNet: the final conv + norm)."""
    candidates: list[nn.Module] = []
    order: list[nn.Module] = []
    body = net.backbone.body

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        # Pooling layers also output 4-D (N x C x 1 x 1) tensors: only real spatial maps count.
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-2:] != (1, 1):
            order.append(module)

    for m in body.modules():
        if m is not body and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            candidates.append(m)
    handles = [m.register_forward_hook(hook) for m in candidates]
    try:
        with torch.no_grad():
            net.backbone(x)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("the backbone has no spatial feature map to explain")
    return order[-1]


def explain(model, image, *, target: str | int | None = None) -> Explanation:
    """Grad-CAM of `target` (a class name or index; default: the predicted class) for one image.

    The class and its confidence come from the model's own precision (bf16 where `predict` runs bf16), so the
    class explained is the one `model.predict` answers; the heatmap's gradients are computed in fp32."""
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as e:
        raise ImportError("explanations need captum: pip install 'skulens[explain]'") from e
    if model.net is None:
        raise ValueError("explanations need the PyTorch backend (load the bundle without backend='onnx')")
    if not model.card.classes:  # its empty probabilities failed in argmax, a traceback
        from ..models.bundle import BundleError

        raise BundleError("this model has no classifier (a plain pretrained backbone): an explanation shows "
                          "what a fine-tuned bundle's prediction looked at (`skulens train`)")
    tensors, _, failed = model._decode([image])
    if failed:
        from ..data.decode import ImageDecodeError

        raise ImageDecodeError(str(image), failed[0][1])
    n = len(model.card.classes)
    if isinstance(target, str) and target not in model.card.classes:
        raise ValueError(f"unknown class {target!r} (the model knows {n} classes)")
    if target is not None and not isinstance(target, str) and (
            isinstance(target, bool) or not isinstance(target, numbers.Integral) or not 0 <= target < n):
        raise ValueError(f"target must be a class name or an index in 0..{n - 1}, got {target!r}")
    net = model.net.float().eval()
    x = model.transform(tensors[0]).unsqueeze(0).to(model.device)
    # the calibrated probabilities predict() reports (not a bare softmax), in its precision
    with torch.no_grad(), autocast_context(model.device, model.precision):
        probs = head_probabilities(net, x)["fine"][0].float()
    idx = int(probs.argmax()) if target is None else (
        model.card.classes.index(target) if isinstance(target, str) else int(target))
    layer = target_layer(net, x)
    cam = LayerGradCam(lambda inp: net(inp)["fine"], layer)
    attr = cam.attribute(x, target=idx, relu_attributions=True)
    up = LayerAttribution.interpolate(attr, x.shape[-2:], interpolate_mode="bilinear")[0, 0]
    heat = up.detach().cpu().numpy()
    heat = heat / heat.max() if heat.max() > 0 else heat
    view = _model_view(tensors[0], model.card)
    return Explanation(model.card.classes[idx], idx, float(probs[idx]), heat, view)


def _model_view(t: torch.Tensor, card) -> Image.Image:
    from torchvision.transforms import v2

    crop = v2.Compose([v2.Resize(card.resize_to, antialias=True), v2.CenterCrop(card.input_size)])
    return v2.functional.to_pil_image(crop(t))


def overlay(exp: Explanation, alpha: float = 0.45) -> Image.Image:
    """The heatmap (matplotlib's jet colormap) blended over the model's view of the photo."""
    from matplotlib import colormaps

    rgb = (colormaps["jet"](exp.heatmap)[..., :3] * 255).astype(np.uint8)
    return Image.blend(exp.image.convert("RGB"), Image.fromarray(rgb), alpha)
