"""Fixtures that start real servers on free loopback ports.

In-process servers (``stub``, ``router``) are fast and let a test read their state; process
servers (``stub_process``) can be killed with SIGKILL like a real machine dying.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from cloud_stub import StubConfig
from cloud_stub import create_app as create_stub_app
from cloud_stub.handlers import STATE
from hotcold.procs import ServiceProcess
from hotcold.redis_process import RedisProcess, redis_server_path
from hotcold.serving import Server, free_port
from router import create_app as create_router_app
from router.clock import Clock
from router.config import build_config
from tests.support import close_all_at_test_end

StubFactory = Callable[..., Awaitable[Server]]
RouterFactory = Callable[..., Awaitable[Server]]

# Fast defaults for tests: a quick stub and a router that ejects and probes back quickly.
FAST_STUB = StubConfig(ttft_ms=5, tpot_ms=1)


def router_settings(endpoints: list[str], **sections: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "server": {"request_deadline_s": 10},
        "cloud": {
            "endpoints": endpoints,
            "backoff": {"base_s": 0.005, "cap_s": 0.05},
            "breaker": {"failure_threshold": 2, "open_s": 0.3, "max_open_s": 1.0},
            "health": {"probe_interval_s": 0.1, "probe_timeout_s": 0.5},
        },
    }
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return settings


@pytest.fixture
async def stub() -> AsyncIterator[StubFactory]:
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        app = create_stub_app(replace(FAST_STUB, **overrides))
        server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=1)
        app[STATE].server = server
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def router() -> AsyncIterator[RouterFactory]:
    servers: list[Server] = []

    async def start(endpoints: list[str], clock: Clock | None = None, **sections: Any) -> Server:
        """``clock``: an injected clock (a FakeClock drives time-based behaviour)."""
        config = build_config(router_settings(endpoints, **sections))
        app = create_router_app(config, clock=clock)
        server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=1)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def closes_at_test_end() -> AsyncIterator[None]:
    """Closes what the test handed to ``tests.support.close_at_test_end``."""
    yield
    await close_all_at_test_end()


@pytest.fixture
def processes() -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def make(module: str, *args: str, port: int | None = None) -> ServiceProcess:
        process = ServiceProcess(module, port or free_port(), *args)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture
def redis_servers() -> Iterator[Callable[..., RedisProcess]]:
    """Real redis-server processes on free loopback ports. In CI a missing redis-server is a
    failure, never a skip (scripts/test installs it); elsewhere the fleet tests skip."""
    if redis_server_path() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: scripts/test installs it in CI")
        pytest.skip("redis-server is not installed")
    started: list[RedisProcess] = []

    def make(**options: Any) -> RedisProcess:
        server = RedisProcess(**options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
