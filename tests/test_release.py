"""The edge earns its traffic, end to end: real router, a cloud stub as the reference and a
cloud stub as the edge node (same answers as the cloud until told to answer wrongly, or to be
slow, at run time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from hotcold.serving import Server
from tests.conftest import RouterFactory, StubFactory
from tests.support import wait_for

FAST_RELEASE = {
    "shares": [0.5, 1.0],
    "shadow_rate": 1.0,
    "min_samples": 6,
    "min_rollback_samples": 4,
    "window": 40,
    "max_shadow_inflight": 64,
    "max_latency_ratio": 50.0,
}


def chat(index: int) -> dict[str, Any]:
    # Deterministic (temperature 0) so edge and cloud agree; no-store keeps the cache out.
    return {
        "model": "m",
        "temperature": 0,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": f"sensor {index} status?"}],
    }


def judged_edge(edge_url: str) -> dict[str, Any]:
    """Router sections: an edge under a fast gray release, every request pinned hot, and a
    budget wide enough that only the release decides."""
    return {
        "edge": {"endpoints": [edge_url], "release": FAST_RELEASE, "latency": {"factor": 1e6}},
        "policy": {"pins": [{"route": "hot", "model": "*"}]},
    }


async def fleet_of_routers(
    stub: StubFactory, router: RouterFactory, redis_servers: Any
) -> Callable[[str], Awaitable[Server]]:
    """A Redis, a cloud and an edge; the returned function starts a router of that fleet."""
    from tests.test_fleet import fleet

    redis = await redis_servers().started()
    cloud, edge = await stub(), await stub()

    async def start(router_id: str) -> Server:
        return await router([cloud.url], fleet=fleet(redis, router_id), **judged_edge(edge.url))

    return start


@pytest.fixture
async def parts(stub: StubFactory, router: RouterFactory) -> AsyncIterator[dict[str, Server]]:
    cloud, edge = await stub(), await stub()
    front = await router([cloud.url], **judged_edge(edge.url))
    yield {"router": front, "cloud": cloud, "edge": edge}


async def ask(session: aiohttp.ClientSession, url: str, index: int) -> str:
    async with session.post(
        url + "/v1/chat/completions", json=chat(index), headers={"Cache-Control": "no-store"}
    ) as response:
        assert response.status == 200, await response.text()
        return response.headers["X-Served-By"]


async def release_of(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/admin/policy") as response:
        models = (await response.json())["edge"]["release"]["models"]
    return dict(models.get("default", {"stage": 0, "share": 0.0}))


async def drive_until(
    session: aiohttp.ClientSession,
    url: str,
    done: Any,
    served: list[str],
    message: str,
    start: int = 0,
) -> int:
    """Send requests one by one until the release state satisfies ``done``."""
    index = start

    async def step() -> bool:
        nonlocal index
        served.append(await ask(session, url, index))
        index += 1
        return bool(done(await release_of(session, url)))

    await wait_for(step, timeout_s=60, interval_s=0.0, message=message)
    return index


async def test_an_agreeing_edge_earns_all_hot_misses_stage_by_stage(
    parts: dict[str, Server],
) -> None:
    url = parts["router"].url
    served: list[str] = []
    async with aiohttp.ClientSession() as session:
        assert (await release_of(session, url))["stage"] == 0
        assert await ask(session, url, 0) == "cloud"  # shadow: the client gets the cloud
        await drive_until(session, url, lambda r: r["stage"] == 2, served, "all hot misses")
        state = await release_of(session, url)
        assert state["share"] == 1.0 and "advanced" in state["last_move"]["reason"]
        after = [await ask(session, url, 1000 + i) for i in range(10)]
    assert served[0] == "cloud"
    assert after == ["edge"] * 10


async def test_an_edge_that_starts_to_disagree_is_rolled_back_and_serves_no_one_after(
    parts: dict[str, Server],
) -> None:
    url, edge = parts["router"].url, parts["edge"]
    served: list[str] = []
    async with aiohttp.ClientSession() as session:
        index = await drive_until(session, url, lambda r: r["stage"] == 2, served, "earned")
        await session.post(edge.url + "/admin/faults", json={"wrong_rate": 1.0})
        rolled: list[str] = []
        await drive_until(
            session, url, lambda r: r["stage"] == 0, rolled, "the rollback", start=index
        )
        state = await release_of(session, url)
        assert "rolled back" in state["last_move"]["reason"]
        assert "agreement" in state["last_move"]["reason"]
        after = [await ask(session, url, 5000 + i) for i in range(20)]
    assert after == ["cloud"] * 20  # no client answered by the edge after the rollback


async def test_a_slow_edge_gets_no_hot_misses_until_it_is_fast_again(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud, edge = await stub(), await stub(slow_rate=1.0, slow_ms=400)
    front = await router(
        [cloud.url],
        edge={
            "endpoints": [edge.url],
            "release": {**FAST_RELEASE, "pinned": {"default": 2}},  # earned: only speed counts
            "latency": {"factor": 2.0},
        },
        policy={"pins": [{"route": "hot", "model": "*"}]},
    )
    async with aiohttp.ClientSession() as session:
        served = [await ask(session, front.url, i) for i in range(30)]
        # Until measured the edge may be tried; once the shadows measure it, it is left out.
        assert served[-15:] == ["cloud"] * 15
        await session.post(edge.url + "/admin/faults", json={"slow_rate": 0.0})

        index = 30

        async def edge_again() -> bool:
            nonlocal index
            index += 1
            return await ask(session, front.url, index) == "edge"

        await wait_for(edge_again, timeout_s=60, interval_s=0.0, message="the edge fast again")
        async with session.get(front.url + "/admin/policy") as response:
            state = (await response.json())["edge"]["release"]["models"]["default"]
    predicted = state["predicted_s"]
    assert predicted["edge"] is not None and predicted["cloud"] is not None


async def test_the_fleet_shares_the_stage_and_a_restarted_router_resumes_it(
    stub: StubFactory, router: RouterFactory, redis_servers: Any
) -> None:
    """Router a earns the edge's stages; router b (which saw none of that traffic) shows the
    same stage, and a router started afterwards begins at it instead of in shadow."""
    start = await fleet_of_routers(stub, router, redis_servers)
    first, second = await start("a"), await start("b")
    async with aiohttp.ClientSession() as session:
        await drive_until(session, first.url, lambda r: r["stage"] == 2, [], "earned on a")
        moved_at = asyncio.get_running_loop().time()

        async def on_second() -> bool:
            return (await release_of(session, second.url))["stage"] == 2

        await wait_for(on_second, timeout_s=10, message="the stage on router b")
        elapsed_ms = (asyncio.get_running_loop().time() - moved_at) * 1000
        print(f"stage in effect on the other router after {elapsed_ms:.0f} ms")
        state = await release_of(session, second.url)
        assert "(by a)" in state["last_move"]["reason"]
        assert await ask(session, second.url, 9999) == "edge"
        third = await start("c")

        async def on_third() -> bool:
            return (await release_of(session, third.url))["stage"] == 2

        await wait_for(on_third, timeout_s=10, message="a new router resuming the stage")


async def test_an_operator_pins_a_stage_live_for_the_whole_fleet(
    stub: StubFactory, router: RouterFactory, redis_servers: Any
) -> None:
    start = await fleet_of_routers(stub, router, redis_servers)
    first, second = await start("a"), await start("b")
    async with aiohttp.ClientSession() as session:
        pin = {"model": "default", "stage": 2, "by": "alice", "reason": "trusted"}
        async with session.put(first.url + "/admin/release", json=pin) as response:
            assert response.status == 200, await response.text()
        assert await ask(session, first.url, 1) == "edge"  # pinned at all hot misses, at once

        async def pinned_on_second() -> bool:
            state = await release_of(session, second.url)
            return bool(state.get("pinned")) and state["share"] == 1.0

        await wait_for(pinned_on_second, timeout_s=10, message="the pin on router b")
        assert await ask(session, second.url, 2) == "edge"
        unpin = {"model": "default", "stage": None}
        async with session.put(first.url + "/admin/release", json=unpin) as response:
            assert response.status == 200
        assert await ask(session, first.url, 3) == "cloud"  # the evidence decides again: shadow
        bad = {"model": "default", "stage": 9}
        async with session.put(first.url + "/admin/release", json=bad) as response:
            assert response.status == 422
        async with session.put(first.url + "/admin/release", json={"stage": 0}) as response:
            assert response.status == 422  # which model?
