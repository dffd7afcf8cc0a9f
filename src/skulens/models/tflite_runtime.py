"""LiteRT (TensorFlow Lite) as an inference backend: the card embedded in an exported .tflite, and a Runner.

Export (writing the file) is the deploy stage's (skulens.deploy.tflite); running one is inference, so it lives
here beside the PyTorch and ONNX Runtime runners, and needs only the small runtime package `ai-edge-litert`.

The card is a named entry of the model's own metadata table (`Model.metadata` in the TFLite flatbuffer schema:
a name and a buffer, the table TFLite's own `min_runtime_version` lives in), under the key `skulens_card`, as
the card's JSON. It is read here straight from the flatbuffer, without building an interpreter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .bundle import BundleError
from .card import ModelCard
from .inference import HeadOutputs, collect_outputs, iter_batches
from .onnx_runtime import CARD_KEY, default_threads

__all__ = ["CARD_KEY", "TFLITE_INT8_NAME", "TFLITE_NAME", "TfliteRunner", "read_tflite_card", "require_tflite",
           "tflite_is_quantized"]

TFLITE_NAME = "model.tflite"
TFLITE_INT8_NAME = "model.int8.tflite"  # as model.int8.onnx: the same stem, one grammar
_IDENTIFIER = b"TFL3"  # the TFLite flatbuffer file identifier, bytes 4..8


def require_tflite() -> None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as e:
        raise ImportError("the tflite backend needs the LiteRT runtime: pip install 'skulens[tflite]'") from e


def _model_bytes(path: str | os.PathLike) -> bytes:
    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise BundleError(f"{path}: not a TFLite model (no TFL3 identifier): a corrupt or truncated file, or "
                          "another format; export it again with `skulens export --format tflite`")
    return data


def read_tflite_card(path: str | os.PathLike) -> ModelCard:
    """The card embedded in an exported .tflite (its `skulens_card` metadata entry)."""
    require_tflite()
    from ai_edge_litert import schema_py_generated as schema

    data = _model_bytes(path)
    try:
        model = schema.Model.GetRootAs(data, 0)
        entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
        index = entries.get(CARD_KEY.encode())
        if index is None:
            raise BundleError(f"{path}: a TFLite file without a skulens card (export it with "
                              "`skulens export --format tflite`)")
        buf = model.Buffers(index)
        # Small buffers sit inside the flatbuffer; a converter may also place them after it (offset, size).
        raw = bytes(data[buf.Offset(): buf.Offset() + buf.Size()]) if buf.Offset() > 1 else \
            buf.DataAsNumpy().tobytes()
        return ModelCard.from_dict(json.loads(raw.decode("utf-8")))
    except BundleError:
        raise
    except Exception as e:  # a damaged flatbuffer fails in any of struct, IndexError, JSON or the card's checks
        raise BundleError(f"{path}: a corrupt TFLite file, its skulens card cannot be read ({e})") from e


def tflite_is_quantized(path: str | os.PathLike) -> bool:
    """Whether the .tflite holds an 8-bit integer tensor (what `skulens export --format tflite --int8` writes: the
    backbone's weights and activations in int8), read from the flatbuffer without building an interpreter."""
    require_tflite()
    from ai_edge_litert import schema_py_generated as schema

    data = _model_bytes(path)
    try:
        model = schema.Model.GetRootAs(data, 0)
        eight_bit = (schema.TensorType.INT8, schema.TensorType.UINT8)
        return any(g.Tensors(i).Type() in eight_bit for g in (model.Subgraphs(k) for k in range(model.SubgraphsLength()))
                   for i in range(g.TensorsLength()))
    except Exception as e:  # a damaged flatbuffer
        raise BundleError(f"{path}: a corrupt TFLite file, its tensors cannot be read ({e})") from e


class TfliteRunner:
    """Runs an exported .tflite with the LiteRT interpreter (CPU, XNNPACK) through its `serving_default`
    signature: input `image` (N x 3 x S x S, preprocessed as the card says), outputs named after the heads.

    The file is converted at batch 1 (phones classify one photo at a time); a batch of N is run by resizing
    the input. An int8 file with integer input or outputs is quantized / dequantized here with its own scales.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, card: ModelCard | None = None):
        require_tflite()
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        card = card or read_tflite_card(path)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=default_threads(threads))
            self.signature = self.interpreter.get_signature_runner()
            inputs, outputs = self.signature.get_input_details(), self.signature.get_output_details()
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{path}: the LiteRT interpreter cannot load it ({e}); export it again with "
                              "`skulens export --format tflite`") from e
        if set(inputs) != {"image"} or "fine" not in outputs:
            raise BundleError(f"{path}: not a skulens export (inputs {sorted(inputs)}, outputs {sorted(outputs)}; "
                              "expected image -> fine, ...)")
        self.input = inputs["image"]
        shape = tuple(int(s) for s in self.input["shape"])
        classes = int(outputs["fine"]["shape"][-1])
        if shape[1:] != (3, card.input_size, card.input_size) or classes != card.num_classes:
            raise BundleError(f"{path}: the graph does not match its card (input {shape[1:]}, {classes} classes; "
                              f"the card says {card.input_size}px, {card.num_classes} classes)")
        self.outputs = outputs
        self.n_classes = classes

    def run_batch(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The heads for one preprocessed float batch (N x 3 x S x S)."""
        out = self.signature(image=_quantize(np.ascontiguousarray(x, dtype=np.float32), self.input))
        return {k: _dequantize(v, self.outputs[k]) for k, v in out.items()}

    def __call__(self, images: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor], *,
                 batch_size: int = 32, embeddings: bool = False, progress: bool = False) -> HeadOutputs:
        batches = [self.run_batch(x.numpy()) for x in iter_batches(images, transform, batch_size, progress=progress)]
        return collect_outputs(batches, self.n_classes, embeddings)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale
