"""The detector's run-time choices, without torch: the CLI and the service settings check them before any
model loads."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DETECTOR_BACKENDS", "DETECTOR_ONNX", "TILE_MODES", "check_backend", "check_tiles", "onnx_export_advice"]

# auto: tile a photo whose long side is over 2x the detector's max size; on / off: always / never.
TILE_MODES = ("auto", "on", "off")
# torch: the folder's weights in PyTorch; onnx: its detector.onnx (`skulens detect export`) under ONNX Runtime.
DETECTOR_BACKENDS = ("torch", "onnx")
DETECTOR_ONNX = "detector.onnx"  # written by `skulens detect export`; an export of the weights beside them


def onnx_export_advice(folder: Path) -> str:
    """What to do about a detector folder without DETECTOR_ONNX: name its one other .onnx file, or export it."""
    others = sorted(folder.glob("*.onnx"))
    return (f"its export is {others[0]}: name that file" if len(others) == 1 else
            f"run `skulens detect export {folder}` first")


def check_tiles(tiles: str) -> None:
    """ValueError unless `tiles` is one of TILE_MODES (the detector per photo, counting at its call)."""
    if tiles not in TILE_MODES:
        raise ValueError(f"tiles must be one of {', '.join(TILE_MODES)}, got {tiles!r}")


def check_backend(backend: str, device: str = "auto") -> None:
    """A detector backend and a device that go together (ValueError otherwise): ONNX Runtime runs the detector
    on its CPU provider only."""
    if backend not in DETECTOR_BACKENDS:
        raise ValueError(f"detector backend must be 'torch' or 'onnx', got {backend!r}")
    if backend == "onnx" and device not in ("auto", "cpu"):
        raise ValueError(f"the onnx detector backend runs on the CPU (ONNX Runtime's CPU provider), not on {device}")
