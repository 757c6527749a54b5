"""``server.workers``: several router processes on one port (router/workers.py)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from hotcold.procs import ServiceProcess
from hotcold.serving import Server
from router.__main__ import main as router_main
from tests.conftest import StubFactory
from tests.support import wait_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.7}


async def test_two_workers_answer_on_one_port_and_stop_together(
    stub: StubFactory, processes: Callable[..., ServiceProcess]
) -> None:
    cloud: Server = await stub()
    router = processes("router", "--cloud-endpoint", cloud.url, "--workers", "2")
    await router.started(60)
    # A fresh id starts with its process's random prefix: answers on new connections carry
    # two prefixes once the kernel has handed connections to both workers.
    prefixes: set[str] = set()

    async def both_workers_answered() -> bool:
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(router.url + "/v1/chat/completions", json=CHAT) as response,
        ):
            assert response.status == 200
            prefixes.add(response.headers["X-Request-Id"][:12])
        return len(prefixes) == 2

    await wait_for(both_workers_answered, timeout_s=60, message="answers from both workers")
    assert router.terminate() == 0  # SIGTERM reaches both; each drains and exits cleanly


def test_workers_need_a_fixed_port() -> None:
    assert router_main(["--workers", "2", "--port", "0"]) == 2
