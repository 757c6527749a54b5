"""Per request: classify, answer from the cache, the edge node or the cloud, and keep the answer.

The flow::

    model = the catalog's entry for the name asked  (router.catalog; 404 model_not_found)
    key = tenant + public model + canonical request  (router.keys)
    classification = pins, then frequency vs threshold (router.classify; counts every request)
    deterministic and not opted out?  cache hit  ──► X-Route: hot, X-Served-By: cache
    identical miss already in flight? wait for it   (single-flight)
    hot, the catalog lets the edge answer this model, the request asks for nothing the edge
        node cannot do (tools, n > 1, ...) and the edge can take it ──► edge;
        it fails or is full ──► the model's cloud pool (still hot)
    cold ──► the model's cloud pool
    deterministic answer ──► offered to the cache (its measured eviction policy decides)

Every answer carries ``X-Route`` (hot|cold), ``X-Cache`` (hit|miss|bypass) and
``X-Served-By`` (cache|edge|cloud; ``router`` when the router answered an error itself).
A hot request is never failed because the edge is down or busy while the cloud can answer.
The rules themselves are plain code in router/decision.py (tested without a server); this
module gathers the facts, asks, and does the I/O.
Upstreams are asked for their own name of the model (the catalog's ``upstream_model``, or the
edge model); every answer, plain, streamed or cached, names the public model asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from hotcold.http import HttpRequest
from hotcold.wire import (
    ApiError,
    BadRequest,
    InferenceRequest,
    InvalidField,
    error_body,
    sse_event,
)
from hotcold.wire.codec import accepts_only_msgpack
from hotcold.wire.sse import SSE_HEADERS, iter_sse_events
from router.agreement import answer_text
from router.answers import (
    CachedAnswer,
    StreamCapture,
    error_response,
    plain_response,
    replay_events,
    set_model,
    start_stream,
)
from router.bookkeeping import Bookkeeping
from router.cache import ResponseCache
from router.catalog import ResolvedModel
from router.classify import Classification, Classifier
from router.clock import Clock
from router.config import RouterConfig
from router.decision import CacheFacts, ProducerFacts, cache_plan, producer_plan
from router.edge_release import EdgeRelease
from router.fleet_limits import FleetLimits
from router.metrics import OTHER, RouterMetrics
from router.models import ModelRoutes
from router.parsed import ParsedRequest, ParsedRequests
from router.policy_manager import PolicyManager
from router.singleflight import SingleFlight
from router.tenants import Authenticator, TenantLimiter
from router.tracing import NO_TRACING, Tracing
from router.upstream import StreamBroken, UpstreamPool, UpstreamReply

log = logging.getLogger("hotcold.dispatch")


# Fields the edge node acts on (edge_node/handlers.py); a request with any other field
# (tools, response_format, logprobs, penalties, vLLM's guided decoding, ...) would get an
# answer that silently ignores it there, so it goes to the model's cloud pool instead.
EDGE_FIELDS = frozenset(
    {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
     "top_p", "stop", "seed", "stream", "stream_options", "user", "metadata", "store",
     "service_tier", "prompt_cache_key", "safety_identifier", "n"}
)  # fmt: skip
MAX_DECISIONS = 4096  # decisions kept for reuse (Dispatcher._decision)
UNRESOLVED = "unresolved"  # the model label of answers given before a model was resolved


def edge_can_answer(request: InferenceRequest) -> bool:
    """Whether the edge node can answer this request faithfully (whatever its catalog entry):
    text in, one choice out, and no field, content part or tool turn it would ignore."""
    if (
        request.kind == "embeddings"
        or request.params.choices() != 1
        or not request.body.keys() <= EDGE_FIELDS
    ):
        return False
    for message in request.body.get("messages") or ():
        if message.get("role") in ("tool", "function") or message.get("tool_calls"):
            return False
        content = message.get("content")
        if isinstance(content, list) and any(part.get("type") != "text" for part in content):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # "hot" | "cold"
    cache: str  # "hit" | "miss" | "bypass"
    served_by: str  # "cache" | "edge" | "cloud" | "router"
    model: str = UNRESOLVED  # the catalog name (a bounded label set for the metrics)

    def headers(self) -> dict[str, str]:
        return {"X-Route": self.route, "X-Cache": self.cache, "X-Served-By": self.served_by}


REQUEST_ID = web.RequestKey("request_id", str)
DECISION = web.RequestKey("decision", Decision)
TENANT = web.RequestKey("tenant", str)
# When the first chunk with output (not a role-only chunk) of a relayed stream went out
# (time.perf_counter(), as the middleware's clock): the time-to-first-token histogram's end.
FIRST_TOKEN_AT = web.RequestKey("first_token_at", float)


class EdgeRefused(ApiError):
    """The edge node answered with an error: the model's cloud pool answers instead."""

    status = 502
    error_type = "upstream_error"
    default_code = "edge_refused"


def _renamed(document: Any, name: str, public: str) -> Any:
    """An upstream error document with the upstream's name of the model replaced."""
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) or not name:
        return document
    return {**document, "error": {**error, "message": error["message"].replace(name, public)}}


class Dispatcher:
    def __init__(
        self,
        config: RouterConfig,
        routes: ModelRoutes,
        edge: UpstreamPool | None,
        classifier: Classifier,
        cache: ResponseCache,
        metrics: RouterMetrics,
        clock: Clock,
        policy: PolicyManager,
        tenants: TenantLimiter,
        authenticator: Authenticator,
        release: EdgeRelease,
        fleet_limits: FleetLimits | None = None,
        bookkeeping: Bookkeeping | None = None,
    ) -> None:
        """``fleet_limits``: the tenants' limits shared through the fleet's Redis (None:
        this router's own buckets, ``tenants``); ``bookkeeping``: where counters wait for an
        idle moment (shared with the upstream pools; None: its own)."""
        self._config = config
        self.fleet_limits = fleet_limits
        self.release = release  # the edge's gray release and latency budget, per model
        self._shadows: set[asyncio.Task[None]] = set()
        self.tracing: Tracing = NO_TRACING  # spans (router/tracing.py); set by the app
        self.tenants = tenants
        self._authenticator = authenticator
        self._policy = policy  # live cache rules (TTL, admission) from the fleet policy
        self.routes = routes  # the live catalog and its pools (replaced on reload)
        self._edge = edge
        self._classifier = classifier
        self._cache = cache
        self._metrics = metrics
        self._clock = clock
        self.flights: SingleFlight[CachedAnswer] = SingleFlight()
        self._decisions: dict[tuple[str, str, str, str], Decision] = {}  # see _decision
        self.parsed = ParsedRequests()  # repeated bodies skip decoding and validation
        # Counters, access lines, observations: done while the router waits for an upstream.
        self.bookkeeping = bookkeeping if bookkeeping is not None else Bookkeeping()

    async def close(self) -> None:
        """Cancel shadow comparisons still running, then do the bookkeeping still owed
        (theirs included) (shutdown)."""
        for task in list(self._shadows):
            task.cancel()
        for task in list(self._shadows):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.bookkeeping.run()

    def edge_can_take(self) -> bool:
        edge = self._edge
        return (
            edge is not None
            and self.tenants.edge_inflight < self._config.edge.max_inflight
            and edge.available()
        )

    async def admit(self, http: HttpRequest) -> str:
        """Who is asking, and may they now: 401, or 429 with Retry-After. Before the body
        is read, so a refused client costs almost nothing (with fleet limits: one bounded
        Redis call, router/fleet_limits.py)."""
        try:
            tenant = self._authenticator.tenant(http)
            if self.fleet_limits is None:
                self.tenants.admit(tenant, self._clock.now())
            else:
                await self.fleet_limits.admit(tenant, self._clock.now())
        except ApiError as exc:
            self._metrics.count_refused(exc.code)
            raise
        http[TENANT] = tenant
        return tenant

    async def serve(
        self, http: HttpRequest, parsed: ParsedRequest, tenant: str
    ) -> web.StreamResponse:
        request = parsed.request
        now = self._clock.now()
        tracing = self.tracing
        if tracing.enabled:
            tracing.describe(http, request)
        model = self.routes.catalog.resolve(request.params.model, request.kind)
        # The pool is taken now, with the catalog it belongs to: a reload that removes it
        # while this request waits (coalescing, the edge) cannot leave it without one.
        pool = self.routes.pool_of(model.entry.pool)
        limits = self._config.server
        for field, value in parsed.output_fields.items():  # each one checked
            if value > limits.max_tokens_ceiling:
                raise InvalidField(
                    f"{field} {value} is over this gateway's ceiling of "
                    f"{limits.max_tokens_ceiling}",
                    code="max_tokens_too_large",
                    param=field,
                )
        prompt = parsed.prompt
        if len(prompt) > limits.max_prompt_chars:
            raise BadRequest(
                f"the prompt has {len(prompt)} characters, over the limit of "
                f"{limits.max_prompt_chars}",
                code="context_length_exceeded",
                param={"chat": "messages", "completion": "prompt"}.get(request.kind, "input"),
            )
        key = parsed.key(tenant, model.public, model.producers)
        verdict = self._classifier.classify(key.fingerprint, model.public, prompt, now)
        plan = cache_plan(
            CacheFacts(request.params.is_deterministic(), http.headers.get("Cache-Control"))
        )
        deadline_at = now + self._config.server.request_deadline_s
        if plan.read:
            lookup = tracing.cache_lookup() if tracing.enabled else None
            cached = self._cache.get(key.fingerprint, now, tenant)
            if lookup is not None:
                tracing.cache_result(lookup, "miss" if cached is None else "hit")
            if cached is not None and plan.serves(cached.replayable, request.stream):
                hit = self._decision("hot", "hit", "cache", model.entry.name)
                return self._from_cache(http, request, cached, hit)
        label = plan.label
        leading = False
        if plan.coalesce:
            flight = self.flights.join(key.fingerprint)
            if flight is None:
                leading = True
            else:
                shared = await SingleFlight.wait(flight, deadline_at - self._clock.now())
                if shared is not None and plan.serves(shared.replayable, request.stream):
                    decision = self._decision(
                        verdict.route, "miss", shared.produced_by, model.entry.name
                    )
                    response = self._from_cache(http, request, shared, decision)
                    response.headers["X-Coalesced"] = "true"
                    return response
        answer: CachedAnswer | None = None
        try:
            response, answer = await self._compute(
                http, request, model, pool, verdict, label, deadline_at, key.fingerprint
            )
        finally:
            if leading:
                self.flights.finish(key.fingerprint, answer)
        # Every deterministic answer is offered (min_frequency 1): the eviction policy the cache
        # measured as best decides what stays. Strict mode (2) keeps only keys seen twice.
        # Independent of the threshold on purpose: when the edge is overloaded the threshold
        # rises, and the cache, which costs nothing to serve from, must not take less then.
        if answer is not None and request.params.is_deterministic():
            # Only deterministic answers are compared: two samples of a sampled request
            # differ whoever computes them, so their agreement would measure nothing.
            self._maybe_shadow(http, request, model, pool, answer)
        rules = self._policy.values.cache
        if answer is not None and plan.write and verdict.estimate >= rules.min_frequency:
            self._cache.put(
                key.fingerprint,
                answer,
                size=answer.size,
                now=self._clock.now(),
                ttl_s=rules.ttl_s,
                tenant=tenant,
            )
        return response

    def _decision(self, route: str, cache: str, served_by: str, model: str) -> Decision:
        """The decision with these labels. Decisions are immutable and their labels few (the
        catalog's names times a handful), so one of each is kept, at most MAX_DECISIONS."""
        labels = (route, cache, served_by, model)
        decision = self._decisions.get(labels)
        if decision is None:
            if len(self._decisions) >= MAX_DECISIONS:  # names of models long since removed
                self._decisions.clear()
            decision = self._decisions[labels] = Decision(route, cache, served_by, model)
        return decision

    def _from_cache(
        self, http: HttpRequest, request: InferenceRequest, answer: CachedAnswer, decision: Decision
    ) -> web.StreamResponse:
        http[DECISION] = decision
        headers = decision.headers()
        self._count_tokens(http, answer.usage, "cache", decision.model)  # no upstream cost
        if request.stream:
            return web.Response(
                body=b"".join(replay_events(answer, request)), headers={**SSE_HEADERS, **headers}
            )
        return plain_response(http, None, answer.body, headers)

    async def _compute(
        self,
        http: HttpRequest,
        request: InferenceRequest,
        model: ResolvedModel,
        cloud: UpstreamPool,
        verdict: Classification,
        label: str,
        deadline_at: float,
        fingerprint: int,
    ) -> tuple[web.StreamResponse, CachedAnswer | None]:
        document = request.upstream_body()  # the one output bound the client has
        if request.stream and not request.params.include_usage():
            theirs = document.get("stream_options")
            options = {**theirs} if isinstance(theirs, dict) else {}
            document = {**document, "stream_options": {**options, "include_usage": True}}
        headers = {"X-Request-Id": http.get(REQUEST_ID, "")}
        tenant = http[TENANT]
        name = model.entry.name
        edge = self._edge
        eligible = verdict.route == "hot" and edge is not None and model.entry.edge_allowed
        standing = (
            self.release.verdict(
                name, (fingerprint & 0xFFFFFFFF) / 2**32, request.params.output_limit()
            )
            if eligible
            else None
        )
        producer = producer_plan(
            ProducerFacts(
                route=verdict.route,
                edge_configured=edge is not None,
                edge_allowed=model.entry.edge_allowed,
                # Asked only where the plan reads them (an eligible hot request).
                edge_can_answer=eligible and edge_can_answer(request),
                edge_has_room=eligible and edge is not None and edge.available(),
                edge_earned=standing is None or standing.earned,
                edge_fast_enough=standing is None or standing.fast_enough,
            )
        )
        if producer.reason in (
            "request_not_for_edge",
            "edge_busy_or_down",
            "edge_not_earned",
            "edge_too_slow",
        ):
            self._metrics.count_edge_fallback(producer.reason)
        if producer.first == "edge" and edge is not None:
            if self.tenants.take_edge_slot(tenant, self._clock.now()):
                edge_deadline = min(deadline_at, self._clock.now() + self._config.edge.timeout_s)
                decision = self._decision("hot", label, "edge", name)
                http[DECISION] = decision
                body = orjson.dumps({**document, "model": model.edge_name})
                try:
                    return await self._from_pool(
                        http, request, model, edge, decision, body, edge_deadline, headers
                    )
                except ApiError as exc:
                    self._metrics.count_edge_fallback("edge_failed")
                    self.release.observe(name, "edge", False, 0.0, None, self._clock.now())
                    log.info("edge could not answer (%s); serving from the cloud", exc.message)
                finally:
                    self.tenants.release_edge_slot(tenant)
            else:  # the tenant's fair share of the edge is taken
                self._metrics.count_edge_fallback("edge_busy_or_down")
        decision = self._decision(verdict.route, label, "cloud", name)
        http[DECISION] = decision
        body = orjson.dumps({**document, "model": model.upstream_name})
        try:
            return await self._from_pool(
                http, request, model, cloud, decision, body, deadline_at, headers
            )
        except ApiError:
            http[DECISION] = replace(decision, served_by="router")
            raise

    async def _from_pool(
        self,
        http: HttpRequest,
        request: InferenceRequest,
        model: ResolvedModel,
        pool: UpstreamPool,
        decision: Decision,
        body: bytes,
        deadline_at: float,
        headers: dict[str, str],
    ) -> tuple[web.StreamResponse, CachedAnswer | None]:
        started = self._clock.now()
        result: tuple[web.StreamResponse, CachedAnswer | None]
        # The request is written upstream before this task first waits; the loop's next turn,
        # with the upstream at work, is this router's idle moment: the bookkeeping runs then.
        self.bookkeeping.run_soon()
        if request.stream:
            with self.tracing.producer(decision.served_by, pool.name):
                upstream = await pool.open_stream(request.path, body, deadline_at, headers)
            if isinstance(upstream, UpstreamReply):
                result = self._reply(http, request, upstream, decision, model)
            else:
                self._observe_edge(decision, upstream.queue_ms, started)
                result = await self._relay(http, request, upstream, decision, model.public)
        else:
            with self.tracing.producer(decision.served_by, pool.name):
                reply = await pool.complete(request.path, body, deadline_at, headers)
            self._observe_edge(decision, reply.queue_ms, started)
            result = self._reply(http, request, reply, decision, model)
        self._observe_producer(decision, result[1], started)
        return result

    def _observe_producer(
        self, decision: Decision, answer: CachedAnswer | None, started: float
    ) -> None:
        """The answer's time and tokens, for the edge's latency budget and gray release. The
        edge's own evidence is recorded at once, in order with the rest of it (its failures,
        a new edge model, the shadow comparisons: a sample recorded after a reset it came
        before would count for the wrong candidate); a cloud answer's time, the budget's
        reference, is bookkeeping (router/bookkeeping.py)."""
        now = self._clock.now()
        tokens = (answer.usage or {}).get("completion_tokens") if answer is not None else None
        observation = (
            decision.model,
            decision.served_by,
            answer is not None,
            now - started,
            tokens if isinstance(tokens, int) else None,
            now,
        )
        if decision.served_by == "edge":
            self.release.observe(*observation)
        else:
            self.bookkeeping.defer(self.release.observe, *observation)

    # ---- shadow comparisons ------------------------------------------------------------

    def _maybe_shadow(
        self,
        http: HttpRequest,
        request: InferenceRequest,
        model: ResolvedModel,
        cloud: UpstreamPool,
        answer: CachedAnswer,
    ) -> None:
        """Sample a hot answer of an edge-eligible model for a comparison with the other
        side, in the background: it never delays or fails the client's request, and it is
        shed first (router/edge_release.py)."""
        edge = self._edge
        if edge is None or not model.entry.edge_allowed or not edge_can_answer(request):
            return
        under_load = (
            not edge.available()
            or self.tenants.edge_inflight >= self._config.edge.max_inflight // 2
        )
        if not self.release.take_shadow(under_load):
            return
        other = "cloud" if answer.produced_by == "edge" else "edge"
        pool = edge if other == "edge" else cloud
        name = model.edge_name if other == "edge" else model.upstream_name
        document = {**request.body, "model": name, "stream": False}
        document.pop("stream_options", None)
        headers = {"X-Request-Id": http.get(REQUEST_ID, "") + "-shadow"}
        task = asyncio.create_task(
            self._shadow(request.path, orjson.dumps(document), pool, other, model, answer, headers),
            name="shadow",
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        path: str,
        body: bytes,
        pool: UpstreamPool,
        other: str,
        model: ResolvedModel,
        answer: CachedAnswer,
        headers: dict[str, str],
    ) -> None:
        name = model.entry.name
        started = self._clock.now()
        limit = (
            self._config.edge.timeout_s
            if other == "edge"
            else self._config.server.request_deadline_s
        )
        try:
            reply = await pool.complete(path, body, started + limit, headers)
            ok = reply.status < 400
            document = orjson.loads(reply.body) if ok else None
            now = self._clock.now()
            if not isinstance(document, dict):
                self.release.shadows["failed"] += 1
                self.release.observe(name, other, False, now - started, None, now)
                return
            if other == "edge":
                self.release.observe_edge_model(document.get("model"), now)
            usage = document.get("usage") or {}
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            self.release.observe(
                name, other, True, now - started, tokens if isinstance(tokens, int) else None, now
            )
            theirs, ours = answer_text(document), answer_text(answer.document)
            edge_text, cloud_text = (theirs, ours) if other == "edge" else (ours, theirs)
            self.release.compare(name, edge_text, cloud_text, now)
        except ApiError as exc:
            self.release.shadows["failed"] += 1
            now = self._clock.now()
            self.release.observe(name, other, False, now - started, None, now)
            log.info("shadow on the %s failed: %s", other, exc.message)
        except Exception:  # a bug in shadow work must never reach a client
            self.release.shadows["failed"] += 1
            log.exception("shadow comparison failed")
        finally:
            self.release.shadow_done()

    def _observe_edge(self, decision: Decision, queue_ms: float | None, started: float) -> None:
        """Feed the capacity loop: the edge's own queue report, else time to first byte."""
        if decision.served_by != "edge":
            return
        if queue_ms is None:
            queue_ms = (self._clock.now() - started) * 1000
        self._classifier.controller.observe_queue_delay(queue_ms)

    def _reply(
        self,
        http: HttpRequest,
        request: InferenceRequest,
        reply: UpstreamReply,
        decision: Decision,
        model: ResolvedModel,
    ) -> tuple[web.Response, CachedAnswer | None]:
        headers = decision.headers()
        public = model.public
        try:
            document: Any = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            document = None
        as_msgpack = accepts_only_msgpack(http.headers.get("Accept"))
        if reply.status >= 400:
            if decision.served_by == "edge":  # the edge's refusal is not the client's answer
                raise EdgeRefused(f"the edge node answered {reply.status}")
            log.info("%s answered %d: %s", reply.endpoint, reply.status, reply.body[:300])
            for name in {model.upstream_name, model.edge_name} - {public}:
                document = _renamed(document, name, public)  # never the upstream's own name
            return error_response(reply.status, document, headers, as_msgpack), None
        if not isinstance(document, dict):
            log.warning("upstream %s sent a body that is not a JSON object", reply.endpoint)
            bad = error_body(
                "upstream sent an unreadable answer", "upstream_error", "bad_upstream_answer"
            )
            return error_response(502, bad, headers, as_msgpack), None
        self._count_tokens(http, document.get("usage"), decision.served_by, decision.model)
        if decision.served_by == "edge":
            self.release.observe_edge_model(document.get("model"), self._clock.now())
        body = orjson.dumps(document) if set_model(document, public) else reply.body
        # Only a deterministic answer is cached, shared or compared (serve): a sampled one is
        # not checked for its stream form.
        kept = request.params.is_deterministic()
        answer = CachedAnswer.of(body, document, decision.served_by, kept=kept)
        return plain_response(http, document, body, headers), answer

    async def _relay(
        self,
        http: HttpRequest,
        request: InferenceRequest,
        upstream: Any,
        decision: Decision,
        public: str,
    ) -> tuple[web.StreamResponse, CachedAnswer | None]:
        capture = StreamCapture(request, public)
        headers = {**SSE_HEADERS, **decision.headers(), "X-Request-Id": http.get(REQUEST_ID, "")}
        try:
            response, writer = await start_stream(http, headers)
            try:
                events = iter_sse_events(upstream.chunks(self._config.server.stream_idle_timeout_s))
                async for event in events:
                    relayed = capture.feed(event)
                    if relayed is not None:
                        await writer.write(relayed)
                        if capture.output_started and FIRST_TOKEN_AT not in http:
                            http[FIRST_TOKEN_AT] = time.perf_counter()
                capture.ended()  # some servers (transformers serve) end without [DONE]
            except StreamBroken as exc:
                log.warning("stream from %s broke: %s", upstream.endpoint, exc)
                capture.broken = True
                await writer.write(
                    sse_event(error_body(str(exc), "upstream_error", "stream_broken"))
                )
            await writer.write_eof()
        finally:
            upstream.close()  # no-op after a clean end; frees the upstream slot otherwise
        self._count_tokens(http, capture.usage, decision.served_by, decision.model)
        if decision.served_by == "edge":
            self.release.observe_edge_model(capture.upstream_model, self._clock.now())
        return response, capture.answer(decision.served_by)

    def _count_tokens(self, http: HttpRequest, usage: Any, served_by: str, model: str) -> None:
        """Metrics and cost; the tenant's token quota for what an upstream produced. The
        quota is debited now (the tenant's next request is admitted against it); the
        counters are bookkeeping (router/bookkeeping.py); the span gets the usage now."""
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if self.tracing.enabled:
            self.tracing.usage(
                http,
                prompt if isinstance(prompt, int) else None,
                completion if isinstance(completion, int) else None,
            )
        tenant = http.get(TENANT)
        if served_by != "cache" and tenant is not None:
            used = sum(n for n in (prompt, completion) if isinstance(n, int) and n >= 0)
            (self.fleet_limits or self.tenants).debit_tokens(tenant, used, self._clock.now())
        self.bookkeeping.defer(
            self._count_token_metrics, prompt, completion, served_by, model, tenant
        )

    def _count_token_metrics(
        self, prompt: Any, completion: Any, served_by: str, model: str, tenant: str | None
    ) -> None:
        label = OTHER if tenant is None else tenant
        if isinstance(prompt, int) and prompt >= 0:
            self._metrics.count_tokens("in", served_by, model, prompt, label)
        if isinstance(completion, int) and completion >= 0:
            self._metrics.count_tokens("out", served_by, model, completion, label)
