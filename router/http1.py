"""The router's HTTP/1.1 client for the request path: kept-alive connections per upstream, a C
parser (httptools, llhttp), and nothing a POST to an inference server does not need.

Why not aiohttp's client, which the rest of the router uses (health probes, the dashboard):
measured with ``hotcold bench proxy``, its request machinery (request and response objects,
header multidicts, tracing hooks, cookie and redirect handling, timer handles) cost about
200 µs of CPU per forwarded request, two thirds of a bare aiohttp proxy's and more than the
whole of vllm-router's (Rust). This client writes one prepared head plus the body in one
``write`` and parses the answer in ``data_received``; a forwarded request costs a fraction.

What it does: POST with a body held in memory; answers with Content-Length, chunked, or
delimited by the connection's close; gzip/deflate bodies are decoded (we never ask for
them, but a server may send them anyway); TLS through asyncio's ``ssl`` support; a bound on
connections in use (``max_connections``, the cloud section's) and on idle ones kept per
origin; idle connections expire after ``keepalive_s``. What it does not: redirects, cookies,
proxies from the environment, ``Expect: 100-continue``, HTTP/2. None of these are used by an
OpenAI-compatible server on the request path.

A kept-alive connection the server closed while it sat idle may be picked just before its
FIN is read; a request that fails on a *reused* connection before any byte of the answer came
back is sent again once on a fresh connection (inference has no side effect; aiohttp does the
same for idempotent methods only). Every other failure is :class:`ConnectionBroken` or
:class:`ConnectFailed`, which the pool (router/upstream.py) retries on another endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from hotcold.wire.codec import decompressor

MAX_IDLE_PER_ORIGIN = 64  # kept-alive connections waiting per upstream; more are closed
PAUSE_AT_BYTES = 256 * 1024  # a streamed answer not yet relayed: stop reading the socket
USER_AGENT = "hotcold"


class ClientError(Exception):
    """A request to an upstream failed at the transport level."""


class ConnectFailed(ClientError):
    """The connection could not be made: the request never left."""

    def __init__(self, message: str, os_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectionBroken(ClientError):
    """The connection broke, or the answer was not valid HTTP, after the request was sent."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint's requests go: parsed once per endpoint URL."""

    scheme: str
    host: str
    port: int
    base_path: str  # the URL's own path, e.g. "/v1" for an endpoint given as https://x/v1
    host_header: bytes
    problem: str | None = None  # why requests to it cannot be made (a malformed URL)

    @classmethod
    def parse(cls, url: str) -> Origin:
        """Never raises: a URL that cannot be used makes an origin every request to which
        fails to connect, so one bad endpoint in a pool is ejected like a dead one."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return cls("http", "", 0, "", b"", problem=f"malformed URL ({exc})")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return cls("http", "", 0, "", b"", problem="not an http(s) URL")
        default = 443 if parts.scheme == "https" else 80
        port = port or default
        host = parts.hostname
        try:
            encoded = host.encode("idna").decode("ascii") if ":" not in host else f"[{host}]"
        except UnicodeError as exc:
            return cls("http", "", 0, "", b"", problem=f"bad host name ({exc})")
        header = encoded if port == default else f"{encoded}:{port}"
        return cls(parts.scheme, host, port, parts.path.rstrip("/"), header.encode("ascii"))

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def encode_headers(headers: dict[str, str]) -> bytes:
    """Header lines for a request head; a value with CR or LF is refused (header injection).
    A loop: for the one or two headers a request adds, it is twice as fast as joining."""
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a forbidden character")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class Response:
    """An answer whose status line and headers have arrived; the body follows."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_connection",
        "_decoder",
        "_done",
        "_error",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, connection: _Connection, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers  # names in lower case; a repeated header keeps its last value
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: ClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        encoding = headers.get("content-encoding")
        self._decoder: Any = None if encoding is None else _decoder_for(encoding)
        self._done = False  # released or closed: the connection is no longer ours

    @property
    def content_type(self) -> str:
        """The media type without parameters, as aiohttp's ``content_type`` gives it."""
        raw = self.headers.get("content-type", "")
        return raw.split(";", 1)[0].strip().lower()

    # ---- fed by the connection ----------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self._fail(ConnectionBroken(f"the answer's body cannot be decoded: {exc}"))
                return
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > PAUSE_AT_BYTES:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._complete = True
        self._wake()

    def _fail(self, error: ClientError) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._connection.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # ---- read by the caller -------------------------------------------------------------

    async def readany(self) -> bytes:
        """The next piece of the body, or b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= PAUSE_AT_BYTES // 2:
            self._connection.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        while not self._complete:
            if self._error is not None:
                raise self._error
            self._connection.resume_reading()
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    def release(self) -> None:
        """Done with the answer: a complete one hands its connection back for reuse."""
        if self._done:
            return
        self._done = True
        if self._complete and self._error is None and not self._chunks:
            self._connection.reusable_after(self)
        else:
            self._connection.close()

    def close(self) -> None:
        """Done with the answer, read or not: the connection is closed (for a stream, this
        tells the server to stop generating)."""
        if self._done:
            return
        self._done = True
        self._connection.close()


def _decoder_for(encoding: str | None) -> Any:
    try:
        return decompressor(encoding)
    except ValueError as exc:
        raise ConnectionBroken(f"the answer's {exc}") from None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to an upstream, carrying one request at a time."""

    def __init__(self, pool: _OriginPool) -> None:
        # Looked up once (made in the loop that connects it): asyncio.get_running_loop()
        # makes a getpid system call on every use (CPython 3.11).
        self.loop = asyncio.get_running_loop()
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = 0  # requests sent on it: a reused connection may be stale
        self.idle_since = 0.0
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._headers: dict[str, str] = {}  # the head being parsed, names in lower case
        self._paused = False
        self._until_eof = False  # the body ends when the connection does
        self._keep_alive = False
        self._received_any = False

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(ConnectionBroken("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._broken(ConnectionBroken(f"the upstream's answer is not valid HTTP: {exc}"))
        except ClientError as exc:
            self._broken(exc)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        response = self._response
        if response is not None and self._until_eof and exc is None:
            response._finish()
            return
        message = "the upstream closed the connection" + (f": {exc!r}" if exc else "")
        self._broken(ConnectionBroken(message))

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # ---- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}  # a chunked answer's trailer fields never reach the next answer

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        headers, self._headers = self._headers, {}
        if 100 <= status < 200:  # an interim answer (we never ask for one): skip it
            return
        # Read now: llhttp resets its flags once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._until_eof = "content-length" not in headers and not chunked
        response = Response(self, status, headers)
        self._response = response
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        self._until_eof = False  # e.g. a 204: no length, yet complete
        if self._response is not None:
            self._response._finish()

    # ---- used by the client -------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.used += 1
        self._received_any = False
        self._response = None
        self._until_eof = False
        self._head = self.loop.create_future()
        self.transport.write(data)
        return self._head

    @property
    def answered_anything(self) -> bool:
        return self._received_any

    def reusable_after(self, response: Response) -> None:
        if self.closed or response is not self._response or self._until_eof or not self._keep_alive:
            self.close()
            return
        self._response = None
        self._head = None
        self.resume_reading()
        self._pool.put_idle(self)

    def _broken(self, error: ClientError) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._response is not None:
            self._response._fail(error)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class _OriginPool:
    """Idle kept-alive connections to one upstream (scheme, host, port), newest first."""

    def __init__(self, client: Http1Client, origin: Origin) -> None:
        self._client = client
        self.origin = origin
        self._idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    def take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the newest: the least likely to have expired
            transport = connection.transport
            if (
                connection.closed
                or transport is None
                or transport.is_closing()
                or connection.loop.time() - connection.idle_since > self._client.keepalive_s
            ):
                # Idle, so its slot was given back when it went idle: forget it here, or
                # closing it would give the slot back a second time.
                self.open.discard(connection)
                connection.close()
                continue
            return connection
        return None

    def put_idle(self, connection: _Connection) -> None:
        if len(self._idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)
        self._client._connection_freed()

    def forget(self, connection: _Connection) -> None:
        if connection in self.open:
            self.open.discard(connection)
            if connection in self._idle:
                self._idle.remove(connection)
            else:  # it was in use: its slot is free
                self._client._connection_freed()

    async def connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        context = self._client.ssl_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"connecting took over {timeout_s}s", exc) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise ConnectFailed(f"cannot connect: {exc}", exc) from exc
        if protocol.closed:  # lost already, before it was counted
            raise ConnectFailed("the connection closed while it was being set up")
        self.open.add(protocol)
        return protocol

    def close(self) -> None:
        for connection in list(self.open):
            connection.close()


class Http1Client:
    """Kept-alive HTTP/1.1 connections to the upstreams, at most ``max_connections`` in use."""

    def __init__(
        self,
        max_connections: int = 100,
        keepalive_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context``: how HTTPS upstreams are verified; None: the system's trust store
        (``ssl.create_default_context()``, which honours SSL_CERT_FILE and SSL_CERT_DIR)."""
        self.max_connections = max(1, max_connections)
        self.keepalive_s = keepalive_s
        self._origins: dict[tuple[str, str, int], _OriginPool] = {}
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl = ssl_context
        self._closed = False

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    @property
    def in_use(self) -> int:
        return self._in_use

    async def post(
        self,
        origin: Origin,
        head: bytes,
        body: bytes,
        *,
        connect_timeout_s: float,
    ) -> Response:
        """Send ``head`` (a request head up to, not including, its Content-Length line and the
        blank line; see :func:`request_head`) with ``body``; the answer once its headers are in.
        The caller releases or closes it."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        if origin.problem is not None:
            raise ConnectFailed(origin.problem)
        data = b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))
        pool = self._origins.get(origin.key)
        if pool is None:
            pool = self._origins[origin.key] = _OriginPool(self, origin)
        if self._in_use >= self.max_connections:  # else a slot is free: no wait, no coroutine
            await self._acquire_slot()
        else:
            self._in_use += 1
        slot_held = True
        try:
            if self._closed:  # closed while this request waited for a slot
                raise ConnectFailed("the client is closed")
            connection = pool.take_idle()
            if connection is None:
                connection = await pool.connect(connect_timeout_s)
            slot_held = False  # from here the connection holds the slot until it is freed
            try:
                return await _answer(connection, data)
            except ConnectionBroken:
                if connection.used > 1 and not connection.answered_anything:
                    # A reused connection the server had closed while it was idle: once
                    # more, on a fresh one.
                    return await _answer(await self._fresh(pool, connect_timeout_s), data)
                raise
        except BaseException:
            if slot_held:
                self._connection_freed()
            raise

    async def _fresh(self, pool: _OriginPool, connect_timeout_s: float) -> _Connection:
        await self._acquire_slot()
        try:
            return await pool.connect(connect_timeout_s)
        except BaseException:
            self._connection_freed()
            raise

    async def _acquire_slot(self) -> None:
        while self._in_use >= self.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # pass on a wake-up this task will not use
                raise
        self._in_use += 1

    def _connection_freed(self) -> None:
        self._in_use -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        for pool in self._origins.values():
            pool.close()
        self._origins.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run


async def _answer(connection: _Connection, data: bytes) -> Response:
    """Send on ``connection`` and wait for the answer's head; a caller that gives up (its
    deadline, or its client gone) closes the connection, whose answer would be stale."""
    try:
        return await connection.send(data)
    except BaseException:
        connection.close()
        raise


def request_head(origin: Origin, path: str, headers: dict[str, str]) -> bytes:
    """A POST's head without Content-Length: built once per endpoint and path for the
    endpoint's own headers; per-request headers are appended with :func:`encode_headers`."""
    target = (origin.base_path + path) or "/"
    return (
        f"POST {target} HTTP/1.1\r\n".encode("latin-1")
        + b"Host: "
        + origin.host_header
        + b"\r\nUser-Agent: "
        + USER_AGENT.encode()
        + b"\r\n"
        + encode_headers(headers)
    )
