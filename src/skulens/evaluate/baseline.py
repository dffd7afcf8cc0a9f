"""The "before fine-tuning" point: pretrained features + a linear classifier (logistic regression)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..models.backbones import Backbone
from ..models.inference import autocast_context

__all__ = ["extract_features", "linear_probe"]


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


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                 *, seed: int = 0) -> np.ndarray:
    """Fit multinomial logistic regression on standardised features; return test probabilities (N x C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, random_state=seed))
    clf.fit(train_x, train_y)
    proba = clf.predict_proba(test_x)
    full = np.zeros((len(test_x), n_classes))
    full[:, clf.classes_] = proba  # classes absent from train get probability 0
    return full
