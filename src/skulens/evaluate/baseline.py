"""The "before fine-tuning" point: pretrained features + a linear classifier (logistic regression)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..models.backbones import Backbone
from ..models.inference import autocast_context

__all__ = ["extract_features", "linear_probe", "probe_head", "probe_probs"]


@torch.no_grad()
def extract_features(backbone: Backbone, images: Sequence[torch.Tensor], transform: Callable, *,
                     batch_size: int = 64, precision: str = "auto", progress: bool = False) -> np.ndarray:
    from tqdm.auto import tqdm

    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    for s in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
        x = torch.stack([transform(im) for im in images[s:s + batch_size]]).to(device)
        with autocast_context(device, precision):
            out.append(backbone(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    backbone.train(was_training)
    return torch.cat(out).numpy()


def _fit_probe(train_x: np.ndarray, train_y: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, random_state=seed)).fit(
        train_x, train_y)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                 *, seed: int = 0) -> np.ndarray:
    """Fit multinomial logistic regression on standardised features; return test probabilities (N x C)."""
    clf = _fit_probe(train_x, train_y, seed)
    proba = clf.predict_proba(test_x)
    full = np.zeros((len(test_x), n_classes))
    full[:, clf.classes_] = proba  # classes absent from train get probability 0
    return full


def probe_head(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, *,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The linear probe as a linear layer on the raw features: `(weight C x D, bias C, fitted C bools)`.

    The probe standardises the features first; that is folded into the layer, so `x @ weight.T + bias` gives the
    probe's logits (softmax of them: its probabilities). Rows of classes absent from `train_y` are zero and not
    `fitted` (a caller keeps its own rows there)."""
    clf = _fit_probe(train_x, train_y, seed)
    scaler, lr = clf[0], clf[-1]
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # two classes: one logit for the second; softmax over (0, z) is the same sigmoid
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = coef / scale
    b = intercept - w @ scaler.mean_
    weight = np.zeros((n_classes, train_x.shape[1]), dtype=np.float32)
    bias = np.zeros(n_classes, dtype=np.float32)
    fitted = np.zeros(n_classes, dtype=bool)
    weight[lr.classes_], bias[lr.classes_], fitted[lr.classes_] = w, b, True
    return weight, bias, fitted


def probe_probs(rows: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """`linear_probe`'s probabilities from `probe_head`'s rows (N x C; classes it did not fit get 0): one fit of
    the probe serves both the heads' start and the baseline report."""
    from scipy.special import softmax

    weight, bias, fitted = rows
    full = np.zeros((len(x), len(fitted)))
    full[:, fitted] = softmax(x.astype(np.float64) @ weight[fitted].T.astype(np.float64) + bias[fitted], axis=1)
    return full
