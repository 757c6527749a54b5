"""Remembered parses (router/parsed.py): the same bytes give what parsing them gives, invalid
bodies are refused every time and never kept, and the memory stays bounded."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcold.wire import ApiError, parse_chat_request
from hotcold.wire.codec import decode_body
from router.keys import request_key
from router.parsed import KEYS_PER_ENTRY, MAX_BODY_BYTES, ParsedRequests

JSON = "application/json"


def body(text: str, **extra: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra})


@settings(max_examples=60, deadline=None)
@given(
    st.text(max_size=40),
    st.one_of(st.none(), st.floats(min_value=-1, max_value=3)),
    st.one_of(st.none(), st.integers(min_value=-1, max_value=10**6)),
    st.integers(min_value=1, max_value=3),
)
def test_a_remembered_parse_is_the_parse_of_the_bytes(
    text: str, temperature: float | None, max_tokens: int | None, repeats: int
) -> None:
    raw = body(text, temperature=temperature, max_tokens=max_tokens)
    memo = ParsedRequests(entries=8)
    try:
        direct = parse_chat_request(decode_body(raw, JSON))
    except ApiError as exc:
        for _ in range(repeats):  # refused every time, with the same error, never kept
            with pytest.raises(ApiError) as refused:
                memo.parse("chat", JSON, raw)
            assert refused.value.body() == exc.body()
        assert len(memo) == 0
        return
    for _ in range(repeats):
        parsed = memo.parse("chat", JSON, raw)
        assert parsed.request.params == direct.params
        assert parsed.request.body == direct.body
        assert parsed.key("t", "m", "p") == request_key("t", "m", direct, "p")
        assert parsed.prompt == direct.prompt_text()
        assert parsed.output_fields == direct.params.output_fields()
    assert memo.hits == repeats - 1


def test_the_same_bytes_as_another_endpoint_or_media_type_are_parsed_again() -> None:
    memo = ParsedRequests()
    text = orjson.dumps({"model": "m", "prompt": "x"})
    assert memo.parse("completion", JSON, text).request.kind == "completion"
    with pytest.raises(ApiError):  # the same bytes are no chat request
        memo.parse("chat", JSON, text)
    plain = body("hi")
    first = memo.parse("chat", JSON, plain)
    assert memo.parse("chat", "application/json; charset=utf-8", plain) is not first
    with pytest.raises(ApiError):  # a chat body is not a text completion
        memo.parse("completion", JSON, plain)
    assert memo.parse("chat", JSON, plain) is first


def test_bounded_least_recently_used_first() -> None:
    memo = ParsedRequests(entries=3)
    bodies = [body(str(i)) for i in range(4)]
    first = memo.parse("chat", JSON, bodies[0])
    memo.parse("chat", JSON, bodies[1])
    memo.parse("chat", JSON, bodies[2])
    assert memo.parse("chat", JSON, bodies[0]) is first  # used: now the most recent
    memo.parse("chat", JSON, bodies[3])  # drops bodies[1]
    assert len(memo) == 3
    assert memo.parse("chat", JSON, bodies[0]) is first
    hits = memo.hits
    memo.parse("chat", JSON, bodies[1])
    assert memo.hits == hits  # it had been dropped


def test_large_bodies_and_many_keys_are_not_kept() -> None:
    memo = ParsedRequests()
    large = body("x" * MAX_BODY_BYTES)
    assert memo.parse("chat", JSON, large) is not memo.parse("chat", JSON, large)
    assert len(memo) == 0
    parsed = memo.parse("chat", JSON, body("hi"))
    keys = [parsed.key(f"tenant{i}", "m") for i in range(KEYS_PER_ENTRY + 3)]
    assert [parsed.key(f"tenant{i}", "m") for i in range(KEYS_PER_ENTRY + 3)] == keys
    assert len({k.fingerprint for k in keys}) == len(keys)  # tenants never share a key
