"""ONNX and TorchScript export of a bundle, and an ONNX Runtime backend for predict/evaluate.

The exported graph is `head_probabilities`: input a preprocessed float batch (N x 3 x S x S, normalised
with the card's mean/std), outputs `fine`, optional `coarse` and `attributes` probabilities and the
L2-normalised `embedding`. The model card travels inside the file (ONNX metadata `skulens_card`,
TorchScript extra file `card.json`), so an exported file alone is enough to preprocess and decode labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..models.bundle import load_bundle
from ..models.card import ModelCard
from ..models.classifier import SkuModel
from ..models.inference import head_probabilities
from ..models.onnx_runtime import CARD_KEY, ONNX_NAME, OnnxRunner, read_onnx_card, require_onnx
from ..models.predictor import load_onnx

# OnnxRunner, read_onnx_card and load_onnx live in models/ (running a file is inference); named here too.
__all__ = ["OnnxRunner", "export_onnx", "export_torchscript", "load_onnx", "read_onnx_card"]


class _Exportable(nn.Module):
    def __init__(self, model: SkuModel):
        super().__init__()
        self.model = model
        self.names = ["fine"] + (["coarse"] if model.coarse_head is not None else []) + (
            ["attributes"] if model.attribute_head is not None else []) + ["embedding"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = head_probabilities(self.model, x)
        return tuple(out[n] for n in self.names)


def _exportable(bundle: str | os.PathLike) -> tuple[_Exportable, ModelCard, torch.Tensor]:
    """The bundle's graph in fp32 eval mode, its card, and an example input batch for tracing."""
    net, card = load_bundle(bundle, "cpu")
    return _Exportable(net.float().eval()), card, torch.zeros(2, 3, card.input_size, card.input_size)


def export_onnx(bundle: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int = 18) -> Path:
    """Export `bundle` to ONNX (default: BUNDLE/model.onnx) with the card in the metadata."""
    require_onnx()
    import onnx

    wrapper, card, x = _exportable(bundle)
    path = Path(out) if out else Path(bundle) / ONNX_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.onnx.export(wrapper, (x,), str(tmp), input_names=["image"], output_names=wrapper.names,
                      dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in wrapper.names}},
                      opset_version=opset, dynamo=False)
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def export_torchscript(bundle: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Trace to TorchScript (default: BUNDLE/model.torchscript.pt), the card as extra file card.json."""
    wrapper, card, x = _exportable(bundle)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (x,), check_trace=False)
    path = Path(out) if out else Path(bundle) / "model.torchscript.pt"
    traced.save(str(path), _extra_files={"card.json": card.to_json()})
    return path


