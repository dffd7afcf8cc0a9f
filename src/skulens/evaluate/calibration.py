"""Temperature scaling (Guo et al., 2017): one scalar per head, fitted on val by NLL.

Fine-tuning with label smoothing, dropout and augmentation leaves the model underconfident (measured
here: mean top-1 confidence 0.31 at 85 % val accuracy), which would make every confidence threshold
(coarse fallback, abstaining) meaningless. Dividing the logits by T changes no argmax.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_temperature", "fit_temperature"]


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / T) == softmax(logits / T): rescale probabilities without the logits."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return q / q.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = (0.05, 10.0)) -> float:
    """The T minimising the NLL of `targets` (rows with a negative target are ignored)."""
    from scipy.optimize import minimize_scalar

    ok = targets >= 0
    p, y = probs[ok], targets[ok]
    if len(y) == 0:
        return 1.0

    def nll(t: float) -> float:
        q = apply_temperature(p, t)
        return float(-np.log(np.clip(q[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    return float(minimize_scalar(nll, bounds=bounds, method="bounded").x)
