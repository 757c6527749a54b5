"""Tenants kept apart and held to their limits; request limits and load shedding."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_stub.handlers import STATE
from router.config import TenantLimits, TenantsConfig
from router.tenants import TenantLimiter, key_digest
from tests.conftest import RouterFactory, StubFactory
from tests.support import metric, scrape, wait_for

KEY_A, KEY_B = "hc_tenant-a-secret-key-000000000001", "hc_tenant-b-secret-key-000000000002"
KEYS = {
    "api_keys": [
        {"tenant": "a", "sha256": key_digest(KEY_A)},
        {"tenant": "b", "sha256": key_digest(KEY_B)},
    ]
}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0, **extra}  # fmt: skip


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, **headers: str
) -> tuple[int, Any, dict[str, str]]:
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_tenant_b_never_reads_tenant_a_cached_answer(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    server = await router([cloud.url], tenants=KEYS)
    secret = chat("tenant a's private question")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # A's answer is cached and served to A from the cache
            status, _, headers = await post(session, server.url, secret, **bearer(KEY_A))
            assert status == 200
        assert headers["X-Cache"] == "hit"
        # B asks the identical request, also claiming to be A through X-Tenant: a miss.
        status, _, headers = await post(
            session, server.url, secret, **bearer(KEY_B), **{"X-Tenant": "a"}
        )
        assert status == 200 and headers["X-Cache"] == "miss", headers
        assert headers["X-Served-By"] == "cloud"


async def test_missing_or_unknown_keys_are_refused_in_the_openai_shape(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    server = await router([cloud.url], tenants=KEYS, admin={"token": "admin-token-123456"})
    async with aiohttp.ClientSession() as session:
        for headers in ({}, bearer("hc_not-a-key"), {"Authorization": "Basic abc"}):
            status, body, _ = await post(session, server.url, chat("hi"), **headers)
            assert status == 401, body
            assert body["error"]["type"] == "authentication_error"
        async with session.get(server.url + "/admin/policy", headers=bearer(KEY_A)) as r:
            assert r.status == 401  # a client key is not the admin token
    samples = await scrape(server.url, "admin-token-123456")
    assert metric(samples, "hotcold_refused_requests_total", code="invalid_api_key") == 3


async def test_rate_limit_answers_429_with_retry_after_and_spares_other_tenants(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    limits = {**KEYS, "overrides": {"a": {"requests_per_s": 0.5, "burst": 3}}}
    server = await router([cloud.url], tenants=limits)
    async with aiohttp.ClientSession() as session:
        results = [
            await post(session, server.url, chat(f"q{i}"), **bearer(KEY_A)) for i in range(5)
        ]
        statuses = [status for status, _, _ in results]
        assert statuses == [200, 200, 200, 429, 429]
        _, body, headers = results[3]
        assert body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
        status, _, _ = await post(session, server.url, chat("b's"), **bearer(KEY_B))
        assert status == 200


async def test_token_quota_counts_upstream_tokens_not_cache_hits(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud = await stub()
    limits = {**KEYS, "overrides": {"a": {"tokens_per_min": 30}}}
    server = await router([cloud.url], tenants=limits)
    async with aiohttp.ClientSession() as session:
        # Each answer from the stub uses ~8 completion + prompt tokens; a few exhaust 30.
        statuses = []
        for i in range(6):
            status, body, _ = await post(session, server.url, chat(f"q{i}"), **bearer(KEY_A))
            statuses.append(status)
            if status == 429:
                assert body["error"]["code"] == "quota_exceeded"
                break
        assert statuses[-1] == 429 and statuses[0] == 200


async def test_limits_max_tokens_prompt_length_and_shedding(
    stub: StubFactory, router: RouterFactory
) -> None:
    """Past max_concurrent_requests the router sheds at once with 503 overloaded. The cloud's
    only slot is held, so three requests are surely in flight when five more arrive: the overlap
    is made, not hoped for from timing."""
    cloud = await stub(max_concurrency=1)
    server = await router(
        [cloud.url],
        server={"max_tokens_ceiling": 64, "max_prompt_chars": 1000, "max_concurrent_requests": 3},
    )
    slot = cloud.app[STATE].admission
    async with aiohttp.ClientSession() as session:
        status, body, _ = await post(session, server.url, chat("x", max_tokens=65))
        assert status == 400 and body["error"]["code"] == "max_tokens_too_large"
        status, body, _ = await post(session, server.url, chat("y" * 1001))
        assert status == 400 and body["error"]["code"] == "context_length_exceeded"
        await slot.acquire()  # the cloud is busy: requests wait in its queue
        held = True
        try:
            admitted = [
                asyncio.create_task(post(session, server.url, chat(f"slow {i}", temperature=1)))
                for i in range(3)
            ]
            await wait_for(lambda: slot.waiting == 3, timeout_s=10, message="3 in flight")
            shed = await asyncio.gather(
                *(post(session, server.url, chat(f"more {i}", temperature=1)) for i in range(5))
            )
            slot.release()
            held = False
            served = await asyncio.gather(*admitted)
        finally:
            if held:
                slot.release()
    assert [status for status, _, _ in served] == [200] * 3
    assert [status for status, _, _ in shed] == [503] * 5, shed
    assert all(r[1]["error"]["code"] == "overloaded" and r[2]["Retry-After"] == "1" for r in shed)


async def test_slow_client_body_gets_408(stub: StubFactory, router: RouterFactory) -> None:
    cloud = await stub()
    server = await router([cloud.url], server={"body_timeout_s": 0.3})
    host, port = "127.0.0.1", server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":'
    )
    await writer.drain()  # ... and never the rest
    status_line = await asyncio.wait_for(reader.readline(), timeout=30)  # a hang fails
    writer.close()
    assert b" 408 " in status_line, status_line


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["take", "release"]), st.sampled_from(["a", "b", "c"])),
        max_size=200,
    )
)
def test_edge_slots_never_overbooked_and_caps_hold(ops: list[tuple[str, str]]) -> None:
    config = TenantsConfig(
        overrides={"c": TenantLimits(edge_share=0.25), "b": TenantLimits(edge_weight=3.0)}
    )
    limiter = TenantLimiter(config, edge_slots=8)
    held = {"a": 0, "b": 0, "c": 0}
    for op, tenant in ops:
        if op == "take":
            if limiter.take_edge_slot(tenant, 0.0):
                held[tenant] += 1
        elif held[tenant]:
            limiter.release_edge_slot(tenant)
            held[tenant] -= 1
        assert limiter.edge_inflight == sum(held.values()) <= 8
        assert held["c"] <= 2  # edge_share 0.25 of 8


def test_contended_edge_is_shared_by_weight() -> None:
    """A holds the whole edge; as slots free up under contention, B (weight 3) gets 3 of
    every 4 until the split is 6/2."""
    config = TenantsConfig(overrides={"b": TenantLimits(edge_weight=3.0)})
    limiter = TenantLimiter(config, edge_slots=8)
    for _ in range(8):
        assert limiter.take_edge_slot("a", 0.0)
    for _ in range(8):  # churn: one of A's finishes, both try for the free slot, B first
        limiter.release_edge_slot("a")
        for tenant in ("b", "a"):
            limiter.take_edge_slot(tenant, 0.0)
    snapshot = limiter.snapshot()
    assert snapshot["b"]["edge_inflight"] == 6 and snapshot["a"]["edge_inflight"] == 2
