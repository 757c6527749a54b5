"""Run an aiohttp application on a socket we own, for the services, the CLI and the tests.

Binding the socket ourselves lets port 0 pick a free port whose number we can read back, and
lets a server stop listening for a while (to simulate refused connections) and listen again
on the same port without dropping the requests it is serving.

Connections are bounded, so slow or idle clients cannot exhaust a gateway:

- ``idle_timeout_s``: a connection that has not delivered a complete request's headers (a
  new one, or a kept-alive one between requests) within this time is closed. aiohttp's
  keep-alive timer runs from the moment a connection opens and is only pushed back by a
  complete answer, so a client that trickles its headers a byte at a time is closed too.
- ``max_connections``: past it, a new connection gets an immediate 503 in the OpenAI error
  shape (``Connection: close``) and is closed: file descriptors stay bounded.
- The HTTP parser's own errors (a header line over ``max_header_bytes``, more than
  ``max_headers`` headers, an over-long URL) are answered in the OpenAI error shape with an
  ``X-Request-Id``, instead of aiohttp's plain text. aiohttp writes such an answer with the
  HTTP version of the request it could not parse (HTTP/1.0 when the request line itself was
  bad): clients read it either way, and the connection is closed after it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hotcold.front import FRONT, FrontServer
from hotcold.wire.errors import error_body

log = logging.getLogger("hotcold.serving")
T = TypeVar("T")

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 15.0  # s: headers of a request, or the next request on a kept-alive one
DEFAULT_MAX_CONNECTIONS = 10_000  # open client connections; beyond, 503 and close
DEFAULT_MAX_HEADERS = 100  # header fields in one request


def _json_error(status: int, message: str, code: str, request_id: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    response = web.Response(
        status=status,
        body=orjson.dumps(error_body(message, kind, code)),
        content_type="application/json",
        headers={"X-Request-Id": request_id},
    )
    response.force_close()
    return response


class _OpenAIErrorHandler(RequestHandler):
    """aiohttp's request handler, answering its own parse errors in the OpenAI shape, and
    closing a new connection whose first request's headers are not complete within
    ``header_timeout_s`` (later requests on a kept-alive connection are bounded by aiohttp's
    keep-alive timer, ``idle_timeout_s``)."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_timer = asyncio.get_running_loop().call_later(
            self._header_timeout_s, self._headers_too_slow
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self._request_count > 0:
            self._header_timer.cancel()  # a complete request head has arrived
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._request_count == 0:
            self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = uuid.uuid4().hex
        if isinstance(exc, OSError):
            # The client went away while its answer was being written (the error middleware
            # lets these through: there is no one left to answer). Not a server fault, so no
            # traceback in the log; the answer below is never sent.
            log.debug("client connection lost [%s]: %r", request_id, exc)
            return _json_error(500, "connection lost", "connection_lost", request_id)
        if status >= 500:
            self.log_exception("error handling a request [%s]", request_id, exc_info=exc)
            return _json_error(
                500, "internal error; it has been logged", "internal_error", request_id
            )
        log.info("unparseable request [%s]: %s", request_id, message or exc)
        reason = message or (str(exc) if exc else "malformed request")
        return _json_error(
            status, f"malformed HTTP request: {reason}", "bad_http_request", request_id
        )


_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class _Refuse(asyncio.Protocol):
    """A connection over the cap: one 503 in the OpenAI shape, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = orjson.dumps(
            error_body(
                "the server is at its connection limit; retry shortly",
                "service_unavailable",
                "too_many_connections",
            )
        )
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL % (len(body), body))
        transport.close()


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """``reuse_port``: several processes bind the same port and the kernel spreads new
    connections across them (SO_REUSEPORT, Linux)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for processes that must be told their port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Server:
    """One application listening on one address."""

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
        handler_cancellation: bool = True,
        max_header_bytes: int = 8190,
        max_headers: int = DEFAULT_MAX_HEADERS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        header_timeout_s: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        reuse_port: bool = False,
    ) -> None:
        """``header_timeout_s``: the first request's headers must be complete within it
        (None: ``idle_timeout_s``). ``reuse_port``: share the port with other processes
        (:func:`bind_socket`)."""
        self.reuse_port = reuse_port
        self.app = app
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.refused_connections = 0
        self._header_timeout_s = idle_timeout_s if header_timeout_s is None else header_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._handler_args: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": idle_timeout_s,
            "max_line_size": max_header_bytes,
            "max_field_size": max_header_bytes,
            "max_headers": max_headers,
        }
        # Cancel a handler when its client disconnects, so an abandoned generation stops
        # and frees its slot instead of running to the end for nobody.
        self._runner = web.AppRunner(
            app,
            handler_cancellation=handler_cancellation,
            shutdown_timeout=shutdown_timeout_s,
            **self._handler_args,
        )
        self._listener: asyncio.Server | None = None
        self._resume: asyncio.TimerHandle | None = None
        routes = app.get(FRONT)
        self._front = (
            None
            if routes is None
            else FrontServer(
                routes,
                app,
                fallback=self._aiohttp_protocol,
                header_timeout_s=self._header_timeout_s,
                idle_timeout_s=idle_timeout_s,
                max_line_bytes=max_header_bytes,
                max_headers=max_headers,
            )
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        await self._listen()

    @property
    def connection_count(self) -> int:
        """Client connections open now, on the front door and on aiohttp."""
        server = self._runner.server
        front = 0 if self._front is None else len(self._front.connections)
        return front + (0 if server is None else len(server.connections))

    def _protocol(self) -> asyncio.Protocol:
        """A handler for a new connection (the front door's when the app has one: it hands
        other routes' connections to aiohttp), or a refusal past ``max_connections``."""
        if self.connection_count >= self.max_connections:
            self.refused_connections += 1
            return _Refuse()
        if self._front is not None:
            return self._front.protocol()
        return self._aiohttp_protocol()

    def _aiohttp_protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        return _OpenAIErrorHandler(
            server,
            loop=asyncio.get_running_loop(),
            header_timeout_s=self._header_timeout_s,
            **self._handler_args,
        )

    async def _listen(self) -> None:
        sock = bind_socket(self.host, self.port, reuse_port=self.reuse_port)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._protocol, sock=sock, backlog=1024)

    async def _stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def pause_listening(self, seconds: float) -> None:
        """Refuse new connections for a while; connections already open keep working."""
        await self._stop_listening()
        loop = asyncio.get_running_loop()
        if self._resume is not None:
            self._resume.cancel()
        self._resume = loop.call_later(seconds, lambda: asyncio.ensure_future(self._listen()))

    async def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        await self._stop_listening()
        if self._front is not None:  # before the app's cleanup: its handlers use the app
            await self._front.drain(self._shutdown_timeout_s)
        await self._runner.cleanup()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where the platform has it (a core dependency, absent on Windows),
    else None: asyncio's own. uvloop roughly halves the loop's and the transports' share of
    a request (docs/benchmarks.md, the proxy benchmark)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def event_loop_name() -> str:
    """Which event loop :func:`run` uses, for logs and benchmark tables."""
    return "uvloop" if loop_factory() is not None else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`loop_factory`'s loop: every service and CLI entry point
    runs its event loop through this, so all of them get uvloop where it is installed."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


@asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[Server]:
    """``app`` served while the block runs; ``options``: :class:`Server`'s keywords."""
    server = Server(app, host, port, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


# gen0 threshold once a service has started (CPython's default is 700). Measured on the
# router's forwarding path at 16 concurrent (docs/benchmarks.md): the objects of the requests in
# flight cross 700 net allocations hundreds of times a second, and each crossing scans and
# promotes them, although a request leaves almost no cyclic garbage (45 objects in 10,000
# requests); promoted objects then drive full collections. At 10,000 young collections are
# rare and each stays below a millisecond.
GEN0_THRESHOLD = 10_000


def settle_gc() -> None:
    """Once start-up is done: collect, move every object alive now (modules, classes,
    configuration, the app) to the permanent generation so collections never scan them again
    (``gc.freeze``), and raise the young generation's threshold. Cyclic garbage is still
    collected; this takes the service's start-up heap off the request path's pauses (a full
    collection over it took 30 ms, the forwarding p99 at 16 concurrent)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


async def serve_forever(server: Server) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully (in-flight requests drain)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    settle_gc()
    log.info("listening on %s", server.url)
    try:
        await stop.wait()
    finally:
        log.info("shutting down %s", server.url)
        await server.close()
