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
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar, cast, overload

import httptools
import orjson
from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy

from hotcold.wire.codec import decompressor
from hotcold.wire.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_body,
)

log = logging.getLogger("hotcold.front")
T = TypeVar("T")

MAX_PIPELINED = 16  # requests parsed ahead of their answers on one connection; then reads pause
MAX_WAITING_BYTES = 1024 * 1024  # and bodies of requests waiting for their turn, in all


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
        "_encoding",
        "_failure",
        "_parts",
        "_queued",
        "_size",
        "_store",
        "_too_large",
        "_waiter",
        "app",
        "headers",
        "http10",
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
        self._failure: ApiError | None = None  # the body could not be parsed
        self._queued = False  # parsed, waiting behind another request's answer
        self.http10 = False  # an HTTP/1.0 client (a stream is then delimited by the close)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        self._encoding = None if encoding in ("identity", "") else encoding

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
        body come in one packet), else waiting for the rest, at most ``timeout_s``
        (``TimeoutError``). ``hotcold.http.read_body`` checks the declared length first."""
        if not self._complete and not self._too_large and self._failure is None:
            self._waiter = asyncio.get_running_loop().create_future()
            if self._connection is not None:
                self._connection.body_wanted()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            finally:
                self._waiter = None
        if self._failure is not None:
            raise self._failure
        if self._too_large or self._size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body if self._encoding is None else _decoded(body, self._encoding, limit)

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

    def _fail(self, failure: ApiError) -> None:
        """The rest of the body cannot be read (malformed): a reader gets ``failure``."""
        if not self._complete:
            self._failure = failure
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


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """A body sent with ``Content-Encoding`` gzip or deflate, decoded as aiohttp's server
    decodes it, the size limit applying to the decoded bytes (a small bomb stays small)."""
    try:
        decoder = decompressor(encoding)
    except ValueError as exc:
        raise UnsupportedMediaType(str(exc), code="unsupported_content_encoding") from None
    try:
        decoded: bytes = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding}: {exc}", code="bad_encoding") from None
    if len(decoded) > limit:
        raise PayloadTooLarge(f"the decoded request body is over the limit of {limit} bytes")
    return decoded


FrontHandler = Callable[[FrontRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FrontRoutes:
    """The routes the front door serves itself: POST to these paths. Every other request
    goes to the application through aiohttp."""

    handlers: Mapping[str, FrontHandler]
    max_body_bytes: int  # what a request keeps of its body (the handler's read refuses past it)
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

_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_STATUS_LINES = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode()) for code, phrase in _PHRASES.items()
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
    """The status line, built once per standard status and phrase."""
    line = _STATUS_LINES.get(status)
    if line is None or (reason is not None and reason != _PHRASES[status]):
        text = reason if reason is not None else "Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, text.encode("latin-1", "replace"))
    return line


_HEADER_LINE = ": ".join  # of a (name, value) pair: the fastest way to a line here


def _head(status_line: bytes, headers: Mapping[str, str], extra: bytes) -> bytes:
    """A whole answer head: the status line, ``headers``, then ``extra`` (ending the head)."""
    if not headers:
        return status_line + extra
    lines = "\r\n".join(map(_HEADER_LINE, headers.items()))
    breaks = len(headers) - 1
    if lines.count("\n") != breaks or lines.count("\r") != breaks:
        raise ValueError("a header name or value holds a line break")  # never split the head
    return b"%s%s\r\n%s" % (status_line, lines.encode("latin-1"), extra)


def error_answer(status: int, message: str, code: str) -> bytes:
    """A whole answer in the OpenAI error shape, with a fresh request id; the connection
    closes after it."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = orjson.dumps(error_body(message, kind, code))
    head = _head(
        _status_line(status),
        {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex},
        b"Content-Length: %d\r\nDate: %s\r\nConnection: close\r\n\r\n" % (len(body), _Clock.date()),
    )
    return head + body


class FrontStream:
    """A streamed answer on a front connection: chunked transfer encoding (an HTTP/1.0 client
    gets the bytes as they are, the connection's close ending them); ``write`` waits while the
    client's socket buffer is full, so a slow reader holds one buffer, not the whole stream."""

    def __init__(
        self,
        connection: FrontConnection,
        request: FrontRequest,
        status: int,
        headers: Mapping[str, str],
    ) -> None:
        self._connection = connection
        self.status = status
        self._chunked = not request.http10
        self.keeps = self._chunked and connection.keeps(request)  # what its head says
        extra = b"%sDate: %s\r\n%s\r\n" % (
            b"Transfer-Encoding: chunked\r\n" if self._chunked else b"",
            _Clock.date(),
            b"" if self.keeps else b"Connection: close\r\n",
        )
        connection.write(_head(_status_line(status), headers, extra))
        self.ended = False

    async def write(self, data: bytes) -> None:
        if data:
            self._connection.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
            await self._connection.drain()

    async def write_eof(self) -> None:
        if not self.ended:
            self.ended = True
            if self._chunked:
                self._connection.write(b"0\r\n\r\n")


class FrontConnection(asyncio.Protocol):
    """One client connection, while its requests are the front's (see the module's doc)."""

    def __init__(self, server: FrontServer) -> None:
        # Looked up once: asyncio.get_running_loop() makes a getpid system call on every use
        # (CPython 3.11), several per request where each use looked it up again.
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._routes = server.routes
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._held = b""  # bytes kept until we know whose request they start
        self._url = b""
        self._headers: CIMultiDict[str] = CIMultiDict()  # the head being parsed
        self._header_count = 0
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
        self._waiting_bytes = 0  # body bytes of parsed requests waiting for their turn
        self._raw_body = False  # an upgrade request's body: read past the parser
        self._close_after_message = False  # answered early: read the body out, then close

    # ---- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tcp_keepalive(self.transport)  # a peer gone without a word is found, as aiohttp does
        self._server.connections.add(self)
        self._arm(self._server.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._closing and (self._refused is not None or not self._in_message):
            return  # closing: only the rest of a request in progress is still read
        if self._raw_body:
            self._feed_raw(data)
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
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._feed_raw(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:  # a callback's _Refused arrives as one too
            self._refuse(400, f"malformed HTTP request: {exc}", "bad_http_request")
            return
        if self._in_message and not self._past_head:
            # The parser keeps an unfinished head's pieces (a header that never ends): bound
            # them. A head completed in this piece reset the count (a new one has at most
            # this piece's bytes).
            self._head_bytes += len(data)
            if self._head_bytes > self._server.max_head_bytes:
                self._refuse(400, "the request's head is too large", "bad_http_request")

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
        self._headers = CIMultiDict()
        self._header_count = 0  # the head's fields and then the trailer's, bounded together

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._server.max_line_bytes:
            self._refuse(400, "the request's URL is too long", "bad_http_request")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        """A field of the head, or of a chunked body's trailer (after the head: bounded as
        the head's are, and dropped, as aiohttp drops them: never a request header)."""
        if self._header_count >= self._server.max_headers:
            self._refuse(400, "too many headers", "bad_http_request")
            raise _Refused
        if len(name) + len(value) + 2 > self._server.max_line_bytes:
            self._refuse(400, "a header line is too long", "bad_http_request")
            raise _Refused
        self._header_count += 1
        if not self._past_head:
            self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

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
        headers = self._headers
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
        request.http10 = self._parser.get_http_version() == "1.0"
        if self._parser.should_upgrade():
            # Served as plain HTTP/1.1 (as aiohttp serves it): llhttp hands the body over as
            # the upgraded protocol's bytes, read past the parser; the connection then closes.
            request.keep_alive = False
        if request.headers.get("Expect", "").lower() == "100-continue":
            self.write(_CONTINUE)  # at once, as aiohttp's server does
        self._parsing = request
        request._queued = True
        self._queue.append(request)
        if len(self._queue) >= MAX_PIPELINED:
            self._pause_reading()
        if self._task is None:
            self._start_next()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None:
            request._feed(body, self._routes.max_body_bytes)
            if request._queued:
                self._waiting_bytes += len(body)
                if self._waiting_bytes > MAX_WAITING_BYTES:
                    self._pause_reading()  # until the requests ahead are answered

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None and self._parser.should_upgrade():
            declared = request._declared or 0
            if declared > 0 and request._size < declared:
                self._raw_body = True  # the body follows as the upgrade's bytes
                return
        self._in_message = False
        self._past_head = False
        self._parsing = None
        if request is not None:
            request._finish()
        if self._close_after_message:
            self._close()
        elif not self.busy and not self._closing:  # answered before its body was all here
            self._arm(self._server.idle_timeout_s)

    def _feed_raw(self, data: bytes) -> None:
        """An upgrade request's body, past the parser (its Content-Length bounds it)."""
        request = self._parsing
        if request is None or not self._raw_body:
            return  # nothing owed to anyone: the connection closes after its answer
        need = (request._declared or 0) - request._size
        self.on_body(data[:need])
        if request._size >= (request._declared or 0) or request._too_large:
            self._raw_body = False
            self.on_message_complete()

    # ---- answering --------------------------------------------------------------------------

    def _start_next(self) -> None:
        request = self._queue.popleft()
        request._queued = False
        self._waiting_bytes -= request._size  # all it received, it received while waiting
        self._task = self._loop.create_task(self._answer(request))
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        """Read again once the pipeline has room (a count and a byte bound) and no bytes of
        another route's request wait to be handed over."""
        if (
            self._reading_paused
            and not self._held
            and len(self._queue) < MAX_PIPELINED
            and self._waiting_bytes <= MAX_WAITING_BYTES
        ):
            self._resume_reading()

    def body_wanted(self) -> None:
        """A handler waits for its request's body."""
        self._maybe_resume()

    async def _answer(self, request: FrontRequest) -> None:
        try:
            response = await self._routes.handlers[request.path](request)
            if self.transport is None:
                return
            stream = request.stream
            if stream is None:
                keep = self._write_response(request, response)
                if self._write_paused:  # a client not reading its answers: wait for it
                    await self.drain()
            elif not stream.ended:
                # The handler failed after the stream began: end it as broken (no last chunk),
                # never as complete.
                self._close()
                return
            else:
                keep = stream.keeps and self.keeps(request)
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
            self._close()
            return
        finally:
            self._task = None
        if keep:
            self._next()
        elif self._refused is not None and not self._queue:
            self._next()  # the refusal owed after this answer, then the close
        elif self._parsing is request and not request._complete and request._failure is None:
            # Answered before its body was all here (401, 413, ...): read the rest of it out
            # (bounded by the idle timeout), then close, so the client reads the answer
            # rather than a reset.
            self._closing = True
            self._close_after_message = True
            self._maybe_resume()
            self._arm(self._server.idle_timeout_s)
        else:
            self._close()

    def keeps(self, request: FrontRequest) -> bool:
        """Whether the connection stays open after this request's answer: the client wants
        it, its body was not refused unread, and, when closing, another answer follows (a
        pipelined request's, or the refusal of one that could not be parsed)."""
        return (
            request.keep_alive
            and request._complete
            and not request._too_large
            and not (self._closing and not self._queue and self._refused is None)
        )

    def _write_response(self, request: FrontRequest, response: web.StreamResponse) -> bool:
        """Write a whole answer; whether the connection stays open after it."""
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
        head = _head(_status_line(response.status, response.reason), headers, extra)
        if len(body) <= 65536:
            self.write(head + body)  # one send
        else:
            self.write(head)  # a large body is not copied
            self.write(bytes(body))
        return keep

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
        # The next request's head (or the rest of a body no one read) must come in time.
        self._arm(self._server.idle_timeout_s)
        self._resume_reading()
        if self._held and not self._in_message:
            held, self._held = self._held, b""
            self.data_received(held)

    # ---- the connection ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise FrontClosed("the client closed the connection")
        if self._write_paused:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer a request the parser could not take, after the answers already owed."""
        if self._refused is not None or self.transport is None:
            return
        log.info("unparseable request: %s", message)
        self._closing = True
        self._pause_reading()
        request = self._parsing
        if request is not None and self._past_head:
            # Inside a body: its request has (or will have) its own answer, which says why.
            request._fail(BadRequest(message, code=code))
            self._close_after_message = False
            if not self.busy:
                self._close()
            return
        self._refused = error_answer(status, message, code)
        if not self.busy:
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
        loop = self._loop
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
        loop = self._loop
        if loop.time() < deadline:  # moved since this timer was set
            self._timer = loop.call_at(deadline, self._idle_too_long)
        elif not self.busy:
            self._close()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request already answered with an error."""


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
        late = [c._task for c in self.connections if c._task is not None]
        for task in late:
            task.cancel()  # past the timeout: stopped, before the app's parts are closed
        for connection in list(self.connections):
            transport = connection.transport
            if transport is not None and transport.get_write_buffer_size() > 0:
                transport.abort()  # a client not reading would hold the close forever
            else:
                connection._close()
        if late:
            await asyncio.wait(late, timeout=1.0)
