"""The cold path end to end: an OpenAI client, the router, and a pool of real stub servers."""

from __future__ import annotations

import asyncio

import aiohttp
import msgpack
import openai

from cloud_stub.handlers import STATE
from tests.conftest import RouterFactory, StubFactory
from tests.support import metric, scrape, wait_for

# Sampled (not cacheable): these tests exercise the cloud pool, not the cache.
CHAT = {"model": "m", "messages": [{"role": "user", "content": "ping"}], "temperature": 0.7}


async def test_openai_sdk_chat_and_completions_plain_and_streamed(
    stub: StubFactory, router: RouterFactory
) -> None:
    stubs = [await stub(), await stub()]
    front = await router([s.url for s in stubs])
    client = openai.AsyncOpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    try:
        chat = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            temperature=0,
        )
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens == 6

        text = await client.completions.create(model="m", prompt="hello", max_tokens=4)
        assert text.choices[0].text

        pieces = []
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        # Same deterministic request, streamed or not: the same text.
        assert "".join(pieces) == chat.choices[0].message.content

        streamed_text = []
        text_stream = await client.completions.create(
            model="m", prompt="hello", max_tokens=4, stream=True
        )
        async for chunk in text_stream:
            streamed_text.append(chunk.choices[0].text)
        assert len("".join(streamed_text)) > 0

        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert raw.headers["x-route"] == "cold"
        assert raw.headers["x-served-by"] == "cloud"
        assert raw.headers["x-cache"] == "bypass"
        assert raw.headers["x-request-id"]
    finally:
        await client.close()


async def test_msgpack_in_and_out(stub: StubFactory, router: RouterFactory) -> None:
    front = await router([(await stub()).url])
    body = msgpack.packb({**CHAT, "max_tokens": 3})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            front.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/msgpack")
        document = msgpack.unpackb(await response.read())
    assert document["object"] == "chat.completion"
    assert document["usage"]["completion_tokens"] == 3


async def test_request_id_is_echoed_when_sane(stub: StubFactory, router: RouterFactory) -> None:
    front = await router([(await stub()).url])
    async with aiohttp.ClientSession() as session:
        async with session.post(
            front.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"}
        ) as response:
            assert response.headers["X-Request-Id"] == "abc-123"
        async with session.post(
            front.url + "/v1/chat/completions",
            json=CHAT,
            headers={"X-Request-Id": "bad id\twith spaces"},
        ) as response:
            assert response.headers["X-Request-Id"] != "bad id\twith spaces"


async def test_one_stub_killed_under_50_clients_no_client_errors(
    processes, router: RouterFactory
) -> None:
    """SIGKILL one of two stub processes while 50 clients send requests: every request is
    answered; the dead stub is ejected; when it comes back it is taken back in."""
    victim = await processes("cloud_stub", "--ttft-ms", "20", "--tpot-ms", "2").started()
    survivor = await processes("cloud_stub", "--ttft-ms", "20", "--tpot-ms", "2").started()
    front = await router([victim.url, survivor.url])
    failures: list[str] = []
    answered = 0
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal answered
        while not stop.is_set():
            async with session.post(
                front.url + "/v1/chat/completions",
                json={
                    **CHAT,
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": str(index)}],
                },
            ) as response:
                await response.read()
                if response.status != 200:
                    failures.append(f"{response.status}: {await response.text()}")
                else:
                    answered += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        clients = [asyncio.create_task(client(session, i)) for i in range(50)]
        await wait_for(lambda: answered > 200, 20, message="traffic to flow")
        victim.kill()
        killed_at = answered
        await wait_for(lambda: answered > killed_at + 500, 30, message="traffic after the kill")
        samples = await scrape(front.url)
        assert metric(samples, "hotcold_upstream_up", endpoint=victim.url) == 0
        victim.start()  # same port

        async def victim_back() -> bool:
            return metric(await scrape(front.url), "hotcold_upstream_up", endpoint=victim.url) == 1

        await wait_for(victim_back, 30, message="the restarted stub to be taken back")
        served_before = metric(await scrape(victim.url), "hotcold_stub_requests_total")
        await wait_for(
            lambda: _served(victim.url, served_before + 20),
            20,
            message="the restarted stub to get traffic",
        )
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []


async def _served(url: str, at_least: float) -> bool:
    return metric(await scrape(url), "hotcold_stub_requests_total", status="200") >= at_least


async def test_all_stubs_down_answers_503_fast(router: RouterFactory, processes) -> None:
    """Refused connections fail at once: 503 with Retry-After, not a wait for the deadline
    (which would answer 504 deadline_exceeded)."""
    dead = [processes("cloud_stub"), processes("cloud_stub")]  # never started: refused
    front = await router([p.url for p in dead], server={"request_deadline_s": 5})
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.post(front.url + "/v1/chat/completions", json=CHAT) as response:
                document = await response.json()
                assert response.status == 503
                assert response.headers["Retry-After"].isdigit()
                assert response.headers["X-Served-By"] == "router"
            assert set(document["error"]) >= {"message", "type", "code"}
            assert document["error"]["code"] != "deadline_exceeded"


async def test_slow_pool_answers_504_within_deadline(
    stub: StubFactory, router: RouterFactory
) -> None:
    """The deadline answers, not the upstream: a 5 s upstream and a 0.5 s deadline give 504
    deadline_exceeded (without the deadline the stub would have answered 200)."""
    slow = await stub(ttft_ms=5000)
    front = await router([slow.url], server={"request_deadline_s": 0.5})
    async with (
        aiohttp.ClientSession() as session,
        session.post(front.url + "/v1/chat/completions", json=CHAT) as response,
    ):
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "deadline_exceeded"


async def test_injected_errors_are_retried_on_another_endpoint(
    stub: StubFactory, router: RouterFactory
) -> None:
    broken = await stub(error_rate=1.0)
    healthy = await stub()
    front = await router([broken.url, healthy.url])
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            async with session.post(front.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200


async def test_busy_stub_503_is_retried_elsewhere(stub: StubFactory, router: RouterFactory) -> None:
    """A stub with one slot and no queue refuses overflow with 503; the router sends it on.
    Its one slot is held throughout, so every request it gets is overflow (no timing needed)."""
    tiny = await stub(max_concurrency=1, max_queue=0, ttft_ms=200)
    roomy = await stub(ttft_ms=200)
    front = await router([tiny.url, roomy.url])
    slot = tiny.app[STATE].admission
    await slot.acquire()
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(front.url + "/v1/chat/completions", json=CHAT) as response:
                await response.read()
                return response.status

        try:
            statuses = await asyncio.gather(*(one() for _ in range(20)))
        finally:
            slot.release()
    assert statuses == [200] * 20
    assert metric(await scrape(tiny.url), "hotcold_stub_requests_total", status="503") >= 1


async def test_refused_connections_fail_over(stub: StubFactory, router: RouterFactory) -> None:
    flaky = await stub()
    healthy = await stub()
    front = await router([flaky.url, healthy.url])
    async with aiohttp.ClientSession() as session:
        # Refusing for longer than the test runs: no busy-machine stall can outlast the window.
        async with session.post(flaky.url + "/admin/faults", json={"refuse_for_s": 60}) as answer:
            assert answer.status == 200
        await wait_for(lambda: _refuses(flaky.url), 10, message="the stub to refuse connections")
        for _ in range(20):
            async with session.post(front.url + "/v1/chat/completions", json=CHAT) as response:
                assert response.status == 200


async def _refuses(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as answer:
            return answer.status != 200
    except aiohttp.ClientConnectorError:
        return True


async def test_stream_disconnect_frees_upstream_slot(
    stub: StubFactory, router: RouterFactory
) -> None:
    """A client that drops a stream mid-answer: the stub's slot is freed long before the
    generation would have ended, and the next request gets the slot."""
    slow = await stub(max_concurrency=1, max_queue=4, ttft_ms=5, tpot_ms=100)
    front = await router([slow.url])
    state = slow.app[STATE]
    long_stream = {**CHAT, "max_tokens": 200, "stream": True}  # 20 s if left to run
    async with aiohttp.ClientSession() as session:
        response = await session.post(front.url + "/v1/chat/completions", json=long_stream)
        assert response.status == 200
        await response.content.readuntil(b"\n\n")  # the first event has arrived
        assert state.admission.active == 1
        response.close()  # the client goes away
        await wait_for(lambda: state.admission.active == 0, 10, message="the slot to be freed")
        assert state.metrics.cancelled._value.get() >= 1
        async with session.post(
            front.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 2}
        ) as response:
            assert response.status == 200
        assert state.admission.waiting == 0  # it took the freed slot, nobody queued


async def test_nonstream_disconnect_cancels_upstream(
    stub: StubFactory, router: RouterFactory
) -> None:
    slow = await stub(max_concurrency=1, ttft_ms=20_000)
    front = await router([slow.url], server={"request_deadline_s": 60})
    state = slow.app[STATE]
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(front.url + "/v1/chat/completions", json=CHAT))
        await wait_for(lambda: state.admission.active == 1, 10, message="generation to start")
        task.cancel()
        await wait_for(lambda: state.admission.active == 0, 10, message="the slot to be freed")


async def test_metrics_and_readiness(stub: StubFactory, router: RouterFactory) -> None:
    up = await stub()
    # stale_after_s tiny: /readyz probes the endpoint instead of trusting its last answer.
    front = await router([up.url], cloud={"health": {"stale_after_s": 0.01}})
    async with aiohttp.ClientSession() as session:
        async with session.post(front.url + "/v1/chat/completions", json=CHAT) as response:
            assert response.status == 200
        async with session.get(front.url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["cloud"]["endpoints"][0]["state"] == "closed"
    samples = await scrape(front.url)
    assert (
        metric(samples, "hotcold_requests_total", route="cold", served_by="cloud", status="200")
        == 1
    )
    assert metric(samples, "hotcold_tokens_total", direction="out") > 0
    await up.close()

    async def not_ready() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(front.url + "/readyz") as response,
        ):
            return response.status == 503

    await wait_for(not_ready, 10, message="/readyz to report the pool down")


async def test_the_single_pool_flags_are_a_one_model_catalog(
    stub: StubFactory, router: RouterFactory
) -> None:
    """Without a catalog, the pool is one model, ``default``, that answers any name as sent."""
    front = await router([(await stub(model_name="gpu-a")).url])
    async with aiohttp.ClientSession() as session:
        async with session.get(front.url + "/v1/models") as response:
            assert [item["id"] for item in (await response.json())["data"]] == ["default"]
        body = {"model": "whatever-7b", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(front.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            assert (await response.json())["model"] == "whatever-7b"
