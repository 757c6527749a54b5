"""Faults of everything around the router, one test each, the expected outcome in its name.

Covered elsewhere: a cloud endpoint killed under load (test_router_request_path: no client
error, ejected, taken back), all endpoints down (503 + Retry-After, fast), a slow pool (504
within the deadline), a full upstream queue (503 retried elsewhere), the edge node down (hot
requests served by the cloud: test_router_hot_path), Redis killed under load
(test_fleet: no client error, policy kept, reconciled), a slow client (test_tenants_and_limits:
408), overload (503 overloaded).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from hotcold.procs import ServiceProcess
from tests.conftest import RouterFactory, StubFactory
from tests.support import metric, scrape, wait_for

Processes = Callable[..., ServiceProcess]


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0, **extra}  # fmt: skip


async def test_cloud_dying_mid_stream_ends_the_stream_with_an_sse_error_event(
    processes: Processes, router: RouterFactory
) -> None:
    """The dead connection ends the stream, not the idle timer: that is set to an hour, so a
    router that missed the death would leave the client hanging past the deadline below."""
    cloud = await processes("cloud_stub", "--ttft-ms", "10", "--tpot-ms", "100").started()
    front = await router([cloud.url], server={"stream_idle_timeout_s": 3600})
    events: list[Any] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            front.url + "/v1/chat/completions",
            json=chat("a long story", max_tokens=200, stream=True),
        ) as response,
    ):
        assert response.status == 200
        killed = False
        # The stream must end (an error event, then a clean end), not hang: a hang fails here
        # at this generous deadline, far below the idle timeout that would otherwise end it.
        async with asyncio.timeout(60):
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                events.append(payload if payload == b"[DONE]" else orjson.loads(payload))
                if not killed and len(events) >= 3:
                    cloud.kill()  # the cloud machine dies with the stream half sent
                    killed = True
        assert killed
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert errors and errors[-1]["error"]["code"] == "stream_broken", events[-3:]


async def test_edge_failing_every_request_is_served_by_the_cloud(
    stub: StubFactory, router: RouterFactory
) -> None:
    """An edge node that answers 500 to everything (crashing, out of memory): hot requests
    are answered by the cloud; the client sees no error."""
    cloud = await stub()
    broken_edge = await stub(error_rate=1.0)
    front = await router([cloud.url], edge={"endpoints": [broken_edge.url]})
    async with aiohttp.ClientSession() as session:
        for i in range(12):
            body = chat("hot key", temperature=1)  # sampled: never a cache hit
            async with session.post(front.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
                if i >= 3:
                    assert r.headers["X-Route"] == "hot"
                    assert r.headers["X-Served-By"] == "cloud"
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_edge_fallbacks_total") >= 1


async def test_edge_process_killed_under_load_no_client_error(
    stub: StubFactory, processes: Processes, router: RouterFactory
) -> None:
    cloud = await stub()
    edge = await processes("cloud_stub", "--ttft-ms", "5", "--tpot-ms", "1").started()
    front = await router([cloud.url], edge={"endpoints": [edge.url]})
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        while not stop.is_set():
            body = chat(f"key {index % 3}", temperature=1)
            async with session.post(front.url + "/v1/chat/completions", json=body) as r:
                await r.read()
                statuses.append(r.status)

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session, i)) for i in range(12)]
        await wait_for(lambda: len(statuses) > 100, timeout_s=10, message="load")
        edge.kill()
        at_kill = len(statuses)
        await wait_for(lambda: len(statuses) > at_kill + 200, timeout_s=10, message="load on")
        stop.set()
        await asyncio.gather(*clients)
    assert set(statuses) == {200}


async def test_unresolvable_cloud_host_is_ejected_and_others_serve(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    dns_broken = "http://no-such-gpu-host.invalid:9000"
    front = await router([dns_broken, cloud.url])
    async with aiohttp.ClientSession() as session:
        for i in range(20):
            async with session.post(front.url + "/v1/chat/completions", json=chat(str(i))) as r:
                assert r.status == 200, await r.text()
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_upstream_up", endpoint=dns_broken) == 0


async def test_sigterm_under_load_answers_every_accepted_request(
    processes: Processes,
) -> None:
    """SIGTERM while 40 requests are in flight: the router stops accepting, every request
    it accepted is answered in full, and it exits cleanly."""
    cloud = await processes("cloud_stub", "--ttft-ms", "1500", "--tpot-ms", "5").started()
    front = await processes("router", "--cloud-endpoint", cloud.url).started()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def one(index: int) -> int:
            async with session.post(
                front.url + "/v1/chat/completions", json=chat(f"in flight {index}", temperature=1)
            ) as response:
                body = await response.json()
                assert body["choices"][0]["message"]["content"]
                return response.status

        requests = [asyncio.create_task(one(i)) for i in range(40)]

        async def all_in_flight() -> bool:
            outstanding = metric(await scrape(front.url), "hotcold_upstream_outstanding")
            return outstanding == 40

        await wait_for(all_in_flight, timeout_s=10, message="40 requests in flight")
        assert front.proc is not None
        front.proc.send_signal(signal.SIGTERM)

        async def refusing() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", front.port)
            except OSError:
                return True
            writer.close()
            return False

        await wait_for(refusing, timeout_s=10, message="no new connections accepted")
        statuses = await asyncio.gather(*requests)
    assert statuses == [200] * 40
    assert front.proc.wait(timeout=15) == 0


async def test_a_healed_pool_answers_on_its_first_good_probe(
    stub: StubFactory, router: RouterFactory
) -> None:
    """Breakers open for 300 s (doubling on every failed trial), yet once the fault clears
    the next probe (every 0.1 s) takes the endpoints back: clients do not wait out the
    open period, and nothing is sent to an endpoint while its breaker is open."""
    stubs = [await stub(), await stub()]
    front = await router(
        [s.url for s in stubs],
        cloud={
            "breaker": {"failure_threshold": 1, "open_s": 300, "max_open_s": 300},
            "health": {"probe_interval_s": 0.1, "probe_timeout_s": 0.5},
        },
    )
    async with aiohttp.ClientSession() as session:
        for each in stubs:
            await session.post(each.url + "/admin/faults", json={"error_rate": 1.0})
        for _ in range(3):
            async with session.post(front.url + "/v1/chat/completions", json=chat("x")) as r:
                assert r.status in (500, 503)
        for each in stubs:
            await session.post(each.url + "/admin/faults", json={"error_rate": 0.0})

        async def answered() -> bool:
            async with session.post(front.url + "/v1/chat/completions", json=chat("y")) as r:
                return r.status == 200

        await wait_for(answered, timeout_s=20, message="the healed pool to answer")
