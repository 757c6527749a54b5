"""The router's HTTP endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hotcold.http import HttpRequest, read_body, respond
from hotcold.wire import Unauthorized
from hotcold.wire.schema import Kind
from router.access import is_admin
from router.catalog import not_found
from router.parts import parts_of
from router.upstream import UpstreamPool


async def _infer(request: HttpRequest, kind: Kind) -> web.StreamResponse:
    dispatcher = parts_of(request).dispatcher
    tenant = await dispatcher.admit(request)  # 401 / 429 before the body is read
    raw = await read_body(request)
    parsed = dispatcher.parsed.parse(kind, request.headers.get("Content-Type"), raw)
    return await dispatcher.serve(request, parsed, tenant)


async def chat_completions(request: HttpRequest) -> web.StreamResponse:
    return await _infer(request, "chat")


async def completions(request: HttpRequest) -> web.StreamResponse:
    return await _infer(request, "completion")


async def embeddings(request: HttpRequest) -> web.StreamResponse:
    return await _infer(request, "embeddings")


async def models(request: web.Request) -> web.Response:
    """The catalog: the public models clients may ask for (OpenAI's list shape)."""
    return respond(request, parts_of(request).dispatcher.routes.catalog.listing())


async def model(request: web.Request) -> web.Response:
    """One model of the catalog, by its name or an alias; 404 ``model_not_found``."""
    name = request.match_info["model"]
    resolved = parts_of(request).dispatcher.routes.catalog.find(name)
    if resolved is None:
        raise not_found(name)
    return respond(request, {**resolved.entry.describe(), "id": resolved.public})


async def healthz(request: web.Request) -> web.Response:
    return respond(request, {"status": "ok"})


async def _pool_ready(pool: UpstreamPool) -> bool:
    try:
        async with asyncio.timeout(pool.config.health.probe_timeout_s + 1.0):
            return await pool.check_ready()
    except TimeoutError:
        return False


def pool_snapshot(pool: UpstreamPool) -> list[dict[str, Any]]:
    """A pool's endpoints, each named with its pool."""
    return [{**endpoint, "pool": pool.name} for endpoint in pool.snapshot()]


async def readyz(request: web.Request) -> web.Response:
    """Ready when a cloud pool of the catalog can answer; each pool's state is reported (a
    pool that is down fails its models' requests with 503, not the whole router). The edge
    node's state is reported but does not decide: without it hot misses go to the cloud."""
    pools = list(parts_of(request).dispatcher.routes.pools)
    edge = parts_of(request).edge
    *pools_ready, edge_ready = await asyncio.gather(
        *(_pool_ready(pool) for pool in pools),
        _pool_ready(edge) if edge is not None else asyncio.sleep(0, None),
    )
    cloud_ready = any(pools_ready)
    document: dict[str, Any] = {
        "ready": cloud_ready,
        "cloud": {
            "ready": cloud_ready,
            "endpoints": [e for pool in pools for e in pool_snapshot(pool)],
            "pools": {
                pool.name: {"ready": ready, "endpoints": pool.snapshot()}
                for pool, ready in zip(pools, pools_ready, strict=True)
            },
        },
        "edge": {
            "configured": edge is not None,
            "ready": bool(edge_ready),
            "endpoints": edge.snapshot() if edge is not None else [],
        },
        # Reported, never deciding: a router without Redis serves on its last policy.
        "fleet": parts_of(request).fleet_status(),
    }
    status = 200 if cloud_ready else 503
    if not (parts_of(request).config.admin.public_readiness_details or is_admin(request)):
        document = {"ready": cloud_ready}  # nothing internal for anyone else
    return respond(request, document, status=status)


async def metrics(request: web.Request) -> web.Response:
    parts = parts_of(request)
    if not (parts.config.admin.public_metrics or is_admin(request)):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <admin token>'")
    body = generate_latest(parts.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
