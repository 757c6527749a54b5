"""The stub's HTTP endpoints: OpenAI chat and text completions (plain and SSE), models,
health, metrics and the fault-injection control."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud_stub.admission import Admission, QueueFull
from cloud_stub.config import StubConfig
from cloud_stub.faults import Fault, FaultInjector
from cloud_stub.latency import LatencyModel
from cloud_stub.metrics import StubMetrics
from cloud_stub.textgen import Answer, count_prompt_tokens, make_answer
from hotcold.http import read_document, respond
from hotcold.serving import Server
from hotcold.wire import (
    ApiError,
    BadRequest,
    InferenceRequest,
    ServiceUnavailable,
    parse_chat_request,
    parse_completion_request,
    sse_event,
)
from hotcold.wire.sse import SSE_DONE, SSE_HEADERS


class InjectedFault(ApiError):
    status = 500
    error_type = "server_error"
    default_code = "injected_fault"


@dataclass
class StubState:
    config: StubConfig
    admission: Admission
    faults: FaultInjector
    latency: LatencyModel
    metrics: StubMetrics
    rng: random.Random
    server: Server | None = None  # set by whoever runs the app; needed to refuse connections


STATE = web.AppKey("stub_state", StubState)
_STRIPPED_FOR_DIGEST = ("stream", "stream_options", "user", "metadata")


def _answer_for(request: InferenceRequest, config: StubConfig, rng: random.Random) -> Answer:
    payload: dict[str, Any] = {
        k: v for k, v in request.body.items() if k not in _STRIPPED_FOR_DIGEST
    }
    if not request.params.is_deterministic():
        payload["nonce"] = rng.random()  # sampling: a different answer every time
    limit = request.params.output_limit() or config.default_max_tokens
    return make_answer(payload, limit)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion_document(
    request: InferenceRequest, answer: Answer, prompt_tokens: int
) -> dict[str, Any]:
    common = {"created": int(time.time()), "model": request.params.model}
    if request.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": answer.finish_reason,
            "logprobs": None,
        }
        return {
            "id": f"chatcmpl-{answer.digest[:24]}",
            "object": "chat.completion",
            **common,
            "choices": [choice],
            "usage": _usage(prompt_tokens, len(answer.tokens)),
            "system_fingerprint": "hotcold-cloud-stub",
        }
    return {
        "id": f"cmpl-{answer.digest[:24]}",
        "object": "text_completion",
        **common,
        "choices": [
            {
                "index": 0,
                "text": answer.text,
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(prompt_tokens, len(answer.tokens)),
    }


def _chunk(request: InferenceRequest, answer: Answer, created: int, **choice: Any) -> bytes:
    chat = request.kind == "chat"
    return sse_event(
        {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{answer.digest[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": request.params.model,
            "choices": [{"index": 0, "logprobs": None, **choice}],
        }
    )


async def _stream(
    http_request: web.Request,
    request: InferenceRequest,
    answer: Answer,
    prompt_tokens: int,
    state: StubState,
    extra_delay_s: float,
    queue_ms: str,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-Queue-Ms": queue_ms})
    await response.prepare(http_request)
    created = int(time.time())
    chat = request.kind == "chat"
    await asyncio.sleep(extra_delay_s + state.latency.first_token_s(state.rng))
    if chat:
        await response.write(
            _chunk(
                request,
                answer,
                created,
                delta={"role": "assistant", "content": ""},
                finish_reason=None,
            )
        )
    for index, token in enumerate(answer.tokens):
        if index:
            await asyncio.sleep(state.latency.next_token_s(state.rng))
        piece: dict[str, Any] = {"delta": {"content": token}} if chat else {"text": token}
        await response.write(_chunk(request, answer, created, **piece, finish_reason=None))
    final: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
    await response.write(
        _chunk(request, answer, created, **final, finish_reason=answer.finish_reason)
    )
    if request.params.include_usage():
        await response.write(
            sse_event(
                {
                    "id": f"{'chatcmpl' if chat else 'cmpl'}-{answer.digest[:24]}",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created,
                    "model": request.params.model,
                    "choices": [],
                    "usage": _usage(prompt_tokens, len(answer.tokens)),
                }
            )
        )
    await response.write(SSE_DONE)
    await response.write_eof()
    return response


async def _complete(http_request: web.Request, request: InferenceRequest) -> web.StreamResponse:
    state = http_request.app[STATE]
    path = request.path
    fault = state.faults.draw()
    if fault is Fault.ERROR:
        state.metrics.requests.labels(path, "500").inc()
        raise InjectedFault("injected fault: this server failed the request on purpose")
    if fault is Fault.DROP:
        state.metrics.requests.labels(path, "dropped").inc()
        if http_request.transport is not None:
            http_request.transport.abort()
        raise asyncio.CancelledError  # nothing to answer: the connection is gone
    answer = _answer_for(request, state.config, state.rng)
    prompt_tokens = count_prompt_tokens(request.prompt_text())
    extra_delay_s = state.faults.rates.slow_ms / 1000.0 if fault is Fault.SLOW else 0.0
    queued_at = time.monotonic()
    try:
        await state.admission.acquire()
    except QueueFull as exc:
        state.metrics.requests.labels(path, "503").inc()
        raise ServiceUnavailable(
            f"server is full: {exc}", code="queue_full", retry_after_s=1.0
        ) from exc
    queue_ms = f"{(time.monotonic() - queued_at) * 1000:.1f}"
    try:
        if request.stream:
            response = await _stream(
                http_request, request, answer, prompt_tokens, state, extra_delay_s, queue_ms
            )
        else:
            await asyncio.sleep(
                extra_delay_s + state.latency.total_s(len(answer.tokens), state.rng)
            )
            response = respond(
                http_request,
                _completion_document(request, answer, prompt_tokens),
                headers={"X-Queue-Ms": queue_ms},
            )
    except (asyncio.CancelledError, ConnectionResetError):
        state.metrics.cancelled.inc()
        state.metrics.requests.labels(path, "cancelled").inc()
        raise
    finally:
        state.admission.release()
    state.metrics.requests.labels(path, "200").inc()
    state.metrics.tokens.labels("in").inc(prompt_tokens)
    state.metrics.tokens.labels("out").inc(len(answer.tokens))
    return response


async def chat_completions(http_request: web.Request) -> web.StreamResponse:
    return await _complete(http_request, parse_chat_request(await read_document(http_request)))


async def completions(http_request: web.Request) -> web.StreamResponse:
    return await _complete(
        http_request, parse_completion_request(await read_document(http_request))
    )


async def models(http_request: web.Request) -> web.Response:
    name = http_request.app[STATE].config.model_name
    return respond(
        http_request,
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "hotcold-cloud-stub"}
            ],
        },
    )


async def healthz(http_request: web.Request) -> web.Response:
    state = http_request.app[STATE]
    return respond(
        http_request,
        {
            "status": "ok",
            "model": state.config.model_name,
            "active": state.admission.active,
            "queued": state.admission.waiting,
            "max_concurrency": state.admission.max_concurrency,
        },
    )


async def metrics(http_request: web.Request) -> web.Response:
    body = generate_latest(http_request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_faults(http_request: web.Request) -> web.Response:
    rates = http_request.app[STATE].faults.rates
    return respond(
        http_request,
        {
            "error_rate": rates.error_rate,
            "drop_rate": rates.drop_rate,
            "slow_rate": rates.slow_rate,
            "slow_ms": rates.slow_ms,
        },
    )


async def set_faults(http_request: web.Request) -> web.Response:
    """Change fault rates, or ``{"refuse_for_s": N}`` to refuse connections for N seconds."""
    state = http_request.app[STATE]
    changes = dict(await read_document(http_request))
    refuse_for_s = changes.pop("refuse_for_s", None)
    try:
        state.faults.rates = state.faults.rates.updated(changes)
    except ValueError as exc:
        raise BadRequest(str(exc), code="bad_fault_setting") from exc
    if refuse_for_s is not None:
        if not isinstance(refuse_for_s, int | float) or refuse_for_s <= 0:
            raise BadRequest(f"refuse_for_s must be a positive number, got {refuse_for_s!r}")
        if state.server is None:
            raise BadRequest("this stub was not started through hotcold.serving.Server")
        # Answer first, then stop listening: the caller's own connection stays open.
        asyncio.get_running_loop().call_soon(
            lambda: (
                asyncio.ensure_future(state.server.pause_listening(float(refuse_for_s)))
                if state.server
                else None
            )
        )
    return await get_faults(http_request)
