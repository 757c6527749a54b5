"""The router's Prometheus series, in a registry owned by the app (no process-wide state).

Gauges that mirror live state (outstanding requests and breaker state per endpoint) are read
at scrape time by a collector, so the request path never updates them.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router.breaker import BreakerState
from router.cache import ResponseCache
from router.cost import CostEstimate
from router.sketch import FrequencySketch
from router.threshold import ThresholdController
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


class PolicyView(Protocol):
    """What the policy collector reads at scrape time."""

    @property
    def cache(self) -> ResponseCache: ...
    @property
    def controller(self) -> ThresholdController: ...
    @property
    def sketch(self) -> FrequencySketch: ...
    @property
    def coalesced(self) -> int: ...
    @property
    def policy_version(self) -> int: ...
    @property
    def reloads(self) -> Mapping[str, int]: ...


class _PolicyCollector(Collector):
    def __init__(self, view: Callable[[], PolicyView]) -> None:
        self._view = view

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        view = self._view()
        cache, controller = view.cache, view.controller
        gauges = {
            "hotcold_threshold": ("Current hot/cold frequency threshold.", controller.value),
            "hotcold_threshold_min": ("Operator's lower bound.", controller.params.minimum),
            "hotcold_threshold_max": ("Operator's upper bound.", controller.params.maximum),
            "hotcold_threshold_baseline": (
                "Traffic baseline of the threshold.",
                controller.baseline,
            ),
            "hotcold_threshold_multiplier": ("Capacity loop's multiplier.", controller.multiplier),
            "hotcold_cache_entries": ("Entries in the response cache.", len(cache)),
            "hotcold_cache_max_entries": ("Entry bound of the cache.", cache.max_entries),
            "hotcold_cache_bytes": ("Bytes of cached answers.", cache.bytes),
            "hotcold_cache_hit_ratio": ("Hit ratio since start.", cache.stats.hit_ratio),
            "hotcold_sketch_memory_bytes": ("Frequency sketch memory.", view.sketch.memory_bytes),
            "hotcold_policy_version": (
                "Version of the fleet policy in effect (0: start-up values only).",
                view.policy_version,
            ),
        }
        for name, (help_text, value) in gauges.items():
            family = GaugeMetricFamily(name, help_text)
            family.add_metric([], float(value))
            yield family
        if cache.max_bytes is not None:
            family = GaugeMetricFamily("hotcold_cache_max_bytes", "Byte bound of the cache.")
            family.add_metric([], float(cache.max_bytes))
            yield family
        policy = GaugeMetricFamily(
            "hotcold_cache_policy", "Active eviction policy (1).", labels=["policy"]
        )
        policy.add_metric([cache.policy_name], 1.0)
        yield policy
        counters = {
            "hotcold_cache_hits": ("Cache hits.", cache.stats.hits),
            "hotcold_cache_misses": (
                "Cache misses (lookups that found nothing).",
                cache.stats.misses,
            ),
            "hotcold_cache_evictions": ("Entries evicted.", cache.stats.evictions),
            "hotcold_cache_rejections": ("Answers refused by admission.", cache.stats.rejected),
            "hotcold_cache_policy_switches": (
                "Eviction policy changes.",
                cache.stats.policy_switches,
            ),
            "hotcold_coalesced_requests": (
                "Misses that waited for an identical one in flight.",
                view.coalesced,
            ),
        }
        for name, (help_text, value) in counters.items():
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], float(value))
            yield counter
        reloads = CounterMetricFamily(
            "hotcold_config_reloads", "Config file reloads, by result.", labels=["result"]
        )
        for result, count in view.reloads.items():
            reloads.add_metric([result], float(count))
        yield reloads


class _FleetCollector(Collector):
    """Redis sync state, read from ``FleetSync.status()`` (None: no fleet configured)."""

    def __init__(self, status: Callable[[], Mapping[str, Any] | None]) -> None:
        self._status = status

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        status = self._status()
        up = GaugeMetricFamily(
            "hotcold_fleet_redis_up",
            "1 when the fleet's Redis answered the last call, 0 when not (absent standalone).",
        )
        members = GaugeMetricFamily("hotcold_fleet_members", "Live routers in the fleet.")
        merged = GaugeMetricFamily(
            "hotcold_fleet_sketches_merged", "Other routers' sketches in the frequency view."
        )
        refused = CounterMetricFamily(
            "hotcold_fleet_documents_refused",
            "Policy documents in Redis refused (malformed, foreign, invalid).",
            labels=["reason"],
        )
        errors = CounterMetricFamily("hotcold_fleet_redis_errors", "Failed Redis calls.")
        if status is None:
            return
        up.add_metric([], 1.0 if status["state"] == "connected" else 0.0)
        members.add_metric([], float(len(status["members"])))
        merged.add_metric([], float(status["sketches_merged"]))
        for reason, count in status["refused_documents"].items():
            refused.add_metric([reason], float(count))
        errors.add_metric([], float(status["errors"]))
        yield from (up, members, merged, refused, errors)


class RecentLatencies:
    """The last answers' latencies per route, for the dashboard's p50/p99 over a recent
    window (a histogram's cumulative buckets cannot say "the last 10 seconds"). Bounded."""

    def __init__(self, per_route: int = 4096) -> None:
        self._per_route = per_route
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def observe(self, route: str, at: float, latency_s: float) -> None:
        samples = self._samples.get(route)
        if samples is None:
            samples = self._samples[route] = deque(maxlen=self._per_route)
        samples.append((at, latency_s))

    def percentiles(self, since: float) -> dict[str, dict[str, float]]:
        """{route: {"p50": ms, "p99": ms, "count": n}} over the samples newer than ``since``."""
        result = {}
        for route, samples in self._samples.items():
            recent = sorted(latency for at, latency in samples if at >= since)
            if recent:
                result[route] = {
                    "p50": round(recent[int(0.50 * (len(recent) - 1))] * 1000, 2),
                    "p99": round(recent[int(0.99 * (len(recent) - 1))] * 1000, 2),
                    "count": len(recent),
                }
        return result


class _CostCollector(Collector):
    def __init__(self, metrics: RouterMetrics, cost: Callable[[], CostEstimate]) -> None:
        self._metrics = metrics
        self._cost = cost

    def collect(self) -> Iterable[GaugeMetricFamily]:
        estimate = self._cost()
        family = GaugeMetricFamily(
            "hotcold_cost_estimated",
            "Estimated cost of the traffic since start, in the configured currency: actual"
            " (cloud tokens + edge GPU hours) and all_cloud (every token at cloud prices).",
            labels=["scenario"],
        )
        family.add_metric(["actual"], estimate.actual)
        family.add_metric(["all_cloud"], estimate.all_cloud)
        yield family
        saved = GaugeMetricFamily(
            "hotcold_cost_saved", "all_cloud - actual, in the configured currency."
        )
        saved.add_metric([], estimate.saved)
        yield saved


class _ReleaseCollector:
    """The edge's gray release per model (router/edge_release.py), read at scrape time."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        snapshot = self._snapshot()
        models = snapshot.get("models", {})
        gauges = {
            "stage": GaugeMetricFamily(
                "hotcold_edge_release_stage",
                "The edge's gray-release stage per model (0 shadow, then the shares in order).",
                labels=["model"],
            ),
            "share": GaugeMetricFamily(
                "hotcold_edge_release_share",
                "Share of the model's hot misses the edge answers now.",
                labels=["model"],
            ),
            "agreement": GaugeMetricFamily(
                "hotcold_edge_agreement",
                "Mean agreement (0-1) of edge and cloud answers since the last stage move.",
                labels=["model"],
            ),
            "samples": GaugeMetricFamily(
                "hotcold_edge_release_samples",
                "Comparisons since the last stage move.",
                labels=["model"],
            ),
        }
        moves = CounterMetricFamily(
            "hotcold_edge_release_moves", "Stage moves (advances and rollbacks).", labels=["model"]
        )
        for name, state in models.items():
            for key, family in gauges.items():
                value = state.get(key)
                if value is not None:
                    family.add_metric([name], float(value))
            moves.add_metric([name], float(state.get("moves", 0)))
        shadows = CounterMetricFamily(
            "hotcold_shadow_samples",
            "Shadow comparisons by outcome (started, compared, failed, shed).",
            labels=["outcome"],
        )
        for outcome, count in snapshot.get("shadows", {}).items():
            if outcome != "inflight":
                shadows.add_metric([outcome], float(count))
        yield from gauges.values()
        yield moves
        yield shadows


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._pools: list[Callable[[], Iterable[UpstreamPool]]] = []
        # Plain totals beside the Prometheus series, for the cost estimate and the dashboard.
        self.token_totals: dict[tuple[str, str], int] = defaultdict(int)
        self.answer_totals: dict[tuple[str, str, str], int] = defaultdict(int)
        self.recent = RecentLatencies()
        self.requests = Counter(
            "hotcold_requests",
            "Answered inference requests.",
            ["api", "route", "cache", "served_by", "status", "model"],
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
            "Tokens in answered requests, by direction and producer (cache: replayed from the"
            " cache or shared with an identical request in flight), and model.",
            ["direction", "served_by", "model"],
            registry=self.registry,
        )
        self.refused = Counter(
            "hotcold_refused_requests",
            "Requests refused before routing, by code (invalid_api_key, rate_limited,"
            " quota_exceeded, bad_tenant, overloaded, ...).",
            ["code"],
            registry=self.registry,
        )
        self.edge_fallbacks = Counter(
            "hotcold_edge_fallbacks",
            "Hot requests of edge-eligible models served by the cloud: the edge failed, was"
            " full or down, or the request asked for what the edge node cannot do.",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(
            _PoolCollector(lambda: [pool for pools in self._pools for pool in pools()])
        )

    def watch_policy(self, view: Callable[[], PolicyView]) -> None:
        self.registry.register(_PolicyCollector(view))

    def count_tokens(self, direction: str, served_by: str, model: str, count: int) -> None:
        self.tokens.labels(direction, served_by, model).inc(count)
        self.token_totals[(direction, served_by)] += count

    def count_answer(
        self,
        api: str,
        decision: tuple[str, str, str, str],
        status: str,
        latency_s: float,
        at: float,
    ) -> None:
        route, cache, served_by, model = decision
        self.requests.labels(api, route, cache, served_by, status, model).inc()
        self.latency.labels(route, served_by).observe(latency_s)
        self.answer_totals[(route, served_by, cache)] += 1
        if status == "200":
            self.recent.observe(route, at, latency_s)

    def watch_release(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.registry.register(_ReleaseCollector(snapshot))

    def watch_cost(self, cost: Callable[[], CostEstimate]) -> None:
        self.registry.register(_CostCollector(self, cost))

    def watch_fleet(self, status: Callable[[], Mapping[str, Any] | None]) -> None:
        self.registry.register(_FleetCollector(status))

    def watch_pools(self, pools: Callable[[], Iterable[UpstreamPool]]) -> None:
        """Pools whose endpoints the metrics report (a callable: pools change on reload)."""
        self._pools.append(pools)

    def observe_attempt(self, pool: str, endpoint: str, outcome: str) -> None:
        self.attempts.labels(pool, endpoint, outcome).inc()
