"""The catalogue as the model's training run split it, so "val" stays the photos the model never trained on."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data.catalogue import Catalogue
    from ..models.card import ModelCard

__all__ = ["card_catalogue", "split_settings"]

log = logging.getLogger(__name__)


def card_catalogue(data: str | os.PathLike, card: ModelCard) -> Catalogue:
    """Load `data` with the val fraction and seed recorded in the card's training config.

    A catalogue without a val split gets one carved out of train; with other settings than the training run's
    that "val" would hold photos the model trained on. A card without a training config (a plain pretrained
    backbone) gets the training defaults, which are also load_catalogue's.
    """
    from ..data.catalogue import load_catalogue

    cat = load_catalogue(data, **{"val_fraction": 0.1, "seed": 0, **split_settings(card)})
    recorded = (card.dataset or {}).get("val_fingerprint")  # recorded when the run carved its val out of train
    if recorded and cat.val_was_generated and recorded != cat.fingerprint("val"):
        # photos added or removed since: the same seed now carves another val, which holds photos the model
        # trained on (its scores flattered without a word before)
        log.warning("%s changed since the model was trained: the val carved out of its train split now holds "
                    "other photos, some of which the model trained on, so scores on it are optimistic; give the "
                    "catalogue a val split of its own, or retrain", data)
    return cat


def split_settings(card: ModelCard) -> dict[str, float | int]:
    """The val fraction and seed the card's training run split its catalogue with, those it recorded."""
    tc = card.train_config or {}
    return {key: kind(tc[key]) for key, kind in (("val_fraction", float), ("seed", int)) if key in tc}
