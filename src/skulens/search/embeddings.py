"""Embeddings of catalogue images and product texts, streamed in chunks so a large catalogue fits in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.catalogue import Product

if TYPE_CHECKING:
    from ..models.predictor import Model

__all__ = ["EmbeddedImages", "embed_paths", "product_text"]

_CHUNK = 512  # images decoded and held at once (~ 512 x 3 x 256 x 256 bytes = 100 MB)


@dataclass(frozen=True)
class EmbeddedImages:
    vectors: np.ndarray  # N x D float32, L2-normalised, for the images that decoded
    kept: list[int]  # index into the input paths of each row
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def embed_paths(model: Model, paths: Sequence[str | Path], *, batch_size: int = 32, progress: bool = False,
                workers: int = 2) -> EmbeddedImages:
    """Embed image files; undecodable ones are skipped and listed, never fatal (one bad photo in 100k)."""
    from tqdm.auto import tqdm

    from ..data.dataset import decode_all

    parts: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(paths), desc="embed", unit="img", disable=not progress)
    for start in range(0, len(paths), _CHUNK):
        chunk = [Path(p) for p in paths[start:start + _CHUNK]]
        decoded = decode_all(chunk, model.card.resize_to, workers=workers, progress=False)
        failed += decoded.failed
        if decoded.images:
            out = model.run(decoded.images, embeddings=True, batch_size=batch_size)
            assert out.embeddings is not None
            parts.append(out.embeddings.astype(np.float32))
            kept += [start + i for i in decoded.kept]
        bar.update(len(chunk))
    bar.close()
    dim = model.card.embedding_dim
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    return EmbeddedImages(vectors, kept, failed)


def product_text(product: Product, *, with_description: bool = True) -> str:
    """The words a shop uses for a product: its title, then its description."""
    title = product.title or product.label.replace("-", " ")
    if with_description and product.description:
        return f"{title}. {product.description}"
    return title
