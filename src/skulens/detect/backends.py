"""A detector in the backend asked for: PyTorch (`detector.load_detector`) or ONNX Runtime (`onnx.load_onnx_detector`);
the one loader the API, batch jobs, `inventory scan` and the service share."""

from __future__ import annotations

import os

from .detector import Detector, load_detector
from .onnx import load_onnx_detector
from .options import check_backend

__all__ = ["open_detector"]


def open_detector(path: str | os.PathLike, *, device: str = "auto", backend: str = "torch") -> Detector:
    """A detector folder written by `skulens detect train`; backend "onnx" runs its detector.onnx (`skulens
    detect export`; or an .onnx file beside its detector.json) under ONNX Runtime on the CPU."""
    check_backend(backend, device)
    if backend == "onnx":
        return load_onnx_detector(path)
    return load_detector(path, device=device)
