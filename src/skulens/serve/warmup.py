"""Warm-up before traffic: every batch size the micro-batcher can form runs through the model once, the
vector index is paged into memory, one text search runs (its encoder, lexicon and product texts loaded), the
text encoder answers once, so the first requests after a restart are as fast as later ones. `/readyz` says
"warming up" until this is done (a load balancer waits)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .state import ServiceState

__all__ = ["batch_sizes", "warm_service"]

logger = logging.getLogger(__name__)


def batch_sizes(max_batch: int) -> list[int]:
    """Every size up to 16, then powers of two, and max_batch: oneDNN and ONNX Runtime prepare kernels
    per input shape, and the batcher forms any size from 1 to max_batch."""
    sizes = set(range(1, min(16, max_batch) + 1)) | {max_batch}
    size = 32
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def _photo(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def warm_service(state: ServiceState) -> dict[str, Any]:
    """Run the warm-up (in a worker thread); returns what was done and how long each part took."""
    report: dict[str, Any] = {}
    t0 = time.perf_counter()
    model, settings = state.model, state.settings
    image = _photo(model.card.resize_to)  # what the service's decoder hands the model
    sizes = batch_sizes(settings.max_batch)
    for n in sizes:
        model.predict([image] * n, top_k=settings.top_k, batch_size=n)
    report["model"] = {"batch_sizes": sizes, "seconds": round(time.perf_counter() - t0, 3)}
    if state.search is not None:
        t1 = time.perf_counter()
        for n in (1, min(8, settings.max_batch)):
            model.embed([image] * n, batch_size=n)
        with state.index_lock:
            report["index"] = state.search.index.warm()
        report["index"]["seconds_with_embedding"] = round(time.perf_counter() - t1, 3)
        # Text search: its first query loads the text encoder and WordNet, builds BM25 and encodes every product's
        # texts (seconds, under the index lock that photo searches and writes wait for): done here instead.
        t1 = time.perf_counter()
        try:
            with state.index_lock:
                state.search.by_text(["milk"], k=1)
            report["text_search"] = {"seconds": round(time.perf_counter() - t1, 3)}
        except Exception as exc:  # noqa: BLE001 - text search may be unavailable here; photo search is not
            logger.warning("skulens serve: text search did not warm up (%s); its first query will be slow or fail "
                           "as it would have", exc)
            report["text_search"] = {"error": str(exc)}
    if state.recognizer.detector is not None:
        t2 = time.perf_counter()
        state.recognizer.detector.detect([_photo(640)])
        report["detector"] = {"seconds": round(time.perf_counter() - t2, 3)}
    if state.responder is not None:
        t3 = time.perf_counter()
        state.responder.encoder.encode(["Is it lactose free?"])
        report["text"] = {"seconds": round(time.perf_counter() - t3, 3)}
    report["seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("skulens serve: warmed up in %.1f s: %s", report["seconds"], report)
    return report
