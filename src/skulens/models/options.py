"""The model's run-time backends, without torch: the CLI checks them before any model loads."""

from __future__ import annotations

__all__ = ["EXPORTED_FILES", "MODEL_BACKENDS"]

# torch: the bundle's weights in PyTorch; the others run a file `skulens export` wrote into the bundle.
EXPORTED_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "tflite": "model.tflite",
                  "tflite-int8": "model.int8.tflite"}
MODEL_BACKENDS = ("torch", *EXPORTED_FILES)
