"""The fleet on every kind of Redis an operator runs: AUTH, TLS (rediss://), Sentinel and
Cluster, each a real redis-server started here. A wrong password never stops serving."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hotcold.redis_process import RedisProcess, TlsFiles
from hotcold.serving import free_port
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
