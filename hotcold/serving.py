"""Run an aiohttp application on a socket we own, for the services, the CLI and the tests.

Binding the socket ourselves lets port 0 pick a free port whose number we can read back, and
lets a server stop listening for a while (to simulate refused connections) and listen again
on the same port without dropping the requests it is serving.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

log = logging.getLogger("hotcold.serving")

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        # Cancel a handler when its client disconnects, so an abandoned generation stops
        # and frees its slot instead of running to the end for nobody.
        self._runner = web.AppRunner(
            app,
            handler_cancellation=handler_cancellation,
            shutdown_timeout=shutdown_timeout_s,
            access_log=None,
            max_line_size=max_header_bytes,
            max_field_size=max_header_bytes,
        )
        self._site: web.SockSite | None = None
        self._resume: asyncio.TimerHandle | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        sock = bind_socket(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        self._site = web.SockSite(self._runner, sock, backlog=1024)
        await self._site.start()

    async def pause_listening(self, seconds: float) -> None:
        """Refuse new connections for a while; connections already open keep working."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        loop = asyncio.get_running_loop()
        if self._resume is not None:
            self._resume.cancel()
        self._resume = loop.call_later(seconds, lambda: asyncio.ensure_future(self._listen()))

    async def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        await self._runner.cleanup()


@asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Server]:
    server = Server(app, host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def serve_forever(server: Server) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully (in-flight requests drain)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info("listening on %s", server.url)
    try:
        await stop.wait()
    finally:
        log.info("shutting down %s", server.url)
        await server.close()
