"""The front door (hotcold/front.py): the router's inference routes served by its own HTTP/1.1
protocol, every other route handed to aiohttp, against real servers over raw TCP where the
bytes on the wire matter (keep-alive, pipelining, pieces, limits, shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcold.front import FRONT, MAX_PIPELINED, FrontRequest, FrontRoutes
from hotcold.http import MAX_BODY_BYTES, HttpRequest, answer_errors, read_body
from hotcold.serving import Server, serving
from router import create_app
from router.config import build_config
from router.parts import PARTS
from tests.conftest import StubFactory, router_settings
from tests.support import close_at_test_end, scrape, wait_for

pytestmark = pytest.mark.usefixtures("closes_at_test_end")  # the wires, at each test's end

CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def post(body: bytes = CHAT, *, request_id: str = "", extra: bytes = b"") -> bytes:
    rid = b"X-Request-Id: %s\r\n" % request_id.encode() if request_id else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"%s%sContent-Length: %d\r\n\r\n%s" % (rid, extra, len(body), body)
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Parsed:
    answers: list[Answer] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.names.append(name)
        self.values.append(value)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        headers = {
            n.decode().lower(): v.decode() for n, v in zip(self.names, self.values, strict=True)
        }
        self.answers.append(Answer(self.parser.get_status_code(), headers, bytes(self.body)))
        self.names, self.values, self.body = [], [], bytearray()


class Wire:
    """A raw client connection that reads answers with a real HTTP parser; closed when the
    test ends, if the test did not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        close_at_test_end(self._closed_fully)
        self._parsed = _Parsed()
        self._parsed.parser = httptools.HttpResponseParser(self._parsed)

    @classmethod
    async def open(cls, server: Server) -> Wire:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self, count: int) -> list[Answer]:
        """The next ``count`` answers (a hang fails the test)."""
        async with asyncio.timeout(30):
            while len(self._parsed.answers) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed after {len(self._parsed.answers)} answers")
                self._parsed.parser.feed_data(data)
        taken, self._parsed.answers = (
            self._parsed.answers[:count],
            self._parsed.answers[count:],
        )
        return taken

    async def closed(self) -> bool:
        """True when the server closes the connection without sending anything more."""
        async with asyncio.timeout(30):
            ended = await self.reader.read() == b""
        self.writer.close()
        return ended

    def close(self) -> None:
        self.writer.close()

    async def _closed_fully(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def routed(stub: StubFactory) -> AsyncIterator[Server]:
    cloud = await stub()
    settings_ = router_settings([cloud.url], server={"max_body_bytes": 4096, "body_timeout_s": 0.5})
    server = Server(create_app(build_config(settings_)), "127.0.0.1", 0, shutdown_timeout_s=5)
    await server.start()
    yield server
    await server.close()


async def test_a_kept_alive_connection_serves_inference_then_other_routes(
    routed: Server,
) -> None:
    wire = await Wire.open(routed)
    await wire.send(post(request_id="first"))
    (first,) = await wire.answers(1)
    assert first.status == 200 and first.headers["x-request-id"] == "first"
    assert first.headers["x-served-by"] == "cloud" and "connection" not in first.headers
    assert orjson.loads(first.body)["object"] == "chat.completion"
    assert routed.connection_count == 1
    (connection,) = _front_connections(routed)
    sock = connection.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)  # as aiohttp's connections
    # The same connection asks for health, then for inference again: aiohttp takes it over.
    await wire.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    (health,) = await wire.answers(1)
    assert health.status == 200 and orjson.loads(health.body) == {"status": "ok"}
    await wire.send(post(request_id="third"))
    (third,) = await wire.answers(1)
    assert third.status == 200 and third.headers["x-request-id"] == "third"
    assert routed.connection_count == 1
    wire.close()


async def test_pipelined_requests_are_answered_in_order(routed: Server) -> None:
    wire = await Wire.open(routed)
    await wire.send(b"".join(post(request_id=f"r{i}") for i in range(5)))
    answers = await wire.answers(5)
    assert [a.headers["x-request-id"] for a in answers] == [f"r{i}" for i in range(5)]
    assert all(a.status == 200 for a in answers)
    wire.close()


async def test_another_route_pipelined_behind_an_inference_request_is_refused(
    routed: Server,
) -> None:
    wire = await Wire.open(routed)
    await wire.send(post(request_id="ok") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    ok, refused = await wire.answers(2)
    assert ok.status == 200 and ok.headers["x-request-id"] == "ok"
    assert refused.status == 400 and refused.headers["connection"] == "close"
    assert orjson.loads(refused.body)["error"]["code"] == "pipelining_not_supported"
    assert await wire.closed()


async def test_a_body_sent_after_100_continue_and_a_chunked_body(routed: Server) -> None:
    wire = await Wire.open(routed)
    head = post(extra=b"Expect: 100-continue\r\n")
    cut = head.index(b"\r\n\r\n") + 4
    await wire.send(head[:cut])
    async with asyncio.timeout(30):
        interim = await wire.reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    await wire.send(head[cut:])
    (answer,) = await wire.answers(1)
    assert answer.status == 200
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (CHAT[:10], CHAT[10:]))
        + b"0\r\n\r\n"
    )
    await wire.send(chunked)
    (answer,) = await wire.answers(1)
    assert answer.status == 200
    wire.close()


async def test_a_chunked_bodys_trailer_fields_are_never_request_headers(routed: Server) -> None:
    """Fields after a chunked body (a trailer) are dropped, as aiohttp drops them: a trailer
    never names the tenant, the request id or the cache rules a gateway checked in the head.
    A trailer counts against ``server.max_headers`` with the head."""
    wire = await Wire.open(routed)
    trailer = b"X-Tenant: someone-else\r\nX-Request-Id: smuggled\r\nCache-Control: no-store\r\n"
    cached = orjson.dumps({**orjson.loads(CHAT), "temperature": 0})
    for _ in range(2):  # deterministic: the second is a cache hit, unless no-store were read
        await wire.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n%x\r\n%s\r\n0\r\n%s\r\n"
            % (len(cached), cached, trailer)
        )
    first, second = await wire.answers(2)
    assert first.status == second.status == 200
    assert "smuggled" not in (first.headers["x-request-id"], second.headers["x-request-id"])
    assert second.headers["x-cache"] == "hit"
    samples = await scrape(routed.url)
    tenants = {dict(labels).get("tenant") for name, labels in samples}
    assert "someone-else" not in tenants
    many = b"".join(b"X-T%d: v\r\n" % n for n in range(200))  # past max_headers (100)
    await wire.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n%x\r\n%s\r\n0\r\n%s\r\n"
        % (len(cached), cached, many)
    )
    (refused,) = await wire.answers(1)
    assert refused.status == 400
    wire.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_a_body_over_the_limit_is_413_and_the_connection_closed(
    routed: Server, chunked: bool
) -> None:
    body = b'{"model": "m", "pad": "' + b"x" * 5000 + b'"}'
    if chunked:
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
    else:
        request = post(body)
    wire = await Wire.open(routed)
    await wire.send(request)
    (answer,) = await wire.answers(1)
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
    assert await wire.closed()


async def test_a_body_that_stops_arriving_is_408(routed: Server) -> None:
    wire = await Wire.open(routed)
    request = post()
    await wire.send(request[:-10])  # the head and most of the body; the rest never comes
    (answer,) = await wire.answers(1)
    assert answer.status == 408
    assert orjson.loads(answer.body)["error"]["code"] == "body_timeout"
    wire.close()


@pytest.mark.parametrize(
    "request_head",
    [
        post(extra=b"X-Long: " + b"a" * 9000 + b"\r\n"),
        post(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(150))),
        b"POST /v1/chat/completions?" + b"u" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ],
    ids=["long header", "too many headers", "9 KB URL", "two lengths"],
)
async def test_parse_errors_on_an_inference_route_are_in_the_openai_shape(
    routed: Server, request_head: bytes
) -> None:
    wire = await Wire.open(routed)
    await wire.send(request_head)
    (answer,) = await wire.answers(1)
    assert answer.status == 400 and answer.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    error = orjson.loads(answer.body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_http_request"
    assert await wire.closed()


async def test_a_head_that_never_ends_is_refused_within_its_bound(routed: Server) -> None:
    """A header line growing without end is refused once the head passes what the line and
    header bounds allow (the parser would otherwise keep all of it)."""
    wire = await Wire.open(routed)
    endless = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Endless: "
    with contextlib.suppress(ConnectionError):
        for _ in range(40):  # 2.6 MB in all, far past the bound (8190 x 102 bytes)
            await wire.send(endless if _ == 0 else b"a" * 65536)
    (answer,) = await wire.answers(1)
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"]["code"] == "bad_http_request"


async def test_shutdown_finishes_answers_in_flight_and_closes_idle_connections(
    stub: StubFactory,
) -> None:
    cloud = await stub(ttft_ms=300)
    app = create_app(build_config(router_settings([cloud.url])))
    server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=10)
    await server.start()
    closing = None
    try:
        parts = server.app[PARTS]
        busy, idle = await Wire.open(server), await Wire.open(server)
        await idle.send(post())
        await idle.answers(1)
        await busy.send(post(request_id="in-flight"))
        await wait_for(lambda: parts.in_flight.count == 1, message="the request is in flight")
        closing = asyncio.create_task(server.close())
        (answer,) = await busy.answers(1)
        assert answer.status == 200 and answer.headers["x-request-id"] == "in-flight"
        assert answer.headers["connection"] == "close"
        assert await busy.closed() and await idle.closed()
    finally:
        await (closing or server.close())


async def test_a_client_that_leaves_cancels_its_request(stub: StubFactory) -> None:
    cloud = await stub(ttft_ms=5000)
    async with serving(create_app(build_config(router_settings([cloud.url])))) as server:
        parts = server.app[PARTS]
        wire = await Wire.open(server)
        await wire.send(post())
        await wait_for(lambda: parts.in_flight.count == 1, message="the request is in flight")
        wire.close()
        await wait_for(lambda: parts.in_flight.count == 0, message="its handler is cancelled")
        await wait_for(lambda: server.connection_count == 0, message="the connection is gone")


# ---- the protocol alone, with a trivial handler: bytes in any pieces -------------------------


async def _echo(request: HttpRequest) -> web.StreamResponse:
    body = await read_body(request)
    return web.Response(body=body[::-1], headers={"X-Path": request.path})


async def _other(request: web.Request) -> web.StreamResponse:
    return web.Response(text="aiohttp")


def _echo_app() -> web.Application:
    """/echo on the front door (and on aiohttp, for a connection handed over to it)."""
    app = web.Application()
    app[FRONT] = FrontRoutes({"/echo": _echo}, max_body_bytes=1 << 16)
    app[MAX_BODY_BYTES] = 1 << 16
    app.router.add_get("/other", _other)
    app.router.add_post("/echo", _echo)
    return app


def _echo_request(body: bytes) -> bytes:
    return b"POST /echo?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@settings(max_examples=40, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=6),
    other_first=st.booleans(),
)
def test_requests_split_in_any_pieces_get_the_same_answers(
    bodies: list[bytes], cuts: list[int], other_first: bool
) -> None:
    """Whatever pieces the bytes arrive in (request lines cut anywhere, pipelined requests
    sharing a piece), each request gets its own answer, in order; a first request for
    another route is served by aiohttp on the same connection."""
    stream = b"".join(_echo_request(body) for body in bodies)
    if other_first:
        stream = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n" + stream

    async def run() -> list[Answer]:
        async with serving(_echo_app(), shutdown_timeout_s=1) as server:
            wire = await Wire.open(server)
            points = sorted({c for c in cuts if c < len(stream)})
            for start, end in zip([0, *points], [*points, len(stream)], strict=True):
                await wire.send(stream[start:end])
            answers = await wire.answers(len(bodies) + other_first)
            wire.close()
            return answers

    answers = asyncio.run(run())
    if other_first:
        assert answers.pop(0).body == b"aiohttp"
    assert [a.body for a in answers] == [body[::-1] for body in bodies]
    assert all(a.status == 200 and a.headers["x-path"] == "/echo" for a in answers)


async def test_with_the_front_door_off_aiohttp_serves_the_inference_routes(
    stub: StubFactory,
) -> None:
    cloud = await stub()
    config = build_config(router_settings([cloud.url], server={"front_door": False}))
    async with serving(create_app(config), shutdown_timeout_s=1) as server:
        wire = await Wire.open(server)
        await wire.send(post(request_id="via-aiohttp"))
        (answer,) = await wire.answers(1)
        assert answer.status == 200 and answer.headers["x-request-id"] == "via-aiohttp"
        assert answer.headers["x-served-by"] == "cloud"
        assert "aiohttp" in answer.headers["server"]  # the front door sends no Server header
        wire.close()


# ---- a fresh-eyes review's cases: each failed before its fix ---------------------------------


def _front_connections(server: Server) -> list[Any]:
    front = server._front
    assert front is not None
    return list(front.connections)


async def test_a_client_that_never_reads_its_answers_stops_being_read(routed: Server) -> None:
    """Answers wait for a full socket buffer to drain, so the pipeline fills and reading
    pauses for good: the server holds a bounded amount for a client that sends and never
    reads (before, it answered every request into a growing buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the
    sock.setblocking(False)  # server's answers back up in its own buffers soon
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", routed.port))
    wire = Wire(*await asyncio.open_connection(sock=sock))
    wire.writer.transport.set_write_buffer_limits(high=1 << 30)  # our side buffers all
    cached = orjson.dumps({**orjson.loads(CHAT), "temperature": 0})  # answered from the cache
    wire.writer.write(b"".join(post(cached) for _ in range(5_000)))

    def stalled() -> bool:
        return any(
            c._reading_paused
            and c._write_paused
            and c._task is not None
            and len(c._queue) >= MAX_PIPELINED - 1
            for c in _front_connections(routed)
        )

    await wait_for(stalled, timeout_s=60, message="the server stops reading")
    (connection,) = _front_connections(routed)
    totals = routed.app[PARTS].metrics.answer_totals
    answered = sum(totals.values())
    for _ in range(3000):  # loop turns, not time: a server still answering would go on
        await asyncio.sleep(0)
    assert sum(totals.values()) == answered, "nothing more is answered while nobody reads"
    assert connection.transport.get_write_buffer_size() < 512 * 1024
    wire.writer.transport.abort()


async def test_a_partial_request_line_behind_an_answer_does_not_outlive_the_idle_timeout(
    stub: StubFactory,
) -> None:
    cloud = await stub(ttft_ms=200)
    config = build_config(router_settings([cloud.url], server={"idle_timeout_s": 0.3}))
    async with serving(create_app(config), shutdown_timeout_s=1, idle_timeout_s=0.3) as server:
        parts = server.app[PARTS]
        wire = await Wire.open(server)
        await wire.send(post())
        await wait_for(lambda: parts.in_flight.count == 1, message="the request is in flight")
        await wire.send(b"PO")  # the start of a request line, and nothing more
        (answer,) = await wire.answers(1)
        assert answer.status == 200
        assert await wire.closed()  # the idle timeout still closes it


async def test_the_last_of_a_full_pipeline_gets_its_body(routed: Server) -> None:
    wire = await Wire.open(routed)
    stream = b"".join(post(request_id=f"r{i}") for i in range(17))
    await wire.send(stream[:-1])  # every request but the last byte of the 17th body
    first = await wire.answers(16)
    assert [a.status for a in first] == [200] * 16
    await wire.send(stream[-1:])
    (last,) = await wire.answers(1)
    assert last.status == 200 and last.headers["x-request-id"] == "r16"
    wire.close()


async def test_shutdown_still_reads_the_body_of_a_request_in_flight(stub: StubFactory) -> None:
    cloud = await stub()
    app = create_app(build_config(router_settings([cloud.url])))
    server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=10)
    await server.start()
    closing = None
    try:
        parts = server.app[PARTS]
        wire = await Wire.open(server)
        request = post(request_id="late-body")
        await wire.send(request[:-5])
        await wait_for(lambda: parts.in_flight.count == 1, message="its handler waits")
        closing = asyncio.create_task(server.close())
        await wait_for(
            lambda: not server._front or all(c._closing for c in server._front.connections),
            message="shutdown has begun",
        )
        await wire.send(request[-5:])
        (answer,) = await wire.answers(1)
        assert answer.status == 200 and answer.headers["x-request-id"] == "late-body"
    finally:
        await (closing or server.close())


async def _broken_stream(request: HttpRequest) -> web.StreamResponse:
    """Fails after its stream began, behind the error handling the router's handlers have
    (which turns the failure into an error answer no one can send any more)."""

    async def handler(request: HttpRequest) -> web.StreamResponse:
        assert isinstance(request, FrontRequest)
        stream = request.open_stream(200, {"Content-Type": "text/event-stream"})
        await stream.write(b"data: one\n\n")
        raise RuntimeError("the handler fails mid-stream")

    return await answer_errors(request, handler)


async def test_a_stream_whose_handler_fails_is_not_ended_as_complete() -> None:
    app = web.Application()
    app[FRONT] = FrontRoutes({"/echo": _broken_stream}, max_body_bytes=1 << 16)
    app[MAX_BODY_BYTES] = 1 << 16
    async with serving(app, shutdown_timeout_s=1) as server:
        wire = await Wire.open(server)
        await wire.send(_echo_request(b"x"))
        with pytest.raises(ConnectionError, match="closed after 0 answers"):
            await wire.answers(1)  # the chunked answer never gets its last chunk


async def test_an_upgrade_request_is_served_as_plain_http(routed: Server) -> None:
    """``curl --http2`` on http:// asks for h2c; like aiohttp, the router answers in HTTP/1.1
    (llhttp hands the body over as the upgrade's bytes: it is read all the same)."""
    wire = await Wire.open(routed)
    await wire.send(
        post(extra=b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n")
    )
    (answer,) = await wire.answers(1)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await wire.closed()


async def test_a_malformed_body_gets_one_answer(routed: Server) -> None:
    wire = await Wire.open(routed)
    await wire.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\nZZ\r\n'
    )
    (answer,) = await wire.answers(1)
    assert answer.status == 400
    assert await wire.closed()  # and nothing after it (a second answer would fail to parse)


async def test_a_large_body_in_the_heads_packet_is_not_taken_for_a_large_head(
    stub: StubFactory,
) -> None:
    cloud = await stub()
    app = create_app(build_config(router_settings([cloud.url])))
    async with serving(app, shutdown_timeout_s=1, max_header_bytes=1024, max_headers=8) as server:
        wire = await Wire.open(server)
        prompt = {"model": "m", "messages": [{"role": "user", "content": "x" * 12_000}]}
        await wire.send(post(orjson.dumps(prompt)))
        (answer,) = await wire.answers(1)
        assert answer.status == 200
        wire.close()


async def test_a_gzip_body_is_decoded_as_aiohttp_decodes_it(routed: Server) -> None:
    wire = await Wire.open(routed)
    await wire.send(post(gzip.compress(CHAT), extra=b"Content-Encoding: gzip\r\n"))
    (answer,) = await wire.answers(1)
    assert answer.status == 200
    await wire.send(post(b"\x1f\x8b not gzip", extra=b"Content-Encoding: gzip\r\n"))
    (bad,) = await wire.answers(1)
    assert bad.status == 400
    wire.close()


async def test_an_http_10_client_gets_its_stream_without_chunks(routed: Server) -> None:
    wire = await Wire.open(routed)
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    await wire.send(
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with asyncio.timeout(30):
        raw = await wire.reader.read()  # the whole answer, up to the close
    head, _, events = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert events.startswith(b"data: ") and events.rstrip().endswith(b"data: [DONE]")
    wire.close()
