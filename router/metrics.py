"""The router's Prometheus series, in a registry owned by the app (no process-wide state).

Gauges that mirror live state (outstanding requests and breaker state per endpoint) are read
at scrape time by a collector, so the request path never updates them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router.breaker import BreakerState
from router.upstream import UpstreamPool

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class _PoolCollector(Collector):
    def __init__(self, pools: Callable[[], Iterable[UpstreamPool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[GaugeMetricFamily]:
        outstanding = GaugeMetricFamily(
            "hotcold_upstream_outstanding",
            "Requests in flight per upstream endpoint.",
            labels=["pool", "endpoint"],
        )
        state = GaugeMetricFamily(
            "hotcold_upstream_circuit_state",
            "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open (ejected).",
            labels=["pool", "endpoint"],
        )
        up = GaugeMetricFamily(
            "hotcold_upstream_up",
            "1 when the endpoint takes traffic (circuit closed).",
            labels=["pool", "endpoint"],
        )
        for pool in self._pools():
            for endpoint in pool.endpoints:
                labels = [pool.name, endpoint.url]
                current = endpoint.breaker.state
                outstanding.add_metric(labels, endpoint.outstanding)
                state.add_metric(labels, _STATE_VALUE[current])
                up.add_metric(labels, 1 if current is BreakerState.CLOSED else 0)
        yield outstanding
        yield state
        yield up


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._pools: list[UpstreamPool] = []
        self.requests = Counter(
            "hotcold_requests",
            "Answered inference requests.",
            ["api", "route", "cache", "served_by", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hotcold_request_latency_seconds",
            "Time to the full answer (streams: to the last byte), by route and producer.",
            ["route", "served_by"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.attempts = Counter(
            "hotcold_upstream_attempts",
            "Attempts sent upstream, by outcome (ok, refused, failed, connect_failed, broken,"
            " timeout, cancelled, client_error, stream_broken, probe_ok, probe_failed).",
            ["pool", "endpoint", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "hotcold_tokens",
            "Tokens in answered requests, by direction and producer.",
            ["direction", "served_by"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(lambda: self._pools))

    def watch_pool(self, pool: UpstreamPool) -> None:
        self._pools.append(pool)

    def observe_attempt(self, pool: str, endpoint: str, outcome: str) -> None:
        self.attempts.labels(pool, endpoint, outcome).inc()
