"""The model catalog: names, pools, edge eligibility, today's OpenAI API, live reload.

Real servers on loopback: the router, a cloud stub as the edge node, a cloud stub pool and a
recording upstream (tests/recording_upstream.py) that shows what reached it; the official
``openai`` SDK as the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import openai
import orjson
import pytest
import yaml

from hotcold.serving import Server, free_port
from router import create_app
from router.config import build_config, load_layers
from tests.conftest import StubFactory
from tests.recording_upstream import Recorder, start_recorder
from tests.support import close_at_test_end, metric, scrape, wait_for

# The SDK clients the tests make (sdk, async_sdk) are closed when each test ends.
pytestmark = pytest.mark.usefixtures("closes_at_test_end")

FAST_POOL = {
    "backoff": {"base_s": 0.005, "cap_s": 0.05},
    "breaker": {"failure_threshold": 2, "open_s": 0.3, "max_open_s": 1.0},
    "health": {"probe_interval_s": 0.1, "probe_timeout_s": 0.5},
}
HI = [{"role": "user", "content": "hi"}]


def catalog_settings(pool_a: str, pool_b: str, edge: str, **extra: Any) -> dict[str, Any]:
    """Two pools; a cloud-only chat model, an edge-eligible chat model, an embedding model;
    every request pinned hot so that only the catalog decides who may answer it."""
    return {
        "server": {"request_deadline_s": 10},
        "cloud": {"endpoints": []},
        "pools": {
            "gpu-a": {"endpoints": [pool_a], **FAST_POOL},
            "gpu-b": {"endpoints": [pool_b], **FAST_POOL},
        },
        # chat-small's stage is pinned at all hot misses: these tests are about the catalog
        # (how the edge earns its traffic: tests/test_release.py).
        "edge": {"endpoints": [edge], "release": {"pinned": {"chat-small": 3}}},
        "models": {
            "default": "chat-large",
            "catalog": [
                {
                    "name": "chat-large",
                    "aliases": ["gpt-4o-mini"],
                    "pool": "gpu-a",
                    "upstream_model": "llama-70b-instruct",
                },
                {
                    "name": "chat-small",
                    "pool": "gpu-b",
                    "upstream_model": "qwen-7b",
                    "edge": {"model": "smollm2-135m"},
                },
                {"name": "embed", "pool": "gpu-b", "apis": ["embeddings"]},
            ],
        },
        "policy": {"pins": [{"route": "hot", "model": "*"}]},
        **extra,
    }


async def start_router(settings: dict[str, Any]) -> Server:
    server = Server(create_app(build_config(settings)), "127.0.0.1", 0, shutdown_timeout_s=1)
    await server.start()
    return server


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    started = await start_recorder("pool-a")
    yield started
    assert started.server is not None
    await started.server.close()


@pytest.fixture
async def fleet(stub: StubFactory, recorder: Recorder) -> AsyncIterator[dict[str, Any]]:
    pool_b = await stub(model_name="pool-b")
    edge = await stub(model_name="edge-node")
    front = await start_router(catalog_settings(recorder.url, pool_b.url, edge.url))
    yield {"router": front, "a": recorder, "b": pool_b, "edge": edge}
    await front.close()


def sdk(server: Server) -> openai.OpenAI:
    """The sync SDK on ``server``, closed when the test ends."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    close_at_test_end(client.close)
    return client


def async_sdk(server: Server) -> openai.AsyncOpenAI:
    """The async SDK on ``server``, closed when the test ends."""
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    close_at_test_end(client.close)
    return client


async def requests_to(server: Server, path: str = "/v1/chat/completions") -> float:
    return metric(await scrape(server.url), "hotcold_stub_requests_total", path=path)


async def test_each_model_is_answered_by_its_own_pool_under_its_public_name(
    fleet: dict[str, Any],
) -> None:
    front, recorder, pool_b = fleet["router"], fleet["a"], fleet["b"]
    client = async_sdk(front)
    for name in ("chat-large", "gpt-4o-mini"):
        raw = await client.chat.completions.with_raw_response.create(
            model=name, messages=HI, max_tokens=4, temperature=0.7
        )
        answer = raw.parse()
        assert answer.model == "chat-large"
        assert raw.headers["X-Route"] == "hot" and raw.headers["X-Served-By"] == "cloud"
    assert [body["model"] for body in recorder.bodies()] == ["llama-70b-instruct"] * 2
    assert await requests_to(pool_b) == 0
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-small", messages=HI, max_tokens=4, temperature=0.7
    )
    assert raw.parse().model == "chat-small"
    assert raw.headers["X-Served-By"] == "edge"
    assert len(recorder.seen) == 2  # the edge answered; pool a never saw chat-small


async def test_the_sync_sdk_streams_and_every_chunk_names_the_public_model(
    fleet: dict[str, Any],
) -> None:
    client = sdk(fleet["router"])  # in a thread: the servers share this test's event loop

    def stream() -> list[Any]:
        return list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HI, max_tokens=4, temperature=0.7, stream=True
            )
        )

    chunks = await asyncio.to_thread(stream)
    assert chunks and {chunk.model for chunk in chunks} == {"chat-large"}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "pool-a answers llama-70b-instruct #0"


async def test_hot_requests_of_a_cloud_only_model_never_reach_the_edge(
    fleet: dict[str, Any],
) -> None:
    front, edge = fleet["router"], fleet["edge"]
    client = async_sdk(front)
    for index in range(6):
        raw = await client.chat.completions.with_raw_response.create(
            model="chat-large",
            messages=[{"role": "user", "content": f"q{index % 2}"}],
            max_tokens=4,
            temperature=0 if index % 3 else 0.5,
            extra_headers={"Cache-Control": "no-cache"},
        )
        assert raw.headers["X-Route"] == "hot"
        assert raw.headers["X-Served-By"] == "cloud"
    assert await requests_to(edge) == 0
    samples = await scrape(front.url)
    assert metric(samples, "hotcold_requests_total", model="chat-large", served_by="cloud") == 6
    assert metric(samples, "hotcold_requests_total", served_by="edge") == 0


async def test_a_request_the_edge_node_cannot_honour_goes_to_the_cloud(
    fleet: dict[str, Any],
) -> None:
    """An edge-eligible model still goes to its pool when the request asks for tools or
    several choices: the edge node would silently ignore them."""
    front, edge = fleet["router"], fleet["edge"]
    client = async_sdk(front)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-small", messages=HI, max_tokens=4, tools=tools
    )
    assert raw.headers["X-Route"] == "hot" and raw.headers["X-Served-By"] == "cloud"
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-small", messages=HI, max_tokens=4, n=2, temperature=0.9
    )
    assert raw.headers["X-Served-By"] == "cloud" and len(raw.parse().choices) == 2
    assert await requests_to(edge) == 0


async def test_an_unknown_model_is_404_model_not_found(fleet: dict[str, Any]) -> None:
    client = async_sdk(fleet["router"])
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-9", messages=HI)
    assert caught.value.code == "model_not_found"
    assert "gpt-9" in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="chat-large", input="x")
    assert caught.value.code == "model_not_supported"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-9")


async def test_models_lists_the_catalog_and_answers_one_by_name_or_alias(
    fleet: dict[str, Any],
) -> None:
    client = async_sdk(fleet["router"])
    listed = {model.id: model for model in (await client.models.list()).data}
    assert set(listed) == {"chat-large", "chat-small", "embed"}
    assert (await client.models.retrieve("gpt-4o-mini")).id == "chat-large"
    described = (await client.models.retrieve("chat-small")).model_dump()
    assert described["edge_eligible"] is True and "pool" not in described


async def test_a_request_without_a_model_gets_the_default(fleet: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            fleet["router"].url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 2}
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["model"] == "chat-large"


async def test_an_invalid_field_raises_bad_request_naming_it(fleet: dict[str, Any]) -> None:
    client = async_sdk(fleet["router"])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="chat-large", messages=HI, extra_body={"max_tokens": "ten"}
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "max_tokens"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="chat-large", messages=HI, temperature=5)


PASS_THROUGH: dict[str, Any] = {
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 2,
    "prompt_cache_key": "device-42",
    "safety_identifier": "user-hash",
    "verbosity": "low",
    "guided_json": {"type": "object"},
    "chat_template_kwargs": {"enable_thinking": False},
}


async def test_fields_the_router_does_not_need_pass_through_unchanged(
    fleet: dict[str, Any],
) -> None:
    front, recorder = fleet["router"], fleet["a"]
    client = async_sdk(front)
    await client.chat.completions.create(
        model="chat-large", messages=HI, max_tokens=4, extra_body=PASS_THROUGH
    )
    forwarded = recorder.bodies()[-1]
    for name, value in PASS_THROUGH.items():
        assert forwarded[name] == value, name


@pytest.mark.parametrize(
    "field",
    [
        *sorted(set(PASS_THROUGH) - {"prompt_cache_key", "safety_identifier"}),
        *("seed", "top_p", "stop", "max_tokens", "n", "presence_penalty", "extra_vendor_field"),
    ],
)
async def test_requests_differing_only_in_an_answer_changing_field_never_share_an_entry(
    fleet: dict[str, Any], field: str
) -> None:
    values: dict[str, tuple[Any, Any]] = {
        "seed": (1, 2),
        "top_p": (0.5, 0.9),
        "stop": ("a", "b"),
        "max_tokens": (4, 5),
        "n": (1, 2),
        "presence_penalty": (0.0, 1.0),
        "extra_vendor_field": ("x", "y"),
        "tool_choice": ("auto", "none"),
        "logprobs": (True, False),
        "top_logprobs": (1, 2),
        "verbosity": ("low", "high"),
    }
    first, second = values.get(field, (PASS_THROUGH.get(field), None))
    body: dict[str, Any] = {"model": "chat-large", "messages": HI, "temperature": 0}
    if field == "top_logprobs":
        body["logprobs"] = True
    async with aiohttp.ClientSession() as session:

        async def ask(value: Any) -> str:
            document = {**body, field: value} if value is not None else body
            async with session.post(
                fleet["router"].url + "/v1/chat/completions", json=document
            ) as response:
                assert response.status == 200, await response.text()
                return response.headers["X-Cache"]

        assert await ask(first) == "miss"
        assert await ask(first) == "hit"
        assert await ask(second) == "miss"


async def test_output_neutral_fields_share_an_entry(fleet: dict[str, Any]) -> None:
    base = {"model": "chat-large", "messages": HI, "temperature": 0}
    async with aiohttp.ClientSession() as session:
        caches = []
        for extra in ({}, {"prompt_cache_key": "k", "user": "u", "metadata": {"a": "b"}}):
            async with session.post(
                fleet["router"].url + "/v1/chat/completions", json={**base, **extra}
            ) as response:
                caches.append(response.headers["X-Cache"])
    assert caches == ["miss", "hit"]


async def test_embeddings_are_routed_and_cached(fleet: dict[str, Any]) -> None:
    front, pool_b = fleet["router"], fleet["b"]
    client = async_sdk(front)
    first = await client.embeddings.with_raw_response.create(model="embed", input=["a", "bb"])
    second = await client.embeddings.with_raw_response.create(model="embed", input=["a", "bb"])
    assert first.headers["X-Cache"] == "miss" and second.headers["X-Cache"] == "hit"
    assert second.headers["X-Served-By"] == "cache"
    assert first.parse().data[1].embedding == second.parse().data[1].embedding
    assert second.parse().model == "embed"
    assert await requests_to(pool_b, "/v1/embeddings") == 1


async def test_several_choices_are_captured_from_a_stream_and_replayed(
    fleet: dict[str, Any],
) -> None:
    client = async_sdk(fleet["router"])
    stream = await client.chat.completions.create(
        model="chat-large", messages=HI, n=3, temperature=0, stream=True
    )
    streamed: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-large", messages=HI, n=3, temperature=0
    )
    assert raw.headers["X-Cache"] == "hit"
    plain = {choice.index: choice.message.content for choice in raw.parse().choices}
    assert plain == streamed and len(plain) == 3
    replayed: dict[int, str] = {}
    async for chunk in await client.chat.completions.create(
        model="chat-large", messages=HI, n=3, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            replayed[choice.index] = replayed.get(choice.index, "") + (choice.delta.content or "")
    assert replayed == streamed


async def test_a_msgpack_only_client_gets_errors_in_msgpack(fleet: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            fleet["router"].url + "/v1/chat/completions",
            data=msgpack.packb({"model": "gpt-9", "messages": HI}),
            headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
        ) as response,
    ):
        assert response.status == 404
        assert response.content_type == "application/msgpack"
        error = msgpack.unpackb(await response.read())["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"


async def test_no_upstream_address_reaches_the_client(stub: StubFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    edge = await stub()
    front = await start_router(catalog_settings(dead, dead.replace("1:", "1:1"), edge.url))
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "chat-large", "messages": HI}
            for _ in range(3):
                async with session.post(front.url + "/v1/chat/completions", json=body) as response:
                    text = await response.text()
                    assert response.status == 503
                    assert "127.0.0.1" not in text and str(dead.rsplit(":", 1)[1]) not in text
    finally:
        await front.close()


async def test_credentials_per_pool_and_per_endpoint_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await start_recorder("one", "/health"), await start_recorder("two", "/health")
    key_file = tmp_path / "two.key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.setenv("POOL_KEY", "sk-from-env")
    settings = {
        "cloud": {"endpoints": []},
        "pools": {
            "p": {
                "endpoints": [one.url, two.url],
                "api_key_env": "POOL_KEY",
                "endpoint_keys": {two.url: {"file": str(key_file)}},
                "health_path": "/health",
                **FAST_POOL,
            }
        },
        "models": {"catalog": [{"name": "m", "pool": "p"}]},
    }
    front = await start_router(settings)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(front.url + "/readyz") as response:  # probes quiet members
                assert response.status == 200
                assert "sk-" not in await response.text()
            for _ in range(6):
                async with session.post(
                    front.url + "/v1/chat/completions", json={"model": "m", "messages": HI}
                ) as response:
                    assert response.status == 200
        assert {seen.authorization for seen in one.seen} == {"Bearer sk-from-env"}
        assert {seen.authorization for seen in two.seen} == {"Bearer sk-from-file"}
        assert one.probes and {path for path, _ in one.probes + two.probes} == {"/health"}
        assert ("/health", "Bearer sk-from-file") in two.probes
    finally:
        await front.close()
        for recorder in (one, two):
            assert recorder.server is not None
            await recorder.server.close()


async def test_a_missing_key_variable_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    settings = {
        "pools": {"p": {"endpoints": ["http://127.0.0.1:9"], "api_key_env": "NO_SUCH_KEY"}},
        "models": {"catalog": [{"name": "m", "pool": "p"}]},
    }
    server = Server(create_app(build_config(settings)), "127.0.0.1", 0, shutdown_timeout_s=1)
    with pytest.raises(Exception, match="NO_SUCH_KEY"):
        await server.start()
    await server.close()


async def test_the_catalog_reloads_from_the_file_without_a_restart(
    tmp_path: Path, stub: StubFactory
) -> None:
    first, second = await stub(model_name="first"), await stub(model_name="second")
    path = tmp_path / "router.yaml"
    document: dict[str, Any] = {
        "cloud": {"endpoints": [first.url]},
        "models": {"catalog": [{"name": "alpha", "pool": "cloud"}]},
        "admin": {"watch_config_s": 0},
    }
    path.write_text(yaml.safe_dump(document))
    layers = load_layers(path, environ={})
    front = Server(create_app(layers.build(), layers=layers), "127.0.0.1", 0, shutdown_timeout_s=1)
    await front.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def ask(model: str) -> int:
                async with session.post(
                    front.url + "/v1/chat/completions", json={"model": model, "messages": HI}
                ) as response:
                    return response.status

            assert await ask("alpha") == 200 and await ask("beta") == 404
            document["pools"] = {"second": {"endpoints": [second.url]}}
            document["models"]["catalog"].append({"name": "beta", "pool": "second"})
            path.write_text(yaml.safe_dump(document))
            async with session.post(front.url + "/admin/reload") as response:
                result = await response.json()
                assert response.status == 200 and result["needs_restart"] == [], result
            assert await ask("beta") == 200 and await ask("alpha") == 200
            assert await requests_to(second) == 1
            async with session.get(front.url + "/v1/models") as response:
                ids = [item["id"] for item in (await response.json())["data"]]
            assert ids == ["alpha", "beta"]
            document["models"]["catalog"][1]["pool"] = "nowhere"
            path.write_text(yaml.safe_dump(document))
            async with session.post(front.url + "/admin/reload") as response:
                assert response.status == 422  # refused: the last good catalog stays
            assert await ask("beta") == 200
    finally:
        await front.close()


async def test_a_new_pool_answers_once_its_prober_sees_it(stub: StubFactory) -> None:
    """An ejected endpoint of a catalog pool is probed back in on its health path."""
    member = await stub()
    # Open for 300 s: only the prober (on /health) can take it back within the deadline.
    slow_to_trial = {
        **FAST_POOL,
        "breaker": {"failure_threshold": 1, "open_s": 300, "max_open_s": 300},
    }
    settings = {
        "cloud": {"endpoints": []},
        "pools": {"p": {"endpoints": [member.url], "health_path": "/health", **slow_to_trial}},
        "models": {"catalog": [{"name": "m", "pool": "p"}]},
    }
    front = await start_router(settings)
    body = orjson.dumps({"model": "m", "messages": HI})
    try:
        async with aiohttp.ClientSession() as session:
            await session.post(
                member.url + "/admin/faults", json={"error_rate": 1.0}
            )  # every request fails: the endpoint is ejected
            for _ in range(2):
                async with session.post(
                    front.url + "/v1/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    assert response.status in (500, 503)
            await session.post(member.url + "/admin/faults", json={"error_rate": 0.0})
            assert metric(await scrape(member.url), "hotcold_stub_requests_total") >= 1

            async def answers() -> bool:
                async with session.post(
                    front.url + "/v1/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    return response.status == 200

            await wait_for(answers, timeout_s=15, message="the healed endpoint to answer")
    finally:
        await front.close()


async def test_the_upstream_gets_the_one_output_bound_the_client_has(
    fleet: dict[str, Any],
) -> None:
    client = async_sdk(fleet["router"])
    await client.chat.completions.create(
        model="chat-large", messages=HI, max_tokens=7, max_completion_tokens=5
    )
    forwarded = fleet["a"].bodies()[-1]
    assert forwarded["max_tokens"] == forwarded["max_completion_tokens"] == 5


async def test_an_upstream_that_refuses_our_key_is_ejected_and_the_client_never_sees_401(
    stub: StubFactory,
) -> None:
    """A pool member with a bad or rotated key answers 401: that is the router's credential,
    not the client's, so the request goes to another member and the member is ejected."""
    bad, good = await start_recorder("bad"), await start_recorder("good")
    bad.fail_with = 401
    settings = {
        "cloud": {"endpoints": []},
        "pools": {"p": {"endpoints": [bad.url, good.url], **FAST_POOL}},
        "models": {"catalog": [{"name": "m", "pool": "p"}]},
    }
    front = await start_router(settings)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(4):
                async with session.post(
                    front.url + "/v1/chat/completions", json={"model": "m", "messages": HI}
                ) as response:
                    assert response.status == 200
            async with session.get(front.url + "/readyz") as response:
                states = {
                    e["url"]: e["state"]
                    for e in (await response.json())["cloud"]["pools"]["p"]["endpoints"]
                }
        assert states[bad.url] != "closed" and states[good.url] == "closed"
    finally:
        await front.close()
        for recorder in (bad, good):
            assert recorder.server is not None
            await recorder.server.close()


async def test_an_upstream_error_names_the_public_model_not_the_upstreams(
    fleet: dict[str, Any],
) -> None:
    fleet["a"].fail_with = 400
    async with aiohttp.ClientSession() as session:
        async with session.post(
            fleet["router"].url + "/v1/chat/completions",
            json={"model": "chat-large", "messages": HI},
        ) as response:
            text = await response.text()
            assert response.status == 400
        assert "llama-70b-instruct" not in text and "chat-large" in text
        async with session.post(
            fleet["router"].url + "/v1/chat/completions",
            data=msgpack.packb({"model": "chat-large", "messages": HI}),
            headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
        ) as response:
            assert response.content_type == "application/msgpack"
            assert msgpack.unpackb(await response.read())["error"]["message"]


async def test_images_and_tool_turns_are_never_sent_to_the_text_edge(
    fleet: dict[str, Any],
) -> None:
    client = async_sdk(fleet["router"])
    image = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-small", messages=[{"role": "user", "content": image}], temperature=0.5
    )
    assert raw.headers["X-Route"] == "hot" and raw.headers["X-Served-By"] == "cloud"
    turns: list[Any] = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-small", messages=turns, temperature=0.5
    )
    assert raw.headers["X-Served-By"] == "cloud"
    assert await requests_to(fleet["edge"]) == 0
