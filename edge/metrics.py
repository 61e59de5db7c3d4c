"""Prometheus metrics of the edge, in a registry of its own (one per app, so tests never clash)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

UNMATCHED_ROUTE = "unmatched"
"""Route label of requests that matched no route: raw paths would make the label unbounded."""


@dataclass(frozen=True)
class EdgeMetrics:
    """Request count and latency by method, route template and status."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram

    @classmethod
    def create(cls) -> EdgeMetrics:
        """Fresh metrics in a fresh registry."""
        registry = CollectorRegistry()
        labels = ("method", "route", "status")
        return cls(
            registry=registry,
            requests=Counter(
                "flowforge_edge_requests", "HTTP requests handled by the edge.", labels, registry=registry
            ),
            latency=Histogram(
                "flowforge_edge_request_duration_seconds",
                "Time from routing to the handler's response.",
                labels,
                registry=registry,
            ),
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Records one request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def exposition(self) -> web.Response:
        """The Prometheus text exposition of the registry."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS_KEY = web.AppKey("metrics", EdgeMetrics)
