"""The router's OpenTelemetry spans (the ``otel`` extra; off unless ``tracing.enabled``).

One SERVER span per inference request, continuing the caller's W3C trace, named and
attributed after the GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens``/``output_tokens``, ...) plus where it
went (``hotcold.route``, ``hotcold.cache``, ``hotcold.served_by``). Under it: a span for the
cache lookup, one for the producer (``hotcold.edge`` or ``hotcold.cloud``), and a CLIENT span
per upstream attempt whose ``traceparent`` goes upstream (vLLM, the edge node and the cloud
stub continue the trace). The request's log lines carry its trace id.

Off, the router holds :data:`NO_TRACING`: every hook is behind an ``enabled`` check or
returns a shared no-op, and OpenTelemetry is never imported.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hotcold.http import HttpRequest
from hotcold.logs import TRACE_ID
from hotcold.otel import MISSING_EXTRA, TracingUnavailable, trace_id_of, tracer_provider
from hotcold.wire.schema import InferenceRequest
from router.config import TracingConfig
from router.errors import ConfigError

# gen_ai.operation.name of each API (the semantic conventions' values).
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embeddings": "embeddings"}
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


@dataclass(slots=True)
class RequestTrace:
    """The request's span and what was attached to the context for it."""

    span: Any
    token: Any
    log_token: Any


@dataclass(slots=True)
class AttemptTrace:
    """An upstream attempt's CLIENT span and the headers that carry it upstream."""

    span: Any
    headers: dict[str, str]


TRACE = web.RequestKey("trace", RequestTrace)


class Tracing:
    """Tracing off: hooks that do nothing (callers on the request path check ``enabled``
    first, so these are rarely even called)."""

    enabled = False

    def start(self, http: HttpRequest, api: str) -> RequestTrace | None:
        return None

    def describe(self, http: HttpRequest, request: InferenceRequest) -> None:
        return None

    def usage(self, http: HttpRequest, prompt: int | None, completion: int | None) -> None:
        return None

    def finish(
        self, recorded: RequestTrace, decision: tuple[str, str, str, str], status: str, tenant: str
    ) -> None:
        return None

    def cache_lookup(self) -> Any:
        return None

    def cache_result(self, span: Any, result: str) -> None:
        return None

    def producer(self, served_by: str, pool: str) -> AbstractContextManager[Any]:
        return _NOTHING

    def attempt(self, pool: str, url: str, attempt: int, path: str) -> AttemptTrace | None:
        return None

    def end_attempt(self, attempt: AttemptTrace, outcome: str, status: int | None) -> None:
        return None

    async def shutdown(self) -> None:
        return None


NO_TRACING = Tracing()


class OtelTracing(Tracing):
    enabled = True

    def __init__(self, provider: Any, *, owned: bool = True) -> None:
        """``provider``: an OpenTelemetry TracerProvider (tests pass one with an in-memory
        exporter; ``owned``: shut it down, flushing its spans, when the router stops)."""
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._context = context
        self._trace = trace
        self._provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer("hotcold.router")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_config(cls, config: TracingConfig) -> OtelTracing:
        try:
            provider = tracer_provider(
                config.service_name, config.endpoint, config.sample_ratio, config.max_queue
            )
        except TracingUnavailable:
            raise ConfigError(f"tracing.enabled is true but {MISSING_EXTRA}") from None
        return cls(provider)

    # ---- the request -----------------------------------------------------------------------

    def start(self, http: HttpRequest, api: str) -> RequestTrace | None:
        """The request's SERVER span, current for everything its handler does."""
        trace = self._trace
        parent = self._propagator.extract(http.headers)
        operation = OPERATIONS.get(api, api)
        span = self._tracer.start_span(
            operation,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "http.request.method": http.method,
                "url.path": http.path,
            },
        )
        token = self._context.attach(trace.set_span_in_context(span, parent))
        recorded = RequestTrace(span, token, TRACE_ID.set(trace_id_of(span)))
        http[TRACE] = recorded
        return recorded

    def describe(self, http: HttpRequest, request: InferenceRequest) -> None:
        """What the client asked for, once the body is parsed."""
        recorded = http.get(TRACE)
        if recorded is None:
            return
        params, span = request.params, recorded.span
        operation = OPERATIONS.get(request.kind, request.kind)
        span.update_name(f"{operation} {params.model}")
        span.set_attribute("gen_ai.request.model", params.model)
        limit = params.output_limit()
        if limit is not None:
            span.set_attribute("gen_ai.request.max_tokens", limit)
        temperature = getattr(params, "temperature", None)
        if temperature is not None:
            span.set_attribute("gen_ai.request.temperature", temperature)
        span.set_attribute("hotcold.stream", request.stream)

    def usage(self, http: HttpRequest, prompt: int | None, completion: int | None) -> None:
        recorded = http.get(TRACE)
        if recorded is None:
            return
        if prompt is not None:
            recorded.span.set_attribute("gen_ai.usage.input_tokens", prompt)
        if completion is not None:
            recorded.span.set_attribute("gen_ai.usage.output_tokens", completion)

    def finish(
        self, recorded: RequestTrace, decision: tuple[str, str, str, str], status: str, tenant: str
    ) -> None:
        route, cache, served_by, model = decision
        span = recorded.span
        span.set_attributes(
            {
                "hotcold.route": route,
                "hotcold.cache": cache,
                "hotcold.served_by": served_by,
                "hotcold.tenant": tenant,
                "gen_ai.response.model": model,
            }
        )
        if status.isdigit():
            span.set_attribute("http.response.status_code", int(status))
        if not status.isdigit() or int(status) >= 500:
            span.set_attribute("error.type", status)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()
        TRACE_ID.reset(recorded.log_token)
        self._context.detach(recorded.token)

    # ---- children ----------------------------------------------------------------------------

    def cache_lookup(self) -> Any:
        """A span for the cache lookup; end it with :meth:`cache_result`."""
        return self._tracer.start_span("hotcold.cache")

    def cache_result(self, span: Any, result: str) -> None:
        span.set_attribute("hotcold.cache.result", result)
        span.end()

    def producer(self, served_by: str, pool: str) -> AbstractContextManager[Any]:
        """The span of the edge or cloud computing the answer: its attempts are children."""
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            f"hotcold.{served_by}",
            attributes={"hotcold.served_by": served_by, "hotcold.pool": pool},
        )
        return span

    def attempt(self, pool: str, url: str, attempt: int, path: str) -> AttemptTrace | None:
        """A CLIENT span per upstream attempt, and the traceparent that carries it upstream."""
        span = self._tracer.start_span(
            f"POST {path}",
            kind=self._trace.SpanKind.CLIENT,
            attributes={
                "hotcold.pool": pool,
                "hotcold.attempt": attempt,
                "url.full": url + path,
                "http.request.method": "POST",
            },
        )
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))
        return AttemptTrace(span, headers)

    def end_attempt(self, attempt: AttemptTrace, outcome: str, status: int | None) -> None:
        span = attempt.span
        span.set_attribute("hotcold.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if outcome not in ("ok", "client_error"):
            span.set_attribute("error.type", outcome)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    async def shutdown(self) -> None:
        """Flush and stop the exporter (off the event loop: the flush is a blocking POST)."""
        if self._owned:
            import asyncio

            await asyncio.to_thread(self._provider.shutdown)
