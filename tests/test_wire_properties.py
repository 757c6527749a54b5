"""Property tests of request parsing: any body gets a valid request or a 4xx, never a crash."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotcold.wire import (
    ApiError,
    decode_body,
    encode_body,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | (st.floats(allow_nan=False, allow_infinity=False))
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "stream",
    "stop",
    "seed",
    "n",
    "stream_options",
    "logit_bias",
    "user",
]
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "robot", 3]),
        "content": st.text(max_size=30) | json_values,
    },
)
request_like = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10),
    json_values | st.lists(message, max_size=3),
    max_size=8,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(request_like)
def test_parsing_never_raises_anything_but_an_api_error(document: dict[str, Any]) -> None:
    for parse in (parse_chat_request, parse_completion_request, parse_embedding_request):
        try:
            request = parse(document)
        except ApiError as exc:
            assert 400 <= exc.status < 500
            assert exc.message
        else:
            # ``model`` may be left out (the catalog's default answers); never empty.
            assert request.params.model is None or request.params.model
            assert isinstance(request.prompt_text(), str)


@settings(max_examples=300)
@given(
    st.binary(max_size=200),
    st.sampled_from(["application/json", "application/msgpack", None, "text/plain"]),
)
def test_decoding_arbitrary_bytes_gives_a_dict_or_a_4xx(raw: bytes, kind: str | None) -> None:
    try:
        document = decode_body(raw, kind)
    except ApiError as exc:
        assert exc.status in (400, 415)
    else:
        assert isinstance(document, dict)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_json_and_msgpack_bodies_decode_to_the_same_document(document: dict[str, Any]) -> None:
    from_json = decode_body(orjson.dumps(document), "application/json")
    from_msgpack = decode_body(msgpack.packb(document), "application/msgpack")
    assert from_json == from_msgpack == document
    encoded, kind = encode_body(document, as_msgpack=True)
    assert kind == "application/msgpack" and msgpack.unpackb(encoded) == document


@given(
    st.integers(min_value=1, max_value=100_000), st.booleans(), st.floats(min_value=0, max_value=2)
)
def test_valid_chat_requests_parse(max_tokens: int, stream: bool, temperature: float) -> None:
    request = parse_chat_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
            "temperature": temperature,
        }
    )
    assert request.params.output_limit() == max_tokens
    assert request.stream is stream
    assert request.params.is_deterministic() is (temperature == 0)


bounds = st.none() | st.integers(1, 1 << 31)


@given(max_tokens=bounds, max_completion_tokens=bounds, kind=st.sampled_from(["chat", "text"]))
def test_the_upstream_gets_the_one_output_bound_the_client_has(
    max_tokens: int | None, max_completion_tokens: int | None, kind: str
) -> None:
    document: dict[str, Any] = {"model": "m", "vendor_field": [1, {"a": 2}]}
    if kind == "chat":
        document["messages"] = [{"role": "user", "content": "hi"}]
        if max_completion_tokens is not None:
            document["max_completion_tokens"] = max_completion_tokens
    else:
        document["prompt"] = "hi"
    if max_tokens is not None:
        document["max_tokens"] = max_tokens
    sent = orjson.loads(orjson.dumps(document))
    request = (parse_chat_request if kind == "chat" else parse_completion_request)(document)
    forwarded = request.upstream_body()
    assert document == sent, "the client's document is not changed"
    limit = request.params.output_limit()
    given_ = {name: document[name] for name in ("max_tokens", "max_completion_tokens")
              if name in document}  # fmt: skip
    assert {name: forwarded[name] for name in given_} == dict.fromkeys(given_, limit)
    assert limit is None or limit == min(given_.values())
    rest = {k: v for k, v in forwarded.items() if k not in given_}
    assert rest == {k: v for k, v in document.items() if k not in given_}
