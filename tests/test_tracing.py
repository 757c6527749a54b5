"""OpenTelemetry traces (the otel extra): with tracing on, one chat request through the router
to a cloud server, and one hot miss through the edge, give the expected spans with the GenAI
attributes and one trace id from the client through the router to the upstream (which
continues the traceparent it is sent); the access log line carries the trace id. Once
in-process with the SDK's in-memory exporter, once across real processes into a real OTLP
receiver (oteltap), when it is installed."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="needs the otel extra")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from cloud_stub import create_app as create_stub_app
from cloud_stub.handlers import STATE
from hotcold.logs import JsonLinesFormatter, RequestIdFilter
from hotcold.otel import server_span_middleware
from hotcold.procs import ServiceProcess
from hotcold.serving import Server, free_port
from router import create_app
from router.config import build_config
from router.tracing import OtelTracing
from tests.conftest import FAST_STUB, RouterFactory, StubFactory, router_settings
from tests.support import wait_for

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
# The edge takes every hot miss, and no shadow comparison (sampled: a background request of
# its own, whose spans would join the trace) makes the span count vary.
UNJUDGED_EDGE = {"release": {"enabled": False, "shadow_rate": 0}, "latency": {"cost_first": True}}


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def traced_stub(provider: TracerProvider, service: str) -> Server:
    """A cloud stub that continues the traces it is sent (as vLLM and the edge node do)."""
    app = create_stub_app(FAST_STUB)
    app.middlewares.insert(0, server_span_middleware(provider, service))
    server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=1)
    app[STATE].server = server
    await server.start()
    return server


def by_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and kind in (None, s.kind)]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


class Lines(logging.Handler):
    """The access log's JSON lines, as the router writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(JsonLinesFormatter())
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


async def test_a_request_and_a_hot_miss_are_traced_across_router_cloud_and_edge(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    cloud = await traced_stub(provider, "cloud")
    edge = await traced_stub(provider, "edge")
    config = build_config(router_settings([cloud.url], edge={"endpoints": [edge.url],
                                                             **UNJUDGED_EDGE}))  # fmt: skip
    router = Server(create_app(config, tracing=OtelTracing(provider, owned=False)), "127.0.0.1", 0)
    await router.start()
    access = logging.getLogger("hotcold.access")
    lines, level = Lines(), access.level
    access.addHandler(lines)
    access.setLevel(logging.INFO)
    try:
        async with aiohttp.ClientSession() as session:
            cold = {"model": "m", "messages": [{"role": "user", "content": "status?"}],
                    "max_tokens": 8, "temperature": 0}  # fmt: skip
            headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
            async with session.post(
                router.url + "/v1/chat/completions", json=cold, headers=headers
            ) as response:
                assert response.status == 200
                await response.read()
            # A sampled request that recurs: hot after its first sighting, not cacheable,
            # so the second is a hot miss the edge computes.
            hot = {**cold, "messages": [{"role": "user", "content": "again"}], "temperature": 0.7}
            for _ in range(2):
                async with session.post(router.url + "/v1/chat/completions", json=hot) as r:
                    assert r.status == 200
                    served_by = r.headers["X-Served-By"]
                    await r.read()
            assert served_by == "edge"
        # Access lines are bookkeeping (router/bookkeeping.py): an answer from an upstream
        # has its line written at the router's next idle moment, 10 ms later at the latest.
        await wait_for(lambda: len(lines.lines) == 3, timeout_s=10, message="3 access lines")
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
        await router.close()
        await cloud.close()
        await edge.close()

    # The cold request: the client's trace, continued by the router and by the cloud.
    trace = by_trace(exporter, int(CLIENT_TRACE, 16))
    request = one(trace, "chat m")
    assert request.kind is SpanKind.SERVER and request.parent is not None
    assert request.parent.span_id == int(CLIENT_SPAN, 16)
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "m"
    assert attributes["gen_ai.request.max_tokens"] == 8
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert (attributes["hotcold.route"], attributes["hotcold.cache"],
            attributes["hotcold.served_by"]) == ("cold", "miss", "cloud")  # fmt: skip
    assert attributes["http.response.status_code"] == 200
    cache = one(trace, "hotcold.cache")
    assert child_of(cache, request) and cache.attributes["hotcold.cache.result"] == "miss"
    producer = one(trace, "hotcold.cloud")
    assert child_of(producer, request)
    attempt = one(trace, "POST /v1/chat/completions", SpanKind.CLIENT)
    assert attempt.kind is SpanKind.CLIENT and child_of(attempt, producer)
    assert attempt.attributes["hotcold.outcome"] == "ok"
    upstream = [s for s in trace if s.kind is SpanKind.SERVER and s is not request]
    assert len(upstream) == 1 and child_of(upstream[0], attempt)  # the cloud continued it
    assert upstream[0].instrumentation_scope.name == "cloud"

    # The hot miss: a trace of its own, through the edge.
    edge_requests = [
        s for s in exporter.get_finished_spans()
        if s.name == "chat m" and (s.attributes or {}).get("hotcold.served_by") == "edge"
    ]  # fmt: skip
    assert len(edge_requests) == 1
    hot_trace = by_trace(exporter, edge_requests[0].context.trace_id)
    assert edge_requests[0].attributes["hotcold.route"] == "hot"
    edge_span = one(hot_trace, "hotcold.edge")
    assert child_of(edge_span, edge_requests[0])
    edge_attempt = one(hot_trace, "POST /v1/chat/completions", SpanKind.CLIENT)
    assert child_of(edge_attempt, edge_span) and edge_attempt.attributes["hotcold.pool"] == "edge"
    served = [s for s in hot_trace if s.instrumentation_scope.name == "edge"]
    assert len(served) == 1 and child_of(served[0], edge_attempt)

    # The access lines carry their trace ids.
    traced = {line.get("trace_id") for line in lines.lines}
    assert CLIENT_TRACE in traced
    assert f"{edge_requests[0].context.trace_id:032x}" in traced


async def test_one_trace_across_processes_into_a_real_otlp_receiver() -> None:
    """The router and a cloud stub as real processes (python -m ... --tracing), each
    exporting over OTLP/HTTP to oteltap: the router's span and the stub's, one trace id."""
    oteltap = pytest.importorskip("oteltap", reason="oteltap (a real OTLP receiver) not installed")
    port = free_port()
    settings = oteltap.OtelTapHttpProtobufReceiverSettings(http_port=port)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    received: list[Any] = []  # every span, as it arrives (a late subscriber misses spans)
    async with oteltap.OtelTapHttpProtobufReceiver(settings) as receiver:

        async def collect() -> None:
            async for span in receiver.stream_traces():
                received.append(span)

        collector = asyncio.create_task(collect())
        stub = ServiceProcess("cloud_stub", free_port(), "--tracing", env=env)
        router = ServiceProcess(
            "router", free_port(), "--tracing", "--cloud-endpoint", stub.url, env=env
        )
        try:
            await stub.started()
            await router.started()
            body = {"model": "gauge", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
            async with (
                aiohttp.ClientSession() as session,
                session.post(router.url + "/v1/chat/completions", json=body, headers=headers) as r,
            ):
                assert r.status == 200
            ours = bytes.fromhex(CLIENT_TRACE)

            def named(name: str, kind: int) -> list[Any]:
                return [s for s in received if s.trace_id == ours and s.name == name
                        and s.kind == kind]  # fmt: skip

            def both_arrived() -> bool:
                return bool(named("chat gauge", 2) and named("POST /v1/chat/completions", 2))

            await wait_for(both_arrived, timeout_s=30, message="the router's and the stub's spans")
        finally:
            router.stop()
            stub.stop()
            collector.cancel()
    (routed,) = named("chat gauge", 2)  # SERVER: the router's request span
    (served,) = named("POST /v1/chat/completions", 2)  # SERVER: the stub's
    (attempt,) = named("POST /v1/chat/completions", 3)  # CLIENT: the router's attempt
    attributes = {a.key: a.value for a in routed.attributes}
    assert attributes["gen_ai.request.model"].string_value == "gauge"
    assert attributes["hotcold.served_by"].string_value == "cloud"
    assert served.parent_span_id == attempt.span_id  # the stub continued the router's trace
    assert routed.parent_span_id == bytes.fromhex(CLIENT_SPAN)  # which continued the client's


def test_tracing_on_without_the_extra_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from router.errors import ConfigError

    # As in a venv without the extra: the opentelemetry package cannot be imported at all.
    for name in ("opentelemetry", "opentelemetry.sdk"):
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"hotcold\[otel\]"):
        build_config({"tracing": {"enabled": True}})
    assert not build_config({}).tracing.enabled  # off by default
    assert os.environ.get("OTEL_SDK_DISABLED") != "true"  # (nothing here disabled it)


async def test_tracing_off_serves_with_opentelemetry_unimportable(
    monkeypatch: pytest.MonkeyPatch, stub: StubFactory, router: RouterFactory
) -> None:
    """Off (the default), no part of the router reaches for OpenTelemetry: with every
    opentelemetry module made unimportable, a plain and a streamed request are answered."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # type: ignore[arg-type]
    server = await router([(await stub()).url])
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4, "stream": stream}  # fmt: skip
            async with session.post(server.url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                await response.read()
