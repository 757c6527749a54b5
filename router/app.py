"""Composition root: ``create_app(config)`` wires every part of the router.

Each resource has one paired lifecycle in ``app.cleanup_ctx`` (aiohttp runs them in order on
start-up and in reverse on shutdown, and only for those that started).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from hotcold.http import MAX_BODY_BYTES, error_middleware
from router.clock import Clock, MonotonicClock
from router.config import RouterConfig
from router.dispatch import Dispatcher
from router.handlers import (
    CLOUD,
    DISPATCHER,
    MODELS_CACHE,
    SESSION,
    chat_completions,
    completions,
    healthz,
    metrics,
    models,
    readyz,
)
from router.metrics import RouterMetrics
from router.middlewares import METRICS, context_middleware
from router.upstream import UpstreamPool

CONFIG = web.AppKey("config", RouterConfig)
CLOCK = web.AppKey("clock", Clock)


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client session (keep-alive pool), the cloud pool and its prober."""
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(
        limit=config.cloud.max_connections,
        limit_per_host=0,
        keepalive_timeout=30.0,
        ttl_dns_cache=10,
    )
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    metrics = app[METRICS]
    cloud = UpstreamPool(
        "cloud", config.cloud, session, app[CLOCK], observer=metrics.observe_attempt
    )
    metrics.watch_pool(cloud)
    app[SESSION] = session
    app[CLOUD] = cloud
    app[DISPATCHER] = Dispatcher(config, cloud, metrics, app[CLOCK])
    prober = asyncio.create_task(cloud.run_prober(), name="cloud-prober")
    try:
        yield
    finally:
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
        await session.close()


def create_app(config: RouterConfig, *, clock: Clock | None = None) -> web.Application:
    app = web.Application(
        middlewares=[context_middleware, error_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    app[CLOCK] = clock or MonotonicClock()
    app[METRICS] = RouterMetrics()
    app[MAX_BODY_BYTES] = config.server.max_body_bytes
    app[MODELS_CACHE] = {}
    app.cleanup_ctx.append(_upstreams)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
