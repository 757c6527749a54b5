"""The fleet over a real Redis: one policy for every router, fleet-wide frequencies, Redis
faults that never reach a client, compare-and-set edits, refused documents."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import yaml

from hotcold.procs import ServiceProcess
from hotcold.redis_process import RedisProcess
from hotcold.serving import Server
from router.policy import FleetDocument
from tests.conftest import RouterFactory, StubFactory
from tests.support import metric, scrape, wait_for

Redis = Callable[..., RedisProcess]

FAST_FLEET = {
    "poll_interval_s": 0.5,
    "heartbeat_interval_s": 0.2,
    "member_ttl_s": 1.0,
    "sketch_interval_s": 0.2,
    "redis_timeout_s": 0.3,
}


def fleet(redis: RedisProcess, router_id: str, **extra: Any) -> dict[str, Any]:
    return {"redis_url": redis.url, "name": "test", "router_id": router_id, **FAST_FLEET, **extra}


async def fleet_of_two(
    stub: StubFactory,
    router: RouterFactory,
    redis: RedisProcess,
    fleet_extra: dict[str, Any] | None = None,
    **sections: Any,
) -> tuple[Server, Server]:
    cloud = await stub()
    extra = fleet_extra or {}
    first = await router([cloud.url], fleet=fleet(redis, "a", **extra), **sections)
    second = await router([cloud.url], fleet=fleet(redis, "b", **extra), **sections)
    await wait_for(
        lambda: both_see_two(first, second), timeout_s=10, message="both routers in the fleet"
    )
    return first, second


async def admin(url: str, method: str = "GET", path: str = "/admin/policy", **kwargs: Any) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, **kwargs) as response,
    ):
        return response.status, response.headers.copy(), await response.json()


async def both_see_two(*servers: Server) -> bool:
    for server in servers:
        _, _, status = await admin(server.url, path="/admin/fleet")
        if status["state"] != "connected" or len(status["members"]) != 2:
            return False
    return True


async def policy_version(server: Server) -> int:
    _, _, document = await admin(server.url)
    return int(document["policy"]["version"])


async def test_policy_change_reaches_the_other_router_within_a_second(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers().started()
    first, second = await fleet_of_two(stub, router, redis)
    changes = {"threshold": {"min": 6, "max": 6}, "cache": {"ttl_s": 120}}
    started = time.monotonic()
    status, headers, _ = await admin(
        first.url, "PUT", json={"changes": changes, "by": "alice", "reason": "test"}
    )
    assert status == 200, headers
    assert headers["ETag"] == '"1"'

    async def in_effect_on_second() -> bool:
        _, _, document = await admin(second.url)
        return document["threshold"]["value"] == 6 and document["policy"]["version"] == 1

    # Measured and printed (6-10 ms here); the deadline is generous so a busy CI machine
    # cannot fail it: pub/sub must deliver, or the 0.5 s poll must heal within it.
    await wait_for(in_effect_on_second, timeout_s=5.0, interval_s=0.005, message="the change")
    elapsed_ms = (time.monotonic() - started) * 1000
    print(f"policy change in effect on the other router after {elapsed_ms:.1f} ms")
    _, _, document = await admin(second.url)
    assert document["policy"]["values"]["cache"]["ttl_s"] == 120
    source = document["policy"]["sources"]["threshold.max"]
    assert source["layer"] == "fleet" and source["by"] == "alice" and source["version"] == 1
    assert document["policy"]["sources"]["threshold.history_weight"]["layer"] == "default"
    # Handing a value back to the file: null removes the fleet's change.
    status, _, _ = await admin(second.url, "PUT", json={"changes": {"cache": {"ttl_s": None}}})
    assert status == 200
    await wait_for(lambda: _ttl_is(first, 3600.0), timeout_s=10, message="ttl back to default")


async def _ttl_is(server: Server, ttl: float) -> bool:
    _, _, document = await admin(server.url)
    return bool(document["policy"]["values"]["cache"]["ttl_s"] == ttl)


def sampled(text: str) -> dict[str, Any]:
    """A request that bypasses the cache, so its route is decided by frequency alone."""
    return {
        "model": "m",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0.7,
        "max_tokens": 4,
    }


async def route_of(session: aiohttp.ClientSession, url: str, text: str) -> str:
    async with session.post(url + "/v1/chat/completions", json=sampled(text)) as response:
        assert response.status == 200
        return response.headers["X-Route"]


async def sketch_syncs(server: Server) -> int:
    _, _, status = await admin(server.url, path="/admin/fleet")
    return int(status["sketch_syncs"])


@pytest.mark.parametrize("view", ["shared", "all_to_all"])
async def test_requests_spread_across_two_routers_make_a_key_hot_on_both(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis, view: str
) -> None:
    """Threshold pinned at 4. Three requests on one router are not enough (3 < 4); two on
    each router, plus the fleet's view, are (3 local + 2 remote >= 4) on both, whichever
    hot-key view the fleet uses."""
    pinned = {"threshold": {"initial": 4, "min": 4, "max": 4}}
    redis = await redis_servers().started()
    first, second = await fleet_of_two(
        stub, router, redis, fleet_extra={"hot_key_view": view}, policy=pinned
    )
    alone = await router([(await stub()).url], policy=pinned)
    async with aiohttp.ClientSession() as session:
        assert [await route_of(session, alone.url, "solo") for _ in range(3)] == ["cold"] * 3
        for server in (first, second):
            for _ in range(2):
                assert await route_of(session, server.url, "shared") == "cold"
        marks = {server.url: await sketch_syncs(server) for server in (first, second)}

        async def exchanged() -> bool:  # two more syncs: both published after the requests
            for server in (first, second):
                if await sketch_syncs(server) < marks[server.url] + 2:
                    return False
            return True

        await wait_for(exchanged, timeout_s=10, message="sketch exchange")
        assert await route_of(session, first.url, "shared") == "hot"
        assert await route_of(session, second.url, "shared") == "hot"
        assert await route_of(session, first.url, "solo-on-first") == "cold"


async def test_redis_killed_under_load_then_back(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers().started()
    first, second = await fleet_of_two(stub, router, redis)
    status, _, _ = await admin(first.url, "PUT", json={"changes": {"threshold": {"max": 9}}})
    assert status == 200
    await wait_for(lambda: _version_is(second, 1), timeout_s=10, message="version 1 on both")

    stop = asyncio.Event()
    outcomes: list[tuple[int, str]] = []

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        server = (first, second)[index % 2]
        count = 0
        while not stop.is_set():
            body = {**sampled(f"key {count % 5}"), "temperature": 0}
            async with session.post(server.url + "/v1/chat/completions", json=body) as response:
                await response.read()
                outcomes.append((response.status, response.headers.get("X-Route", "")))
            count += 1

    async with aiohttp.ClientSession() as session:
        load = [asyncio.create_task(client(session, index)) for index in range(8)]
        await wait_for(lambda: len(outcomes) > 100, timeout_s=10, message="load running")
        redis.kill()
        await wait_for(
            lambda: _fleet_state_is("unreachable", first, second),
            timeout_s=10,
            message="Redis seen down",
        )
        during = len(outcomes)
        await wait_for(lambda: len(outcomes) > during + 200, timeout_s=10, message="load on")
        # Readiness reports it without failing, and an edit cannot be made (nothing written).
        status, _, ready = await admin(first.url, path="/readyz")
        assert status == 200 and ready["fleet"]["state"] == "unreachable"
        status, _, error = await admin(
            first.url, "PUT", json={"changes": {"threshold": {"max": 7}}}
        )
        assert status == 503 and error["error"]["code"] == "fleet_unavailable"
        samples = await scrape(first.url)
        assert metric(samples, "hotcold_fleet_redis_up") == 0
        redis.start()  # the same port, empty: the policy was only in memory
        await redis.wait_ready()
        await wait_for(
            lambda: _fleet_state_is("connected", first, second),
            timeout_s=10,
            message="Redis seen back",
        )
        stop.set()
        await asyncio.gather(*load)

    failed = [outcome for outcome in outcomes if outcome[0] != 200]
    assert not failed, failed[:5]
    assert {route for _, route in outcomes[during:]} >= {"hot"}  # classification went on
    # The routers wrote their (newer) policy back into the empty Redis ...
    client_ = redis.client()
    try:
        await wait_for(
            lambda: _stored_version(client_, 1), timeout_s=10, message="version 1 written back"
        )
    finally:
        await client_.aclose()
    # ... and a change made now reaches both without a restart.
    status, _, _ = await admin(second.url, "PUT", json={"changes": {"threshold": {"max": 8}}})
    assert status == 200
    await wait_for(lambda: _version_is(first, 2), timeout_s=10, message="version 2 on the first")


async def _stored_version(client: Any, version: int) -> bool:
    stored = await client.hget("hotcold:{test}:policy", "version")
    return stored is not None and int(stored) == version


async def _version_is(server: Server, version: int) -> bool:
    return await policy_version(server) == version


async def _fleet_state_is(state: str, *servers: Server) -> bool:
    for server in servers:
        _, _, status = await admin(server.url, path="/admin/fleet")
        if status["state"] != state:
            return False
    return True


async def test_newer_policy_found_in_redis_wins(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    """A document written by any router (here: straight into Redis) with a higher version is
    adopted by every router, without a message (the poll heals a lost publish)."""
    redis = await redis_servers().started()
    first, second = await fleet_of_two(stub, router, redis)
    newer = FleetDocument.empty("test").amended({"threshold": {"max": 5}}, "elsewhere", "")
    newer = newer.model_copy(update={"version": 5})
    client = redis.client()
    try:
        await client.hset("hotcold:{test}:policy", mapping={"version": 5, "doc": newer.encode()})
    finally:
        await client.aclose()
    for server in (first, second):
        await wait_for(lambda s=server: _version_is(s, 5), timeout_s=10, message="version 5")
    _, _, document = await admin(first.url)
    assert document["policy"]["values"]["threshold"]["max"] == 5


async def test_concurrent_edits_one_wins_the_other_conflicts(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers().started()
    first, second = await fleet_of_two(stub, router, redis)
    edits = [
        admin(server.url, "PUT", headers={"If-Match": '"0"'}, json={"changes": change, "by": by})
        for server, change, by in (
            (first, {"threshold": {"max": 10}}, "alice"),
            (second, {"threshold": {"max": 12}}, "bob"),
        )
    ]
    results = await asyncio.gather(*edits)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 409], results
    loser = next(body for status, _, body in results if status == 409)
    assert loser["error"]["code"] == "version_conflict"
    winner_max = next(
        body["policy"]["values"]["threshold"]["max"] for status, _, body in results if status == 200
    )
    for server in (first, second):
        await wait_for(lambda s=server: _version_is(s, 1), timeout_s=10, message="version 1")
        _, _, document = await admin(server.url)
        assert document["policy"]["values"]["threshold"]["max"] == winner_max
    # Many racing edits without If-Match: each is stored or told so, none is lost silently.
    results = await asyncio.gather(
        *(
            admin(
                (first, second)[i % 2].url, "PUT", json={"changes": {"cache": {"ttl_s": 100 + i}}}
            )
            for i in range(12)
        )
    )
    assert {status for status, _, _ in results} <= {200, 409}
    stored = sum(1 for status, _, _ in results if status == 200)
    assert stored >= 1
    await wait_for(lambda: _version_is(first, 1 + stored), timeout_s=10, message="every win kept")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xc1 not msgpack", "malformed"),
        (msgpack.packb({"schema": "hotcold.policy/1", "fleet": "other", "version": 3}), "foreign"),
        (msgpack.packb({"schema": "someone-else/2", "fleet": "test", "version": 3}), "foreign"),
        (
            msgpack.packb(
                {
                    "schema": "hotcold.policy/1",
                    "fleet": "test",
                    "version": 3,
                    "changes": {"threshold": {"min": -1}},
                }
            ),
            "invalid_changes",
        ),
    ],
)
async def test_malformed_or_foreign_document_is_refused(
    stub: StubFactory,
    router: RouterFactory,
    redis_servers: Redis,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    reason: str,
) -> None:
    redis = await redis_servers().started()
    cloud = await stub()
    server = await router([cloud.url], fleet=fleet(redis, "a"))
    client = redis.client()
    try:
        with caplog.at_level(logging.ERROR, logger="hotcold"):
            await client.hset("hotcold:{test}:policy", mapping={"version": 3, "doc": raw})
            await client.publish("hotcold:{test}:policy-changed", "3")
            await wait_for(lambda: "refused" in caplog.text, timeout_s=10, message="a log line")
    finally:
        await client.aclose()
    assert await policy_version(server) == 0  # not applied
    _, _, document = await admin(server.url)
    assert document["threshold"]["bounds"] == [2.0, 17.0]
    samples = await scrape(server.url)
    refused = (
        metric(samples, "hotcold_fleet_documents_refused_total")
        + document["policy"]["refused_documents"]
    )
    assert refused >= 1, reason


async def test_bad_changes_are_refused_with_the_key_named(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    server = await router([cloud.url])  # standalone: the same API, this router only
    cases = [
        ({"changes": {"threshold": {"min": 9, "max": 3}}}, "min <= max"),
        ({"changes": {"threshold": {"initial": 3}}}, "threshold.initial"),
        ({"changes": {"cache": {"ttl_s": "soon"}}}, "cache.ttl_s"),
        ({"changes": {}}, "changes"),
        ({"changes": {"pins": [{"route": "warm"}]}}, "pins.0.route"),
        ({"changes": {"threshold": {"max": 3}}, "by": ""}, "by"),
        ({"chnages": {}}, "chnages"),
    ]
    for body, named in cases:
        status, _, error = await admin(server.url, "PUT", json=body)
        assert status == 422, (body, error)
        assert named in error["error"]["message"], (named, error)
    assert await policy_version(server) == 0
    status, headers, _ = await admin(
        server.url, "PUT", headers={"If-Match": '"4"'}, json={"changes": {"threshold": {"max": 3}}}
    )
    assert status == 409
    status, headers, document = await admin(
        server.url, "PUT", json={"changes": {"pins": [{"route": "cold", "model": "big-*"}]}}
    )
    assert status == 200 and headers["ETag"] == '"1"'
    assert document["policy"]["sources"]["pins"]["layer"] == "fleet"


async def test_a_dead_router_leaves_the_fleet_after_its_ttl(
    stub: StubFactory,
    router: RouterFactory,
    redis_servers: Redis,
    processes: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    redis = await redis_servers().started()
    cloud = await stub()
    first = await router([cloud.url], fleet=fleet(redis, "a"))
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"fleet": {**fleet(redis, "doomed"), "router_id": None}}))
    doomed = processes(
        "router", "--config", str(config), "--cloud-endpoint", cloud.url, "--router-id", "doomed"
    )
    await doomed.started()

    async def members() -> list[str]:
        _, _, status = await admin(first.url, path="/admin/fleet")
        return sorted(member["router_id"] for member in status["members"])

    await wait_for(lambda: _equals(members(), ["a", "doomed"]), timeout_s=10, message="joined")
    # "After its TTL, not before", judged by Redis's own clock (the one the expiry uses), so a
    # busy machine cannot make it flaky: while the member is listed, note its last heartbeat
    # (the score Redis gave it); once it is gone, Redis's time must be at least a TTL past it.
    # A heartbeat we did not see only makes the noted one older: never a false failure.
    client = redis.client()
    key = "hotcold:{test}:members"
    last_beat_ms: float | None = None

    async def expired() -> bool:
        nonlocal last_beat_ms
        score = await client.zscore(key, "doomed")
        if score is not None:
            last_beat_ms = score
            return False
        return True

    async def listed() -> bool:
        return not await expired()

    try:
        await wait_for(listed, timeout_s=10, message="its heartbeat in Redis")  # noted
        doomed.kill()  # no goodbye: only the heartbeat's expiry can remove it
        await wait_for(expired, timeout_s=10, message="the dead member to expire")
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    assert last_beat_ms is not None
    assert seconds * 1000 + micros / 1000 - last_beat_ms >= FAST_FLEET["member_ttl_s"] * 1000
    assert await members() == ["a"]


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
