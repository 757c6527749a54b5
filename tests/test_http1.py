"""The request path's HTTP/1.1 client (router/http1.py) against real servers on loopback:
real aiohttp handlers for the common answers, raw asyncio servers for what aiohttp would never
send (a close-delimited body, a connection dropped before the answer, bytes that are not HTTP),
and a property test of the parser fed in arbitrary pieces."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcold.serving import free_port
from router.http1 import (
    ConnectFailed,
    ConnectionBroken,
    Http1Client,
    Origin,
    Response,
    _Connection,
    _OriginPool,
    encode_headers,
    request_head,
)
from tests.support import wait_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """An aiohttp server answering every POST with ``handler``; yields its URL and the client
    ports seen (one per connection)."""
    ports: list[int] = []

    async def recorded(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None and peer[1] not in ports:
            ports.append(peer[1])
        return await handler(request)

    app = web.Application()
    app.router.add_post("/{tail:.*}", recorded)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", ports
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client(max_connections=8)
    yield http
    await http.close()


async def post(client: Http1Client, url: str, body: bytes = b"{}", path: str = "/x") -> Response:
    origin = Origin.parse(url)
    head = request_head(origin, path, {"Content-Type": "application/json"})
    return await client.post(origin, head, body, connect_timeout_s=5)


async def test_an_answer_with_a_length_and_its_connection_kept_alive(client: Http1Client) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body[::-1], headers={"X-Queue-Ms": "3"})

    async with serve(echo) as (url, ports):
        for body in (b"abc", b"x" * 100_000, b""):
            response = await post(client, url, body)
            assert response.status == 200 and response.headers["x-queue-ms"] == "3"
            assert await response.read() == body[::-1]
            response.release()
        assert len(ports) == 1, "one kept-alive connection for all three requests"
        assert client.in_use == 0


async def test_the_target_joins_the_endpoints_path_and_the_host_header(
    client: Http1Client,
) -> None:
    async def where(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.path} {request.host} {request.content_length}")

    async with serve(where) as (url, _):
        response = await post(client, url + "/v1/", b"12345", "/chat/completions")
        text = (await response.read()).decode()
        assert text == f"/v1/chat/completions {url.removeprefix('http://')} 5"
        response.release()


async def test_a_chunked_stream_arrives_piece_by_piece(client: Http1Client) -> None:
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        await answer.write(b"data: 1\n\n")
        await release.wait()  # the first piece must reach the client before the second
        await answer.write(b"data: 2\n\n")
        await answer.write_eof()
        return answer

    async with serve(stream) as (url, _):
        response = await post(client, url)
        assert response.content_type == "text/event-stream"
        assert await response.readany() == b"data: 1\n\n"
        release.set()
        rest = b""
        while piece := await response.readany():
            rest += piece
        assert rest == b"data: 2\n\n"
        response.release()
        assert client.in_use == 0


async def test_gzip_answers_are_decoded(client: Http1Client) -> None:
    async def zipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"hello " * 1000), headers={"Content-Encoding": "gzip"}
        )

    async with serve(zipped) as (url, _):
        response = await post(client, url)
        assert await response.read() == b"hello " * 1000
        response.release()


async def raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[str, asyncio.Server]:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:  # Python 3.11's start_server leaves that to the handler
            writer.close()

    server = await asyncio.start_server(answer_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request (head and Content-Length body); False at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return True


async def test_a_body_delimited_by_the_close(client: Http1Client) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": 1}')
        await writer.drain()
        writer.close()

    url, server = await raw_server(answer)
    async with server:
        response = await post(client, url)
        assert await response.read() == b'{"a": 1}'
        response.release()
        assert client.in_use == 0


async def test_a_reused_connection_closed_by_the_server_is_replaced_once(
    client: Http1Client,
) -> None:
    """The server answers the first request on a connection, keeps it open, and drops it on
    the second without a word (what an idle timeout racing a new request looks like)."""
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await read_request(reader)
        writer.close()

    url, server = await raw_server(answer)
    async with server:
        for _ in range(3):
            response = await post(client, url)
            assert await response.read() == b"ok"
            response.release()
        assert connections == 3


async def test_a_fresh_connection_dropped_before_the_answer_is_an_error(
    client: Http1Client,
) -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    url, server = await raw_server(drop)
    async with server:
        with pytest.raises(ConnectionBroken):
            await post(client, url)
        assert client.in_use == 0


async def test_an_answer_that_is_not_http_is_an_error(client: Http1Client) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    url, server = await raw_server(garbage)
    async with server:
        with pytest.raises(ConnectionBroken):
            await post(client, url)
        assert client.in_use == 0


async def test_a_body_cut_short_is_an_error(client: Http1Client) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    url, server = await raw_server(short)
    async with server:
        response = await post(client, url)
        with pytest.raises(ConnectionBroken):
            await response.read()
        response.close()
        assert client.in_use == 0


async def test_nobody_listening_and_a_malformed_url_fail_to_connect(client: Http1Client) -> None:
    with pytest.raises(ConnectFailed):
        await post(client, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed):
        await post(client, "http://127.0.0.1:999999")
    assert client.in_use == 0


async def test_a_caller_that_gives_up_closes_its_connection(client: Http1Client) -> None:
    arrived = asyncio.Event()
    closed = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        arrived.set()
        await reader.read()  # until the client closes
        closed.set()

    url, server = await raw_server(hang)
    async with server:
        waiting = asyncio.create_task(post(client, url))
        await asyncio.wait_for(arrived.wait(), 30)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(closed.wait(), 30)
        assert client.in_use == 0


async def test_no_more_connections_in_use_than_the_bound() -> None:
    bounded = Http1Client(max_connections=2)
    current = peak = 0
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        await gate.wait()
        current -= 1
        return web.Response(text="ok")

    async def one(url: str) -> bytes:
        response = await post(bounded, url)
        data = await response.read()
        response.release()
        return data

    try:
        async with serve(slow) as (url, ports):
            calls = [asyncio.create_task(one(url)) for _ in range(6)]
            await wait_for(lambda: current == 2, message="two requests at the server")
            gate.set()
            assert await asyncio.gather(*calls) == [b"ok"] * 6
            assert peak == 2 and len(ports) == 2
            assert bounded.in_use == 0
    finally:
        await bounded.close()


def test_header_values_with_line_breaks_are_refused() -> None:
    assert encode_headers({"X-Request-Id": "abc"}) == b"X-Request-Id: abc\r\n"
    for bad in ({"X-A": "a\r\nInjected: 1"}, {"X-A": "a\nb"}, {"X-A\r\n": "v"}):
        with pytest.raises(ValueError):
            encode_headers(bad)


def test_origins() -> None:
    assert Origin.parse("https://api.example.com/v1").host_header == b"api.example.com"
    assert Origin.parse("https://api.example.com/v1").port == 443
    assert Origin.parse("http://[::1]:8080").host_header == b"[::1]:8080"
    assert Origin.parse("ftp://x").problem is not None


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@st.composite
def answers(draw: Any) -> tuple[bytes, bytes, list[int]]:
    body = draw(st.binary(max_size=3000))
    if draw(st.booleans()):
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    else:
        sizes = draw(st.lists(st.integers(1, 500), max_size=8))
        pieces, at = [], 0
        for size in sizes:
            if at < len(body):
                pieces.append(body[at : at + size])
                at += size
        if at < len(body):
            pieces.append(body[at:])
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    return wire, body, cuts


@settings(max_examples=200, deadline=None)
@given(answers())
def test_an_answer_fed_in_any_pieces_parses_the_same(
    answer: tuple[bytes, bytes, list[int]],
) -> None:
    wire, body, cuts = answer

    async def run() -> None:
        pool = _OriginPool(Http1Client(), Origin.parse("http://127.0.0.1:1"))
        connection = _Connection(pool)
        connection.connection_made(_FakeTransport())  # type: ignore[arg-type]
        head = connection.send(b"request")
        edges = [0, *cuts, len(wire)]
        for start, end in itertools.pairwise(edges):
            if end > start:
                connection.data_received(wire[start:end])
        response = await head
        assert response.status == 200
        assert await response.read() == body

    asyncio.run(run())


async def test_expired_idle_connections_give_their_slot_back_once() -> None:
    """Every idle connection is expired at once (keep-alive below zero): each request opens a
    new one, and the count of connections in use stays exact (a review found it drifting
    below zero, which lifted the bound)."""
    expiring = Http1Client(max_connections=2, keepalive_s=-1.0)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    try:
        async with serve(ok) as (url, ports):
            for _ in range(5):
                response = await post(expiring, url)
                assert await response.read() == b"ok"
                response.release()
                assert expiring.in_use == 0
            assert len(ports) == 5
    finally:
        await expiring.close()


async def test_a_chunked_body_cut_short_is_an_error_whatever_the_case(
    client: Http1Client,
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.close()

    url, server = await raw_server(cut)
    async with server:
        response = await post(client, url)
        with pytest.raises(ConnectionBroken):
            await response.read()
        response.close()


def test_a_host_name_that_cannot_be_encoded_makes_an_unusable_origin() -> None:
    assert Origin.parse("http://a..b:8000").problem is not None
    assert Origin.parse("http://" + "x" * 70 + ".example").problem is not None


# ---- TLS: the usual way to a cloud pool ------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_server(certificate: trustme.LeafCert) -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"over TLS to {request.host}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://localhost:{port}"
    finally:
        await runner.cleanup()


async def test_https_with_the_name_verified_against_a_trusted_authority() -> None:
    authority = trustme.CA()
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    client = Http1Client(ssl_context=trusting)
    async with tls_server(authority.issue_cert("localhost")) as url:
        try:
            for _ in range(2):  # the second on the kept-alive TLS connection
                response = await post(client, url)
                assert await response.read() == f"over TLS to {url[8:]}".encode()
                response.release()
            assert client.in_use == 0
        finally:
            await client.close()


async def test_https_to_an_untrusted_or_misnamed_server_fails_to_connect() -> None:
    authority = trustme.CA()
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    system_store_only = Http1Client()  # the test authority is in no system store
    names_another = Http1Client(ssl_context=trusting)
    async with tls_server(authority.issue_cert("upstream.example")) as url:
        try:
            with pytest.raises(ConnectFailed):
                await post(system_store_only, url)
            with pytest.raises(ConnectFailed):  # trusted, but issued to another name
                await post(names_another, url)
            assert system_store_only.in_use == 0 and names_another.in_use == 0
        finally:
            await system_store_only.close()
            await names_another.close()
