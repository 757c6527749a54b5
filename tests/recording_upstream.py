"""A real aiohttp upstream that records what it was sent: the bodies, paths and credentials
the router forwards (tests assert on what reached the upstream, not on what the router says)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from hotcold.serving import Server
from hotcold.wire.sse import SSE_DONE, SSE_HEADERS, sse_event


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    authorization: str | None


@dataclass
class Recorder:
    name: str
    health_path: str = "/healthz"
    seen: list[Seen] = field(default_factory=list)
    probes: list[tuple[str, str | None]] = field(default_factory=list)
    fail_with: int | None = None  # answer every inference request with this status
    # > 0: a stream starts with a role-only chunk at once and its first token comes this much
    # later (servers that send the role before prefill)
    first_token_after_s: float = 0.0
    server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        return [seen.body for seen in self.seen if path is None or seen.path == path]


def _answer(recorder: Recorder, path: str, body: dict[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    if path == "/v1/embeddings":
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5]}
                for i, x in enumerate(inputs)
            ],
            "model": model,
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    text = f"{recorder.name} answers {model}"
    choices = [
        {"index": i, "message": {"role": "assistant", "content": f"{text} #{i}"}}
        if path == "/v1/chat/completions"
        else {"index": i, "text": f"{text} #{i}"}
        for i in range(body.get("n") or 1)
    ]
    for choice in choices:
        choice.update(finish_reason="stop", logprobs=None)
    return {
        "id": "rec-1",
        "object": "chat.completion" if path == "/v1/chat/completions" else "text_completion",
        "created": 1,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


async def _inference(request: web.Request) -> web.StreamResponse:
    recorder: Recorder = request.app[RECORDER]
    body = orjson.loads(await request.read())
    recorder.seen.append(Seen(request.path, body, request.headers.get("Authorization")))
    if recorder.fail_with is not None:
        message = f"the model '{body.get('model')}' fails on purpose"
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error"}},
            status=recorder.fail_with,
        )
    document = _answer(recorder, request.path, body)
    if not body.get("stream"):
        return web.json_response(document)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    base = {key: document[key] for key in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    if recorder.first_token_after_s > 0:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        await response.write(sse_event({**base, "choices": [role]}))
        await asyncio.sleep(recorder.first_token_after_s)
    for choice in document["choices"]:
        index, content = choice["index"], choice["message"]["content"]
        for piece in (content[:5], content[5:]):
            delta = {"index": index, "delta": {"content": piece}, "finish_reason": None}
            await response.write(sse_event({**base, "choices": [delta]}))
        end = {"index": index, "delta": {}, "finish_reason": "stop"}
        await response.write(sse_event({**base, "choices": [end]}))
    await response.write(sse_event({**base, "choices": [], "usage": document["usage"]}))
    await response.write(SSE_DONE)
    await response.write_eof()
    return response


async def _health(request: web.Request) -> web.Response:
    recorder: Recorder = request.app[RECORDER]
    recorder.probes.append((request.path, request.headers.get("Authorization")))
    return web.json_response({"status": "ok"})


RECORDER = web.AppKey("recorder", Recorder)


async def start_recorder(name: str, health_path: str = "/healthz") -> Recorder:
    recorder = Recorder(name, health_path)
    app = web.Application()
    app[RECORDER] = recorder
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, _inference)
    app.router.add_get(health_path, _health)
    recorder.server = Server(app, "127.0.0.1", 0, shutdown_timeout_s=1)
    await recorder.server.start()
    return recorder
