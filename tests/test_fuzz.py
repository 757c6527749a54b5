"""Fuzzing: hypothesis-generated bodies (JSON, msgpack, raw bytes, wrong content types,
nesting up to 10,000 levels anywhere in a request) against the router and the edge node, and
schemathesis against the router's OpenAPI description. The rules: never a 5xx from bad input,
never a traceback in the log, errors always in the OpenAI shape, answers in the media type
the client's ``Accept`` asks for, every 2xx body a valid OpenAI object (the ``openai``
package's own types), every stream a sequence of well-formed events ending in ``[DONE]`` or
in one terminal error event, and the server still answers afterwards.

The servers run in a background thread with their own event loop, so hypothesis (sync) can
drive them with a plain HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from cloud_stub import StubConfig
from cloud_stub import create_app as create_stub_app
from hotcold.serving import Server
from hotcold.wire.codec import MAX_NESTING, accepts_only_msgpack, wants_msgpack
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


class Tracebacks(logging.Handler):
    """Counts log records that carry a traceback or are errors, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


# What the fuzzers sent and got, for the summary at the end of a run (-s shows it).
TALLY: Counter[str] = Counter()
TRACEBACKS = Tracebacks()


@pytest.fixture(scope="module", autouse=True)
def watch_the_log() -> Iterator[None]:
    root = logging.getLogger()
    root.addHandler(TRACEBACKS)
    try:
        yield
    finally:
        root.removeHandler(TRACEBACKS)


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
accepts = st.sampled_from(
    ["application/json", "application/msgpack", "application/msgpack, application/json", "*/*"]
)

# Deep nesting is written as bytes: json.dumps and msgpack.packb stop near 1,000 levels.
# A sentinel string in an otherwise valid request is replaced by the deep value.
SENTINEL = "__deep__"  # 8 characters: msgpack fixstr 0xa8
HI = [{"role": "user", "content": "hi"}]
SPOTS: dict[str, dict[str, Any]] = {
    "metadata": {"messages": HI, "metadata": {"k": SENTINEL}},
    "message extra key": {"messages": [{"role": "user", "content": "hi", "x": SENTINEL}]},
    "unknown field": {"messages": HI, "vendor_extension": SENTINEL},
    "tools": {"messages": HI, "tools": [{"type": "function", "function": SENTINEL}]},
    "response_format": {"messages": HI, "response_format": {"type": SENTINEL}},
    "logit_bias": {"messages": HI, "logit_bias": SENTINEL},
    "content": {"messages": [{"role": "user", "content": SENTINEL}]},
    "prompt": {"prompt": SENTINEL},
}
depths = st.one_of(st.integers(0, 70), st.integers(70, 300), st.integers(300, 10_000))


@st.composite
def deep_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], int, str]:
    spot = draw(st.sampled_from(sorted(SPOTS)))
    body = {"model": "m", "max_tokens": draw(st.integers(1, 8)), **SPOTS[spot]}
    if draw(st.booleans()):
        body["stream"] = True
    return body, draw(depths), draw(st.sampled_from(["list", "object"]))


def deep_value(depth: int, shape: str, as_msgpack: bool) -> bytes:
    if as_msgpack:
        return (b"\x91" if shape == "list" else b"\x81\xa1k") * depth + b"\x01"
    if shape == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"k":' * depth + b"1" + b"}" * depth


def encode_deep(body: dict[str, Any], depth: int, shape: str, as_msgpack: bool) -> bytes:
    deep = deep_value(depth, shape, as_msgpack)
    if as_msgpack:
        packed: bytes = msgpack.packb(body)
        return packed.replace(b"\xa8" + SENTINEL.encode(), deep)
    return json.dumps(body).encode().replace(json.dumps(SENTINEL).encode(), deep)


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


def header(response: Any, name: str) -> str:
    """A header of a requests or a schemathesis response (lower-cased names, lists)."""
    value = response.headers.get(name) or response.headers.get(name.lower())
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value or "")


def decoded(response: Any) -> Any:
    """The body as the media type it declares (msgpack or JSON)."""
    if header(response, "Content-Type").startswith("application/msgpack"):
        return msgpack.unpackb(response.content, raw=False)
    return response.json()


def check_error(error: Any) -> None:
    assert isinstance(error, dict), error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)


def check_answer(path: str, document: Any) -> None:
    """A 2xx body is the OpenAI object of its endpoint (the openai package's own types)."""
    if path == "/v1/chat/completions":
        ChatCompletion.model_validate(document)
    elif path == "/v1/completions":
        Completion.model_validate(document)
    else:
        assert isinstance(document, dict), document


def check_stream(path: str, text: str, whole: bool = True) -> None:
    """Event by event: each ``data:`` is a chunk of the endpoint's type, one terminal error
    event, or ``[DONE]``; nothing follows ``[DONE]`` or an error; the stream is not cut off
    (``whole``: the client read it to its end)."""
    chunk = ChatCompletionChunk if path == "/v1/chat/completions" else Completion
    events = [event for event in text.replace("\r\n", "\n").split("\n\n") if event.strip()]
    assert events, "an empty stream"
    finished = None
    for event in events:
        lines = [line for line in event.split("\n") if not line.startswith(":")]
        assert lines and all(line.startswith("data:") for line in lines), event[:200]
        data = "\n".join(line[5:].removeprefix(" ") for line in lines)
        if data == "[DONE]":
            assert finished != "done", "two [DONE]"
            finished = "done"
            continue
        assert finished is None, f"an event after the end of the stream: {data[:200]}"
        document = json.loads(data)
        if "error" in document:
            check_error(document["error"])
            finished = "error"
        elif chunk is Completion:  # a chunk's finish_reason is null until its last one
            choices = [{**c, "finish_reason": c.get("finish_reason") or "stop"}
                       for c in document.get("choices", [])]  # fmt: skip
            Completion.model_validate({**document, "choices": choices})
        else:
            chunk.model_validate(document)
    assert finished is not None or not whole, f"the stream was cut off: {text[-200:]}"


def check(response: Any, path: str | None = None, accept: str = "", whole: bool = True) -> None:
    """Never a 5xx, never a traceback; the media type the client reads; valid bodies.
    ``whole``: False when the client stopped reading a stream before its end."""
    TALLY[f"{response.status_code // 100}xx"] += 1
    assert not TRACEBACKS.records, TRACEBACKS.format(TRACEBACKS.records[0])
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert header(response, "X-Request-Id"), "every answer names its request"
    content_type = header(response, "Content-Type")
    if response.status_code >= 400:
        msgpack_error = accepts_only_msgpack(accept)
        assert content_type.startswith(
            "application/msgpack" if msgpack_error else "application/json"
        ), (accept, content_type)
        check_error(decoded(response)["error"])
    elif "text/event-stream" in content_type:
        TALLY["streams"] += 1
        check_stream(path or "", response.text, whole)
    elif path is not None:
        assert content_type.startswith(
            "application/msgpack" if wants_msgpack(accept) else "application/json"
        ), (accept, content_type)
        check_answer(path, decoded(response))


# HOTCOLD_FUZZ_EXAMPLES=5000 scripts/test tests/test_fuzz.py for a deeper run.
EXAMPLES = int(os.environ.get("HOTCOLD_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions")
PATHS = st.sampled_from(INFERENCE_PATHS)


@FUZZ
@given(body=bodies, encoding=encodings, raw=st.binary(max_size=64), path=PATHS, accept=accepts)
def test_router_never_fails_on_fuzzed_bodies(
    live_router: str, body: Any, encoding: str, raw: bytes, path: str, accept: str
) -> None:
    data, content_type = encode(body, encoding, raw)
    response = requests.post(
        live_router + path,
        data=data,
        headers={"Content-Type": content_type, "Accept": accept},
        timeout=10,
    )
    check(response, path, accept)


@FUZZ
@given(deep=deep_bodies(), as_msgpack=st.booleans(), path=PATHS, accept=accepts)
def test_router_refuses_deep_nesting_anywhere_with_a_400(
    live_router: str, deep: tuple[dict[str, Any], int, str], as_msgpack: bool, path: str,
    accept: str,
) -> None:  # fmt: skip
    body, depth, shape = deep
    content_type = "application/msgpack" if as_msgpack else "application/json"
    response = requests.post(
        live_router + path,
        data=encode_deep(body, depth, shape, as_msgpack),
        headers={"Content-Type": content_type, "Accept": accept},
        timeout=10,
    )
    check(response, path, accept)
    if depth > MAX_NESTING:  # deeper than the bound anywhere: refused at parse time
        assert response.status_code == 400, (depth, response.status_code)


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
    check(response, path)


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
    # The stub is up: a 503 here is a fault, not "no upstream". An inference answer is checked
    # as its own endpoint's type (a chat stream is not a text completion's).
    path = case.path if case.path in INFERENCE_PATHS else None
    accept = (case.headers or {}).get("Accept", "") if path else ""
    # schemathesis reads at most 20 events of a stream (its max_stream_events) and says so in
    # stream_cut_short; the events it kept must still be valid, but the end is not there.
    whole = not response.stream_cut_short
    check(response, path, accept, whole)


def test_the_fuzzing_found_no_5xx_and_no_traceback() -> None:
    """Last in the file: the tally of the whole run (``-s`` prints it)."""
    print(f"\nfuzz tally: {dict(sorted(TALLY.items()))}, tracebacks: {len(TRACEBACKS.records)}")
    assert TALLY["5xx"] == 0
    assert not TRACEBACKS.records
