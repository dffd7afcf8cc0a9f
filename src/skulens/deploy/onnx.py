"""ONNX and TorchScript export of a bundle, and an ONNX Runtime backend for predict/evaluate.

The exported graph is `head_probabilities`: input a preprocessed float batch (N x 3 x S x S, normalised
with the card's mean/std), outputs `fine`, optional `coarse` and `attributes` probabilities and the
L2-normalised `embedding`. The model card travels inside the file (ONNX metadata `skulens_card`,
TorchScript extra file `card.json`), so an exported file alone is enough to preprocess and decode labels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.bundle import BundleError, load_bundle
from ..models.card import ModelCard
from ..models.classifier import SkuModel
from ..models.inference import HeadOutputs, collect_outputs, head_probabilities, iter_batches

__all__ = ["OnnxRunner", "export_onnx", "export_torchscript", "load_onnx", "read_onnx_card"]

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
CARD_KEY = "skulens_card"


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


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export and the onnx backend need: pip install 'skulens[onnx]'") from e


def export_onnx(bundle: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int = 18) -> Path:
    """Export `bundle` to ONNX (default: BUNDLE/model.onnx) with the card in the metadata."""
    _require_onnx()
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


def read_onnx_card(path: str | os.PathLike) -> ModelCard:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in meta:
        raise BundleError(f"{path}: an ONNX file without a skulens card (export it with `skulens export`)")
    return ModelCard.from_dict(json.loads(meta[CARD_KEY]))


class OnnxRunner:
    """Runs the exported graph with ONNX Runtime: on the CPU, or through its CUDA provider when `device` is
    cuda and the installed onnxruntime has one (onnxruntime-gpu); otherwise the CPU, with a warning."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, device: str = "cpu"):
        _require_onnx()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = str(device).partition(":")[2] or "0"
                providers = [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
            else:
                log.warning("onnxruntime has no CUDA provider (pip install onnxruntime-gpu): ONNX runs on the CPU")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.n_classes = self.session.get_outputs()[0].shape[-1]

    def __call__(self, images: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor], *,
                 batch_size: int = 32, embeddings: bool = False, progress: bool = False) -> HeadOutputs:
        batches = []
        for x in iter_batches(images, transform, batch_size, progress=progress):
            values = self.session.run(self.outputs, {"image": x.numpy().astype(np.float32)})
            batches.append(dict(zip(self.outputs, values, strict=True)))
        return collect_outputs(batches, int(self.n_classes), embeddings)


def load_onnx(path: str | os.PathLike):  # -> skulens.api.Model
    """A Model backed by ONNX Runtime: a .onnx file, or a bundle dir holding model.onnx."""
    from ..api import Model

    p = Path(path)
    if p.is_dir():
        if not (p / ONNX_NAME).is_file():
            raise BundleError(f"{p}: no {ONNX_NAME}; run `skulens export {p} --format onnx` first")
        p = p / ONNX_NAME
    card = read_onnx_card(p)
    model = Model(None, card, torch.device("cpu"), "off", runner=OnnxRunner(p))
    model.path = p.parent
    return model
