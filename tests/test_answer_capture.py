"""Property: the cache keeps an answer faithfully. A chat answer with any mix of choices,
content, refusals, tool calls, logprobs and finish reasons, replayed as a stream and captured
back, is the same answer (plain -> stream -> plain loses nothing)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcold.wire import parse_chat_request
from router.answers import CachedAnswer, StreamCapture, replay_events

text = st.text(max_size=12)
logprob = st.fixed_dictionaries(
    {"token": text, "logprob": st.floats(-20, 0), "bytes": st.none(), "top_logprobs": st.just([])}
)
tool_call = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=8),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.text(min_size=1, max_size=8), "arguments": text}
        ),
    }
)


@st.composite
def choice(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": draw(text)}
    if draw(st.booleans()):
        message["tool_calls"] = draw(st.lists(tool_call, min_size=1, max_size=3))
        message["content"] = None
    elif draw(st.booleans()):
        message["refusal"] = draw(text)
        message["content"] = None
    logprobs = None
    if draw(st.booleans()):
        logprobs = {"content": draw(st.lists(logprob, max_size=3)), "refusal": None}
    return {
        "message": message,
        "logprobs": logprobs,
        "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls"])),
    }


@st.composite
def answer(draw: st.DrawFn) -> dict[str, Any]:
    choices = draw(st.lists(choice(), min_size=1, max_size=4))
    document: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": "chat-large",
        "choices": [{"index": i, **c} for i, c in enumerate(choices)],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
    if draw(st.booleans()):
        document["system_fingerprint"] = "fp-1"
    return document


def _normal(document: dict[str, Any]) -> dict[str, Any]:
    """Equal answers compare equal: the creation time is the replay's."""
    return {**document, "created": 0}


@settings(max_examples=200, deadline=None)
@given(answer(), st.booleans())
def test_plain_stream_plain_round_trip_loses_nothing(
    document: dict[str, Any], with_usage: bool
) -> None:
    body = {"model": "chat-large", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if with_usage:
        body["stream_options"] = {"include_usage": True}
    request = parse_chat_request(body)
    cached = CachedAnswer.of(orjson.dumps(document), document, "cloud")
    assert cached.replayable
    capture = StreamCapture(request, "chat-large")
    for event in replay_events(cached, request):
        capture.feed(event)
    captured = capture.answer("cloud")
    assert captured is not None
    expected = {k: v for k, v in document.items() if with_usage or k != "usage"}
    assert _normal(captured.document) == _normal(orjson.loads(orjson.dumps(expected)))


def test_a_stream_field_the_capture_does_not_know_is_not_cached() -> None:
    request = parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    capture = StreamCapture(request, "m")
    chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"audio": {"id": "a"}}}]}
    capture.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
    end = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    capture.feed(b"data: " + orjson.dumps(end) + b"\n\n")
    capture.feed(b"data: [DONE]\n\n")
    assert capture.answer("cloud") is None


def test_a_plain_answer_with_an_unknown_message_field_is_not_replayed_as_a_stream() -> None:
    document = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x", "audio": {"id": "a"}}}
        ]
    }
    assert not CachedAnswer.of(orjson.dumps(document), document, "cloud").replayable


def test_an_answer_never_kept_keeps_its_usage_but_is_never_replayed() -> None:
    """A sampled request's answer (never cached, shared or compared) skips the stream-form
    check: it keeps its usage for the counters and says it cannot be replayed, so nothing
    could ever serve it as a stream."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    document = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
        "usage": usage,
    }
    kept = CachedAnswer.of(orjson.dumps(document), document, "cloud")
    sampled = CachedAnswer.of(orjson.dumps(document), document, "cloud", kept=False)
    assert kept.replayable and not sampled.replayable
    assert sampled.usage == kept.usage == usage and sampled.body == kept.body
