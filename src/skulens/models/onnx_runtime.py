"""ONNX Runtime as an inference backend: the card embedded in an exported file, and a Runner over it.

Export (writing the file) is the deploy stage's (skulens.deploy.onnx); running one is inference, so it lives
here beside the PyTorch runner and `skulens.load(..., backend="onnx")` needs nothing above models/.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import torch

from .bundle import BundleError
from .card import CARD_KEY, ModelCard
from .inference import DeviceError, HeadOutputs, collect_outputs, iter_batches
from .options import is_device_name

__all__ = ["CARD_KEY", "ONNX_INT8_NAME", "ONNX_NAME", "OnnxRunner", "default_threads", "read_onnx", "read_onnx_card",
           "require_onnx", "runtime_threads", "unreadable_onnx"]

# The deploy stage's logger name: users (and tests) filter ONNX messages on it.
log = logging.getLogger("skulens.deploy.onnx")

ONNX_NAME = "model.onnx"
ONNX_INT8_NAME = "model.int8.onnx"  # `skulens export --int8` and `--preset fast` write it beside model.onnx

_THREADS: ContextVar[int | None] = ContextVar("skulens_runtime_threads", default=None)


@contextmanager
def runtime_threads(threads: int | None) -> Iterator[None]:
    """ONNX Runtime sessions and LiteRT interpreters made inside run on `threads` intra-op threads, unless their
    maker gives its own: for code that reaches them through `load_model`, which takes no thread count (a Ray
    actor, which reserved that many CPUs). None leaves each runtime's own default."""
    token = _THREADS.set(threads)
    try:
        yield
    finally:
        _THREADS.reset(token)


def default_threads(threads: int | None) -> int | None:
    """`threads` if given, else the count `runtime_threads` set around this call (else None)."""
    return threads or _THREADS.get()


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export and the onnx backend need: pip install 'skulens[onnx]'") from e


def read_onnx_card(path: str | os.PathLike) -> ModelCard:
    return read_onnx(path)[0]


def read_onnx(path: str | os.PathLike) -> tuple[ModelCard, bool]:
    """An exported file's embedded card, and whether its graph is quantized (QDQ pairs, QLinear* or integer ops),
    from one reading of the file; a corrupt one is a BundleError."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError (an Exception of its own), onnx's own errors
        if isinstance(exc, (FileNotFoundError, ImportError, MemoryError)):
            raise
        raise _corrupt(path, exc) from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if CARD_KEY not in meta:
        raise BundleError(f"{path}: an ONNX file without a skulens card (export it with `skulens export`)")
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                                  "ConvInteger") or n.op_type.startswith("QLinear") for n in proto.graph.node)
    try:
        return ModelCard.from_dict(json.loads(meta[CARD_KEY])), quantized
    except (ValueError, TypeError) as e:  # as `read_card` says it of a bundle's card.json
        raise BundleError(f"{path}: invalid card: {e}") from None


def unreadable_onnx(exc: BaseException) -> str | None:
    """The first line of onnxruntime's error when it could not parse a file (its own classes, matched by name), a
    corrupt or truncated file being the user's to fix; None for any other failure (a provider, memory or opset
    failure is not a corrupt file and stays as it is)."""
    if type(exc).__name__ not in ("InvalidProtobuf", "InvalidGraph"):
        return None
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _corrupt(path: str | os.PathLike, exc: BaseException) -> BundleError:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    if head[4:8] == b"TFL3":  # a LiteRT flatbuffer's identifier: a good file, the wrong backend
        return BundleError(f"{path}: a LiteRT (.tflite) file, not ONNX: run it with --backend tflite (or tflite-int8)")
    first = unreadable_onnx(exc) or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return BundleError(f"{path}: not a readable ONNX file (corrupt or truncated: {first}); export it again with "
                       "skulens export")


class OnnxRunner:
    """Runs the exported graph with ONNX Runtime: on the CPU, or through its CUDA provider when `device` is
    cuda and the installed onnxruntime has one (onnxruntime-gpu); otherwise the CPU, with a warning."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, device: str = "cpu"):
        require_onnx()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        threads = default_threads(threads)
        if threads:
            opts.intra_op_num_threads = threads
        # Idle ONNX Runtime threads sleep instead of spinning: decoding threads (and the service's) share these
        # cores. Measured on 2 cores, Lite0 int8, grocery val end to end: 210 -> 220 images/s, p99 37 -> 9 ms.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        device = str(device)
        if not is_device_name(device):  # as PyTorch's loader says
            raise DeviceError(f"unknown device {device!r}: auto, cpu, cuda or cuda:N")
        if device == "auto":  # as for PyTorch: the GPU when this onnxruntime can use one
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        if str(device).startswith("cuda"):
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" in available:
                index = int(str(device).partition(":")[2] or "0")
                providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
                if "TensorrtExecutionProvider" in available:  # onnxruntime-gpu built with TensorRT: first choice
                    # The engine is built on first use (minutes) and cached beside the model for the next start.
                    cache = str(Path(path).with_name(Path(path).stem + ".trt-cache"))
                    providers.insert(0, ("TensorrtExecutionProvider", {
                        "device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}))
            else:
                log.warning("onnxruntime has no CUDA provider (pip install onnxruntime-gpu): ONNX runs on the CPU")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # a file onnxruntime cannot parse is the user's (`unreadable_onnx`)
            if unreadable_onnx(exc) is None or not Path(path).is_file():
                raise
            raise _corrupt(path, exc) from None
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
