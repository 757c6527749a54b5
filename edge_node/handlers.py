"""The edge node's HTTP endpoints: OpenAI chat and text completions (plain and SSE), models,
health and metrics. Answers carry ``X-Queue-Ms`` (time waited for a batch), which the router's
capacity loop steers on."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge_node.config import EdgeNodeConfig
from edge_node.metrics import EdgeMetrics, process_rss
from edge_node.model import LoadedModel
from edge_node.runner import Generation, QueueFull, Runner, TextAssembler
from hotcold.http import read_document, respond
from hotcold.wire import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceRequest,
    InvalidField,
    ServiceUnavailable,
    parse_chat_request,
    parse_completion_request,
    sse_event,
)
from hotcold.wire.sse import SSE_DONE, SSE_HEADERS


@dataclass
class EdgeState:
    config: EdgeNodeConfig
    loaded: LoadedModel
    runner: Runner
    metrics: EdgeMetrics


STATE = web.AppKey("edge_state", EdgeState)


def _prompt_ids(state: EdgeState, request: InferenceRequest) -> list[int]:
    tokenizer = state.loaded.tokenizer
    if isinstance(request.params, ChatCompletionRequest):
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in request.params.messages
        ]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return list(tokenizer(text)["input_ids"])
    assert isinstance(request.params, CompletionRequest)
    prompt = request.params.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return [int(token) for token in prompt]
    return list(tokenizer(request.prompt_text())["input_ids"])


def _generation(state: EdgeState, request: InferenceRequest) -> Generation:
    config = state.config
    params = request.params
    if isinstance(params, EmbeddingRequest):  # no route leads here; narrows the type
        raise InvalidField("this edge node does not serve embeddings", param="model")
    if params.choices() != 1:
        raise InvalidField("this edge node generates one choice per request (n=1)", param="n")
    limit = params.output_limit() or config.default_max_tokens
    if limit > config.max_tokens_limit:
        raise InvalidField(
            f"max_tokens {limit} is above this edge node's limit of {config.max_tokens_limit}",
            param="max_tokens",
        )
    ids = _prompt_ids(state, request)
    if len(ids) + limit > config.max_context:
        raise InvalidField(
            f"prompt ({len(ids)} tokens) plus max_tokens ({limit}) exceeds the "
            f"context of {config.max_context} tokens",
            code="context_length",
        )
    return Generation(
        ids, limit, params.temperature, params.top_p, params.seed, tuple(params.stop_list())
    )


def _usage(generation: Generation, completion: int) -> dict[str, int]:
    prompt = len(generation.prompt_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _complete(http: web.Request, request: InferenceRequest) -> web.StreamResponse:
    # One consistent view for the whole request: POST /admin/model may swap the model and
    # its runner meanwhile, and this request must finish on the ones it started with.
    state = replace(http.app[STATE])
    generation = _generation(state, request)
    try:
        state.runner.submit(generation)
    except QueueFull as exc:
        state.metrics.requests.labels(request.path, "503").inc()
        raise ServiceUnavailable(
            f"edge node is full: {exc}", code="queue_full", retry_after_s=1.0
        ) from exc
    assembler = TextAssembler(state.loaded.tokenizer, generation.stop)
    chat = request.kind == "chat"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    model = state.loaded.name
    tokens = state.runner.stream(generation)
    if not request.stream:
        pieces = []
        async for token in tokens:
            pieces.append(assembler.add(token))
            if assembler.stopped:
                generation.finished = True
                break
        pieces.append(assembler.finish())
        text = "".join(pieces)
        finish = "length" if generation.hit_length and not assembler.stopped else "stop"
        usage = _usage(generation, assembler.token_count)
        state.metrics.requests.labels(request.path, "200").inc()
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
            if chat
            else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        )
        document = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": f"hotcold-edge-{state.loaded.quantization}",
        }
        return respond(http, document, headers={"X-Queue-Ms": f"{generation.queue_ms:.1f}"})
    return await _stream(http, request, generation, assembler, tokens, ident, created)


async def _stream(
    http: web.Request,
    request: InferenceRequest,
    generation: Generation,
    assembler: TextAssembler,
    tokens: Any,
    ident: str,
    created: int,
) -> web.StreamResponse:
    state = http.app[STATE]
    chat = request.kind == "chat"
    kind = "chat.completion.chunk" if chat else "text_completion"
    model = state.loaded.name

    def chunk(text: str | None, finish: str | None) -> bytes:
        body: dict[str, Any] = (
            {"delta": {"content": text} if text is not None else {}}
            if chat
            else {"text": text or ""}
        )
        return sse_event(
            {
                "id": ident,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [{"index": 0, **body, "finish_reason": finish, "logprobs": None}],
            }
        )

    response: web.StreamResponse | None = None

    async def start() -> web.StreamResponse:
        # Headers go out with the first token, so they can carry the measured queue wait.
        started = web.StreamResponse(
            headers={**SSE_HEADERS, "X-Queue-Ms": f"{generation.queue_ms:.1f}"}
        )
        await started.prepare(http)
        if chat:
            await started.write(
                sse_event(
                    {
                        "id": ident,
                        "object": kind,
                        "created": created,
                        "model": model,
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
        return started

    async for token in tokens:
        response = response or await start()
        delta = assembler.add(token)
        if delta:
            await response.write(chunk(delta, None))
        if assembler.stopped:
            generation.finished = True
            break
    response = response or await start()
    tail = assembler.finish()
    if tail:
        await response.write(chunk(tail, None))
    finish = "length" if generation.hit_length and not assembler.stopped else "stop"
    await response.write(chunk(None if chat else "", finish))
    if request.params.include_usage():
        await response.write(
            sse_event(
                {
                    "id": ident,
                    "object": kind,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(generation, assembler.token_count),
                }
            )
        )
    await response.write(SSE_DONE)
    await response.write_eof()
    state.metrics.requests.labels(request.path, "200").inc()
    return response


async def chat_completions(http: web.Request) -> web.StreamResponse:
    return await _complete(http, parse_chat_request(await read_document(http)))


async def completions(http: web.Request) -> web.StreamResponse:
    return await _complete(http, parse_completion_request(await read_document(http)))


def model_info(state: EdgeState) -> dict[str, Any]:
    loaded = state.loaded
    return {
        "model": loaded.name,
        "quantization": loaded.quantization,
        "device": loaded.device,
        "footprint_bytes": loaded.footprint_bytes,
        "estimated_bytes": loaded.estimate.total_bytes,
        "max_batch": state.config.max_batch,
    }


async def models(http: web.Request) -> web.Response:
    state = http.app[STATE]
    return respond(
        http,
        {
            "object": "list",
            "data": [
                {
                    "id": state.loaded.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "hotcold-edge",
                    **model_info(state),
                }
            ],
        },
    )


async def healthz(http: web.Request) -> web.Response:
    state = http.app[STATE]
    return respond(
        http,
        {
            "status": "ok",
            **model_info(state),
            "queued": state.runner.waiting,
            "active": state.runner.active,
            "memory": {
                "rss_bytes": int(process_rss()),
                "device_allocated_bytes": device_allocated(),
            },
        },
    )


async def metrics(http: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(http.app[STATE].metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def device_allocated() -> int:
    return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0
