"""ONNX and TorchScript export of a bundle, and an ONNX Runtime backend for predict/evaluate.

The exported graph is `head_probabilities`: input a preprocessed float batch (N x 3 x S x S, normalised
with the card's mean/std), outputs `fine`, optional `coarse` and `attributes` probabilities and the
L2-normalised `embedding`. The model card travels inside the file (ONNX metadata `skulens_card`,
TorchScript extra file `card.json`), so an exported file alone is enough to preprocess and decode labels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from ..models.bundle import BundleError, bundle_folder, load_bundle
from ..models.card import ModelCard
from ..models.classifier import SkuModel
from ..models.inference import head_probabilities
from ..models.onnx_runtime import CARD_KEY, ONNX_NAME, OnnxRunner, read_onnx_card, require_onnx
from ..models.predictor import load_onnx

# OnnxRunner, read_onnx_card and load_onnx live in models/ (running a file is inference); named here too.
__all__ = ["OnnxRunner", "check_onnx_matches", "export_onnx", "export_torchscript", "load_onnx", "read_onnx_card"]


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
    # the wrapper in eval mode too: exporters restore a module's own mode afterwards, recursively
    return _Exportable(net.float().eval()).eval(), card, torch.zeros(2, 3, card.input_size, card.input_size)


def export_onnx(bundle: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int = 18) -> Path:
    """Export `bundle` to ONNX (default: BUNDLE/model.onnx) with the card in the metadata."""
    require_onnx()
    import onnx

    wrapper, card, x = _exportable(bundle)
    path = Path(out) if out else Path(bundle) / ONNX_NAME
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.onnx.export(wrapper, (x,), str(tmp), input_names=["image"], output_names=wrapper.names,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in wrapper.names}},
                          opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = CARD_KEY, card.to_json()
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        check_onnx_matches(wrapper, tmp, card.input_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed export leaves nothing that could be loaded later
    return path


def check_onnx_matches(wrapper: _Exportable, path: str | os.PathLike, size: int, *, atol: float = 1e-4) -> None:
    """Every output of the ONNX file under ONNX Runtime equals PyTorch's on a seeded batch of 3 (a batch size
    other than the traced one: the dynamic axis is checked too), or BundleError: an export that runs but
    computes something else is refused before it replaces anything."""
    import numpy as np

    session = OnnxRunner(path).session
    wrapper.eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(x)]
    got = session.run(wrapper.names, {"image": x.numpy()})
    for name, e, g in zip(wrapper.names, expected, got, strict=True):
        worst = float(np.max(np.abs(e - g))) if e.size else 0.0
        if not worst <= atol:
            raise BundleError(f"{path}: the ONNX export's {name!r} differs from PyTorch by {worst:.2g} "
                              f"(allowed {atol:g}); it was not written")


def export_torchscript(bundle: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Trace to TorchScript (default: BUNDLE/model.torchscript.pt), the card as extra file card.json."""
    wrapper, card, x = _exportable(bundle)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (x,), check_trace=False)
    path = Path(out) if out else bundle_folder(bundle) / "model.torchscript.pt"
    tmp = path.with_name(path.name + ".tmp")
    buf = io.BytesIO()  # libtorch's own writer aborts the process on a full disk (SIGABRT, the .tmp left behind):
    torch.jit.save(traced, buf, _extra_files={"card.json": card.to_json()})  # Python writes the bytes instead
    try:  # beside it, then swapped in: a full disk or a kill never leaves the earlier file cut short
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


