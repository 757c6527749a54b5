"""The hot path through HTTP: recurring requests turn hot and are served from the cache,
one-offs stay cold, tenants are kept apart, the edge node is used and degraded around."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from cloud_stub.handlers import STATE
from tests.conftest import RouterFactory, StubFactory
from tests.support import metric, scrape, wait_for

# The edge as it was before it had to earn its traffic: no gray release, no latency budget
# (those are tested in tests/test_release.py); these tests are about the hot path itself.
UNJUDGED = {"release": {"enabled": False}, "latency": {"cost_first": True}}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 8,
        **extra,
    }


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(
        url + "/v1/chat/completions", json=body, headers=headers or {}
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def test_recurring_request_turns_hot_and_is_served_from_cache(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud, edge = await stub(), await stub()
    front = await router([cloud.url], edge={"endpoints": [edge.url]}, cache={"entries": 64})
    routes = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            status, headers, _ = await post(session, front.url, chat("sensor 7 status?"))
            assert status == 200
            routes.append((headers["X-Route"], headers["X-Cache"], headers["X-Served-By"]))
    # First sighting: cold, the cloud answers and the answer is offered to the cache. Then it
    # is hot and served from the cache: the edge node never had to compute it.
    assert routes[0] == ("cold", "miss", "cloud")
    assert routes[1:] == [("hot", "hit", "cache")] * 3


async def test_hot_miss_is_computed_at_the_edge(stub: StubFactory, router: RouterFactory) -> None:
    """Not cacheable (sampled) but recurring: hot after its first sighting, so the edge node
    computes it."""
    cloud, edge = await stub(), await stub()
    front = await router(
        [cloud.url], edge={"endpoints": [edge.url], **UNJUDGED}, cache={"entries": 64}
    )
    served = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            _, headers, _ = await post(session, front.url, chat("door 4 open?", temperature=0.6))
            served.append((headers["X-Route"], headers["X-Served-By"], headers["X-Cache"]))
    assert served == [
        ("cold", "cloud", "bypass"),
        ("hot", "edge", "bypass"),
        ("hot", "edge", "bypass"),
    ]


async def test_one_offs_stay_cold_and_never_evict_the_hot_set(
    stub: StubFactory, router: RouterFactory
) -> None:
    cloud, edge = await stub(), await stub()
    front = await router([cloud.url], edge={"endpoints": [edge.url]}, cache={"entries": 8})
    hot = [chat(f"hot question {i}") for i in range(4)]
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # warm: each hot key seen three times
            for body in hot:
                await post(session, front.url, body)
        for index in range(200):
            status, headers, _ = await post(session, front.url, chat(f"one-off {index}"))
            assert status == 200
            assert headers["X-Route"] == "cold" and headers["X-Served-By"] == "cloud"
        for body in hot:
            _, headers, _ = await post(session, front.url, body)
            assert (headers["X-Route"], headers["X-Served-By"]) == ("hot", "cache")


async def test_no_cross_tenant_cache_hits(stub: StubFactory, router: RouterFactory) -> None:
    """Tenant B asks exactly what tenant A has cached: B's first lookup misses (A's entry is
    not B's), B's own answer is cached from then on, and A's entry keeps serving A."""
    cloud = await stub()
    front = await router([cloud.url], cache={"entries": 64})
    body = chat("what is my account balance?")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            await post(session, front.url, body, {"X-Tenant": "acme"})
        _, headers, _ = await post(session, front.url, body, {"X-Tenant": "acme"})
        assert headers["X-Cache"] == "hit"
        globex = [await post(session, front.url, body, {"X-Tenant": "globex"}) for _ in range(2)]
        assert [h["X-Cache"] for _, h, _ in globex] == ["miss", "hit"]
        assert globex[0][1]["X-Served-By"] == "cloud"
        _, headers, _ = await post(session, front.url, body, {"X-Tenant": "acme"})
        assert headers["X-Cache"] == "hit"
        status, headers, _ = await post(session, front.url, body, {"X-Tenant": "bad tenant!"})
        assert status == 400
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_cache_entries") == 2  # one entry per tenant


async def test_sampled_and_opted_out_requests_bypass_the_cache(
    stub: StubFactory, router: RouterFactory
) -> None:
    front = await router([(await stub()).url], cache={"entries": 64})
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            _, headers, _ = await post(session, front.url, chat("roll a die", temperature=0.9))
            assert headers["X-Cache"] == "bypass" and headers["X-Served-By"] != "cache"
        for _ in range(3):
            await post(session, front.url, chat("cached unless asked"))
        _, headers, _ = await post(
            session, front.url, chat("cached unless asked"), {"Cache-Control": "no-cache"}
        )
        assert headers["X-Cache"] == "bypass" and headers["X-Served-By"] != "cache"
        _, headers, _ = await post(session, front.url, chat("cached unless asked"))
        assert headers["X-Cache"] == "hit"
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_requests_total", cache="bypass") >= 5


async def test_streamed_request_is_cached_and_replayed_as_sse(
    stub: StubFactory, router: RouterFactory
) -> None:
    front = await router([(await stub()).url], cache={"entries": 64})
    body = chat("stream me", stream=True)
    texts = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(front.url + "/v1/chat/completions", json=body) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                raw = await response.read()
                source = response.headers["X-Served-By"]
            events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            chunks = [orjson.loads(e) for e in events[:-1]]
            assert all(c.get("choices") for c in chunks), "usage chunk leaked without asking"
            texts.append(
                ("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks), source)
            )
        # the same request, not streamed, is a hit on the same entry
        _, headers, plain = await post(session, front.url, chat("stream me"))
    assert texts[2][1] == "cache"
    assert len({text for text, _ in texts}) == 1
    assert headers["X-Cache"] == "hit"
    assert orjson.loads(plain)["choices"][0]["message"]["content"] == texts[0][0]


async def test_concurrent_identical_misses_are_coalesced(
    stub: StubFactory, router: RouterFactory
) -> None:
    """Twenty identical misses at once: one goes to the cloud, the other nineteen wait for its
    answer. The cloud's only slot is held until all nineteen have joined the first, so the
    overlap is made, not hoped for from timing; then exactly one request reaches the cloud."""
    cloud = await stub(max_concurrency=1)
    front = await router([cloud.url], cache={"entries": 64})
    slot = cloud.app[STATE].admission
    body = chat("same question, many devices")
    await slot.acquire()  # the cloud is busy: the first miss waits in its queue
    held = True
    try:
        async with aiohttp.ClientSession() as session:
            requests = [asyncio.create_task(post(session, front.url, body)) for _ in range(20)]

            async def all_joined() -> bool:
                samples = await scrape(front.url)
                return (
                    slot.waiting == 1 and metric(samples, "hotcold_coalesced_requests_total") == 19
                )

            await wait_for(all_joined, timeout_s=10, message="one miss queued, 19 joined to it")
            slot.release()
            held = False
            results = await asyncio.gather(*requests)
    finally:
        if held:
            slot.release()
    assert [status for status, _, _ in results] == [200] * 20
    assert len({payload for _, _, payload in results}) == 1
    coalesced = sum(1 for _, headers, _ in results if headers.get("X-Coalesced") == "true")
    assert coalesced == 19
    served = cloud.app[STATE].metrics.requests.labels("/v1/chat/completions", "200")
    assert served._value.get() == 1


async def test_hot_requests_go_to_the_cloud_when_the_edge_is_down(
    stub: StubFactory, router: RouterFactory, processes: Any
) -> None:
    cloud = await stub()
    dead_edge = processes("cloud_stub")  # never started: connection refused
    front = await router([cloud.url], edge={"endpoints": [dead_edge.url]}, cache={"entries": 64})
    async with aiohttp.ClientSession() as session:
        for index in range(6):
            body = chat(f"hot {index % 2}", temperature=0.5)  # recurring but not cacheable
            status, headers, _ = await post(session, front.url, body)
            assert status == 200
            assert headers["X-Served-By"] == "cloud"
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_edge_fallbacks_total") >= 1
    assert metric(samples, "hotcold_requests_total", route="hot", served_by="cloud") >= 2


async def test_admin_policy_shows_threshold_and_reason(
    stub: StubFactory, router: RouterFactory
) -> None:
    token = "admin-secret-token-123"
    front = await router([(await stub()).url], admin={"token": token})
    async with aiohttp.ClientSession() as session:
        async with session.get(front.url + "/admin/policy") as response:
            assert response.status == 401
        async with session.get(
            front.url + "/admin/policy", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
            document = await response.json()
    assert document["threshold"]["value"] >= 2
    assert document["threshold"]["reason"]
    assert document["cache"]["policy"]


async def test_threshold_rises_when_a_real_edge_is_overloaded(
    stub: StubFactory, router: RouterFactory
) -> None:
    """A real slow stub as the edge (one slot, 40 ms a request: K = 25 req/s) offered about
    three times that in recurring hot traffic: the threshold rises and most of it goes to the
    cloud; when the load stops it falls back."""
    cloud = await stub(ttft_ms=5, max_concurrency=256)
    edge = await stub(ttft_ms=40, tpot_ms=0, max_concurrency=1, max_queue=1000)
    front = await router(
        [cloud.url],
        edge={"endpoints": [edge.url], "max_inflight": 1000, **UNJUDGED},
        cache={"entries": 64},
        policy={
            "capacity": {
                "queue_delay_slo_ms": 100,
                "control_interval_s": 0.25,
                "lower_factor": 0.8,
            },
            "threshold": {"initial": 2.0},
        },
    )
    admin = f"{front.url}/admin/policy"

    async def threshold() -> float:
        async with aiohttp.ClientSession() as session, session.get(admin) as response:
            return float((await response.json())["threshold"]["value"])

    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = chat(f"telemetry {(index * 7 + n) % 12}", temperature=0.5)  # recurring
            await post(session, front.url, body)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        clients = [asyncio.create_task(client(session, i)) for i in range(8)]
        await wait_for(lambda: _above(threshold, 4.0), 20, message="the threshold to rise")
        stop.set()
        await asyncio.gather(*clients)
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_requests_total", route="cold") > 0
    await wait_for(lambda: _below(threshold, 2.5), 20, message="the threshold to fall back")


async def _above(value: Any, bound: float) -> bool:
    return await value() > bound


async def _below(value: Any, bound: float) -> bool:
    return await value() < bound


async def test_cache_hit_in_msgpack_and_its_tokens_are_counted(
    stub: StubFactory, router: RouterFactory
) -> None:
    """The cache keeps only the answer's JSON bytes; a msgpack client still gets the same
    document from a hit, and the hit's tokens are counted as served by the cache."""
    import msgpack

    cloud = await stub()
    front = await router([cloud.url])
    async with aiohttp.ClientSession() as session:
        status, headers, first = await post(session, front.url, chat("msgpack me"))
        assert status == 200 and headers["X-Cache"] == "miss"
        async with session.post(
            front.url + "/v1/chat/completions",
            json=chat("msgpack me"),
            headers={"Accept": "application/msgpack"},
        ) as response:
            assert response.headers["X-Cache"] == "hit"
            assert response.content_type == "application/msgpack"
            document = msgpack.unpackb(await response.read())
    assert document == orjson.loads(first)
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_tokens_total", served_by="cache") > 0
