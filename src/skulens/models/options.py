"""The model's run-time backends, without torch: the CLI checks them before any model loads."""

from __future__ import annotations

import re

__all__ = ["EXPORTED_FILES", "MODEL_BACKENDS", "PRECISIONS", "check_precision_backend", "is_device_name"]

# torch: the bundle's weights in PyTorch; the others run a file `skulens export` wrote into the bundle.
EXPORTED_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "tflite": "model.tflite",
                  "tflite-int8": "model.int8.tflite"}
MODEL_BACKENDS = ("torch", *EXPORTED_FILES)

# The PyTorch backend's inference numerics (models.inference.autocast_context): auto is bf16 on CPUs with
# AVX512-BF16/AMX and on CUDA, fp32 elsewhere; off is fp32 everywhere.
PRECISIONS = ("auto", "bf16", "fp16", "off")


def check_precision_backend(precision: str, backend: str) -> None:
    """A precision other than auto is PyTorch's: with an exported backend it would do nothing (ValueError). One rule
    for the loader, the CLI (before any model loads) and the service's settings."""
    if precision != "auto" and backend != "torch":
        raise ValueError(f"precision {precision}: for the PyTorch backend; backend {backend} runs the exported "
                         "file's own numerics")


def is_device_name(name: object) -> bool:
    """auto, cpu, cuda or cuda:N: a device's name as every backend and the CLI take it (whether that GPU exists is
    PyTorch's loader's to say)."""
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(name)) is not None
