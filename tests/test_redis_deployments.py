"""The fleet on every kind of Redis an operator runs: AUTH, TLS (rediss://), Sentinel and
Cluster, each a real redis-server started here. A wrong password never stops serving."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hotcold.redis_process import RedisProcess, SentinelProcess, TlsFiles
from hotcold.serving import free_port
from router.redis_connect import close, connect
from tests.conftest import RouterFactory, StubFactory
from tests.support import wait_for

Redis = Callable[..., RedisProcess]


async def fleet_works(router: RouterFactory, cloud: str, url: str) -> None:
    """A router on ``url`` joins, and a policy change is stored and applied."""
    fleet = {"redis_url": url, "name": "deploy", "router_id": "r1", "heartbeat_interval_s": 0.2}
    server = await router([cloud], fleet={**fleet, "member_ttl_s": 1.0})
    async with aiohttp.ClientSession() as session:

        async def joined() -> bool:
            async with session.get(server.url + "/admin/fleet") as response:
                status = await response.json()
            return bool(status["state"] == "connected" and len(status["members"]) == 1)

        await wait_for(joined, timeout_s=10, message=f"the router to join over {url}")
        change = {"changes": {"threshold": {"max": 11}}, "by": "deploy-test"}
        async with session.put(server.url + "/admin/policy", json=change) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["policy"]["version"] == 1


async def test_auth(stub: StubFactory, router: RouterFactory, redis_servers: Redis) -> None:
    redis = await redis_servers(password="fleet-secret-1").started()
    await fleet_works(router, (await stub()).url, redis.url)


async def test_wrong_password_reports_unreachable_and_keeps_serving(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers(password="fleet-secret-1").started()
    cloud = await stub()
    wrong = f"redis://:not-it@127.0.0.1:{redis.port}"
    server = await router([cloud.url], fleet={"redis_url": wrong, "name": "deploy"})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with aiohttp.ClientSession() as session:

        async def reported() -> bool:
            async with session.get(server.url + "/readyz") as response:
                ready = await response.json()
            return response.status == 200 and ready["fleet"]["state"] == "unreachable"

        await wait_for(reported, timeout_s=10, message="unreachable on /readyz")
        async with session.post(server.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
        async with session.get(server.url + "/admin/fleet") as response:
            status = await response.json()
        assert "not-it" not in status["redis"] and "***" in status["redis"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for a test CA")
async def test_tls(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis, tmp_path: Path
) -> None:
    redis = await redis_servers(tls=TlsFiles.self_signed(tmp_path)).started()
    assert redis.url.startswith("rediss://")
    await fleet_works(router, (await stub()).url, redis.url)


@pytest.fixture
async def sentinel(redis_servers: Redis, tmp_path: Path) -> AsyncIterator[str]:
    """A master and one Sentinel watching it; yields the sentinel URL."""
    master = await redis_servers().started()
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor hotcold 127.0.0.1 {master.port} 1\n"
    )
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [master.binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_sentinel(port)
        yield f"redis+sentinel://127.0.0.1:{port}/hotcold"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _wait_sentinel(port: int) -> None:
    from redis.asyncio import Redis as Client

    client = Client(host="127.0.0.1", port=port)

    async def knows_the_master() -> bool:
        try:
            command = ("SENTINEL", "get-master-addr-by-name", "hotcold")
            return bool(await client.execute_command(*command))
        except Exception:  # not listening yet, or still loading its configuration
            return False

    try:
        await wait_for(knows_the_master, timeout_s=10, interval_s=0.05, message="the sentinel")
    finally:
        await client.aclose()


async def test_sentinel(stub: StubFactory, router: RouterFactory, sentinel: str) -> None:
    await fleet_works(router, (await stub()).url, sentinel)


def _connected(client: Any) -> int:
    """How many of a redis-py client's pooled connections are open."""
    pool = client.connection_pool
    return sum(c.is_connected for c in [*pool._available_connections, *pool._in_use_connections])


async def test_closing_a_sentinel_client_closes_its_connections_to_the_sentinels(
    sentinel: str,
) -> None:
    """The master is found by asking the Sentinels, on connections the ``Sentinel``'s own
    clients hold: closing the master client alone left them open (found as unclosed sockets
    collected during later tests)."""
    client = connect(sentinel, 2.0)
    assert await client.ping()
    sentinels = client.connection_pool.sentinel_manager.sentinels  # type: ignore[union-attr]
    assert sum(map(_connected, sentinels)) > 0
    await close(client)
    assert _connected(client) == 0
    assert sum(map(_connected, sentinels)) == 0


async def test_cluster(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis, tmp_path: Path
) -> None:
    """A one-node Redis Cluster owning every slot: the fleet's keys share one slot."""
    # The bus port defaults to port + 10000, which may be over 65535 or taken: pick one.
    cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    cluster_args += ["--cluster-port", str(free_port())]
    node = redis_servers(extra_args=tuple(cluster_args), workdir=tmp_path)
    await node.started()
    client = node.client()
    try:
        await client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)

        async def cluster_ok() -> bool:
            info: Any = await client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text

        await wait_for(cluster_ok, timeout_s=10, message="cluster_state:ok")
    finally:
        await client.aclose()
    await fleet_works(router, (await stub()).url, f"redis+cluster://127.0.0.1:{node.port}")


@pytest.fixture
async def sentinel_group(redis_servers: Redis) -> AsyncIterator[SentinelGroup]:
    """One master, one replica and three Sentinels (quorum 2), all real redis-server
    processes on free loopback ports, tuned to fail over within a second or two."""
    master = await redis_servers().started()
    replica = redis_servers(extra_args=("--replicaof", "127.0.0.1", str(master.port)))
    await replica.started()
    sentinels = [SentinelProcess(master.port, down_after_ms=300) for _ in range(3)]
    try:
        for sentinel in sentinels:
            sentinel.start()

        async def ready() -> bool:
            return all([await s.knows(sentinels=2, replicas=1) for s in sentinels])

        # Sentinels find each other through the master's hello channel (every 2 s).
        await wait_for(ready, timeout_s=60, interval_s=0.1, message="sentinels know each other")
        yield SentinelGroup(master, replica, sentinels)
    finally:
        for sentinel in sentinels:
            sentinel.stop()


class SentinelGroup:
    def __init__(
        self, master: RedisProcess, replica: RedisProcess, sentinels: list[SentinelProcess]
    ) -> None:
        self.master = master
        self.replica = replica
        self.sentinels = sentinels

    @property
    def url(self) -> str:
        addresses = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{addresses}/hotcold"

    async def all_report(self, port: int) -> bool:
        return all([await s.master_port_now() == port for s in self.sentinels])


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.json()


def patch(threshold_max: int) -> dict[str, Any]:
    """A PATCH /admin/policy of the threshold's maximum (a JSON merge patch)."""
    return {
        "data": json.dumps({"threshold": {"max": threshold_max}}),
        "headers": {"Content-Type": "application/merge-patch+json"},
    }


async def test_sentinel_failover_under_traffic_loses_no_request_nor_policy_nor_keys(
    stub: StubFactory, router: RouterFactory, sentinel_group: SentinelGroup
) -> None:
    group = sentinel_group
    cloud = await stub()
    fleet = {
        "redis_url": group.url,
        "name": "failover",
        "heartbeat_interval_s": 0.2,
        "member_ttl_s": 2.0,
        "poll_interval_s": 0.5,
        "redis_timeout_s": 0.3,
        "limits_flush_interval_s": 0.2,
    }
    # A limit no client reaches: every request asks Redis (the fleet-wide limit) on its way.
    tenants = {"default": {"requests_per_s": 100_000}}
    first = await router([cloud.url], fleet={**fleet, "router_id": "a"}, tenants=tenants)
    second = await router([cloud.url], fleet={**fleet, "router_id": "b"}, tenants=tenants)
    routers = (first, second)
    async with aiohttp.ClientSession() as session:

        async def fleet_ok() -> bool:
            for server in routers:
                _, status = await _json(session, "GET", server.url + "/admin/fleet")
                if status["state"] != "connected" or len(status["members"]) != 2:
                    return False
                if status["limits"]["mode"] != "fleet":
                    return False
            return True

        await wait_for(fleet_ok, timeout_s=30, message="both routers in the fleet")
        status, _ = await _json(session, "PATCH", first.url + "/admin/policy", **patch(11))
        assert status == 200
        status, made = await _json(session, "POST", first.url + "/admin/keys", json={"tenant": "t"})
        assert status == 201
        key = made["key"]
        auth = {"Authorization": f"Bearer {key}"}

        # Both writes reached the replica before the master dies.
        replica = group.replica.client()
        try:

            async def replicated() -> bool:
                keys = await replica.hlen("hotcold:{failover}:api-keys")
                version = await replica.hget("hotcold:{failover}:policy", "version")
                return bool(keys == 1 and version == b"1")

            await wait_for(replicated, timeout_s=10, message="the replica has the writes")
        finally:
            await replica.aclose()

        statuses: Counter[int] = Counter()
        stop = asyncio.Event()
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

        async def traffic() -> None:
            index = 0
            while not stop.is_set():
                server = routers[index % 2]
                index += 1
                try:
                    async with session.post(
                        server.url + "/v1/chat/completions", json=body, headers=auth
                    ) as response:
                        await response.read()
                        statuses[response.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1
                await asyncio.sleep(0.005)  # pacing of the load, not a wait for a condition

        load = asyncio.create_task(traffic())
        try:
            await wait_for(lambda: sum(statuses.values()) >= 50, message="traffic flowing")
            group.master.kill()
            await wait_for(
                lambda: group.all_report(group.replica.port),
                timeout_s=60,
                interval_s=0.1,
                message="the sentinels promote the replica",
            )

            # The routers follow the new master: a policy change is stored again ...
            async def changed() -> bool:
                url = first.url + "/admin/policy"
                status, _ = await _json(session, "PATCH", url, **patch(12))
                return status == 200

            await wait_for(changed, timeout_s=30, interval_s=0.2, message="a change after")
            # ... reaches the other router, and the limits are fleet-wide again on both.
            await wait_for(fleet_ok, timeout_s=30, message="both routers back on the fleet")

            async def second_has_it() -> bool:
                _, policy = await _json(session, "GET", second.url + "/admin/policy")
                return bool(policy["policy"]["values"]["threshold"]["max"] == 12)

            await wait_for(second_has_it, timeout_s=10, message="the change on router b")
            served = sum(statuses.values())
            await wait_for(lambda: sum(statuses.values()) >= served + 50, message="more traffic")
        finally:
            stop.set()
            await load
        assert set(statuses) == {200}, statuses  # no client request failed

        # The policy and the key survived the failover, on both routers.
        for server in routers:
            _, policy = await _json(session, "GET", server.url + "/admin/policy")
            assert policy["policy"]["version"] == 2
            _, listing = await _json(session, "GET", server.url + "/admin/keys")
            assert [entry["id"] for entry in listing["keys"]] == [made["id"]]
            async with session.post(
                server.url + "/v1/chat/completions", json=body, headers=auth
            ) as response:
                assert response.status == 200
