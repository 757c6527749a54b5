"""Tenant limits for the whole fleet over a real Redis: two routers share one tenant's 10
requests/s; with Redis killed each falls back to its own buckets and no request fails.

Time is a fake clock shared by both routers (the limits' script takes its time instead of
Redis's), so the schedule of requests is exact: no wall-clock rates, no sleeps."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from hotcold.redis_process import RedisProcess
from hotcold.serving import Server
from hotcold.wire import RateLimited
from router.clock import FakeClock
from router.config import FleetConfig, TenantLimits, TenantsConfig
from router.fleet_limits import US, FleetLimits, entry_args, request_burst
from router.fleet_link import RedisLink
from router.tenants import TenantLimiter
from tests.conftest import RouterFactory, StubFactory
from tests.support import metric, scrape, wait_for

Redis = Callable[..., RedisProcess]
RATE = 10.0
LIMITS = {"default": {"requests_per_s": RATE}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def fleet(redis: RedisProcess, router_id: str) -> dict[str, Any]:
    return {
        "redis_url": redis.url,
        "name": "limits",
        "router_id": router_id,
        "heartbeat_interval_s": 0.2,
        "member_ttl_s": 1.0,
        "redis_timeout_s": 0.3,
        "limits_flush_interval_s": 0.2,
        # A request on a busy CI machine may wait past the default 50 ms and be judged by
        # its router's own buckets (by design); this test counts the fleet's decisions.
        "limits_timeout_s": 2.0,
    }


async def _limits_mode(session: aiohttp.ClientSession, server: Server) -> str | None:
    async with session.get(server.url + "/admin/fleet") as response:
        status = await response.json()
    limits = status.get("limits") or {}
    mode: str | None = limits.get("mode")
    return mode


async def _schedule(
    session: aiohttp.ClientSession,
    routers: list[Server],
    clock: FakeClock,
    rate: float,
    seconds: float,
) -> tuple[Counter[int], Counter[tuple[int, int]]]:
    """``rate`` requests/s for ``seconds`` of the fake clock, round-robin over the routers;
    the statuses overall and per router."""
    statuses: Counter[int] = Counter()
    per_router: Counter[tuple[int, int]] = Counter()
    for index in range(round(rate * seconds)):
        which = index % len(routers)
        async with session.post(
            routers[which].url + "/v1/chat/completions",
            json=CHAT,
            headers={"X-Tenant": "acme"},
        ) as response:
            await response.read()
            statuses[response.status] += 1
            per_router[(which, response.status)] += 1
        clock.advance(1 / rate)
    return statuses, per_router


async def test_two_routers_admit_one_fleet_limit_and_fall_back_when_redis_dies(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    redis = await redis_servers().started()
    cloud = await stub()
    clock = FakeClock(1000.0)
    first = await router([cloud.url], clock, fleet=fleet(redis, "a"), tenants=LIMITS)
    second = await router([cloud.url], clock, fleet=fleet(redis, "b"), tenants=LIMITS)
    burst = request_burst(TenantLimits(requests_per_s=RATE))
    seconds = 10.0
    async with aiohttp.ClientSession() as session:
        # 30 requests/s spread over both routers, 10 s: the fleet admits one tenant's 10/s.
        statuses, _ = await _schedule(session, [first, second], clock, 3 * RATE, seconds)
        assert set(statuses) <= {200, 429}, statuses
        # The documented bound: burst + rate x t fleet-wide (one router alone would admit
        # as much; two without the fleet, twice that).
        assert RATE * seconds <= statuses[200] <= burst + RATE * seconds, statuses
        for server in (first, second):
            assert await _limits_mode(session, server) == "fleet"

        redis.kill()
        # Redis is gone: each router judges by its own buckets at once; nothing fails.
        statuses, per_router = await _schedule(session, [first, second], clock, 3 * RATE, seconds)
        assert set(statuses) <= {200, 429}, statuses
        for which in (0, 1):
            admitted = per_router[(which, 200)]
            assert RATE * seconds <= admitted <= burst + RATE * seconds, per_router
        for server in (first, second):
            assert await _limits_mode(session, server) == "local"
            samples = await scrape(server.url)
            assert metric(samples, "hotcold_fleet_limits_mode", mode="local") == 1
            assert metric(samples, "hotcold_fleet_limits_mode", mode="fleet") == 0
            async with session.get(server.url + "/readyz") as response:
                assert (await response.json())["fleet"]["limits"]["mode"] == "local"

        # Redis back (empty): both routers go back to the fleet's limits.
        redis.start()
        await redis.wait_ready()

        async def both_fleet() -> bool:
            modes = [await _limits_mode(session, server) for server in (first, second)]
            return modes == ["fleet", "fleet"]

        await wait_for(both_fleet, timeout_s=10, message="fleet-wide limits again")
        clock.advance(10.0)  # every bucket full again
        statuses, _ = await _schedule(session, [first, second], clock, 3 * RATE, seconds)
        assert RATE * seconds <= statuses[200] <= burst + RATE * seconds, statuses


def test_entry_args_follow_the_limits() -> None:
    limits = TenantLimits(requests_per_s=4, burst=3, tokens_per_min=600)
    request_iv, request_tol, token_iv, token_tol, debit = entry_args(limits, 5)
    assert (request_iv, request_tol, debit) == (US // 4, 3 * (US // 4), 5)
    assert (token_iv, token_tol) == (60 * US // 600, 60 * US)
    assert entry_args(TenantLimits(), 0) == [0, 0, 0, 0, 0]


async def test_a_burst_shares_calls_and_admits_exactly_the_burst(redis_servers: Redis) -> None:
    """Fifty admissions at one instant of a tenant with burst 20: one or a few calls, and
    exactly twenty admitted (the script judges a batch's entries one after the other)."""
    redis = await redis_servers().started()
    clock = FakeClock(5.0)
    tenants = TenantsConfig(default=TenantLimits(requests_per_s=1, burst=20))
    local = TenantLimiter(tenants, 4)
    config = FleetConfig(redis_url=redis.url, name="burst", redis_timeout_s=5)
    link = RedisLink(config.model_copy(update={"limits_timeout_s": 5.0}), clock, str)
    limits = FleetLimits(link, local, local.limits_of, test_clock=clock)
    try:
        outcomes = await asyncio.gather(
            *(limits.admit("acme", clock.now()) for _ in range(50)), return_exceptions=True
        )
        admitted = [outcome for outcome in outcomes if outcome is None]
        refused = [outcome for outcome in outcomes if isinstance(outcome, RateLimited)]
        assert (len(admitted), len(refused)) == (20, 30)
        assert limits.decided == {"fleet": 50, "local": 0}
        assert limits.batches < 50
    finally:
        await link.close()


async def test_tokens_used_on_one_router_count_against_the_quota_on_the_other(
    stub: StubFactory, router: RouterFactory, redis_servers: Redis
) -> None:
    """A tokens/min quota of 5 (one answer uses more): the tokens of an answer on router a
    reach Redis with a's next flush, and router b refuses the tenant's next request."""
    redis = await redis_servers().started()
    cloud = await stub()
    clock = FakeClock(50.0)  # frozen: nothing refills during the test
    quota = {"default": {"tokens_per_min": 5}}
    first = await router([cloud.url], clock, fleet=fleet(redis, "a"), tenants=quota)
    second = await router([cloud.url], clock, fleet=fleet(redis, "b"), tenants=quota)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            first.url + "/v1/chat/completions", json=CHAT, headers={"X-Tenant": "acme"}
        ) as response:
            used = (await response.json())["usage"]["total_tokens"]
            assert response.status == 200 and used > 5

        async def flushed() -> bool:
            async with session.get(first.url + "/admin/fleet") as response:
                status = await response.json()
            return bool(status["limits"]["pending_token_debits"] == 0)

        await wait_for(flushed, timeout_s=10, message="router a's token debit sent")
        async with session.post(
            second.url + "/v1/chat/completions", json=CHAT, headers={"X-Tenant": "acme"}
        ) as response:
            document = await response.json()
            assert response.status == 429, document
            assert document["error"]["code"] == "quota_exceeded"
            assert "fleet-wide" in document["error"]["message"]
            assert int(response.headers["Retry-After"]) >= 1
