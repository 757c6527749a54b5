"""Turning answers into HTTP responses: upstream replies, cached answers (JSON, msgpack, or
replayed as SSE), and relayed streams captured so a streamed miss can be cached too.

A cached answer is always kept in the non-streamed form. A streamed request served from the
cache gets it replayed as SSE events; a streamed miss is relayed event by event while the
full answer is rebuilt from the deltas. The router always asks the upstream for the usage
chunk (token accounting needs it) and hides it from clients that did not ask for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from hotcold.wire import InferenceRequest, encode_body, error_body, sse_event, wants_msgpack
from hotcold.wire.sse import SSE_DONE, event_data


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer as the cache keeps it: its JSON bytes only, plus its token usage.

    The parsed document is not kept: it takes two to three times the bytes' memory (a dict
    per choice and message), which would make ``cache.max_bytes`` a third of the truth. It is
    parsed again only when needed (msgpack clients, SSE replay): microseconds with orjson.
    """

    body: bytes  # the non-streamed answer, JSON
    produced_by: str  # "edge" | "cloud"
    usage: dict[str, Any] | None = None

    @classmethod
    def of(cls, body: bytes, document: dict[str, Any], produced_by: str) -> CachedAnswer:
        usage = document.get("usage")
        return cls(body, produced_by, usage if isinstance(usage, dict) else None)

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def size(self) -> int:
        return len(self.body) + 320  # the objects around the bytes and the usage, roughly


def plain_response(
    http: web.Request,
    document: dict[str, Any] | None,
    json_body: bytes | None,
    headers: dict[str, str],
    status: int = 200,
) -> web.Response:
    """JSON (the upstream's bytes when we have them) or msgpack, as the client asked; with
    no document, the JSON bytes are parsed only if msgpack is wanted."""
    if document is None and json_body is None:
        raise ValueError("plain_response needs a document or its JSON bytes")
    if wants_msgpack(http.headers.get("Accept")):
        body, content_type = encode_body(
            document if document is not None else orjson.loads(json_body or b""),
            as_msgpack=True,
        )
    elif json_body is not None:
        body, content_type = json_body, "application/json"
    else:
        body, content_type = encode_body(document, as_msgpack=False)
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = content_type
    return response


def error_response(status: int, document: Any, headers: dict[str, str]) -> web.Response:
    """An upstream's error answer, forced into the OpenAI error shape."""
    if not (isinstance(document, dict) and isinstance(document.get("error"), dict)):
        document = error_body(f"upstream answered {status}", "upstream_error", "upstream_error")
    body, content_type = encode_body(document, as_msgpack=False)
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = content_type
    return response


def replay_events(answer: CachedAnswer, request: InferenceRequest) -> list[bytes]:
    """The SSE events of a cached answer, as the upstream would have streamed it."""
    document = answer.document
    chat = request.kind == "chat"
    choice = (document.get("choices") or [{}])[0]
    base = {
        "id": document.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": document.get("model", request.params.model),
    }
    events = []
    if chat:
        text = (choice.get("message") or {}).get("content") or ""
        events.append(
            sse_event(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            )
        )
        events.append(
            sse_event(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                }
            )
        )
        events.append(
            sse_event(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}
                    ],
                }
            )
        )
    else:
        events.append(
            sse_event(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": choice.get("text", ""), "finish_reason": None}
                    ],
                }
            )
        )
        events.append(
            sse_event(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": "", "finish_reason": choice.get("finish_reason")}
                    ],
                }
            )
        )
    if request.params.include_usage() and document.get("usage") is not None:
        events.append(sse_event({**base, "choices": [], "usage": document["usage"]}))
    events.append(SSE_DONE)
    return events


class StreamCapture:
    """Watches relayed SSE events: rebuilds the full answer, hides unrequested usage."""

    def __init__(self, request: InferenceRequest) -> None:
        self._chat = request.kind == "chat"
        self._client_wants_usage = request.params.include_usage()
        self._pieces: list[str] = []
        self._first: dict[str, Any] | None = None
        self._finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.broken = False

    def feed(self, event: bytes) -> bytes | None:
        """The event to relay to the client, or None to hold it back."""
        data = event_data(event)
        if data is None:
            return event
        if data.strip() == b"[DONE]":
            self.done = True
            return event
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.broken = True
            return event
        if not isinstance(chunk, dict):
            self.broken = True
            return event
        if "error" in chunk:
            self.broken = True
            return event
        if self._first is None:
            self._first = chunk
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if choices and isinstance(choices[0], dict):
            choice = choices[0]
            piece = (choice.get("delta") or {}).get("content") if self._chat else choice.get("text")
            if isinstance(piece, str):
                self._pieces.append(piece)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        elif self.usage is not None and not self._client_wants_usage:
            return None  # the usage-only chunk the router asked for on its own behalf
        return event

    def answer(self, produced_by: str) -> CachedAnswer | None:
        """The complete answer, if the stream ended cleanly."""
        if not self.done or self.broken or self._first is None or self._finish_reason is None:
            return None
        text = "".join(self._pieces)
        first = self._first
        if self._chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": self._finish_reason,
                "logprobs": None,
            }
            kind = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "finish_reason": self._finish_reason,
                "logprobs": None,
            }
            kind = "text_completion"
        document: dict[str, Any] = {
            "id": first.get("id", ""),
            "object": kind,
            "created": first.get("created", 0),
            "model": first.get("model", ""),
            "choices": [choice],
        }
        if self.usage is not None:
            document["usage"] = self.usage
        return CachedAnswer.of(orjson.dumps(document), document, produced_by)
