"""Per request: classify, answer from the cache, the edge node or the cloud, and keep the answer.

The flow::

    key = tenant + model + canonical request           (router.keys)
    classification = pins, then frequency vs threshold (router.classify; counts every request)
    deterministic and not opted out?  cache hit  ──► X-Route: hot, X-Served-By: cache
    identical miss already in flight? wait for it   (single-flight)
    hot and the edge node can take it ──► edge;  it fails or is full ──► cloud (still hot)
    cold ──► cloud
    deterministic answer ──► offered to the cache (its measured eviction policy decides)

Every answer carries ``X-Route`` (hot|cold), ``X-Cache`` (hit|miss|bypass) and
``X-Served-By`` (cache|edge|cloud; ``router`` when the router answered an error itself).
A hot request is never failed because the edge is down or busy while the cloud can answer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from hotcold.wire import ApiError, BadRequest, InferenceRequest, error_body, sse_event
from hotcold.wire.sse import SSE_HEADERS, iter_sse_events
from router.answers import (
    CachedAnswer,
    StreamCapture,
    error_response,
    plain_response,
    replay_events,
)
from router.cache import ResponseCache
from router.classify import Classification, Classifier
from router.clock import Clock
from router.config import RouterConfig
from router.keys import request_key
from router.metrics import RouterMetrics
from router.policy_manager import PolicyManager
from router.singleflight import SingleFlight
from router.upstream import StreamBroken, UpstreamPool, UpstreamReply

log = logging.getLogger("hotcold.dispatch")

DEFAULT_TENANT = "default"
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # "hot" | "cold"
    cache: str  # "hit" | "miss" | "bypass"
    served_by: str  # "cache" | "edge" | "cloud" | "router"

    def headers(self) -> dict[str, str]:
        return {"X-Route": self.route, "X-Cache": self.cache, "X-Served-By": self.served_by}


REQUEST_ID = web.RequestKey("request_id", str)
DECISION = web.RequestKey("decision", Decision)


def tenant_of(http: web.Request) -> str:
    """The request's tenant: the X-Tenant header (open mode: no API keys exist yet)."""
    offered = http.headers.get("X-Tenant")
    if offered is None:
        return DEFAULT_TENANT
    if not _TENANT.match(offered):
        raise BadRequest(
            "X-Tenant must be 1-64 characters of letters, digits, '.', '_', '-'",
            code="bad_tenant",
            param="X-Tenant",
        )
    return offered


def cache_modes(request: InferenceRequest, cache_control: str | None) -> tuple[bool, bool]:
    """(may read the cache, may write it): only deterministic requests, and the client may
    opt out: ``no-cache`` skips the lookup (a fresh answer, which is still stored),
    ``no-store`` skips both."""
    if not request.params.is_deterministic():
        return False, False
    directives = {part.strip().lower() for part in (cache_control or "").split(",")}
    if "no-store" in directives:
        return False, False
    return "no-cache" not in directives, True


class Dispatcher:
    def __init__(
        self,
        config: RouterConfig,
        cloud: UpstreamPool,
        edge: UpstreamPool | None,
        classifier: Classifier,
        cache: ResponseCache,
        metrics: RouterMetrics,
        clock: Clock,
        policy: PolicyManager,
    ) -> None:
        self._config = config
        self._policy = policy  # live cache rules (TTL, admission) from the fleet policy
        self._cloud = cloud
        self._edge = edge
        self._classifier = classifier
        self._cache = cache
        self._metrics = metrics
        self._clock = clock
        self.flights: SingleFlight[CachedAnswer] = SingleFlight()

    def edge_can_take(self) -> bool:
        edge = self._edge
        return (
            edge is not None
            and edge.outstanding < self._config.edge.max_inflight
            and edge.available()
        )

    async def serve(self, http: web.Request, request: InferenceRequest) -> web.StreamResponse:
        now = self._clock.now()
        tenant = tenant_of(http)
        key = request_key(tenant, request)
        text = request.prompt_text() if self._classifier.pins else ""  # only pins read it
        verdict = self._classifier.classify(key.fingerprint, request.params.model, text, now)
        read, write = cache_modes(request, http.headers.get("Cache-Control"))
        deadline_at = now + self._config.server.request_deadline_s
        if read:
            cached = self._cache.get(key.fingerprint, now, tenant)
            if cached is not None:
                return self._from_cache(http, request, cached, Decision("hot", "hit", "cache"))
        label = "miss" if read else "bypass"
        leading = False
        if read and write:
            flight = self.flights.join(key.fingerprint)
            if flight is None:
                leading = True
            else:
                shared = await SingleFlight.wait(flight, deadline_at - self._clock.now())
                if shared is not None:
                    decision = Decision(verdict.route, "miss", shared.produced_by)
                    response = self._from_cache(http, request, shared, decision)
                    response.headers["X-Coalesced"] = "true"
                    return response
        answer: CachedAnswer | None = None
        try:
            response, answer = await self._compute(http, request, verdict, label, deadline_at)
        finally:
            if leading:
                self.flights.finish(key.fingerprint, answer)
        # Every deterministic answer is offered (min_frequency 1): the eviction policy the cache
        # measured as best decides what stays. Strict mode (2) keeps only keys seen twice.
        # Independent of the threshold on purpose: when the edge is overloaded the threshold
        # rises, and the cache, which costs nothing to serve from, must not take less then.
        rules = self._policy.values.cache
        if answer is not None and write and verdict.estimate >= rules.min_frequency:
            self._cache.put(
                key.fingerprint,
                answer,
                size=answer.size,
                now=self._clock.now(),
                ttl_s=rules.ttl_s,
                tenant=tenant,
            )
        return response

    def _from_cache(
        self, http: web.Request, request: InferenceRequest, answer: CachedAnswer, decision: Decision
    ) -> web.StreamResponse:
        http[DECISION] = decision
        headers = decision.headers()
        self._count_tokens(answer.document.get("usage"), "cache")  # no upstream cost
        if request.stream:
            return web.Response(
                body=b"".join(replay_events(answer, request)), headers={**SSE_HEADERS, **headers}
            )
        return plain_response(http, answer.document, answer.body, headers)

    async def _compute(
        self,
        http: web.Request,
        request: InferenceRequest,
        verdict: Classification,
        label: str,
        deadline_at: float,
    ) -> tuple[web.StreamResponse, CachedAnswer | None]:
        document = request.body
        if request.stream and not request.params.include_usage():
            document = {**document, "stream_options": {"include_usage": True}}
        body = orjson.dumps(document)
        headers = {"X-Request-Id": http.get(REQUEST_ID, "")}
        if verdict.route == "hot" and self._edge is not None:
            if self.edge_can_take():
                edge_deadline = min(deadline_at, self._clock.now() + self._config.edge.timeout_s)
                decision = Decision("hot", label, "edge")
                http[DECISION] = decision
                try:
                    return await self._from_pool(
                        http, request, self._edge, decision, body, edge_deadline, headers
                    )
                except ApiError as exc:
                    self._metrics.edge_fallbacks.labels("edge_failed").inc()
                    log.info("edge could not answer (%s); serving from the cloud", exc.message)
            else:
                self._metrics.edge_fallbacks.labels("edge_busy_or_down").inc()
                log.debug(
                    "edge busy or down (%d outstanding); serving from the cloud",
                    self._edge.outstanding,
                )
        decision = Decision(verdict.route, label, "cloud")
        http[DECISION] = decision
        try:
            return await self._from_pool(
                http, request, self._cloud, decision, body, deadline_at, headers
            )
        except ApiError:
            http[DECISION] = replace(decision, served_by="router")
            raise

    async def _from_pool(
        self,
        http: web.Request,
        request: InferenceRequest,
        pool: UpstreamPool,
        decision: Decision,
        body: bytes,
        deadline_at: float,
        headers: dict[str, str],
    ) -> tuple[web.StreamResponse, CachedAnswer | None]:
        started = self._clock.now()
        if request.stream:
            upstream = await pool.open_stream(request.path, body, deadline_at, headers)
            if isinstance(upstream, UpstreamReply):
                return self._reply(http, upstream, decision)
            self._observe_edge(decision, upstream.queue_ms, started)
            return await self._relay(http, request, upstream, decision)
        reply = await pool.complete(request.path, body, deadline_at, headers)
        self._observe_edge(decision, reply.queue_ms, started)
        return self._reply(http, reply, decision)

    def _observe_edge(self, decision: Decision, queue_ms: float | None, started: float) -> None:
        """Feed the capacity loop: the edge's own queue report, else time to first byte."""
        if decision.served_by != "edge":
            return
        if queue_ms is None:
            queue_ms = (self._clock.now() - started) * 1000
        self._classifier.controller.observe_queue_delay(queue_ms)

    def _reply(
        self, http: web.Request, reply: UpstreamReply, decision: Decision
    ) -> tuple[web.Response, CachedAnswer | None]:
        headers = decision.headers()
        try:
            document: Any = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            document = None
        if reply.status >= 400:
            return error_response(reply.status, document, headers), None
        if not isinstance(document, dict):
            log.warning("upstream %s sent a body that is not a JSON object", reply.endpoint)
            bad = error_body(
                "upstream sent an unreadable answer", "upstream_error", "bad_upstream_answer"
            )
            return error_response(502, bad, headers), None
        self._count_tokens(document.get("usage"), decision.served_by)
        answer = CachedAnswer(reply.body, document, decision.served_by)
        return plain_response(http, document, reply.body, headers), answer

    async def _relay(
        self,
        http: web.Request,
        request: InferenceRequest,
        upstream: Any,
        decision: Decision,
    ) -> tuple[web.StreamResponse, CachedAnswer | None]:
        capture = StreamCapture(request)
        response = web.StreamResponse(
            headers={**SSE_HEADERS, **decision.headers(), "X-Request-Id": http.get(REQUEST_ID, "")}
        )
        try:
            await response.prepare(http)
            try:
                events = iter_sse_events(upstream.chunks(self._config.server.stream_idle_timeout_s))
                async for event in events:
                    relayed = capture.feed(event)
                    if relayed is not None:
                        await response.write(relayed)
            except StreamBroken as exc:
                log.warning("stream from %s broke: %s", upstream.endpoint, exc)
                capture.broken = True
                await response.write(
                    sse_event(error_body(str(exc), "upstream_error", "stream_broken"))
                )
            await response.write_eof()
        finally:
            upstream.close()  # no-op after a clean end; frees the upstream slot otherwise
        self._count_tokens(capture.usage, decision.served_by)
        return response, capture.answer(decision.served_by)

    def _count_tokens(self, usage: Any, served_by: str) -> None:
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            self._metrics.count_tokens("in", served_by, prompt)
        if isinstance(completion, int) and completion >= 0:
            self._metrics.count_tokens("out", served_by, completion)
