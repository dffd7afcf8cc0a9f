"""Prometheus metrics, one registry per app (so two apps in one process, as in tests, never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("skulens_http_requests_total", "HTTP requests by route and status",
                                ("method", "route", "status"), registry=r)
        self.latency = Histogram("skulens_http_request_seconds", "HTTP request latency by route",
                                 ("method", "route"), buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("skulens_batch_size", "images per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_seconds = Histogram("skulens_batch_seconds", "model time per batch", buckets=_LATENCY_BUCKETS,
                                       registry=r)
        self.rejected = Counter("skulens_queue_rejected_total", "requests refused with 503 (queue full)",
                                registry=r)
        self.timeouts = Counter("skulens_request_timeouts_total", "requests answered 504", registry=r)
        self.queue_depth = Gauge("skulens_queue_depth", "requests waiting for the model", registry=r)
        self.predictions = Counter("skulens_predictions_total", "predictions by decision level", ("level",),
                                   registry=r)
        self.intake = Counter("skulens_inventory_photos_total", "inventory intake photos by outcome", ("status",),
                              registry=r)
        self.handoffs = Counter("skulens_support_replies_total", "support replies by outcome", ("outcome",),
                                registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
