"""Bad input gets the right 4xx in the OpenAI error shape, never a 500 (one test per case)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest

from hotcold.serving import Server
from tests.conftest import RouterFactory, StubFactory

CHAT = {"model": "m", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
async def front(stub: StubFactory, router: RouterFactory) -> AsyncIterator[Server]:
    yield await router([(await stub()).url])


async def _post(
    url: str,
    body: Any,
    content_type: str | None = "application/json",
    path: str = "/v1/chat/completions",
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": content_type} if content_type else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=body, headers=headers) as response,
    ):
        document = await response.json(content_type=None)
        return response.status, document


def _assert_error_shape(document: dict[str, object]) -> dict[str, object]:
    error = document["error"]
    assert isinstance(error, dict)
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    return error


async def test_malformed_json_is_400(front: Server) -> None:
    status, document = await _post(front.url, b'{"model": "m", "messages": [')
    assert status == 400
    assert _assert_error_shape(document)["code"] == "malformed_json"


async def test_body_that_is_not_an_object_is_400(front: Server) -> None:
    status, document = await _post(front.url, b"[1, 2, 3]")
    assert status == 400
    _assert_error_shape(document)


async def test_malformed_msgpack_is_400(front: Server) -> None:
    status, document = await _post(front.url, b"\xc1\xff\x00", "application/msgpack")
    assert status == 400
    assert _assert_error_shape(document)["code"] == "malformed_msgpack"


async def test_msgpack_with_binary_values_is_400(front: Server) -> None:
    body = msgpack.packb({**CHAT, "model": b"\x00bytes"}, use_bin_type=True)
    status, document = await _post(front.url, body, "application/msgpack")
    assert status == 400
    _assert_error_shape(document)


async def test_wrong_media_type_is_415(front: Server) -> None:
    status, document = await _post(front.url, b"model=m", "application/x-www-form-urlencoded")
    assert status == 415
    assert "application/msgpack" in str(_assert_error_shape(document)["message"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "10"),
        ("temperature", "hot"),
        ("stream", "yes"),
        ("messages", "hi"),
        ("model", 42),
        ("stop", 7),
        ("seed", 1.5),
        ("max_tokens", True),
    ],
)
async def test_wrong_field_type_is_400_naming_the_field(
    front: Server, field: str, value: object
) -> None:
    import orjson

    status, document = await _post(front.url, orjson.dumps({**CHAT, field: value}))
    assert status == 400
    error = _assert_error_shape(document)
    assert field in str(error["message"])


async def test_negative_max_tokens_is_400(front: Server) -> None:
    import orjson

    status, document = await _post(front.url, orjson.dumps({**CHAT, "max_tokens": -5}))
    assert status == 400
    assert "max_tokens" in str(_assert_error_shape(document)["message"])


async def test_out_of_range_temperature_is_400(front: Server) -> None:
    import orjson

    status, document = await _post(front.url, orjson.dumps({**CHAT, "temperature": 7}))
    assert status == 400
    _assert_error_shape(document)


async def test_unknown_top_level_fields_are_forwarded(front: Server) -> None:
    """Fields the router does not know (the next API release's, a server's extensions) reach
    the upstream: refusing them would break clients on every release."""
    import orjson

    status, _ = await _post(front.url, orjson.dumps({**CHAT, "guided_choice": ["a", "b"]}))
    assert status == 200


async def test_unknown_keys_inside_messages_are_forwarded(front: Server) -> None:
    import orjson

    body = {**CHAT, "messages": [{"role": "user", "content": "x", "name": "bob", "extra": 1}]}
    status, _ = await _post(front.url, orjson.dumps(body))
    assert status == 200


async def test_missing_messages_is_400(front: Server) -> None:
    status, document = await _post(front.url, b'{"model": "m"}')
    assert status == 400
    assert "messages" in str(_assert_error_shape(document)["message"])


async def test_bad_role_is_400(front: Server) -> None:
    status, document = await _post(
        front.url, b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}'
    )
    assert status == 400
    _assert_error_shape(document)


async def test_empty_body_is_400(front: Server) -> None:
    status, document = await _post(front.url, b"")
    assert status == 400
    _assert_error_shape(document)


FORTY_MB = (
    b'{"model": "m", "messages": [{"role": "user", "content": "'
    + b"x" * (40 * 1024 * 1024)
    + b'"}]}'
)


async def test_40_mb_body_is_413(front: Server) -> None:
    status, document = await _post(front.url, io.BytesIO(FORTY_MB))
    assert status == 413
    _assert_error_shape(document)


async def test_40_mb_chunked_body_without_length_is_413(front: Server) -> None:
    """No Content-Length to refuse up front: the limit applies while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(FORTY_MB), 1 << 20):
            yield FORTY_MB[start : start + (1 << 20)]

    try:
        status, document = await _post(front.url, chunks())
    except aiohttp.ClientOSError:
        pytest.skip("server closed the connection before the client finished sending")
    assert status == 413
    _assert_error_shape(document)


async def test_unknown_path_is_404_in_error_shape(front: Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(front.url + "/v2/nothing") as r:
        assert r.status == 404
        _assert_error_shape(await r.json())


async def test_wrong_method_is_405_in_error_shape(front: Server) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(front.url + "/v1/chat/completions") as response,
    ):
        assert response.status == 405
        _assert_error_shape(await response.json())


async def test_batch_prompt_is_400(front: Server) -> None:
    status, document = await _post(
        front.url, b'{"model": "m", "prompt": ["a", "b"]}', path="/v1/completions"
    )
    assert status == 400
    _assert_error_shape(document)


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [253, 2_000])
@pytest.mark.parametrize("where", ["metadata", "message_extra", "forwarded_field"])
@pytest.mark.parametrize("as_msgpack", [False, True])
async def test_deep_nesting_anywhere_is_400_not_500(
    front: Server, caplog: pytest.LogCaptureFixture, depth: int, where: str, as_msgpack: bool
) -> None:
    """~1.3 KB nested 253 levels deep inside metadata used to answer 500 and log a traceback
    (orjson's encoder stops at 254 levels when the router canonicalised the request)."""
    import orjson

    deep = _nested(depth)
    body: dict[str, object] = {**CHAT}
    if where == "metadata":
        body["metadata"] = deep
    elif where == "message_extra":
        body["messages"] = [{"role": "user", "content": "x", "extra": deep}]
    else:
        body["guided_json"] = deep
    if as_msgpack:
        if depth > 1000:
            return  # msgpack's own packer refuses such depth; the JSON case covers it
        raw, kind = msgpack.packb(body), "application/msgpack"
    else:
        raw, kind = (
            orjson.dumps(body) if depth < 250 else _deep_json(where, depth),
            "application/json",
        )
    status, document = await _post(front.url, raw, kind)
    assert status == 400, document
    _assert_error_shape(document)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def _deep_json(where: str, depth: int) -> bytes:
    """JSON deeper than orjson will encode, written by hand."""
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    if where == "message_extra":
        return b'{"model":"m","messages":[{"role":"user","content":"x","extra":' + inner + b"}]}"
    field = b"metadata" if where == "metadata" else b"guided_json"
    return (
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"' + field + b'":' + inner + b"}"
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_completion_tokens": 5, "max_tokens": 1e9}, "max_tokens"),
        ({"max_completion_tokens": 5, "max_tokens": 1_000_000_000}, "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 1_000_000_000}, "max_completion_tokens"),
    ],
)
async def test_no_output_bound_slips_past_the_ceiling(
    front: Server, fields: dict[str, object], param: str
) -> None:
    import orjson

    status, document = await _post(front.url, orjson.dumps({**CHAT, **fields}))
    assert status == 400
    assert _assert_error_shape(document)["param"] == param


async def test_a_chunked_body_over_the_limit_that_arrived_whole_is_413(
    stub: StubFactory, router: RouterFactory
) -> None:
    """The whole body is in before the handler reads it (one write of 2 KB against a 1 KiB
    limit, no Content-Length): the limit holds on the path that reads without waiting."""
    small = await router([(await stub()).url], server={"max_body_bytes": 1024})
    body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * 2000 + b'"}]}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(small.host, small.port)
    try:
        writer.write(head + chunked)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        document = orjson.loads(await asyncio.wait_for(reader.readexactly(length), 60))
    finally:
        writer.close()
    _assert_error_shape(document)
