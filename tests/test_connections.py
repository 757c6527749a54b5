"""Slow, idle and too many clients, and the HTTP parser's own errors, against a real router
built from its config (router.__main__.build_server), over raw TCP where a client misbehaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from hotcold.serving import Server
from router.__main__ import build_server
from router.config import build_config
from tests.conftest import StubFactory, router_settings
from tests.support import wait_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
async def front(stub: StubFactory) -> AsyncIterator[Server]:
    cloud = await stub()
    settings = router_settings([cloud.url])
    settings["server"].update(idle_timeout_s=0.5, max_connections=40, port=0)
    server = build_server(build_config(settings))
    await server.start()
    yield server
    await server.close()


async def _open(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (a hang fails the test)."""
    async with asyncio.timeout(30):
        return await reader.read()


async def _served(server: Server) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + "/v1/chat/completions", json=CHAT) as response,
    ):
        return response.status == 200


async def test_an_idle_connection_is_closed(front: Server) -> None:
    reader, writer = await _open(front)
    assert await _closed_by_server(reader) == b""
    writer.close()
    assert await _served(front)


async def test_a_client_trickling_its_headers_is_closed(front: Server) -> None:
    reader, writer = await _open(front)

    async def trickle() -> None:
        for byte in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 500:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)  # the misbehaving client's own pace, not a wait

    sender = asyncio.create_task(trickle())
    assert await _closed_by_server(reader) == b""
    sender.cancel()
    writer.close()
    assert await _served(front)


async def test_past_the_connection_cap_new_connections_get_503_and_the_rest_is_served(
    front: Server,
) -> None:
    idle = [await _open(front) for _ in range(front.max_connections)]
    await wait_for(lambda: _count(front) >= front.max_connections, message="all connected")
    reader, writer = await _open(front)
    refused = await _closed_by_server(reader)
    writer.close()
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert orjson.loads(body)["error"]["code"] == "too_many_connections"
    assert front.refused_connections >= 1
    assert _count(front) <= front.max_connections  # file descriptors stay bounded
    for _, idle_writer in idle:
        idle_writer.close()
    await wait_for(lambda: _count(front) == 0, message="the idle ones gone")
    assert await _served(front)


def _count(server: Server) -> int:
    return server.connection_count


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        + b"\r\n",
        b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["long header", "too many headers", "9 KB URL"],
)
async def test_the_parsers_own_errors_are_in_the_openai_shape(
    front: Server, request_head: bytes
) -> None:
    reader, writer = await _open(front)
    writer.write(request_head)
    answer = await _closed_by_server(reader)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0]
    headers: dict[str, Any] = dict(
        line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
    )
    assert headers[b"Content-Type"].startswith(b"application/json")
    assert len(headers[b"X-Request-Id"]) == 32
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_http_request"


def test_the_connection_cap_stays_within_the_descriptor_limit() -> None:
    import resource

    from router.__main__ import connection_cap

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    huge = build_config({"server": {"max_connections": 10_000_000}})
    assert connection_cap(huge) < soft
    small = build_config({"server": {"max_connections": 100}})
    assert connection_cap(small) == 100
