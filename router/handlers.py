"""The router's HTTP endpoints."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hotcold.http import read_document, respond
from hotcold.wire import ServiceUnavailable, parse_chat_request, parse_completion_request
from router.admin import fleet_status
from router.dispatch import Dispatcher
from router.middlewares import METRICS
from router.upstream import UpstreamPool

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
CLOUD = web.AppKey("cloud_pool", UpstreamPool)
EDGE = web.AppKey("edge_pool", object)  # UpstreamPool | None; read through edge_pool()
SESSION = web.AppKey("session", aiohttp.ClientSession)
MODELS_CACHE = web.AppKey("models_cache", dict)
MODELS_TTL_S = 30.0


async def chat_completions(request: web.Request) -> web.StreamResponse:
    dispatcher = request.app[DISPATCHER]
    tenant = dispatcher.admit(request)  # 401 / 429 before the body is read
    inference = parse_chat_request(await read_document(request))
    return await dispatcher.serve(request, inference, tenant)


async def completions(request: web.Request) -> web.StreamResponse:
    dispatcher = request.app[DISPATCHER]
    tenant = dispatcher.admit(request)
    inference = parse_completion_request(await read_document(request))
    return await dispatcher.serve(request, inference, tenant)


async def models(request: web.Request) -> web.Response:
    """The union of the models the cloud pool serves, cached for a while."""
    cache: dict[str, Any] = request.app[MODELS_CACHE]
    now = time.monotonic()
    if cache.get("at") is not None and now - cache["at"] < MODELS_TTL_S:
        return respond(request, cache["document"])
    pool = request.app[CLOUD]
    seen: dict[str, dict[str, Any]] = {}
    for endpoint in pool.endpoints:
        if not endpoint.breaker.allows_request():
            continue
        try:
            async with request.app[SESSION].get(
                endpoint.url + "/v1/models", timeout=aiohttp.ClientTimeout(total=2.0)
            ) as answer:
                if answer.status != 200:
                    continue
                listing = orjson.loads(await answer.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            continue
        for item in listing.get("data", []) if isinstance(listing, dict) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                seen.setdefault(item["id"], item)
    if not seen and "document" in cache:
        return respond(request, cache["document"])  # stale beats nothing
    if not seen:
        raise ServiceUnavailable("no cloud endpoint answered the model listing", retry_after_s=1)
    document = {"object": "list", "data": list(seen.values())}
    cache.update(at=now, document=document)
    return respond(request, document)


async def healthz(request: web.Request) -> web.Response:
    return respond(request, {"status": "ok"})


async def _pool_ready(pool: UpstreamPool) -> bool:
    try:
        async with asyncio.timeout(pool.config.health.probe_timeout_s + 1.0):
            return await pool.check_ready()
    except TimeoutError:
        return False


def edge_pool(app: web.Application) -> UpstreamPool | None:
    edge = app[EDGE]
    return edge if isinstance(edge, UpstreamPool) else None


async def readyz(request: web.Request) -> web.Response:
    """Ready when the cloud pool can answer (every request can be served then); the edge
    node's state is reported but does not decide: without it hot misses go to the cloud."""
    cloud = request.app[CLOUD]
    edge = edge_pool(request.app)
    cloud_ready, edge_ready = await asyncio.gather(
        _pool_ready(cloud), _pool_ready(edge) if edge is not None else asyncio.sleep(0, None)
    )
    document: dict[str, Any] = {
        "ready": cloud_ready,
        "cloud": {"ready": cloud_ready, "endpoints": cloud.snapshot()},
        "edge": {
            "configured": edge is not None,
            "ready": bool(edge_ready),
            "endpoints": edge.snapshot() if edge is not None else [],
        },
        # Reported, never deciding: a router without Redis serves on its last policy.
        "fleet": fleet_status(request.app),
    }
    return respond(request, document, status=200 if cloud_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
