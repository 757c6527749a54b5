"""The router's Prometheus series, in a registry owned by the app (no process-wide state).

Gauges that mirror live state (outstanding requests and breaker state per endpoint) are read
at scrape time by a collector, so the request path never updates them.

The request path counts through :class:`RouterMetrics`' methods (``count_answer``,
``count_tokens``, ``observe_attempt``, ``count_refused``, ``count_edge_fallback``) into
:class:`PlainCounter` and :class:`PlainHistogram`: plain numbers, each series' child found by
one dictionary lookup and read at scrape time, exported exactly as prometheus_client's
``Counter`` and ``Histogram`` export them. The library's ``labels()`` validates its arguments
and takes a lock on every call, and every increment or observation takes another: a few
microseconds per request for nothing on the router's one event-loop thread. A new labelled
series on the request path should be a plain one the same way.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
# Time to first token: from a few ms (a cache hit) to the request deadline.
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Count:
    """One labelled counter's value: a plain number, no lock (see :class:`PlainCounter`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Observations:
    """One labelled histogram's bucket counts (not cumulated: that is done at scrape time)
    and sum, plain numbers, no lock (see :class:`PlainHistogram`)."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # le: the first bound >= value
        self.sum += value


class PlainCounter(Collector):
    """A labelled counter of the request path, exported exactly as prometheus_client's
    ``Counter`` of the same name, help and labels exports it (``<name>_total``, no
    ``_created``), but counted in plain numbers read at scrape time: the library's counter
    takes a lock per increment, which the router, counting from its one event-loop thread
    (scrapes are served on the same loop), never needs. Its children are kept for good, as
    the library's are: every label takes values from a bounded set."""

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], registry: CollectorRegistry
    ) -> None:
        self._name, self._documentation = name, documentation
        self._labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], _Count] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Count:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: {len(self._labelnames)} label values wanted")
            child = self._children[values] = _Count()
        return child

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family


class PlainHistogram(Collector):
    """A labelled histogram of the request path, exported exactly as prometheus_client's
    ``Histogram`` exports it (cumulative ``_bucket`` with ``le``, ``_count``, ``_sum``), but
    observed into plain numbers: a bisection and two additions instead of a walk over the
    buckets and two locks per observation (see :class:`PlainCounter`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._documentation = name, documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        self._les = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], _Observations] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Observations:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: {len(self._labelnames)} label values wanted")
            child = self._children[values] = _Observations(self._bounds)
        return child

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
        yield family


OTHER = "other"  # the label value of what is past a series' bound


class BoundedLabel:
    """Label values for a series whose values clients choose (tenants: any X-Tenant in open
    mode, up to tenants.max_live_keys with keys): the first ``limit`` distinct values keep
    their own, every later one is counted as ``"other"``, so the series stay bounded."""

    __slots__ = ("_known", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._known or value == OTHER:
            return value
        if len(self._known) < self._limit:
            self._known.add(value)
            return value
        return OTHER


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

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
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
        yield InfoMetricFamily(
            "hotcold_cache_policy",
            "The cache's active eviction policy (the hit ratio: rate of hotcold_cache_hits_total"
            " over hits + misses).",
            value={"policy": cache.policy_name},
        )
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
        limits = GaugeMetricFamily(
            "hotcold_fleet_limits_mode",
            "1 for the mode tenant limits are in: fleet (through Redis) or local (fallback).",
            labels=["mode"],
        )
        if status is None:
            return
        if status.get("limits") is not None:
            for mode in ("fleet", "local"):
                limits.add_metric([mode], 1.0 if status["limits"]["mode"] == mode else 0.0)
            yield limits
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
    """The cost estimate since start, with the currency in the series' names (a unit, as
    Prometheus names want it): ``hotcold_estimated_cost_usd_total{scenario}`` (actual: cloud
    tokens + edge GPU hours; all_cloud: every token at cloud prices; both only grow) and
    ``hotcold_estimated_savings_usd`` (all_cloud - actual; falls while an idle edge costs)."""

    def __init__(self, cost: Callable[[], CostEstimate], currency: str) -> None:
        self._cost = cost
        self._unit = currency.lower()

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        estimate = self._cost()
        family = CounterMetricFamily(
            f"hotcold_estimated_cost_{self._unit}",
            f"Estimated cost of the traffic since start, {self._unit.upper()}: actual (cloud"
            " tokens + edge GPU hours) and all_cloud (every token at cloud prices).",
            labels=["scenario"],
        )
        family.add_metric(["actual"], estimate.actual)
        family.add_metric(["all_cloud"], estimate.all_cloud)
        yield family
        saved = GaugeMetricFamily(
            f"hotcold_estimated_savings_{self._unit}",
            f"Estimated all_cloud - actual cost since start, {self._unit.upper()}.",
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
    def __init__(self, tenant_labels: int = 20) -> None:
        # No *_created series: a sample per series that dashboards never use (the switch is
        # prometheus_client's, process-wide; every registry here wants it off).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)  # process_*, python_info, python_gc_*
        self.tenant_label = BoundedLabel(tenant_labels)
        self._pools: list[Callable[[], Iterable[UpstreamPool]]] = []
        # Plain totals beside the Prometheus series, for the cost estimate and the dashboard.
        self.token_totals: dict[tuple[str, str], int] = defaultdict(int)
        self.answer_totals: dict[tuple[str, str, str], int] = defaultdict(int)
        self.recent = RecentLatencies()
        self.requests = PlainCounter(
            "hotcold_requests",
            "Answered inference requests (tenant: see metrics.tenant_labels).",
            ["api", "route", "cache", "served_by", "status", "model", "tenant"],
            registry=self.registry,
        )
        self.latency = PlainHistogram(
            "hotcold_request_latency_seconds",
            "Time to the full answer (streams: to the last byte), by route and producer.",
            ["route", "served_by"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.attempts = PlainCounter(
            "hotcold_upstream_attempts",
            "Attempts sent upstream, by outcome (ok, refused, failed, connect_failed, broken,"
            " timeout, cancelled, client_error, stream_broken, probe_ok, probe_failed).",
            ["pool", "endpoint", "outcome"],
            registry=self.registry,
        )
        self.tokens = PlainCounter(
            "hotcold_tokens",
            "Tokens in answered requests, by direction and producer (cache: replayed from the"
            " cache or shared with an identical request in flight), model and tenant.",
            ["direction", "served_by", "model", "tenant"],
            registry=self.registry,
        )
        self.ttft = PlainHistogram(
            "hotcold_time_to_first_token_seconds",
            "Time from arrival to the first token sent to the client (streams: the first"
            " content chunk; other answers: the whole answer), successful answers only.",
            ["route", "served_by", "model"],
            buckets=TTFT_BUCKETS_S,
            registry=self.registry,
        )
        self.refused = PlainCounter(
            "hotcold_refused_requests",
            "Requests refused before routing, by code (invalid_api_key, rate_limited,"
            " quota_exceeded, bad_tenant, overloaded, ...).",
            ["code"],
            registry=self.registry,
        )
        self.edge_fallbacks = PlainCounter(
            "hotcold_edge_fallbacks",
            "Hot requests of edge-eligible models served by the cloud: the edge failed, was"
            " full or down, or the request asked for what the edge node cannot do.",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(
            _PoolCollector(lambda: [pool for pools in self._pools for pool in pools()])
        )
        self._requests = self.requests.labels
        self._latency = self.latency.labels
        self._attempts = self.attempts.labels
        self._tokens = self.tokens.labels
        self._ttft = self.ttft.labels
        self._refused = self.refused.labels
        self._edge_fallbacks = self.edge_fallbacks.labels

    def watch_policy(self, view: Callable[[], PolicyView]) -> None:
        self.registry.register(_PolicyCollector(view))

    def count_tokens(
        self, direction: str, served_by: str, model: str, count: int, tenant: str = OTHER
    ) -> None:
        self._tokens(direction, served_by, model, self.tenant_label(tenant)).inc(count)
        self.token_totals[(direction, served_by)] += count

    def count_answer(
        self,
        api: str,
        decision: tuple[str, str, str, str],
        status: str,
        latency_s: float,
        at: float,
        tenant: str = OTHER,
        first_token_s: float | None = None,
    ) -> None:
        """One answered request; ``first_token_s``: when its first token went out (None: the
        answer went out whole, at ``latency_s``)."""
        route, cache, served_by, model = decision
        self._requests(api, route, cache, served_by, status, model, self.tenant_label(tenant)).inc()
        self._latency(route, served_by).observe(latency_s)
        self.answer_totals[(route, served_by, cache)] += 1
        if status == "200":
            self.recent.observe(route, at, latency_s)
            first = latency_s if first_token_s is None else first_token_s
            self._ttft(route, served_by, model).observe(first)

    def watch_release(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.registry.register(_ReleaseCollector(snapshot))

    def watch_cost(self, cost: Callable[[], CostEstimate], currency: str = "USD") -> None:
        self.registry.register(_CostCollector(cost, currency))

    def watch_fleet(self, status: Callable[[], Mapping[str, Any] | None]) -> None:
        self.registry.register(_FleetCollector(status))

    def watch_pools(self, pools: Callable[[], Iterable[UpstreamPool]]) -> None:
        """Pools whose endpoints the metrics report (a callable: pools change on reload)."""
        self._pools.append(pools)

    def observe_attempt(self, pool: str, endpoint: str, outcome: str) -> None:
        self._attempts(pool, endpoint, outcome).inc()

    def count_refused(self, code: str) -> None:
        """A request refused before routing (401, 429, 503 overloaded, ...)."""
        self._refused(code).inc()

    def count_edge_fallback(self, reason: str) -> None:
        """A hot request of an edge-eligible model served by the cloud, and why."""
        self._edge_fallbacks(reason).inc()
