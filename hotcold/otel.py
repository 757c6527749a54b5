"""OpenTelemetry for every hotcold service, optional (the ``otel`` extra) and off by default.

What is shared by the router, the edge node and the cloud stub: building a tracer provider
that exports over OTLP/HTTP with a bounded queue, and, for the two simple services, one
middleware that continues the caller's trace (W3C ``traceparent``) in a server span and puts
its trace id on the request's log lines. The router's own spans are in router/tracing.py.

Nothing here imports OpenTelemetry until a service turns tracing on: without the extra the
services run as before, and asking for tracing without it is a clear start-up error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hotcold.logs import TRACE_ID

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

MISSING_EXTRA = "tracing needs the otel extra: pip install 'hotcold[otel]'"


class TracingUnavailable(RuntimeError):
    """Tracing was asked for, but the otel extra is not installed."""


def tracer_provider(
    service_name: str,
    endpoint: str | None = None,
    sample_ratio: float = 1.0,
    max_queue: int = 2048,
) -> TracerProvider:
    """A provider whose spans go to an OTLP/HTTP receiver in batches (``endpoint``; None: the
    SDK's OTEL_EXPORTER_OTLP_* variables, else localhost:4318). New traces are sampled at
    ``sample_ratio``; a request with a traceparent follows its caller's decision. At most
    ``max_queue`` finished spans wait for export: beyond, the SDK drops them (bounded memory,
    and a slow collector never slows a request)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingUnavailable(MISSING_EXTRA) from exc
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=max_queue, schedule_delay_millis=1000)
    )
    return provider


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_span_middleware(provider: Any, service: str) -> Any:
    """A middleware for a service that answers OpenAI-style requests (the edge node, the cloud
    stub): each request continues the caller's trace in a SERVER span named after its route,
    and its log lines carry the trace id."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise TracingUnavailable(MISSING_EXTRA) from exc
    tracer = provider.get_tracer(service)
    propagator = TraceContextTextMapPropagator()

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        parent = propagator.extract(request.headers)
        span = tracer.start_span(
            f"{request.method} {request.path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        log_token = TRACE_ID.set(trace_id_of(span))
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            span.end()
            TRACE_ID.reset(log_token)
            context.detach(token)

    return traced


def trace_id_of(span: Any) -> str | None:
    """A span's W3C trace id as 32 hex digits (None: not recording, no trace)."""
    span_context = span.get_span_context()
    return f"{span_context.trace_id:032x}" if span_context.is_valid else None


def add_tracing_flag(parser: Any) -> None:
    """``--tracing`` for the edge node and the cloud stub."""
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="continue callers' W3C traces in OTLP spans (the otel extra; the standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT says where they go; default: off)",
    )


def enable_tracing(app: web.Application, service_name: str) -> None:
    """Trace ``app``'s requests (server spans continuing the caller's trace), exported until
    the app stops, when the last spans are flushed."""
    provider = tracer_provider(service_name)
    app.middlewares.insert(0, server_span_middleware(provider, service_name))

    async def flush(app: web.Application) -> None:
        import asyncio

        await asyncio.to_thread(provider.shutdown)

    app.on_cleanup.append(flush)
