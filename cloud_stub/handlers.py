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
from cloud_stub.textgen import Answer, count_prompt_tokens, hashed_vector, make_answer
from hotcold.http import read_document, respond
from hotcold.serving import Server
from hotcold.wire import (
    ApiError,
    BadRequest,
    EmbeddingRequest,
    InferenceRequest,
    ServiceUnavailable,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
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


def _answers_for(
    request: InferenceRequest, config: StubConfig, rng: random.Random, wrong: bool = False
) -> list[Answer]:
    """One answer per choice (``n``); deterministic requests get the same ones every time,
    unless ``wrong`` (fault injection) makes it another request's answer."""
    payload: dict[str, Any] = {
        k: v for k, v in request.body.items() if k not in _STRIPPED_FOR_DIGEST
    }
    if wrong:
        payload["wrong"] = True
    if not request.params.is_deterministic():
        payload["nonce"] = rng.random()  # sampling: a different answer every time
    limit = request.params.output_limit() or config.default_max_tokens
    first = make_answer(payload, limit)
    return [first] + [
        make_answer({**payload, "choice": index}, limit)
        for index in range(1, request.params.choices())
    ]


def _model(request: InferenceRequest, config: StubConfig) -> str:
    return request.params.model or config.model_name


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion_document(
    request: InferenceRequest, answers: list[Answer], prompt_tokens: int, model: str
) -> dict[str, Any]:
    common = {"created": int(time.time()), "model": model}
    completion_tokens = sum(len(answer.tokens) for answer in answers)
    if request.kind == "chat":
        return {
            "id": f"chatcmpl-{answers[0].digest[:24]}",
            "object": "chat.completion",
            **common,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
                for index, answer in enumerate(answers)
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
            "system_fingerprint": "hotcold-cloud-stub",
        }
    return {
        "id": f"cmpl-{answers[0].digest[:24]}",
        "object": "text_completion",
        **common,
        "choices": [
            {
                "index": index,
                "text": answer.text,
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
            for index, answer in enumerate(answers)
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def _chunk(
    request: InferenceRequest, answer: Answer, created: int, model: str, **choice: Any
) -> bytes:
    chat = request.kind == "chat"
    return sse_event(
        {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{answer.digest[:24]}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "logprobs": None, **choice}],
        }
    )


async def _stream(
    http_request: web.Request,
    request: InferenceRequest,
    answers: list[Answer],
    prompt_tokens: int,
    state: StubState,
    extra_delay_s: float,
    queue_ms: str,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-Queue-Ms": queue_ms})
    await response.prepare(http_request)
    created = int(time.time())
    chat = request.kind == "chat"
    model = _model(request, state.config)
    answer = answers[0]
    await asyncio.sleep(extra_delay_s + state.latency.first_token_s(state.rng))
    for choice, each in enumerate(answers):  # choice by choice, each chunk naming its index
        if chat:
            await response.write(
                _chunk(
                    request,
                    answer,
                    created,
                    model,
                    index=choice,
                    delta={"role": "assistant", "content": ""},
                    finish_reason=None,
                )
            )
        for index, token in enumerate(each.tokens):
            if index:
                await asyncio.sleep(state.latency.next_token_s(state.rng))
            piece: dict[str, Any] = {"delta": {"content": token}} if chat else {"text": token}
            await response.write(
                _chunk(request, answer, created, model, index=choice, **piece, finish_reason=None)
            )
        final: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        await response.write(
            _chunk(
                request, answer, created, model, index=choice, **final,
                finish_reason=each.finish_reason,
            )
        )  # fmt: skip
    if request.params.include_usage():
        await response.write(
            sse_event(
                {
                    "id": f"{'chatcmpl' if chat else 'cmpl'}-{answer.digest[:24]}",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(prompt_tokens, sum(len(a.tokens) for a in answers)),
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
    answers = _answers_for(request, state.config, state.rng, state.faults.wrong())
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
                http_request, request, answers, prompt_tokens, state, extra_delay_s, queue_ms
            )
        else:
            longest = max(len(answer.tokens) for answer in answers)
            await asyncio.sleep(extra_delay_s + state.latency.total_s(longest, state.rng))
            document = _completion_document(
                request, answers, prompt_tokens, _model(request, state.config)
            )
            response = respond(http_request, document, headers={"X-Queue-Ms": queue_ms})
    except (asyncio.CancelledError, ConnectionResetError):
        state.metrics.cancelled.inc()
        state.metrics.requests.labels(path, "cancelled").inc()
        raise
    finally:
        state.admission.release()
    state.metrics.requests.labels(path, "200").inc()
    state.metrics.tokens.labels("in").inc(prompt_tokens)
    state.metrics.tokens.labels("out").inc(sum(len(answer.tokens) for answer in answers))
    return response


async def chat_completions(http_request: web.Request) -> web.StreamResponse:
    return await _complete(http_request, parse_chat_request(await read_document(http_request)))


async def embeddings(http_request: web.Request) -> web.Response:
    """Deterministic unit vectors from a hash of each input (``dimensions``, default 16):
    the same input always gets the same vector, as from a real embedding model."""
    state = http_request.app[STATE]
    request = parse_embedding_request(await read_document(http_request))
    params = request.params
    assert isinstance(params, EmbeddingRequest)
    inputs = params.input if isinstance(params.input, list) else [params.input]
    if inputs and isinstance(inputs[0], int):
        inputs = [inputs]  # one input given as token ids
    size = params.dimensions or 16
    await asyncio.sleep(state.latency.first_token_s(state.rng))
    data = [
        {"object": "embedding", "index": index, "embedding": hashed_vector(str(item), size)}
        for index, item in enumerate(inputs)
    ]
    tokens = sum(count_prompt_tokens(str(item)) for item in inputs)
    state.metrics.requests.labels(request.path, "200").inc()
    state.metrics.tokens.labels("in").inc(tokens)
    return respond(
        http_request,
        {
            "object": "list",
            "data": data,
            "model": params.model or state.config.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


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
            "wrong_rate": rates.wrong_rate,
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
