"""Prometheus metrics of the HTTP service, and the middleware that records them per request."""

import time
from collections.abc import Callable
from typing import Any

ENDPOINTS = ("/v1/route", "/v1/select", "/v1/embeddings", "/v1/models", "/healthz", "/metrics")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of their own so that several apps can coexist."""

    def __init__(self, prometheus: Any, queued_texts: Callable[[], int]) -> None:
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        registry = self.registry

        self.requests = prometheus.Counter(
            "aegis_http_requests",
            "HTTP requests, by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.request_seconds = prometheus.Histogram(
            "aegis_http_request_duration_seconds",
            "Time from receiving a request to sending its response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

        self.tasks = prometheus.Counter(
            "aegis_tasks", "Tasks routed or selected, by endpoint and the tier that decided.", ["endpoint", "tier"],
            registry=registry,
        )
        self.escalations = prometheus.Counter(
            "aegis_escalations", "Tasks the fast tier was unsure of and the full tier decided, by endpoint.",
            ["endpoint"], registry=registry,
        )
        self.tier_seconds = prometheus.Histogram(
            "aegis_tier_latency_seconds",
            "Latency of the request that carried each text, by endpoint and by tier: the tier that decided "
            "for routing and selection, the requested tier for embeddings.",
            ["endpoint", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

        self.batches = prometheus.Counter(
            "aegis_encoder_batches", "Encoder calls, by kind (route or embeddings).", ["kind"], registry=registry
        )
        self.batch_size = prometheus.Histogram(
            "aegis_encoder_batch_size", "Texts per encoder call, by kind.", ["kind"], buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = prometheus.Histogram(
            "aegis_encoder_batch_duration_seconds", "Time of one encoder call, by kind.", ["kind"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )

        queued = prometheus.Gauge(
            "aegis_batcher_queued_texts", "Texts waiting for an encoder batch.", registry=registry
        )
        queued.set_function(queued_texts)

        self.content_type = prometheus.CONTENT_TYPE_LATEST
        self._generate = prometheus.generate_latest

    def render(self) -> bytes:
        """Render every metric in the Prometheus text format."""
        return self._generate(self.registry)

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batches.labels(kind).inc()
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)

    def observe_decisions(self, endpoint: str, decisions: list[Any], seconds: float) -> None:
        """Count routing or selection decisions and their latency by deciding tier."""
        for decision in decisions:
            tier = decision.tier.key
            self.tasks.labels(endpoint, tier).inc()
            self.tier_seconds.labels(endpoint, tier).observe(seconds)
            if decision.escalated:
                self.escalations.labels(endpoint).inc()


class MetricsMiddleware:
    """ASGI middleware that counts every HTTP request by endpoint and status, errors and 404s included."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # Unknown paths share one label, so that scanners cannot grow the metric without bound.
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500
        started = time.perf_counter()

        async def send_and_record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)

