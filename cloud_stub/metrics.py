"""The stub's Prometheus series, in a registry of its own (no process-wide state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_stub.admission import Admission


class StubMetrics:
    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hotcold_stub_requests",
            "Inference requests by path and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "hotcold_stub_in_flight", "Requests generating now.", registry=self.registry
        )
        self.in_flight.set_function(lambda: admission.active)
        self.queued = Gauge(
            "hotcold_stub_queued", "Requests waiting for a slot.", registry=self.registry
        )
        self.queued.set_function(lambda: admission.waiting)
        self.tokens = Counter(
            "hotcold_stub_tokens", "Tokens by direction.", ["direction"], registry=self.registry
        )
        self.cancelled = Counter(
            "hotcold_stub_cancelled",
            "Generations stopped because the client went away.",
            registry=self.registry,
        )
