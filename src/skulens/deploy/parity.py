"""The rule an exported file is held to against the model it came from (LiteRT files against PyTorch, the int8
ONNX file against its fp32 ONNX file): top-1 agreement and the largest change of a probability."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.bundle import BundleError

__all__ = ["FP32_TOLERANCE", "INT8_MIN_AGREEMENT", "INT8_TIE_DIFF", "Parity", "ParityError", "check_parity"]

# fp32 LiteRT vs PyTorch on the same graph: float reassociation only (measured ~1e-6 on Lite0 and Lite2).
FP32_TOLERANCE = 1e-3
# int8 is an approximation: below this top-1 agreement with PyTorch the export is refused (Lite2 on grocery val:
# 97 %, probabilities moving by up to 0.2; see benchmarks/RESULTS.md), unless no probability moved by more than
# INT8_TIE_DIFF: then the top-1s that changed were near-ties (a barely trained model's near-uniform outputs).
INT8_MIN_AGREEMENT = 0.9
INT8_TIE_DIFF = 0.02


class ParityError(BundleError):
    """An exported file does not reproduce its model: the export ran and failed its check (the CLI's exit 1,
    a run that failed, not an input error)."""


@dataclass(frozen=True)
class Parity:
    """An exported file against its reference on the same photos: top-1 agreement and max |p diff| of `fine`."""

    file: str
    images: int
    top1_agreement: float
    max_prob_diff: float

    def __str__(self) -> str:
        return (f"top-1 agreement {100 * self.top1_agreement:.1f}% and max |p diff| {self.max_prob_diff:.2g} "
                f"on {self.images} photos")


def check_parity(parity: Parity, *, int8: bool, what: str = "LiteRT disagrees with PyTorch") -> Parity:
    """Refuse a file that does not match PyTorch: fp32 within FP32_TOLERANCE with every top-1 the same,
    int8 with at least INT8_MIN_AGREEMENT top-1 agreement (or only near-ties changed). The ONNX int8 file is
    held to the same int8 rule (`what` names the comparison in the error)."""
    if int8:
        ok = parity.top1_agreement >= INT8_MIN_AGREEMENT or parity.max_prob_diff <= INT8_TIE_DIFF
        rule = (f"int8 needs >= {100 * INT8_MIN_AGREEMENT:.0f}% top-1 agreement, or no probability moved by "
                f"more than {INT8_TIE_DIFF:g}")
    else:
        ok = parity.top1_agreement == 1.0 and parity.max_prob_diff <= FP32_TOLERANCE
        rule = f"fp32 needs every top-1 the same and max |p diff| <= {FP32_TOLERANCE:g}"
    if not ok:
        raise ParityError(f"{parity.file}: {what}: {parity} ({rule})")
    return parity
