"""``hotcold bench path``: the router's own Python cost per request, without sockets.

``hotcold bench proxy`` measures the router as a client sees it, and at one connection most
of what it sees is the machine: system calls, wake-ups, a neighbour's load; the same binary
moves by 40% from one round to the next. This measures only the part that is the router's
own code, and measures it steadily enough to compare two commits a few microseconds apart.

The real router (``router.app.create_app``, its default configuration, INFO logging with the
access log on, written to /dev/null) is driven through its real front door
(``hotcold.front.FrontConnection``) and its real upstream client (``router.http1``), with the
two sockets replaced by in-memory transports: a request's bytes are handed to the front door
as a socket would hand them, and the upstream "answers" with a fixed chat completion in the
loop's next turn, as an instant upstream would. One request at a time, like ``wrk -c1``;
every loop turn a real request takes is taken (uvloop), only the system calls are gone.

Reported: wall and CPU microseconds per request, forwarded (a sampled request) and a cache
hit, each the median of ``--rounds`` rounds. Compare commits by running it on each, on the
same machine, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from rich.table import Table

from bench import bare_upstream
from bench.proxy import DETERMINISTIC, SAMPLED
from hotcold.console import make_console
from hotcold.front import FRONT, FrontConnection, FrontServer
from hotcold.logs import setup_logging
from hotcold.serving import GEN0_THRESHOLD, event_loop_name, run
from router import http1
from router.app import create_app
from router.config import RouterConfig

UPSTREAM = "http://upstream.bench.invalid:8000"
# The proxy bench's upstream answer, as aiohttp sends it.
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nDate: Mon, 23 Nov 2026 21:00:00 GMT\r\nServer: Python/3.11 aiohttp\r\n"
    b"\r\n%s" % (len(bare_upstream.ANSWER), bare_upstream.ANSWER)
)


def request_bytes(body: bytes) -> bytes:
    """A request as wrk sends it (its default headers and the bench's)."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class MemoryTransport(asyncio.Transport):
    """A socket's transport without the socket: what is written goes to ``on_write``."""

    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        super().__init__()
        self._on_write = on_write
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._on_write(bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def instant_upstream() -> None:
    """Connections to the upstream made in memory: each request written is answered with
    :data:`ANSWER` in the loop's next turn."""

    async def connect(self: http1._OriginPool, timeout_s: float) -> http1._Connection:
        connection = http1._Connection(self)
        loop = asyncio.get_running_loop()

        def answer(_request: bytes) -> None:
            loop.call_soon(connection.data_received, ANSWER)

        connection.connection_made(MemoryTransport(answer))
        self.open.add(connection)
        return connection

    http1._OriginPool.connect = connect  # type: ignore[method-assign]


async def measure(requests: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per kind of request, one (wall µs, CPU µs) per request for each round."""
    config = RouterConfig.model_validate({"cloud": {"endpoints": [UPSTREAM]}})
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        server = config.server  # the bounds `hotcold serve` gives its front door
        front = FrontServer(
            app[FRONT],
            app,
            fallback=lambda: asyncio.Protocol(),
            header_timeout_s=server.header_timeout_s,
            idle_timeout_s=server.idle_timeout_s,
            max_line_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
        )
        loop = asyncio.get_running_loop()
        answered: list[asyncio.Future[None]] = []

        def on_answer(data: bytes) -> None:
            if not answered or answered[-1].done():
                return
            if data.startswith(b"HTTP/1.1 200"):
                answered[-1].set_result(None)
            else:  # a broken set-up must not pass for a fast one
                answered[-1].set_exception(RuntimeError(f"the router answered {data[:300]!r}"))

        client = FrontConnection(front)
        client.connection_made(MemoryTransport(on_answer))
        results: dict[str, list[tuple[float, float]]] = {"forwarded": [], "cache hit": []}
        kinds = {"forwarded": request_bytes(SAMPLED), "cache hit": request_bytes(DETERMINISTIC)}

        async def one(data: bytes) -> None:
            answered.append(loop.create_future())
            client.data_received(data)
            await answered[-1]
            answered.clear()

        for data in kinds.values():  # warm: the parse cache, the answer cache, connections
            for _ in range(200):
                await one(data)
        gc.collect()
        gc.freeze()
        gc.set_threshold(GEN0_THRESHOLD)
        for _ in range(rounds):
            for name, data in kinds.items():
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(requests):
                    await one(data)
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                results[name].append((wall / requests * 1e6, cpu / requests * 1e6))
        client.connection_lost(None)
        return results
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotcold bench path", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    console = make_console()
    with open(os.devnull, "w") as sink:
        stderr, sys.stderr = sys.stderr, sink
        try:
            setup_logging("INFO")  # as the router runs by default: the access lines written
        finally:
            sys.stderr = stderr
        instant_upstream()
        with console.status(f"{args.rounds} rounds of {args.requests:,} requests per kind"):
            results = run(measure(args.requests, args.rounds))
    table = Table(title=f"the router's Python per request, no sockets ({event_loop_name()})")
    for column in ("request", "wall µs (median)", "CPU µs (median)", "wall µs per round"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for name, rows in results.items():
        walls = [wall for wall, _ in rows]
        table.add_row(
            name,
            f"{statistics.median(walls):.1f}",
            f"{statistics.median(cpu for _, cpu in rows):.1f}",
            " ".join(f"{wall:.1f}" for wall in walls),
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
