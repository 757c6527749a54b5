"""Turning answers into HTTP responses: upstream replies, cached answers (JSON, msgpack, or
replayed as SSE), and relayed streams captured so a streamed miss can be cached too.

A cached answer is always kept in the non-streamed form. A streamed request served from the
cache gets it replayed as SSE events; a streamed miss is relayed event by event while the
full answer is rebuilt from the deltas. The router always asks the upstream for the usage
chunk (token accounting needs it) and hides it from clients that did not ask for it.

Faithful or not at all: every choice (``n > 1``) and every field the OpenAI stream format
carries (content, refusal, tool calls, logprobs, finish and stop reasons, usage, system
fingerprint) is rebuilt from the deltas and replayed into them. A stream that carries a field
this module does not know is relayed untouched but not cached, and a plain answer whose
message holds such a field is not replayed as a stream (the streamed request is computed
afresh): a cache must never answer with less than the upstream did.

Every answer names the public model the client asked for (router/catalog.py), never the
upstream's own name for it nor the edge model's.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Protocol

import orjson
from aiohttp import web

from hotcold.front import FrontRequest
from hotcold.http import HttpRequest
from hotcold.wire import InferenceRequest, encode_body, error_body, sse_event, wants_msgpack
from hotcold.wire.sse import SSE_DONE, event_data


class CachedAnswer(NamedTuple):  # immutable; one per answer: a tuple costs a third of a dataclass
    """An answer as the cache keeps it: its JSON bytes only, plus its token usage.

    The parsed document is not kept: it takes two to three times the bytes' memory (a dict
    per choice and message), which would make ``cache.max_bytes`` a third of the truth. It is
    parsed again only when needed (msgpack clients, SSE replay): microseconds with orjson.
    """

    body: bytes  # the non-streamed answer, JSON
    produced_by: str  # "edge" | "cloud"
    usage: dict[str, Any] | None = None
    replayable: bool = True  # its stream form loses nothing (see the module's docstring)

    @classmethod
    def of(
        cls, body: bytes, document: dict[str, Any], produced_by: str, *, kept: bool = True
    ) -> CachedAnswer:
        """``kept``: False for an answer that is never cached nor shared (a sampled
        request's): its stream form is not checked, and it is marked not replayable."""
        usage = document.get("usage")
        return cls(
            body,
            produced_by,
            usage if isinstance(usage, dict) else None,
            kept and _replayable(document),
        )

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def size(self) -> int:
        return len(self.body) + 320  # the objects around the bytes and the usage, roughly


def plain_response(
    http: HttpRequest,
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
    # The type given to the constructor is set as the header directly; set afterwards, it is
    # parsed and rebuilt (``headers`` never carries one here: they are the route headers).
    return web.Response(body=body, status=status, headers=headers, content_type=content_type)


class StreamWriter(Protocol):
    """Where a streamed answer's bytes go: aiohttp's response, or the front door's stream."""

    async def write(self, data: bytes) -> None: ...
    async def write_eof(self) -> None: ...


async def start_stream(
    http: HttpRequest, headers: dict[str, str]
) -> tuple[web.StreamResponse, StreamWriter]:
    """Send a streamed answer's head (status 200, ``headers``); the response to hand back to
    the transport, and the writer for its bytes. On the front door the response only
    describes what was sent (it is never prepared)."""
    if isinstance(http, FrontRequest):
        return web.StreamResponse(headers=headers), http.open_stream(200, headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(http)
    return response, response


def error_response(
    status: int, document: Any, headers: dict[str, str], as_msgpack: bool = False
) -> web.Response:
    """An upstream's error answer, forced into the OpenAI error shape (msgpack for a client
    that reads only that)."""
    if not (isinstance(document, dict) and isinstance(document.get("error"), dict)):
        document = error_body(f"upstream answered {status}", "upstream_error", "upstream_error")
    body, content_type = encode_body(document, as_msgpack=as_msgpack)
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = content_type
    return response


_CHUNK_KEYS = frozenset(
    {"id", "object", "created", "model", "system_fingerprint", "service_tier", "usage",
     "choices", "obfuscation"}
)  # fmt: skip
_CHOICE_KEYS = frozenset({"index", "delta", "text", "logprobs", "finish_reason", "stop_reason"})
_DELTA_KEYS = frozenset({"role", "content", "refusal", "tool_calls"})
_MESSAGE_KEYS = frozenset({"role", "content", "refusal", "tool_calls", "annotations"})
_ANSWER_CHOICE_KEYS = frozenset({"index", "message", "text", "logprobs", "finish_reason",
                                 "stop_reason"})  # fmt: skip


def set_model(document: dict[str, Any], public: str) -> bool:
    """Name the public model in an answer or chunk; True when that changed it."""
    if document.get("model") == public:
        return False
    document["model"] = public
    return True


def _replayable(document: dict[str, Any]) -> bool:
    """Whether :func:`replay_events` can give this answer as a stream without losing a field."""
    choices = document.get("choices")
    if not isinstance(choices, list):
        return "data" in document  # embeddings are never streamed
    for choice in choices:
        if not isinstance(choice, dict) or not choice.keys() <= _ANSWER_CHOICE_KEYS:
            return False
        message = choice.get("message")
        if message is not None:
            if not isinstance(message, dict) or not message.keys() <= _MESSAGE_KEYS:
                return False
            if message.get("annotations"):
                return False
    return True


def replay_events(answer: CachedAnswer, request: InferenceRequest) -> list[bytes]:
    """The SSE events of a cached answer, as the upstream would have streamed it: per choice
    a role chunk, the content (or text), refusal and tool calls, then the finish chunk."""
    document = answer.document
    chat = request.kind == "chat"
    base: dict[str, Any] = {
        "id": document.get("id", ""),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": document.get("model", request.params.model),
    }
    if document.get("system_fingerprint") is not None:
        base["system_fingerprint"] = document["system_fingerprint"]
    if document.get("service_tier") is not None:
        base["service_tier"] = document["service_tier"]
    events: list[bytes] = []

    def emit(choice: dict[str, Any]) -> None:
        events.append(sse_event({**base, "choices": [choice]}))

    for position, choice in enumerate(document.get("choices") or []):
        index = choice.get("index", position)
        finish: dict[str, Any] = {"index": index, "finish_reason": choice.get("finish_reason")}
        if "stop_reason" in choice:
            finish["stop_reason"] = choice["stop_reason"]
        if chat:
            message = choice.get("message") or {}
            role = {"role": message.get("role", "assistant"), "content": ""}
            emit({"index": index, "delta": role, "logprobs": None, "finish_reason": None})
            delta: dict[str, Any] = {}
            if message.get("content"):
                delta["content"] = message["content"]
            if message.get("refusal") is not None:
                delta["refusal"] = message["refusal"]
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {**call, "index": position_}
                    for position_, call in enumerate(message["tool_calls"])
                ]
            if delta or choice.get("logprobs") is not None:
                emit(
                    {
                        "index": index,
                        "delta": delta,
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": None,
                    }
                )
            emit({**finish, "delta": {}, "logprobs": None})
        else:
            emit(
                {
                    "index": index,
                    "text": choice.get("text", ""),
                    "logprobs": choice.get("logprobs"),
                    "finish_reason": None,
                }
            )
            emit({**finish, "text": "", "logprobs": None})
    if request.params.include_usage() and document.get("usage") is not None:
        events.append(sse_event({**base, "choices": [], "usage": document["usage"]}))
    events.append(SSE_DONE)
    return events


class _ChoiceCapture:
    """One choice of a stream, rebuilt from its deltas."""

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: Any = None
        self.has_stop_reason = False

    def feed_chat(self, delta: dict[str, Any]) -> bool:
        """False when the delta holds something this capture cannot keep faithfully."""
        if not delta.keys() <= _DELTA_KEYS:
            return False
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            self.refusal = [*(self.refusal or []), delta["refusal"]]
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict) or not isinstance(call.get("index"), int):
                return False
            if not self._feed_tool_call(call):
                return False
        return True

    def _feed_tool_call(self, call: dict[str, Any]) -> bool:
        kept = self.tool_calls.setdefault(call["index"], {})
        for key, value in call.items():
            if key == "index" or value is None:
                continue
            if key == "function":
                if not isinstance(value, dict):
                    return False
                function = kept.setdefault("function", {})
                for part, piece in value.items():
                    if not isinstance(piece, str):
                        return False
                    function[part] = function.get(part, "") + piece
            elif isinstance(value, str | int | float | bool):
                kept[key] = value
            else:
                return False
        return True

    def feed_logprobs(self, logprobs: Any) -> bool:
        """Chat: ``content``/``refusal`` lists; completions: ``tokens``, ``token_logprobs``,
        ``top_logprobs``, ``text_offset`` lists. Both append chunk by chunk."""
        if logprobs is None:
            return True
        if not isinstance(logprobs, dict):
            return False
        kept = self.logprobs if self.logprobs is not None else {}
        for key, value in logprobs.items():
            if value is None:
                kept.setdefault(key, None)
            elif isinstance(value, list):
                kept[key] = [*(kept.get(key) or []), *value]
            else:
                return False
        self.logprobs = kept
        return True

    def finish(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if "stop_reason" in choice:
            self.has_stop_reason = True
            if choice["stop_reason"] is not None:
                self.stop_reason = choice["stop_reason"]

    def document(self, index: int, chat: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        if chat:
            message: dict[str, Any] = {"role": self.role, "content": "".join(self.content)}
            if self.refusal is not None:
                message["refusal"] = "".join(self.refusal)
            if self.tool_calls:
                message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if (self.refusal is not None or self.tool_calls) and not message["content"]:
                message["content"] = None  # streams open with content "": the answer had none
            choice["message"] = message
        else:
            choice["text"] = "".join(self.content)
        choice["logprobs"] = self.logprobs
        choice["finish_reason"] = self.finish_reason
        if self.has_stop_reason:
            choice["stop_reason"] = self.stop_reason
        return choice


def _carries_output(choice: Any, chat: bool) -> bool:
    """Whether a stream chunk's choice holds generated output (not only a role)."""
    if not isinstance(choice, dict):
        return False
    if not chat:
        return bool(choice.get("text"))
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(delta.get(key) for key in ("content", "refusal", "tool_calls", "reasoning_content"))


class StreamCapture:
    """Watches relayed SSE events: names the public model in each, rebuilds the full answer
    (every choice), and hides the usage chunk the router asked for on its own behalf."""

    def __init__(self, request: InferenceRequest, public_model: str | None = None) -> None:
        self._chat = request.kind == "chat"
        self._client_wants_usage = request.params.include_usage()
        self._public = public_model
        self._choices: dict[int, _ChoiceCapture] = {}
        self._first: dict[str, Any] | None = None
        self.upstream_model: Any = None  # the producer's own name for the model
        self._fingerprint: Any = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.broken = False
        self.faithful = True  # False: a field this capture cannot keep; relay, don't cache
        # True from the first event that carries output (text, a refusal, a tool call): the
        # first token. A role-only first chunk or an SSE comment is sent before it by some
        # servers, before any token exists.
        self.output_started = False

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
        if not isinstance(chunk, dict) or "error" in chunk:
            self.broken = True
            return event
        if self._first is None:
            self._first = chunk
            self.upstream_model = chunk.get("model")  # before it is renamed below
        if not chunk.keys() <= _CHUNK_KEYS:
            self.faithful = False
        if chunk.get("system_fingerprint") is not None:
            self._fingerprint = chunk["system_fingerprint"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        for choice in choices:
            self._feed_choice(choice)
            if not self.output_started:
                self.output_started = _carries_output(choice, self._chat)
        if not choices and self.usage is not None and not self._client_wants_usage:
            return None  # the usage-only chunk the router asked for on its own behalf
        if self._public is not None and set_model(chunk, self._public):
            return sse_event(chunk)
        return event

    def ended(self) -> None:
        """The upstream closed the stream cleanly: complete when every choice finished,
        whether or not it sent ``[DONE]``."""
        if self._choices and all(c.finish_reason for c in self._choices.values()):
            self.done = True

    def _feed_choice(self, choice: Any) -> None:
        if not isinstance(choice, dict) or not choice.keys() <= _CHOICE_KEYS:
            self.faithful = False
            return
        index = choice.get("index", 0)
        if not isinstance(index, int):
            self.faithful = False
            return
        kept = self._choices.setdefault(index, _ChoiceCapture())
        if self._chat:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict) or not kept.feed_chat(delta):
                self.faithful = False
        elif isinstance(choice.get("text"), str):
            kept.content.append(choice["text"])
        if not kept.feed_logprobs(choice.get("logprobs")):
            self.faithful = False
        kept.finish(choice)

    def answer(self, produced_by: str) -> CachedAnswer | None:
        """The complete answer, if the stream ended cleanly and nothing was beyond capture."""
        if not self.done or self.broken or not self.faithful or self._first is None:
            return None
        if not self._choices or any(c.finish_reason is None for c in self._choices.values()):
            return None
        first = self._first
        document: dict[str, Any] = {
            "id": first.get("id", ""),
            "object": "chat.completion" if self._chat else "text_completion",
            "created": first.get("created", 0),
            "model": self._public or first.get("model", ""),
            "choices": [
                self._choices[index].document(index, self._chat) for index in sorted(self._choices)
            ],
        }
        if self._fingerprint is not None:
            document["system_fingerprint"] = self._fingerprint
        if first.get("service_tier") is not None:
            document["service_tier"] = first["service_tier"]
        if self.usage is not None:
            document["usage"] = self.usage
        return CachedAnswer.of(orjson.dumps(document), document, produced_by)
