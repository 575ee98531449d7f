"""The server's Prometheus metrics, in a registry of its own (``/metrics``)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Workflow runs take from tens of milliseconds to minutes.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "w4s_serve_requests",
            "chat completion requests by model and HTTP status",
            ["model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "w4s_serve_request_seconds",
            "chat completion latency by model",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.errors = Counter("w4s_serve_errors", "failed requests by kind", ["kind"], registry=r)
        self.tokens = Counter(
            "w4s_serve_executor_tokens", "executor tokens spent by workflows", ["model", "kind"], registry=r
        )
        self.cost = Counter("w4s_serve_executor_cost_usd", "executor cost in USD", ["model"], registry=r)
        self.llm_calls = Counter(
            "w4s_serve_executor_calls", "executor calls by workflows", ["model"], registry=r
        )
        self.sandbox_failures = Counter(
            "w4s_serve_sandbox_failures",
            "workflow runs the sandbox failed (crash, kill, limit)",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge("w4s_serve_in_flight", "workflow runs in progress", registry=r)
        self.loaded = Gauge(
            "w4s_serve_workflow_version",
            "the registry version served per model (0: a file)",
            ["model"],
            registry=r,
        )
        self.reloads = Counter("w4s_serve_reloads", "workflows (re)loaded, by model", ["model"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
