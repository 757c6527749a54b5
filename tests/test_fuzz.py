"""Fuzzing: hypothesis-generated bodies (JSON, msgpack, raw bytes, wrong content types)
against the router and the edge node, and schemathesis against the router's OpenAPI
description. The rule: never a 5xx from bad input, always the OpenAI error shape, and the
server still answers afterwards.

The servers run in a background thread with their own event loop, so hypothesis (sync) can
drive them with a plain HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_stub import StubConfig
from cloud_stub import create_app as create_stub_app
from hotcold.serving import Server
from router import create_app as create_router_app
from router.config import build_config
from router.openapi import openapi_document
from tests.conftest import router_settings


class BackgroundServers:
    """aiohttp servers on an event loop in another thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[Server] = []

    def start(self, app: web.Application) -> str:
        async def start() -> Server:
            server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=1)
            await server.start()
            return server

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.servers.append(server)
        return server.url

    def close(self) -> None:
        async def close() -> None:
            for server in reversed(self.servers):
                await server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_router() -> Iterator[str]:
    servers = BackgroundServers()
    try:
        cloud = servers.start(create_stub_app(StubConfig(ttft_ms=0, tpot_ms=0)))
        settings_ = router_settings(
            [cloud], server={"max_tokens_ceiling": 32, "request_deadline_s": 5}
        )
        yield servers.start(create_router_app(build_config(settings_)))
    finally:
        servers.close()


@pytest.fixture(scope="module")
def live_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from edge_node.app import create_app as create_edge_app
    from edge_node.config import EdgeNodeConfig
    from edge_node.model import load
    from tests.edge_fixtures import build_tiny_model

    tiny = load(
        build_tiny_model(tmp_path_factory.mktemp("tiny")),
        device="cpu",
        max_batch=8,
        max_context=256,
    )
    config = EdgeNodeConfig(
        max_batch=8, batch_window_ms=5, max_queue=64, max_context=256,
        default_max_tokens=4, max_tokens_limit=16,
    )  # fmt: skip
    servers = BackgroundServers()
    try:
        yield servers.start(create_edge_app(config, tiny))
    finally:
        servers.close()


# ---- strategies ------------------------------------------------------------------------------

FIELDS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stream", "stream_options", "stop", "seed", "user", "logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "tools", "response_format", "echo",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]) | values},
        optional={"content": st.text(max_size=60) | values, "name": values},
    ),
    max_size=3,
)
small_tokens = st.integers(min_value=-3, max_value=40)
plausible = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "tiny", ""]) | values},
    optional={
        "messages": messages | values,
        "prompt": st.text(max_size=60) | st.lists(st.integers(0, 50), max_size=5) | values,
        "max_tokens": small_tokens | values,
        "temperature": st.floats(-1, 3) | values,
        "stream": st.booleans() | values,
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=5) | values,
        "n": st.integers(-1, 3) | values,
        **{name: values for name in ("seed", "top_p", "stream_options", "logit_bias", "user")},
    },
)
bodies = st.one_of(plausible, st.dictionaries(st.sampled_from(FIELDS), values, max_size=6), values)
encodings = st.sampled_from(["json", "json-nan", "msgpack", "raw", "form"])


def encode(body: Any, encoding: str, raw: bytes) -> tuple[bytes, str]:
    if encoding == "raw":
        return raw, "application/json"
    if encoding == "form":
        return b"a=1&b=2", "application/x-www-form-urlencoded"
    if encoding == "msgpack":
        try:
            return msgpack.packb(body), "application/msgpack"
        except (OverflowError, TypeError, ValueError):
            return b"\xc1", "application/msgpack"  # a byte msgpack never uses
    # json.dumps writes NaN and Infinity, which are not JSON: the router must refuse them.
    text = (
        json.dumps(body, allow_nan=encoding == "json-nan", default=str)
        if encoding != "json"
        else json.dumps(body, allow_nan=True).replace("NaN", "null").replace("Infinity", "1e308")
    )
    return text.encode(), "application/json"


def check(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and isinstance(error["code"], str)
    elif "text/event-stream" in response.headers.get("Content-Type", ""):
        assert response.text.rstrip().endswith("data: [DONE]") or '"error"' in response.text


# HOTCOLD_FUZZ_EXAMPLES=5000 scripts/test tests/test_fuzz.py for a deeper run.
EXAMPLES = int(os.environ.get("HOTCOLD_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    body=bodies,
    encoding=encodings,
    raw=st.binary(max_size=64),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    accept=st.sampled_from(["application/json", "application/msgpack", "*/*"]),
)
def test_router_never_fails_on_fuzzed_bodies(
    live_router: str, body: Any, encoding: str, raw: bytes, path: str, accept: str
) -> None:
    data, content_type = encode(body, encoding, raw)
    response = requests.post(
        live_router + path,
        data=data,
        headers={"Content-Type": content_type, "Accept": "application/json"},
        timeout=10,
    )
    check(response)
    del accept


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(
    body=bodies,
    encoding=encodings,
    raw=st.binary(max_size=64),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
)
def test_edge_node_never_fails_on_fuzzed_bodies(
    live_edge: str, body: Any, encoding: str, raw: bytes, path: str
) -> None:
    data, content_type = encode(body, encoding, raw)
    response = requests.post(
        live_edge + path, data=data, headers={"Content-Type": content_type}, timeout=30
    )
    check(response)


def test_servers_still_answer_after_the_fuzzing(live_router: str) -> None:
    assert requests.get(live_router + "/healthz", timeout=5).status_code == 200
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert requests.post(live_router + "/v1/chat/completions", json=body, timeout=5).ok


# ---- schemathesis against the OpenAPI description ----------------------------------------------


@schemathesis.serializer("application/msgpack")
def _msgpack(_: Any, value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value)
    except (OverflowError, TypeError, ValueError):
        return b"\xc1"
    return packed


schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(FUZZ, max_examples=max(1, EXAMPLES // 4))
def test_openapi_operations_never_answer_5xx(case: Any, live_router: str) -> None:
    response = case.call(base_url=live_router, timeout=10)
    if case.path in ("/readyz", "/v1/models") and response.status_code == 503:
        return  # documented: no upstream could answer (not an error of the request)
    check(response)
