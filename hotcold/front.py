"""The front door: a lean HTTP/1.1 server protocol for a service's hottest routes, in front of
its aiohttp application.

Why: measured with ``hotcold bench proxy``, aiohttp's server side (its request and response
objects, router, middleware chain, payload streams and writer) cost about 60 µs of CPU per
request, a third of a forwarded request's and half of a cache hit's. This protocol parses
with httptools (C, llhttp, as the router's own client does), hands the handler a
:class:`FrontRequest` holding the whole body, and writes each answer with one ``write``.

Which connections: every connection starts here. The first bytes of each request are
compared with the routes' request lines (e.g. ``POST /v1/chat/completions``); a connection
whose request is anything else (health, metrics, admin, the dashboard, another method) is
handed, with the bytes read so far, to aiohttp's own protocol, which serves it from then on
exactly as before. A request is only ever handed over at its first byte, when nothing of the
connection is in flight here, so answers never cross. A request for another route pipelined
behind a front request in the same packet cannot be handed over (its start is not known): it
gets a 400 in the OpenAI shape and the connection is closed (no HTTP client in use pipelines).

What it keeps from the aiohttp server it replaces for these routes: the same bounds (header
line and count, URL length, body size, the first request's header timeout, the idle timeout
between requests, the body timeout), parse errors answered in the OpenAI error shape with a
request id, ``Expect: 100-continue``, keep-alive and ``Connection: close``, pipelined
requests answered in order, a handler cancelled when its client goes away, streamed answers
(chunked, with the writer waiting while the client's socket buffer is full), and a graceful
drain on shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar, cast, overload

import httptools
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from hotcold.wire.errors import PayloadTooLarge, RequestTimeout, error_body

log = logging.getLogger("hotcold.front")
T = TypeVar("T")

MAX_PIPELINED = 16  # requests parsed ahead of their answers on one connection; then reads pause


class FrontClosed(ConnectionResetError):
    """The client's connection closed while its answer was being written."""


class FrontRequest:
    """One request, its head parsed and its body held in memory: what a front handler reads.

    It offers the parts of ``aiohttp.web.Request`` the router's request path uses (method,
    path, headers, a per-request store for ``RequestKey`` values), so a handler serves either
    transport (see ``hotcold.http.HttpRequest``)."""

    __slots__ = (
        "_complete",
        "_connection",
        "_declared",
        "_parts",
        "_size",
        "_store",
        "_too_large",
        "_waiter",
        "app",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "stream",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        app: web.Application,
        keep_alive: bool,
        connection: FrontConnection | None = None,
        declared: int | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.app = app  # the application whose front this is (its state: the router's parts)
        self.keep_alive = keep_alive
        self._store: dict[Any, Any] = {}
        self._parts: list[bytes] = []
        self._size = 0
        self._declared = declared  # Content-Length, when given
        self._complete = False
        self._too_large = False
        self._waiter: asyncio.Future[None] | None = None
        self._connection = connection
        self.stream: FrontStream | None = None  # set when the answer is streamed

    # ---- the per-request store (aiohttp's Request is a MutableMapping too) -------------

    @overload
    def __getitem__(self, key: web.RequestKey[T]) -> T: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: Any) -> Any:
        return self._store[key]

    @overload
    def __setitem__(self, key: web.RequestKey[T], value: T) -> None: ...
    @overload
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __setitem__(self, key: Any, value: Any) -> None:
        self._store[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._store

    @overload
    def get(self, key: web.RequestKey[T], default: None = None) -> T | None: ...
    @overload
    def get(self, key: web.RequestKey[T], default: T) -> T: ...
    @overload
    def get(self, key: str, default: Any = None) -> Any: ...
    def get(self, key: Any, default: Any = None) -> Any:
        return self._store.get(key, default)

    # ---- the body ---------------------------------------------------------------------

    @property
    def content_length(self) -> int | None:
        return self._declared

    async def read(self, limit: int, timeout_s: float | None) -> bytes:
        """The whole body: at once when it has arrived (the usual case: a request's head and
        body come in one packet), else waiting for the rest, at most ``timeout_s``."""
        if self._declared is not None and self._declared > limit:
            raise PayloadTooLarge(
                f"request body of {self._declared} bytes is over the limit of {limit}"
            )
        if not self._complete and not self._too_large:
            self._waiter = asyncio.get_running_loop().create_future()
            if self._connection is not None:
                self._connection.expect_continue(self)
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {timeout_s:g} s"
                ) from None
            finally:
                self._waiter = None
        if self._too_large or self._size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _feed(self, chunk: bytes, limit: int) -> None:
        self._size += len(chunk)
        if self._size > limit:  # keep nothing more: the answer will be 413
            if not self._too_large:
                self._too_large = True
                self._parts.clear()
                self._wake()
            return
        self._parts.append(chunk)

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def open_stream(self, status: int, headers: Mapping[str, str]) -> FrontStream:
        """Start a streamed (chunked) answer: its head is written now."""
        assert self._connection is not None, "a request without a connection cannot stream"
        self.stream = FrontStream(self._connection, self, status, headers)
        return self.stream


FrontHandler = Callable[[FrontRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FrontRoutes:
    """The routes the front door serves itself: POST to these paths. Every other request
    goes to the application through aiohttp."""

    handlers: Mapping[str, FrontHandler]
    max_body_bytes: int
    body_timeout_s: float | None = None
    request_lines: tuple[bytes, ...] = field(init=False)
    longest: int = field(init=False)

    def __post_init__(self) -> None:
        lines = []
        for path in self.handlers:
            lines += [b"POST " + path.encode() + b" ", b"POST " + path.encode() + b"?"]
        object.__setattr__(self, "request_lines", tuple(lines))
        object.__setattr__(self, "longest", max((len(line) for line in lines), default=0))

    def claims(self, head: bytes) -> bool | None:
        """Whether a request starting with these bytes is the front's; None: too few bytes
        to say yet (a client sending its request line in pieces)."""
        if head.startswith(self.request_lines):
            return True
        if len(head) < self.longest and any(line.startswith(head) for line in self.request_lines):
            return None
        return False


FRONT = web.AppKey("front_routes", FrontRoutes)

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Clock:
    """The Date header, formatted once a second."""

    second = 0
    value = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = email.utils.formatdate(now, usegmt=True).encode()
        return cls.value


def _status_line(status: int, reason: str | None = None) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None or reason is not None:
        text = reason if reason is not None else "Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, text.encode("latin-1", "replace"))
    return line


def _head(status_line: bytes, headers: Mapping[str, str], extra: bytes) -> bytes:
    """A whole answer head: the status line, ``headers``, then ``extra`` (ending the head)."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise ValueError("a header name or value holds a line break")  # never split the head
    return status_line + lines.encode("latin-1") + extra


def error_answer(status: int, message: str, code: str, *, close: bool = True) -> bytes:
    """A whole answer in the OpenAI error shape, with a fresh request id."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = orjson.dumps(error_body(message, kind, code))
    head = _head(
        _status_line(status),
        {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex},
        b"Content-Length: %d\r\nDate: %s\r\n%s\r\n"
        % (len(body), _Clock.date(), b"Connection: close\r\n" if close else b""),
    )
    return head + body


class FrontStream:
    """A streamed answer on a front connection: chunked transfer encoding; ``write`` waits
    while the client's socket buffer is full, so a slow reader holds one buffer, not the
    whole stream."""

    def __init__(
        self,
        connection: FrontConnection,
        request: FrontRequest,
        status: int,
        headers: Mapping[str, str],
    ) -> None:
        self._connection = connection
        self.status = status
        extra = b"Transfer-Encoding: chunked\r\nDate: %s\r\n%s\r\n" % (
            _Clock.date(),
            b"" if connection.keeps(request) else b"Connection: close\r\n",
        )
        connection.write(_head(_status_line(status), headers, extra))
        self.ended = False

    async def write(self, data: bytes) -> None:
        if data:
            self._connection.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self._connection.drain()

    async def write_eof(self) -> None:
        if not self.ended:
            self.ended = True
            self._connection.write(b"0\r\n\r\n")


class FrontConnection(asyncio.Protocol):
    """One client connection, while its requests are the front's (see the module's doc)."""

    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._routes = server.routes
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._held = b""  # bytes kept until we know whose request they start
        self._url = b""
        self._names: list[bytes] = []
        self._values: list[bytes] = []
        self._parsing: FrontRequest | None = None
        self._in_message = False
        self._queue: collections.deque[FrontRequest] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # when the connection closes unless a head comes
        self._closing = False  # no more requests: answer what is in flight, then close
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._refused: bytes | None = None  # an error answer owed after the in-flight ones
        self._past_head = False  # the current request's head is complete
        self._head_bytes = 0  # bytes received since the last complete head (bounded)

    # ---- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._arm(self._server.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._held:
            data = self._held + data
            self._held = b""
        if not self._in_message:  # the first bytes of a request: whose is it?
            claimed = self._routes.claims(data)
            if claimed is None:  # too few bytes to say
                self._held = data
                return
            if not claimed:
                if self.busy:  # answers are owed here first: hand over once they are out
                    self._held = data
                    self._pause_reading()
                else:
                    self._hand_over(data)
                return
        if not self._past_head:  # the parser keeps a head's pieces until it is complete
            self._head_bytes += len(data)
            if self._head_bytes > self._server.max_head_bytes:
                self._refuse(400, "the request's head is too large", "bad_http_request")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported here", "bad_http_request")
        except httptools.HttpParserError as exc:  # a callback's _Refused arrives as one too
            self._refuse(400, f"malformed HTTP request: {exc}", "bad_http_request")

    def eof_received(self) -> bool:
        return False  # a client that half-closes is done: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._stop_timer()
        if self._task is not None:
            self._task.cancel()  # its client is gone: stop the work for nobody
        self._queue.clear()
        if self._parsing is not None:
            self._parsing._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(FrontClosed("the client closed the connection"))
        self.transport = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._names = []
        self._values = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._server.max_line_bytes:
            self._refuse(400, "the request's URL is too long", "bad_http_request")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        limit = self._server.max_line_bytes
        if len(self._names) >= self._server.max_headers:
            self._refuse(400, "too many headers", "bad_http_request")
            raise _Refused
        if len(name) + len(value) + 2 > limit:
            self._refuse(400, "a header line is too long", "bad_http_request")
            raise _Refused
        self._names.append(name)
        self._values.append(value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._past_head = True
        self._head_bytes = 0
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        handler = self._routes.handlers.get(path)
        method = self._parser.get_method()
        if handler is None or method != b"POST":
            # Only a request pipelined behind a front request in one packet gets here.
            self._refuse(
                400,
                "this request was pipelined behind an inference request on one connection; "
                "send it on its own connection",
                "pipelining_not_supported",
            )
            raise _Refused
        headers = CIMultiDict(
            zip(
                [name.decode("latin-1") for name in self._names],
                [value.decode("latin-1") for value in self._values],
                strict=True,
            )
        )
        declared = headers.get("Content-Length")
        request = FrontRequest(
            "POST",
            path,
            query,
            CIMultiDictProxy(headers),
            self._server.app,
            self._parser.should_keep_alive(),
            self,
            int(declared) if declared is not None and declared.isdigit() else None,
        )
        self._parsing = request
        self._queue.append(request)
        if len(self._queue) >= MAX_PIPELINED:
            self._pause_reading()
        if self._task is None:
            self._start_next()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body, self._routes.max_body_bytes)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._past_head = False
        request = self._parsing
        self._parsing = None
        if request is not None:
            request._finish()
        if not self.busy and not self._closing:  # answered before its body was all here
            self._arm(self._server.idle_timeout_s)

    # ---- answering --------------------------------------------------------------------------

    def _start_next(self) -> None:
        request = self._queue.popleft()
        self._task = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: FrontRequest) -> None:
        try:
            response = await self._routes.handlers[request.path](request)
            if self.transport is None:
                return
            stream = request.stream
            if stream is None:
                self._write_response(request, response)
            elif not stream.ended:
                await stream.write_eof()
        except OSError as exc:  # the client went away while its answer was written
            log.debug("client connection lost on %s: %r", request.path, exc)
            self._close()
            return
        except Exception:  # the handler answers its own errors; this is a bug, not input
            log.exception("unhandled error answering %s", request.path)
            if request.stream is None:
                self.write(
                    error_answer(500, "internal error; it has been logged", "internal_error")
                )
            self._close()  # a stream cut short: the client sees it end without its last chunk
            return
        finally:
            self._task = None
        if not request.keep_alive or request._too_large or response.keep_alive is False:
            self._close()  # its answer said so (Connection: close)
            return
        self._next()

    def keeps(self, request: FrontRequest) -> bool:
        """Whether the connection stays open after this request's answer: the client wants
        it, its body was not refused unread, and, when closing, another answer follows (a
        pipelined request's, or the refusal of one that could not be parsed)."""
        return (
            request.keep_alive
            and not request._too_large
            and not (self._closing and not self._queue and self._refused is None)
        )

    def _write_response(self, request: FrontRequest, response: web.StreamResponse) -> None:
        body = response.body if isinstance(response, web.Response) else None
        if body is None:
            body = b""
        elif not isinstance(body, bytes):
            raise TypeError("front handlers answer with bytes bodies")
        headers = response.headers
        keep = self.keeps(request) and response.keep_alive is not False
        extra = b"Content-Length: %d\r\nDate: %s\r\n%s%s\r\n" % (
            len(body),
            _Clock.date(),
            b"" if "Content-Type" in headers else b"Content-Type: application/octet-stream\r\n",
            b"" if keep else b"Connection: close\r\n",
        )
        head = _head(_status_line(response.status, _reason(response)), headers, extra)
        if len(body) <= 65536:
            self.write(head + body)  # one send
        else:
            self.write(head)  # a large body is not copied
            self.write(bytes(body))

    def _next(self) -> None:
        """After an answer: the next pipelined request, an owed refusal, held bytes of
        another route's request, or the idle timer."""
        if self._queue:
            self._start_next()
            return
        if self._refused is not None:
            self.write(self._refused)
            self._close()
            return
        if self._closing:  # shutting down: the last answer said Connection: close
            self._close()
            return
        self._resume_reading()
        if self._held and not self._in_message:
            held, self._held = self._held, b""
            self.data_received(held)
            return
        # The next request's head (or the rest of a body no one read) must come in time.
        self._arm(self._server.idle_timeout_s)

    def expect_continue(self, request: FrontRequest) -> None:
        """A handler waits for the body: tell a client waiting on ``Expect: 100-continue``."""
        if request.headers.get("Expect", "").lower() == "100-continue":
            self.write(_CONTINUE)

    # ---- the connection ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise FrontClosed("the client closed the connection")
        if self._write_paused:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer a request the parser could not take, after the answers already owed."""
        if self._refused is not None:
            return
        log.info("unparseable request: %s", message)
        self._refused = error_answer(status, message, code)
        self._closing = True
        self._pause_reading()
        if self._task is None and not self._queue:
            self.write(self._refused)
            self._close()

    def _hand_over(self, head: bytes) -> None:
        """This connection's request is not the front's: aiohttp's protocol takes the
        connection over, starting with the bytes read so far."""
        transport = self.transport
        assert transport is not None
        self._stop_timer()
        self._server.connections.discard(self)
        self.transport = None
        protocol = self._server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        protocol.data_received(head)

    def _close(self) -> None:
        self._closing = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> bool:
        """Stop taking requests; close now when idle. True when nothing is in flight."""
        self._closing = True
        if self._task is None and not self._queue:
            self._close()
            return True
        return False

    @property
    def busy(self) -> bool:
        return self._task is not None or bool(self._queue)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._closing:
            self._reading_paused = False
            self.transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        """Close the connection unless a request head is complete within ``seconds``.

        One timer per connection, not one per request: a request only moves the deadline
        (``_disarm`` clears it); the timer, when it fires, sleeps again until the deadline
        of the moment, or lapses when there is none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() > deadline:  # due too late for this one
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = loop.call_at(deadline, self._idle_too_long)

    def _disarm(self) -> None:
        self._deadline = None

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_too_long(self) -> None:
        """No complete request head in time (a new or kept-alive connection): close."""
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:  # moved since this timer was set
            self._timer = loop.call_at(deadline, self._idle_too_long)
        elif not self.busy:
            self._close()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request already answered with an error."""


def _reason(response: web.StreamResponse) -> str | None:
    """The response's reason phrase when it is not the standard one for its status."""
    reason = response.reason
    line = _STATUS_LINES.get(response.status)
    return None if line is not None and line[13:-2] == reason.encode() else reason


@dataclass
class FrontServer:
    """What the front's connections share: the routes, the bounds, the connection set and
    how to make aiohttp's protocol for a connection handed over."""

    routes: FrontRoutes
    app: web.Application
    fallback: Callable[[], asyncio.Protocol]
    header_timeout_s: float
    idle_timeout_s: float
    max_line_bytes: int
    max_headers: int
    connections: set[FrontConnection] = field(default_factory=set)

    @property
    def max_head_bytes(self) -> int:
        """The most a request head may take (its request line and every header line at
        their bounds): the parser's buffer for an unfinished head stays within it."""
        return self.max_line_bytes * (self.max_headers + 2)

    def protocol(self) -> FrontConnection:
        return FrontConnection(self)

    async def drain(self, timeout_s: float) -> None:
        """Graceful shutdown: idle connections closed now, busy ones once their answers are
        out, and whatever is still running after ``timeout_s`` cancelled."""
        deadline = time.monotonic() + timeout_s
        busy = [c for c in list(self.connections) if not c.shutdown()]
        while busy and (remaining := deadline - time.monotonic()) > 0:
            tasks = [c._task for c in busy if c._task is not None]
            if not tasks:
                break
            await asyncio.wait(tasks, timeout=remaining)  # each answered, then the next queued
            busy = [c for c in busy if c.busy and c.transport is not None]
        for connection in list(self.connections):
            connection._close()
