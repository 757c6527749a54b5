"""Request context: a request id on every answer, route headers on every inference answer,
and the request counters and latency histogram."""

from __future__ import annotations

import logging
import re
import time
import uuid

from aiohttp import web

from hotcold.http import Handler
from hotcold.logs import REQUEST_ID as REQUEST_ID_CONTEXT
from hotcold.wire import ServiceUnavailable
from hotcold.wire.schema import PATHS
from router.dispatch import DECISION, REQUEST_ID, Decision
from router.parts import parts_of

access = logging.getLogger("hotcold.access")  # one line per inference answer
_INFERENCE_PATHS = {path: api for api, path in PATHS.items()}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Answers the router gives itself (bad input, no upstream) before or instead of routing.
ROUTER_ANSWER = Decision(route="cold", cache="bypass", served_by="router")


@web.middleware
async def shedding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Past ``server.max_concurrent_requests`` inference requests in flight, answer 503 at
    once: a fast refusal the client can retry beats queueing until memory runs out.
    Health, metrics and admin are never shed."""
    if request.path not in _INFERENCE_PATHS:
        return await handler(request)
    parts = parts_of(request)
    in_flight = parts.in_flight
    if in_flight.count >= parts.config.server.max_concurrent_requests:
        parts.metrics.refused.labels("overloaded").inc()
        raise ServiceUnavailable(
            "the router is at its concurrent request limit; retry shortly",
            code="overloaded",
            retry_after_s=1,
        )
    in_flight.count += 1
    try:
        return await handler(request)
    finally:
        in_flight.count -= 1


def _request_id(request: web.Request) -> str:
    offered = request.headers.get("X-Request-Id", "")
    return offered if _CLIENT_ID.match(offered) else uuid.uuid4().hex


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = request_id = _request_id(request)
    context = REQUEST_ID_CONTEXT.set(request_id)  # every log line of this request carries it
    api = _INFERENCE_PATHS.get(request.path)
    started = time.perf_counter()
    status = "cancelled"
    try:
        response = await handler(request)
        status = str(response.status)
    finally:
        decision: Decision = request.get(DECISION, ROUTER_ANSWER)
        if api is not None:
            finished = time.perf_counter()
            parts_of(request).metrics.count_answer(
                api,
                (decision.route, decision.cache, decision.served_by, decision.model),
                status,
                finished - started,
                finished,
            )
            access.info(
                "%s %s %s %s %s/%s/%s %.1f ms",
                request.method,
                request.path,
                status,
                decision.model,
                decision.route,
                decision.cache,
                decision.served_by,
                (finished - started) * 1000,
                extra={
                    "api": api,
                    "model": decision.model,
                    "route": decision.route,
                    "cache": decision.cache,
                    "served_by": decision.served_by,
                    "status": int(status) if status.isdigit() else status,
                    "latency_ms": round((finished - started) * 1000, 2),
                },
            )
        REQUEST_ID_CONTEXT.reset(context)
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
        if api is not None:
            for name, value in decision.headers().items():
                response.headers.setdefault(name, value)
    return response
